"""Outcoupling on the tidy3d backend: the 2D FDTD cell with scatterers, built and validated
offline, and its post-processing. NOTHING HERE RUNS AN FDTD SIMULATION OR REACHES THE CLOUD.

What is real: the simulations (built by the backend, ``validate_pre_upload``), the placement
of the cylinders, the mode the ModeSource selects (Tidy3D's local mode solver on the source
plane), the dry run, and the post-processing code run on ``td.SimulationData`` objects.
What is synthetic: the monitor data in those SimulationData objects. They are built from the
very simulations the backend made, with values chosen to encode a known guided decay,
scattering loss and upward escape, so the expected answers are known in closed form. This
tests our arithmetic (amplitude ratios, window integral, scattered-field flux, far field,
contract), not Tidy3D's solver; what the cloud would compute is not tested here.
(The web flow of an outcoupling batch is tested in test_tidy3d_web.py with the same data.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("tidy3d", reason="the tidy3d extra is not installed")

from qdcavity.analyses import make_analysis  # noqa: E402
from qdcavity.api import solve  # noqa: E402
from qdcavity.contracts import check_dataset  # noqa: E402
from qdcavity.errors import ConfigError  # noqa: E402
from qdcavity.plugins.tidy3d import outcoupling as oc  # noqa: E402
from qdcavity.plugins.tidy3d.jobs import Tidy3DDryRun  # noqa: E402
from qdcavity.plugins.tidy3d.options import parse_options  # noqa: E402
from qdcavity.plugins.tidy3d.outcoupling_post import outcoupling_dataset  # noqa: E402
from qdcavity.stack import load_stack  # noqa: E402

pytestmark = pytest.mark.tidy3d

PARTICLES = {"particle_radius_nm": 15.0, "volume_fraction": 0.05, "geometry": "2d"}
SMALL = {"window_um": 2.0, "realizations": 2}


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    monkeypatch.delenv("SIMCLOUD_APIKEY", raising=False)


def _analysis(**kw):
    return make_analysis("outcoupling", **{"wavelength_nm": [630.0], **PARTICLES, **kw})


# ----- the cell --------------------------------------------------------------------------------

def test_placement_is_seeded_inside_the_layer_without_overlap():
    rng = np.random.default_rng(3)
    a, d, length = 0.015, 0.070, 4.0
    count = oc.cylinder_count(0.05, length, d, a)
    assert count == round(0.05 * length * d / (math.pi * a * a)) == 20
    c = oc.place_cylinders(rng, count, length, d, a)
    assert c.shape == (count, 2)
    assert np.all((c[:, 0] >= a) & (c[:, 0] <= length - a))
    assert np.all((c[:, 1] >= a) & (c[:, 1] <= d - a))
    dist = np.hypot(*(c[:, None, :] - c[None, :, :]).transpose(2, 0, 1))
    assert np.min(dist[np.triu_indices(count, 1)]) >= 2 * a
    again = oc.place_cylinders(np.random.default_rng(3), count, length, d, a)
    assert np.array_equal(c, again)
    # a layer too crowded for non-overlapping cylinders is refused, naming the field
    with pytest.raises(ConfigError, match="volume_fraction"):
        oc.place_cylinders(rng, 60, 0.5, d, a)
    with pytest.raises(ConfigError, match="particle_radius_nm"):
        oc.place_cylinders(rng, 1, 1.0, 0.025, a)


def test_dry_run_builds_validates_and_saves_the_batch(tmp_path):
    import tidy3d as td
    from tidy3d.plugins.mode import ModeSolver

    with pytest.raises(Tidy3DDryRun, match="3 Tidy3D simulation") as info:
        solve("TE-DIZO", "outcoupling", backend="tidy3d", **_analysis().model_dump(
            exclude={"kind"}), options={"work_dir": str(tmp_path), "dry_run": True, **SMALL})
    assert "offline: no API key" in str(info.value)
    files = sorted(tmp_path.glob("tidy3d/*/simulation.json"))
    sims = {p.parent.name.rsplit("-", 1)[0]: td.Simulation.from_file(str(p)) for p in files}
    assert set(sims) == {"oc-630nm-reference", "oc-630nm-r0", "oc-630nm-r1"}
    stack = load_stack("TE-DIZO")
    z0, z1 = (stack.interfaces_nm[stack.layer_position("QD") + k - 1] * 1e-3 for k in (0, 1))
    centres = []
    for key in ("oc-630nm-r0", "oc-630nm-r1"):
        sim = sims[key]
        sim.validate_pre_upload()
        (group,) = [s for s in sim.structures if s.name == "particles"]
        cyl = group.geometry.geometries
        xz = np.array([(g.center[0], g.center[2]) for g in cyl])
        a = cyl[0].radius
        assert a == pytest.approx(0.015) and all(g.axis == 1 for g in cyl)
        # inside the QD layer and the window, no overlap, the requested density
        assert np.all(xz[:, 1] - a >= z0 - 1e-9) and np.all(xz[:, 1] + a <= z1 + 1e-9)
        assert np.all(xz[:, 0] - a >= 1.1 - 1e-9) and np.all(xz[:, 0] + a <= 3.1 + 1e-9)
        dist = np.hypot(*(xz[:, None, :] - xz[None, :, :]).transpose(2, 0, 1))
        assert np.min(dist[np.triu_indices(len(cyl), 1)]) >= 2 * a - 1e-9
        assert len(cyl) == round(0.05 * 2.0 * (z1 - z0) / (math.pi * a * a))
        centres.append(xz)
    assert not np.allclose(centres[0], centres[1])      # independent realizations
    ref = sims["oc-630nm-reference"]
    ref.validate_pre_upload()
    assert not [s for s in ref.structures if s.name in ("particles", "host")]
    assert {m.name for m in ref.monitors} == {"mode_in", "mode_out", "flux_in", "flux_out",
                                             "flux_up", "field_up"}
    assert ref.size[1] == 0 and ref.boundary_spec.y.plus.type == "Periodic"
    # the ModeSource selects TE0 of the reference stack: Tidy3D's own (local, no subpixel
    # averaging) solver on the source plane gives an Ey mode within 1e-2 of the local
    # solver's TE0 with interface averaging (first-order grid error ~6e-3, docs/tidy3d.md)
    src = ref.sources[0]
    data = ModeSolver(simulation=ref, plane=td.Box(center=src.center, size=src.size),
                      mode_spec=src.mode_spec, freqs=[src.source_time.freq0]).solve()
    neff = complex(data.n_complex.isel(f=0, mode_index=src.mode_index).values)
    assert float(data.pol_fraction.te.isel(f=0, mode_index=src.mode_index)) > 0.99
    assert neff.real == pytest.approx(src.mode_spec.sort_spec.sort_reference, abs=1e-2)
    assert 1.57 < neff.real < 1.61                     # between plain TE0 and the mean medium


def test_unrepresentable_outcoupling_inputs_are_named(tmp_path):
    opts = {"work_dir": str(tmp_path), "dry_run": True, **SMALL}
    with pytest.raises(ConfigError, match="geometry"):
        solve("TE-DIZO", "outcoupling", backend="tidy3d", particle_radius_nm=15.0,
              volume_fraction=0.05, options=opts)
    with pytest.raises(ConfigError, match="alpha_sca_cm"):
        solve("TE-DIZO", "outcoupling", backend="tidy3d", alpha_sca_cm=50.0, geometry="2d",
              options=opts)
    with pytest.raises(ConfigError, match="particle_radius_nm"):
        solve("TE-DIZO", "outcoupling", backend="tidy3d", particle_radius_nm=40.0,
              volume_fraction=0.05, geometry="2d", options=opts)
    with pytest.raises(ConfigError, match="monitor_gap_um"):
        solve("TE-DIZO", "outcoupling", backend="tidy3d", **PARTICLES,
              options={**opts, "monitor_gap_um": 1.0})
    with pytest.raises(ConfigError, match="realizations"):
        solve("TE-DIZO", "outcoupling", backend="tidy3d", **PARTICLES,
              options={**opts, "realizations": 0})


# ----- synthetic monitor data with a known answer ---------------------------------------------

TRUTH = {
    "P0": 2.0,              # reference flux at the first plane (any units)
    "a0": 0.7 * np.exp(0.3j),  # its forward amplitude (normalization must cancel)
    "alpha_ref": 0.1,       # 1/um: reference decay (mean-medium gain layer)
    "beta": 10.0,           # 1/um: phase slope of the guided wave
    "alpha_sca": (0.010, 0.014),  # 1/um per realization (100, 140 cm^-1)
    "escape": (0.15, 0.25),  # upward share of the scattered power per realization
    "theta_deg": 20.0,      # direction of the upward scattered wave (a sin^2 envelope
}                           # 1 um longer than the window carries it on the line)


def _guided_integral(plan, a_sca: float) -> float:
    """int over the window of the guided power, in closed form (exponential decay)."""
    t = TRUTH
    x_in = plan.x_monitors_um[0]
    x_w1, x_w2 = plan.x_window_um
    p_a = t["P0"] * math.exp(-t["alpha_ref"] * (x_w1 - x_in))
    rate = t["alpha_ref"] + a_sca
    return p_a * (1 - math.exp(-rate * (x_w2 - x_w1))) / rate


def synthetic_data(sim, key: str, plan):
    """A td.SimulationData for ``sim`` (the simulation named ``key`` of ``plan``) holding the
    monitor values TRUTH encodes: the reference decays at alpha_ref; realization r loses
    exp(-alpha_sca L) more across the window and sends escape * alpha_sca * int P dx upward
    as a sin^2-windowed plane wave at theta_deg on top of the reference's (non-radiating)
    field on the line, which the post-processing must subtract."""
    import tidy3d as td

    t = TRUTH
    r = None if key == plan.reference_key else plan.realization_keys.index(key)
    x_in, x_out = plan.x_monitors_um
    dx_m = x_out - x_in
    length = plan.x_window_um[1] - plan.x_window_um[0]
    a_sca = 0.0 if r is None else t["alpha_sca"][r]
    f0 = float(sim.sources[0].source_time.freq0)
    k0 = 2 * math.pi / (plan.wavelength_nm * 1e-3)
    amp = {"in": t["a0"],
           "out": t["a0"] * np.exp((-t["alpha_ref"] / 2 + 1j * t["beta"]) * dx_m
                                   - a_sca * length / 2)}
    flux = {"in": t["P0"], "out": t["P0"] * math.exp(-t["alpha_ref"] * dx_m)}
    data = []
    for mon in sim.monitors:
        name = mon.name
        if name.startswith("mode_"):
            n = mon.mode_spec.num_modes
            vals = np.zeros((2, 1, n), complex)
            vals[0, 0, 0] = amp[name[5:]]
            vals[1, 0, 0] = 0.05          # a backward wave, which must be ignored
            data.append(td.ModeData(
                monitor=mon,
                amps=td.ModeAmpsDataArray(vals, coords={"direction": ["+", "-"], "f": [f0],
                                                        "mode_index": list(range(n))}),
                n_complex=td.ModeIndexDataArray(
                    np.full((1, n), t["beta"] / k0 + 0.01j),
                    coords={"f": [f0], "mode_index": list(range(n))})))
        elif name == "flux_up":
            data.append(td.FluxData(monitor=mon, flux=td.FluxDataArray([0.0],
                                                                        coords={"f": [f0]})))
        elif name.startswith("flux_"):
            data.append(td.FluxData(monitor=mon, flux=td.FluxDataArray(
                [flux[name[5:]]], coords={"f": [f0]})))
        elif name == "field_up":
            grid = sim.discretize_monitor(mon)
            x = np.asarray(grid.boundaries.x[:-1])
            x_a, width = plan.x_window_um[0] - 0.5, plan.x_window_um[1] - plan.x_window_um[0] + 1
            # the reference: a bound wave (no escape) that the subtraction must remove
            g_e = 0.3 * np.exp(1j * t["beta"] * x)
            g_h = 0.3 * np.exp(1j * t["beta"] * x + 0.5j)
            e_s = h_s = np.zeros_like(g_e)
            if r is not None:
                kx = k0 * plan.n_superstrate * math.sin(math.radians(t["theta_deg"]))
                inside = (x > x_a) & (x < x_a + width)
                env = np.where(inside, np.sin(np.pi * (x - x_a) / width) ** 2, 0.0) * np.exp(
                    1j * kx * x)
                want = t["escape"][r] * a_sca * _guided_integral(plan, a_sca)
                # Tidy3D's flux = 0.5 int Re(Ex Hy* - Ey Hx*) dx; int sin^4 = 3 width / 8
                e0 = math.sqrt(want / (0.5 * 3 * width / 8))
                e_s, h_s = e0 * env, -e0 * env
            zero = np.zeros((x.size, 1, 1, 1), complex)

            def arr(v, x=x, z=mon.center[2]):
                return td.ScalarFieldDataArray(
                    np.reshape(v, (x.size, 1, 1, 1)),
                    coords={"x": x, "y": [0.0], "z": [z], "f": [f0]})

            data.append(td.FieldData(monitor=mon, Ex=arr(zero), Hy=arr(zero),
                                     Ey=arr(g_e + e_s), Hx=arr(g_h + h_s),
                                     symmetry=(0, 0, 0), symmetry_center=(0, 0, 0),
                                     grid_expanded=grid))
    return td.SimulationData(simulation=sim, data=data)


LOCAL = {"plain": {"neff": 1.573 + 0.00555j, "alpha_cm": 1107.0, "gamma_P": 0.273}}


def _jobs_and_plans(**opts):
    stack = load_stack("TE-DIZO")
    analysis = _analysis(gain_scan_cm=[0.0, 700.0], stripe_length_um=[0.0, 100.0],
                         angle_points=181, positions=2)
    jobs, plans = oc.outcoupling_jobs(stack, analysis, parse_options({**SMALL, **opts}),
                                      local_modes=False)
    plans[0].local = LOCAL
    return stack, analysis, jobs, plans


def expected_answers(plan) -> dict[str, float]:
    t = TRUTH
    a_sca = np.asarray(t["alpha_sca"])
    a_up = np.asarray(t["escape"]) * a_sca
    return {"alpha_sca_cm": float(a_sca.mean() * 1e4), "alpha_up_cm": float(a_up.mean() * 1e4),
            "escape": float(a_up.sum() / a_sca.sum()),
            "alpha_ref_cm": t["alpha_ref"] * 1e4}


def test_post_processing_recovers_a_known_decay_and_escape():
    """Synthetic SimulationData (see the module docstring) -> the contract dataset: the
    scattering loss, upward escape, reference decay, realization spread and far-field peak
    encoded in TRUTH come back. Tolerances: alpha_sca, alpha_ref and the escape are exact
    up to float rounding; the upward flux is Tidy3D's sum over the 5 nm line grid of a
    sin^2-windowed wave whose closed-form integral it matches to ~1e-12 (smooth, vanishing
    with its derivatives at the window ends), so 1e-9 relative throughout; the far-field
    peak sits within one speckle grain (lambda / (n L_line) in sin theta, the smoothing
    width) of 20 deg, plus the 0.5 deg angle step (the cos^2 factor pulls it ~1.5 deg low)."""
    stack, analysis, jobs, plans = _jobs_and_plans()
    plan = plans[0]
    data = {job.key: synthetic_data(job.simulation, job.key, plan) for job in jobs}
    ds = outcoupling_dataset(stack, analysis, plans, data)
    check_dataset(ds, "outcoupling", "tidy3d")
    want = expected_answers(plan)
    sel = ds.sel(wavelength_nm=630.0)
    assert float(sel.alpha_sca_cm) == pytest.approx(want["alpha_sca_cm"], rel=1e-9)
    assert float(sel.alpha_up_cm) == pytest.approx(want["alpha_up_cm"], rel=1e-9)
    assert float(sel.escape_fraction) == pytest.approx(want["escape"], rel=1e-9)
    assert np.allclose(sel.escape_fraction_realizations, TRUTH["escape"], rtol=1e-9)
    assert float(sel.alpha_abs_effective_cm) == pytest.approx(want["alpha_ref_cm"], rel=1e-9)
    assert float(sel.decay_check) == pytest.approx(1.0, rel=1e-9)
    assert float(sel.alpha_sca_cm_std) == pytest.approx(
        np.std(np.asarray(TRUTH["alpha_sca"]) * 1e4, ddof=1), rel=1e-9)
    # the plain-stack numbers come from the local mode solver, the VSL from them
    assert complex(sel.neff) == LOCAL["plain"]["neff"]
    g = 0.273 * 700.0 - 1107.0 - want["alpha_sca_cm"]
    assert float(sel.net_gain_cm.sel(material_gain_cm=700.0)) == pytest.approx(g)
    assert float(sel.scattered_fraction.sel(channel="air")) == pytest.approx(want["escape"])
    assert float(sel.scattered_fraction.sum()) == pytest.approx(1.0)
    peak = float(ds.angle_deg[int(np.argmax(sel.angular_pattern.values))])
    line = next(m for m in jobs[0].simulation.monitors if m.name == "field_up").size[0]
    grain_deg = math.degrees(0.63 / line / math.cos(math.radians(TRUTH["theta_deg"])))
    assert abs(peak - TRUTH["theta_deg"]) <= grain_deg + 0.5
    assert ds.attrs["cylinders_per_realization"] == len(plan.centres_um[0])


def test_post_processing_needs_forward_power():
    stack, analysis, jobs, plans = _jobs_and_plans()
    plan = plans[0]
    data = {job.key: synthetic_data(job.simulation, job.key, plan) for job in jobs}
    import tidy3d as td

    ref = data[plan.reference_key]
    dead = [td.FluxData(monitor=d.monitor, flux=d.flux * 0) if d.monitor.name == "flux_in"
            else d for d in ref.data]
    data[plan.reference_key] = ref.updated_copy(data=dead)
    from qdcavity.errors import SolverError

    with pytest.raises(SolverError, match="did not launch the guided mode"):
        outcoupling_dataset(stack, analysis, plans, data)
