"""CLI: every command, usage errors exit 2 with one line and no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qdcavity.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qdcavity.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_help_documents_every_command() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("geometries", "show", "backends", "run", "paper"):
        assert command in out.stdout


def test_geometries_show_backends(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["geometries"]) == 0
    assert "TE-DIZO" in capsys.readouterr().out
    assert main(["show", "TE-DIZO", "-w", "630", "--set", "IZO_top.thickness_nm=100"]) == 0
    out = capsys.readouterr().out
    assert "IZO_top" in out and "100" in out and "1.7853" in out
    assert main(["backends"]) == 0
    assert "tmm" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "NOPE"], "unknown stack 'NOPE'"),
        (["show", "TE-DIZO", "-w", "5000"], "outside the data of material"),
        (["show", "TE-DIZO", "--set", "QD.thickness_nm=-3"], "thickness must be a finite"),
        (["show", "TE-DIZO", "--set", "nonsense"], "expected FIELD=VALUE"),
        (["run", "missing-study.toml"], "study file not found"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_without_traceback(args: list[str], message: str) -> None:
    out = run_cli(*args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert len([line for line in out.stderr.splitlines() if line.strip()]) <= 3


def test_debug_shows_the_traceback() -> None:
    out = run_cli("--debug", "show", "NOPE")
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_unknown_backend_on_the_command_line(tmp_path) -> None:
    study = tmp_path / "s.toml"
    study.write_text('stack = "TE-DIZO"\n[[analyses]]\nkind = "reflectance"\n'
                     'wavelength_nm = 630\n[executor]\nkind = "inprocess"\n')
    out = run_cli("run", str(study), "--backend", "nope", "-o", str(tmp_path / "o.nc"))
    assert out.returncode != 0
    assert "unknown backend 'nope'; available:" in (out.stderr + out.stdout)
