"""``qdcavity compare``: one study on several backends, values side by side, differences judged
against the declared tolerances, netCDF + figure written, exit status for CI."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from qdcavity.cli import main
from qdcavity.compare import backend_options_for, compare_study, parse_backends
from qdcavity.errors import ConfigError
from qdcavity.registry import default_registry
from qdcavity.results import read_netcdf

# A third-party plugin installed through a real entry point: the TMM answers, tweaked.
TOY = '''
    import numpy as np
    from qdcavity.backend import Backend
    from qdcavity.errors import ConfigError
    from qdcavity.hookspecs import hookimpl
    from qdcavity.plugins.tmm.backend import TmmBackend

    OPTIONS = {"neff_shift": 0.0, "R_shift": 0.0, "drop_first": False, "fail": False}

    class Tweak(Backend):
        name = "tweak"
        version = "1"
        analyses = frozenset({"modes", "reflectance"})
        tolerances = {"neff": 1e-4, "R": 1e-4}

        def run(self, stack, analysis, options):
            unknown = set(options) - set(OPTIONS)
            if unknown:
                raise ConfigError(f"unknown tweak option(s) {sorted(unknown)}")
            opts = {**OPTIONS, **options}
            if opts["fail"]:
                raise RuntimeError("tweak solver crashed")
            ds = TmmBackend().run(stack, analysis, {})
            if analysis.kind == "reflectance":
                ds["R"] = ds.R + opts["R_shift"]
                ds["A"] = ds.A - opts["R_shift"]
                return ds
            ds["neff"] = ds.neff + opts["neff_shift"]
            if opts["drop_first"]:  # lose the first mode of every (wavelength, polarization)
                for name, var in ds.data_vars.items():
                    if "mode" in var.dims:
                        fill = "" if var.dtype.kind in "UO" else np.nan
                        ds[name] = var.shift(mode=-1, fill_value=fill)
                ds["n_modes"] = ds.n_modes - 1
            return ds

    @hookimpl
    def qdcavity_backends():
        return [Tweak()]
'''


@pytest.fixture
def toy_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "qdc_tweak.py").write_text(textwrap.dedent(TOY))
    dist = site / "qdc_tweak-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: qdc_tweak\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[qdcavity]\nqdc_tweak = qdc_tweak\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("QDCAVITY_PLUGINS", raising=False)
    default_registry.cache_clear()
    yield
    sys.modules.pop("qdc_tweak", None)
    default_registry.cache_clear()


def study(tmp_path: Path, body: str, name: str = "cmp") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\n' + textwrap.dedent(body)
                    + '\n[executor]\nkind = "inprocess"\n')
    return path


MODES_AND_R = """
    stack = "BE"
    [[analyses]]
    kind = "modes"
    wavelength_nm = [620, 640]
    fields = false
    [[analyses]]
    kind = "reflectance"
    wavelength_nm = [600, 630]
    angle_deg = [0, 30]
