"""Shared fixtures."""

from __future__ import annotations

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
