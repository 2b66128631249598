"""Plugin loading through real entry points: working, broken and disallowed plugins."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from qdcavity.errors import BackendError, ContractError
from qdcavity.registry import build_registry, default_registry

PLUGIN_SOURCE = {
    # A small but real third-party backend: normal-incidence Fresnel reflectance of the bare
    # superstrate/substrate interface (ignores the layers; enough to exercise the plumbing).
    "qdc_fresnel": '''
        import numpy as np, xarray as xr
        from qdcavity.backend import Backend
        from qdcavity.contracts import with_units
        from qdcavity.hookspecs import hookimpl

        class Fresnel(Backend):
            name = "fresnel"
            version = "1.0"
            analyses = frozenset({"reflectance"})

            def run(self, stack, analysis, options):
                lam = np.asarray(analysis.wavelength_nm)
                n = stack.indices(lam)
                r = np.abs((n[:, -1] - n[:, 0]) / (n[:, -1] + n[:, 0])) ** 2
                shape = (len(lam), len(analysis.angle_deg), len(analysis.polarizations))
                R = np.broadcast_to(r[:, None, None], shape).copy()
                dims = ("wavelength_nm", "angle_deg", "polarization")
                ds = xr.Dataset({"R": (dims, R), "T": (dims, 1 - R), "A": (dims, 0 * R)},
                                coords={"wavelength_nm": lam,
                                        "angle_deg": list(analysis.angle_deg),
                                        "polarization": list(analysis.polarizations)})
                return with_units(ds, "reflectance")

        @hookimpl
        def qdcavity_backends():
            return [Fresnel()]
    ''',
    "qdc_import_error": "raise RuntimeError('boom at import')\n",
    "qdc_exit": "import sys\nsys.exit('plugin exits at import')\n",
    "qdc_run_error": '''
        from qdcavity.backend import Backend
        from qdcavity.hookspecs import hookimpl

        class RunError(Backend):
            name = "runerror"
            version = "1"
            analyses = frozenset({"reflectance"})

            def run(self, stack, analysis, options):
                raise RuntimeError("boom in run")

        class RunExit(RunError):
            name = "runexit"

            def run(self, stack, analysis, options):
                raise SystemExit("plugin exits in run")

        class BadAvailability(RunError):
            name = "badavailability"

            def availability(self):
                raise RuntimeError("boom in availability")

        @hookimpl
        def qdcavity_backends():
            return [RunError(), RunExit(), BadAvailability()]
    ''',
    "qdc_hook_error": '''
        from qdcavity.hookspecs import hookimpl

        @hookimpl
        def qdcavity_backends():
            raise ValueError('boom in hook')
    ''',
    "qdc_not_backend": '''
        from qdcavity.hookspecs import hookimpl

        @hookimpl
        def qdcavity_backends():
            return ["not a backend"]
    ''',
    "qdc_bad_contract": '''
        import xarray as xr
        from qdcavity.backend import Backend
        from qdcavity.hookspecs import hookimpl

        class Bad(Backend):
            name = "badcontract"
            version = "0"
            analyses = frozenset({"reflectance"})

            def run(self, stack, analysis, options):
                return xr.Dataset({"R": ("x", [0.5])})

        @hookimpl
        def qdcavity_backends():
            return [Bad()]
    ''',
}


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install the plugins above as distributions with entry points on sys.path."""
    for module, source in PLUGIN_SOURCE.items():
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        dist = tmp_path / f"{module}-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(f"[qdcavity]\n{module} = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("QDCAVITY_PLUGINS", raising=False)
    yield tmp_path
    for module in PLUGIN_SOURCE:
        sys.modules.pop(module, None)
    default_registry.cache_clear()  # later tests see the real plugins only


def test_builtin_tmm_registers_through_the_entry_point() -> None:
    reg = build_registry()
    assert reg.get("tmm").name == "tmm"
    assert reg.origins["tmm"] == "tmm"


def test_broken_plugins_are_reported_and_skipped(plugin_site: Path) -> None:
    reg = build_registry()
    assert {"tmm", "fresnel", "badcontract"} <= set(reg.backends)
    reasons = {f.plugin: f.reason for f in reg.failures}
    assert "boom at import" in reasons["qdc_import_error"]
    assert "boom in hook" in reasons["qdc_hook_error"]
    assert "is not a qdcavity.backend.Backend" in reasons["qdc_not_backend"]
    assert "SystemExit: plugin exits at import" in reasons["qdc_exit"]


def test_plugins_failing_at_run_time_fail_their_points_only(
        plugin_site: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from qdcavity.cli import main
    from qdcavity.runner import run_study

    default_registry.cache_clear()
    study = tmp_path / "s.toml"
    study.write_text('stack = "BE"\n[[analyses]]\nkind = "reflectance"\nwavelength_nm = 630\n'
                     '[sweep.axes]\nbackend = ["runerror", "tmm", "runexit", "badavailability"]\n'
                     '[executor]\nkind = "inprocess"\n')
    ds = run_study(study, use_cache=False)
    status = dict(zip(ds.backend.values, ds.status.values, strict=True))
    assert status == {"runerror": "failed", "tmm": "ok", "runexit": "failed",
                      "badavailability": "failed"}
    errors = dict(zip(ds.backend.values, ds.error.values, strict=True))
    assert "RuntimeError: boom in run" in errors["runerror"]
    assert "SystemExit: plugin exits in run" in errors["runexit"]
    assert "boom in availability" in errors["badavailability"]
    from rich.console import Console

    from qdcavity import cli

    monkeypatch.setattr(cli, "console", Console(width=250))  # one table row per line
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "availability() raised" in out and "failed to load" in out


def test_allow_list_limits_third_party_plugins(plugin_site: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QDCAVITY_PLUGINS", "qdc_fresnel")
    reg = build_registry()
    assert "fresnel" in reg.backends and "tmm" in reg.backends
    assert "badcontract" not in reg.backends
    assert "qdc_import_error" in reg.skipped and not reg.failures
    assert set(build_registry(allow=[]).backends) >= {"tmm"}
    assert "fresnel" not in build_registry(allow=[]).backends


def test_third_party_backend_runs_and_bad_contract_is_rejected(
        plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qdcavity.api import solve

    default_registry.cache_clear()  # rebuild with the plugins above on sys.path
    ds = solve("TE-DIZO", "reflectance", backend="fresnel", wavelength_nm=[600, 630])
    assert ds.attrs["backend"] == "fresnel"
    assert float(ds.R[0, 0, 0]) == pytest.approx(((3.8 - 1) / (3.8 + 1)) ** 2, rel=0.05)
    with pytest.raises(BackendError, match="'fresnel' does not answer 'modes'; it answers "
                       "reflectance"):
        solve("TE-DIZO", "modes", backend="fresnel")
    with pytest.raises(ContractError, match="backend 'badcontract', analysis 'reflectance': "
                       "missing 'wavelength_nm'"):
        solve("TE-DIZO", "reflectance", backend="badcontract", wavelength_nm=630)


def test_unknown_backend_lists_available_and_unsupported_analysis_names_supported() -> None:
    from qdcavity.api import solve

    with pytest.raises(BackendError, match="unknown backend 'nope'; available: .*tmm"):
        solve("TE-DIZO", "reflectance", backend="nope")
