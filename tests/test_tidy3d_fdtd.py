"""FDTD set-ups of the tidy3d backend, built and validated offline, and their post-processing.

Nothing here runs an FDTD simulation or reaches the cloud: simulations are built and checked
with ``validate_pre_upload`` (dry runs), the k-space post-processing of dipole emission is
checked on synthetic plane-wave fields, and the whole dipole post-processing on synthetic
monitor data (the web flow itself is tested in test_tidy3d_web.py).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("tidy3d", reason="the tidy3d extra is not installed")

from qdcavity.analyses import make_analysis  # noqa: E402
from qdcavity.api import solve  # noqa: E402
from qdcavity.contracts import check_dataset  # noqa: E402
from qdcavity.errors import ConfigError  # noqa: E402
from qdcavity.plugins.tidy3d import fdtd  # noqa: E402
from qdcavity.plugins.tidy3d.jobs import Tidy3DDryRun  # noqa: E402
from qdcavity.plugins.tidy3d.media import fit_material  # noqa: E402
from qdcavity.plugins.tidy3d.options import parse_options  # noqa: E402
from qdcavity.stack import load_stack  # noqa: E402

pytestmark = pytest.mark.tidy3d


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    monkeypatch.delenv("SIMCLOUD_APIKEY", raising=False)


def test_reflectance_oblique_dry_run(tmp_path):
    import tidy3d as td

    with pytest.raises(Tidy3DDryRun, match="3 Tidy3D simulation"):
        solve("BE", "reflectance", backend="tidy3d", wavelength_nm=[630.0],
              angle_deg=[0.0, 40.0], options={"work_dir": str(tmp_path), "dry_run": True})
    sims = {p.parent.name.rsplit("-", 1)[0]: td.Simulation.from_file(str(p))
            for p in tmp_path.glob("tidy3d/*/simulation.json")}
    assert set(sims) == {"R-0deg", "R-40deg-s", "R-40deg-p"}
    src = sims["R-40deg-s"].sources[0]
    assert src.angle_theta == pytest.approx(np.deg2rad(40)) and src.pol_angle == pytest.approx(
        np.pi / 2)
    assert isinstance(src.angular_spec, td.FixedAngleSpec)
    # every interface of the stack is a cell boundary
    z = sims["R-0deg"].grid.boundaries.z * 1e3
    for zi in load_stack("BE").interfaces_nm:
        assert np.min(np.abs(z - zi)) < 1e-6


def test_reflectance_bloch_variant_builds(tmp_path):
    stack = load_stack("BE")
    analysis = make_analysis("reflectance", wavelength_nm=[630.0], angle_deg=[30.0])
    opts = parse_options({"work_dir": str(tmp_path)})
    fdtd_jobs, _, plan = fdtd.reflectance_jobs(stack, analysis, opts, oblique="bloch")
    assert [j.key for j in fdtd_jobs] == ["R-30deg-s-630nm", "R-30deg-p-630nm"]
    for job in fdtd_jobs:
        assert job.simulation.boundary_spec.x.plus.type == "BlochBoundary"
        job.simulation.validate_pre_upload()


def test_dipole_dry_run(tmp_path):
    import tidy3d as td

    with pytest.raises(Tidy3DDryRun, match="4 Tidy3D simulation"):
        solve("TE-DIZO", "dipole_emission", backend="tidy3d", wavelength_nm=[630.0],
              options={"work_dir": str(tmp_path), "dry_run": True, "lateral_size_um": 2.0})
    sims = {p.parent.name.rsplit("-", 1)[0]: td.Simulation.from_file(str(p))
            for p in tmp_path.glob("tidy3d/*/simulation.json")}
    assert set(sims) == {"dipole-horizontal", "dipole-vertical", "bulk-horizontal",
                         "bulk-vertical"}
    assert sims["dipole-horizontal"].symmetry == (-1, 1, 0)
    assert sims["dipole-vertical"].sources[0].polarization == "Ez"
    z_dipole = sims["dipole-vertical"].sources[0].center[2] * 1e3
    assert z_dipole == pytest.approx(310 + 0.5 * 70)  # middle of the QD layer of TE-DIZO


def test_unrepresentable_fdtd_inputs_are_named(tmp_path):
    opts = {"work_dir": str(tmp_path), "dry_run": True}
    with pytest.raises(ConfigError, match="substrate absorbs"):
        solve("TE-DIZO", "reflectance", backend="tidy3d", wavelength_nm=[630.0],
              incidence="substrate", options=opts)
    with pytest.raises(ConfigError, match="position"):
        solve("TE-DIZO", "dipole_emission", backend="tidy3d", wavelength_nm=[630.0],
              position=0.001, options=opts)
    with pytest.raises(ConfigError, match="lateral_size_um"):
        solve("TE-DIZO", "dipole_emission", backend="tidy3d", options={**opts,
                                                                       "lateral_size_um": -1})


def test_broadband_media_are_fitted_and_the_error_recorded(tmp_path):
    material = load_stack("BE").materials()[1]  # IZO (ITO table): a quick two-pole fit
    fit = fit_material(material, (600.0, 660.0), samples=15, cache_dir=tmp_path)
    assert fit.rms_error < 1e-3 and fit.max_rel_eps_error < 1e-2
    eps = fit.medium.eps_model(fdtd.freq_hz(630.0))
    assert eps == pytest.approx(complex(material.nk(630.0)) ** 2, rel=1e-2)
    cached = list(tmp_path.glob("fit-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["rms_error"] == fit.rms_error


# ----- dipole post-processing on synthetic fields --------------------------------------------

def _plane_wave_fields(n: int, dx: float, kx: float, sz: float):
    """Tangential fields of one plane-wave component exp(i kx x) whose Re(E x H*)_z = sz."""
    x = (np.arange(n) - n // 2) * dx
    y = (np.arange(n) - n // 2) * dx
    phase = np.exp(1j * kx * x)[:, None] * np.ones(n)[None, :]
    ex = phase
    hy = sz * phase
    zero = np.zeros_like(phase)
    return x, y, ex, zero, zero, hy


def test_k_cumulative_parseval_and_position():
    n, dx = 64, 0.02
    kx = 2 * np.pi * 5 / (n * dx)          # an exact Fourier bin
    x, y, ex, ey, hx, hy = _plane_wave_fields(n, dx, kx, sz=2.0)
    u, cum = fdtd.k_cumulative(x, y, ex, ey, hx, hy, k_norm=10.0)
    total = float(np.sum((ex * np.conj(hy) - ey * np.conj(hx)).real) * dx * dx)
    assert cum[-1] == pytest.approx(total)
    jump = u[np.argmax(np.diff(np.concatenate([[0.0], cum])))]
    assert jump == pytest.approx(kx / 10.0)


def _monitor(fields: dict[str, np.ndarray], x, y):
    arrays = {c: xr.DataArray(v[:, :, None, None], dims=("x", "y", "z", "f"),
                              coords={"x": x, "y": y, "z": [0.0], "f": [0.0]})
              for c, v in fields.items()}
    return SimpleNamespace(**arrays)


def _flux(value: float):
    return SimpleNamespace(flux=xr.DataArray([value], dims=("f",)))


def test_dipole_dataset_from_synthetic_monitors():
    """K(u), Purcell and channels from hand-made plane data: the power through the planes
    around the dipole sits at chosen u, part of it leaves into air (u < u_air), the rest is
    guided (u_air < u < u_wg) or absorbed; the result obeys the contract."""
    stack = load_stack("BE")
    analysis = make_analysis("dipole_emission", wavelength_nm=[630.0], u_points=400)
    n_e = float(np.real(stack.indices(630.0)[0, stack.layer_position("QD")]))
    k_norm = 2 * np.pi / 0.63 * n_e
    n, dx = 256, 0.02
    step = 2 * np.pi / (n * dx) / k_norm   # u spacing of the Fourier bins

    def plane(u_bin: int, sz: float):
        x, y, ex, ey, hx, hy = _plane_wave_fields(n, dx, u_bin * step * k_norm, sz)
        return _monitor({"Ex": ex, "Ey": ey, "Hx": hx, "Hy": hy}, x, y), sz * (n * dx) ** 2

    u_air_bin, u_guided_bin = 2, round(1.03 / step)   # u ~ 0.15 (air cone), ~1.03 (guided)
    assert 1.0 / n_e < u_guided_bin * step < 1.7853 / n_e   # between u_air and u_wg of BE
    up, f_up = plane(u_guided_bin, 1.0)
    down, f_down = plane(u_guided_bin, -0.5)
    top, f_top = plane(u_air_bin, 0.0)
    bottom, f_bottom = plane(u_air_bin, 0.0)
    p_bulk = (f_up - f_down) / 2.0                               # Purcell 2
    sim = {"box": _flux(f_up - f_down), "field_up": up, "field_down": down,
           "field_top": top, "field_bottom": bottom, "flux_up": _flux(f_up),
           "flux_down": _flux(f_down), "flux_top": _flux(f_top), "flux_bottom": _flux(f_bottom)}
    bulk = {"box": _flux(p_bulk)}
    data = {"dipole-horizontal": sim, "dipole-vertical": sim, "bulk-horizontal": bulk,
            "bulk-vertical": bulk}
    meta = {"lateral_um": n * dx, "n_emitter": np.array([n_e])}
    layout = fdtd.Layout(stack, np.array([630.0]), media=[])
    ds = fdtd.dipole_dataset(stack, analysis, data, layout, meta)
    check_dataset(ds, "dipole_emission", "tidy3d")
    assert float(ds.purcell.sel(orientation="isotropic", wavelength_nm=630.0)) == pytest.approx(
        2.0, rel=1e-6)
    frac = ds.fraction.sel(orientation="horizontal", wavelength_nm=630.0)
    assert float(frac.sel(channel="waveguide")) == pytest.approx(1.0, abs=1e-6)
    assert float(frac.sum()) == pytest.approx(1.0, abs=1e-9)
    k = ds.K.sel(orientation="vertical", wavelength_nm=630.0)
    assert float(ds.u[int(np.argmax(k.values))]) == pytest.approx(u_guided_bin * step,
                                                                   abs=step)
