"""Shared fixtures, and the rule for tests marked ``meep``: they are skipped, with the install
command, when the Meep worker's interpreter (``QDCAVITY_MEEP_PYTHON``, else Debian's
``/usr/bin/python3``) cannot import meep."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import pytest

from qdcavity.plugins.meep.runner import INSTALL_HINT, default_interpreter
from qdcavity.stack import Stack, load_stack

DATA = Path(__file__).parent / "data"


@pytest.fixture
def te_dizo() -> Stack:
    return load_stack("TE-DIZO")


@pytest.fixture
def write(tmp_path: Path):
    """Write a text file in tmp_path and return its path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return _write


@functools.cache
def meep_importable() -> bool:
    """Whether the interpreter the Meep backend uses (``QDCAVITY_MEEP_PYTHON``, else Debian's
    ``/usr/bin/python3``) can import meep."""
    try:
        return subprocess.run([default_interpreter(), "-c", "import meep"],
                              capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("meep") is not None]
    if marked and not meep_importable():
        skip = pytest.mark.skip(
            reason=f"{default_interpreter()} cannot import meep; {INSTALL_HINT}")
        for item in marked:
            item.add_marker(skip)
