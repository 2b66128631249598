"""A plain (non-editable) wheel ships the geometries, material tables, studies and plugins."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_data_and_plugins(tmp_path: Path) -> None:
    pytest.importorskip("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("qdcavity-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "qdcavity/__init__.py",
        "qdcavity/cli.py",
        "qdcavity/plugins/tmm/backend.py",
        "qdcavity/plugins/meep/worker.py",
        "qdcavity/plugins/tidy3d/__init__.py",
        "qdcavity/geometries/te-dizo.toml",
        "qdcavity/geometries/be.toml",
        "qdcavity/geometries/studies/paper.toml",
        "qdcavity/geometries/materials/library.toml",
        "qdcavity/geometries/materials/README.md",
        "qdcavity/geometries/materials/Ag/Johnson.yml",
        "qdcavity/geometries/materials/CdSe-ZnCdS-QD/Aftenieva.yml",
    ):
        assert required in names, required
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[qdcavity]" in text and "tmm = qdcavity.plugins.tmm" in text