"""


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(["compare", *args, "--no-cache"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_within_tolerance_exit_0_writes_netcdf_and_figure(tmp_path, toy_plugin, capsys) -> None:
    path = study(tmp_path, MODES_AND_R + "[backend_options.tweak]\nneff_shift = 5e-5\n")
    out = tmp_path / "c.nc"
    code, text, _ = run_cli([str(path), "--backends", "tmm,tweak", "-o", str(out)], capsys)
    assert code == 0, text
    assert "all 9 quantities within the declared tolerances" in text
    assert out.exists() and out.with_suffix(".png").stat().st_size > 10_000
    ds = read_netcdf(out)
    assert ds.attrs["reference_backend"] == "tmm" and ds.attrs["ok"] == 1
    neff = ds["modes.neff"]
    assert neff.dims == ("backend", "modes.label", "modes.wavelength_nm", "modes.polarization")
    assert {"TE0", "SPP0"} <= set(ds["modes.label"].values)
    diff = ds["modes.neff.diff"].sel(backend="tweak", **{"modes.label": "TE0",
                                                          "modes.polarization": "TE"})
    np.testing.assert_allclose(diff.values, 5e-5, atol=1e-12)  # side by side, differenced
    assert float(ds["modes.neff.tolerance"].sel(backend="tweak").max()) == pytest.approx(
        1e-4 + 1e-9)  # tweak's declared 1e-4 + tmm's declared 1e-9
    assert ds["reflectance.R"].dims == ("backend", "reflectance.wavelength_nm",
                                        "reflectance.angle_deg", "reflectance.polarization")
    assert bool(ds["reflectance.R.ok"].all())


def test_difference_beyond_tolerance_exits_1_and_names_it(tmp_path, toy_plugin, capsys) -> None:
    path = study(tmp_path, MODES_AND_R + "[backend_options.tweak]\nR_shift = 0.01\n")
    code, text, _ = run_cli([str(path), "--backends", "tmm,tweak", "--no-figure",
                             "-o", str(tmp_path / "c.nc"), "--rows", "20"], capsys)
    assert code == 1
    assert "EXCEEDS" in text and "reflectance.R" in text
    assert "quantities outside the declared tolerances: reflectance.R, reflectance.A" in text
    assert "modes.neff" in text  # printed too, and within tolerance
    ds = read_netcdf(tmp_path / "c.nc")
    assert not bool(ds["reflectance.R.ok"].sel(backend="tweak").any())
    assert bool(ds["modes.neff.ok"].all()) and ds.attrs["ok"] == 0
    assert not (tmp_path / "c.png").exists()


def test_modes_are_aligned_by_label_and_a_missing_mode_fails(tmp_path, toy_plugin,
                                                            capsys) -> None:
    path = study(tmp_path, """
        stack = "TE-DIZO"
        [[analyses]]
        kind = "modes"
        wavelength_nm = 630
        fields = false
        [backend_options.tweak]
        drop_first = true
    """)
    comparison = compare_study(path, "tmm,tweak", use_cache=False)
    ds = comparison.dataset
    assert not comparison.ok
    neff = ds["modes.neff"].isel(wavelength_nm=0)
    # the highest mode of each polarization is lost; every other one is compared by its label
    assert np.isnan(complex(neff.sel(backend="tweak", label="TE0", polarization="TE")))
    for label, pol in (("TE1", "TE"), ("SPP1", "TM"), ("TM0", "TM")):
        a, b = (complex(neff.sel(backend=x, label=label, polarization=pol))
                for x in ("tmm", "tweak"))
        assert a == b
    q = {q.name: q for q in comparison.quantities}["modes.neff"]
    assert q.n_missing == 2 and q.n_exceeding == 0  # TE0 and SPP0 (the Ag/Si plasmon)
    code, text, _ = run_cli([str(path), "--backends", "tmm,tweak", "--no-figure",
                             "-o", str(tmp_path / "c.nc")], capsys)
    assert code == 1 and "missing" in text


def test_failed_points_are_reported_and_fail(tmp_path, toy_plugin, capsys) -> None:
    path = study(tmp_path, """
        stack = "BE"
        [[analyses]]
        kind = "reflectance"
        wavelength_nm = 630
        [sweep.axes]
        "IZO_bottom.thickness_nm" = [100, 120]
        [backend_options.tweak]
        fail = true
    """)
    code, text, _ = run_cli([str(path), "--backends", "tmm,tweak",
                             "-o", str(tmp_path / "c.nc")], capsys)
    assert code == 1
    assert "tweak failed at (IZO_bottom.thickness_nm=100): RuntimeError: tweak solver crashed" \
        in text.replace("\n", "")
    ds = read_netcdf(tmp_path / "c.nc")
    assert json.loads(ds.attrs["failed_points"])["tmm"] == []
    assert (tmp_path / "c.png").exists()


@pytest.mark.skipif("fdmodes" not in default_registry().backends,
                    reason="pip install ./plugins/contrib/qdcavity-fdmodes")
def test_tmm_and_the_fd_plugin_agree(tmp_path, capsys) -> None:
    path = study(tmp_path, """
        stack = "BE"
        [[analyses]]
        kind = "modes"
        wavelength_nm = 630
    """)
    code, text, _ = run_cli([str(path), "--backends", "tmm,fdmodes", "-o",
                             str(tmp_path / "c.nc")], capsys)
    assert code == 0, text
    ds = read_netcdf(tmp_path / "c.nc")
    assert list(ds["label"].values) == ["TE0", "SPP0"]  # one analysis: plain dims


def test_bad_input(tmp_path, toy_plugin, capsys) -> None:
    path = study(tmp_path, MODES_AND_R)
    code, _, err = run_cli([str(path), "--backends", "tmm,nope"], capsys)
    assert code == 2 and "unknown backend 'nope'; available: " in err and "tweak" in err
    code, _, err = run_cli([str(path), "--backends", "tmm"], capsys)
    assert code == 2 and "at least two backends" in err
    code, _, err = run_cli([str(path), "--backends", "tmm,tmm"], capsys)
    assert code == 2 and "given twice" in err
    dipole = study(tmp_path, """
        stack = "BE"
        [[analyses]]
        kind = "dipole_emission"
    """, name="dip")
    code, _, err = run_cli([str(dipole), "--backends", "tmm,tweak"], capsys)
    assert code == 2
    assert "backend 'tweak' does not answer 'dipole_emission'; it answers modes, reflectance" \
        in err
    swept = study(tmp_path, MODES_AND_R + '[sweep.axes]\nbackend = ["tmm", "tweak"]\n',
                  name="swept")
    code, _, err = run_cli([str(swept), "--backends", "tmm,tweak"], capsys)
    assert code == 2 and "remove that axis" in err


def test_per_backend_options() -> None:
    opts = {"timeout_s": 10, "meep": {"resolution": 50}, "tweak": {"fail": True},
            "other": {"x": 1}}
    assert backend_options_for(opts, "meep", ["meep", "tweak"]) == {
        "timeout_s": 10, "other": {"x": 1}, "resolution": 50}
    assert backend_options_for(opts, "tmm", ["tmm", "meep"]) == {
        "timeout_s": 10, "tweak": {"fail": True}, "other": {"x": 1}}
    assert parse_backends(" tmm , meep ") == ["tmm", "meep"]
    with pytest.raises(ConfigError, match="empty backend name"):
        parse_backends("tmm,,meep")


def test_tolerances_follow_a_swept_wavelength() -> None:
    """A single analysis sweeping its wavelength keeps it as the axis ``modes.wavelength_nm``
    (no ``wavelength_nm`` coordinate): wavelength-dependent tolerances are taken there."""
    from qdcavity.compare import compare_results
    from qdcavity.runner import execute_study
    from qdcavity.study import Study

    study = Study(stack="TE-DIZO", executor={"kind": "inprocess"},
                  analyses=[{"kind": "modes", "wavelength_nm": 630, "fields": False,
                             "max_modes": 3}],
                  sweep={"axes": {"modes.wavelength_nm": [450, 900]}})
    ds, _ = execute_study(study, use_cache=False)
    assert "wavelength_nm" not in ds.coords
    tol = compare_results(study, {"tmm": ds, "meep": ds}).dataset["modes.alpha_cm.tolerance"]
    per_wavelength = tol.sel(backend="meep").isel(label=0, polarization=0).values
    assert per_wavelength[0] != per_wavelength[1]
