"""Shared fixtures, and the rule for tests marked ``meep``: they are skipped, with the install
command, when ``/usr/bin/python3`` (the Meep worker's interpreter) cannot import meep."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import pytest

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


MEEP_PYTHON = "/usr/bin/python3"


@functools.cache
def meep_importable() -> bool:
    try:
        return subprocess.run([MEEP_PYTHON, "-c", "import meep"], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("meep") is not None]
    if marked and not meep_importable():
        skip = pytest.mark.skip(reason=f"{MEEP_PYTHON} cannot import meep (apt-get install "
                                       "python3-meep python3-matplotlib python3-h5py)")
        for item in marked:
            item.add_marker(skip)
