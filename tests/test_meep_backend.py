"""Meep backend: plugin registration, availability, options, material fits, bad input.

These run the real worker under /usr/bin/python3 with Debian's python3-meep (no mocks); the
simulations here are tiny or stop at once. Physics cross-checks are in test_meep_physics.py.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from qdcavity.api import solve
from qdcavity.errors import BackendError, ConfigError, SolverError
from qdcavity.stack import Stack, load_stack

pytestmark = pytest.mark.meep  # skipped without Meep (tests/conftest.py)


def test_plugin_import_is_cheap_and_registers():
    code = (
        "import subprocess, time\n"
        "calls = []\n"
        "orig = subprocess.Popen.__init__\n"
        "def spy(self, *a, **k):\n"
        "    calls.append(a)\n"
        "    return orig(self, *a, **k)\n"
        "subprocess.Popen.__init__ = spy\n"
        "t = time.time()\n"
        "import qdcavity.plugins.meep as m\n"
        "dt = time.time() - t\n"
        "backends = m.qdcavity_backends()\n"
        "assert [b.name for b in backends] == ['meep'], backends\n"
        "assert not calls, calls\n"
        "print(dt)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    from qdcavity.registry import build_registry

    reg = build_registry()
    assert "meep" in reg.backends
    backend = reg.get("meep")
    assert {"reflectance", "modes", "dipole_emission"} <= set(backend.analyses)


def test_available_here_with_versions():
    from qdcavity.plugins.meep import MeepBackend

    b = MeepBackend()
    status = b.availability()
    assert status.available, status.reason
    versions = b.solver_versions()
    assert versions["meep"].startswith("1.")
    assert versions["worker_numpy"].startswith("1."), "worker must run Debian's numpy 1.x"


def test_unavailable_interpreter_reports_reason_and_install(monkeypatch):
    from qdcavity.plugins.meep import MeepBackend, runner

    monkeypatch.setenv("QDCAVITY_MEEP_PYTHON", "/nonexistent/python3")
    runner._probe_cache.clear()
    status = MeepBackend().availability()
    assert not status.available
    assert "/nonexistent/python3" in status.reason
    assert "apt-get install python3-meep" in status.install_hint
    with pytest.raises(BackendError, match="does not exist"):
        solve("TE-DIZO", "reflectance", backend="meep", wavelength_nm=630,
              options={"interpreter": "/nonexistent/python3"})


def test_interpreter_without_meep_is_a_backend_error(monkeypatch):
    """The project's own python (numpy 2) cannot import Meep: a clear BackendError."""
    from qdcavity.plugins.meep import MeepBackend, runner

    runner._probe_cache.clear()
    monkeypatch.setenv("QDCAVITY_MEEP_PYTHON", sys.executable)
    status = MeepBackend().availability()
    assert not status.available
    assert "meep" in status.reason.lower()
    with pytest.raises(BackendError, match="Meep is not usable"):
        solve("TE-DIZO", "reflectance", backend="meep", wavelength_nm=630,
              options={"interpreter": sys.executable})
    runner._probe_cache.clear()


def test_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown meep option"):
        solve("TE-DIZO", "reflectance", backend="meep", wavelength_nm=630,
              options={"resolutoin": 100})


@pytest.mark.parametrize("value", [True, False, np.True_, "fine", float("nan"),
                                   float("inf"), 0, -5])
def test_number_options_refuse_bools_text_and_non_positive_values(value):
    """One rule for every number option, in the backend's check and in the outcoupling one."""
    from qdcavity.plugins.meep.backend import resolve_options
    from qdcavity.plugins.meep.outcoupling import check_options

    with pytest.raises(ConfigError, match="option 'resolution' must be a finite number > 0"):
        resolve_options("reflectance", {"resolution": value})
    opts = resolve_options("outcoupling", {})
    with pytest.raises(ConfigError, match="option 'window_um' must be a finite number > 0"):
        check_options({**opts, "window_um": value})
    assert resolve_options("reflectance", {"resolution": "40"})["resolution"] == 40.0


def test_reserved_option_keys_are_accepted():
    from qdcavity.plugins.meep.backend import resolve_options

    opts = resolve_options("modes", {"work_dir": "/tmp", "dry_run_marker": 1})
    assert opts["work_dir"] == "/tmp"
    assert opts["resolution"] == 200.0


def _gain_stack() -> Stack:
    base = load_stack("TE-DIZO")
    data = base.model_dump()
    # a Lorentz pole with negative strength: gain (k < 0) near 630 nm
    data["layers"][4]["material"] = {"model": "drude-lorentz", "eps_inf": 2.8,
                                     "poles": [{"strength": -0.02, "omega_ev": 1.97,
                                                "gamma_ev": 0.05}],
                                     "name": "pumped-QD-with-gain"}
    data["name"] = "gain-test"
    return Stack.from_dict(data)


def test_material_that_cannot_be_fitted_is_a_solver_error_naming_it():
    stack = _gain_stack()
    assert np.any(stack.indices([630])[0].imag < 0)
    with pytest.raises(SolverError, match="pumped-QD-with-gain.*gain"):
        solve(stack, "reflectance", backend="meep", wavelength_nm=[620, 630, 640],
              options={"resolution": 50})


def test_simulated_time_limit_is_a_solver_error():
    with pytest.raises(SolverError, match="max_time"):
        solve("TE-DIZO", "reflectance", backend="meep", wavelength_nm=[600, 640],
              options={"resolution": 100, "max_time": 5})


def test_wall_clock_timeout_is_a_solver_error_and_kills_the_worker():
    t0 = time.time()
    with pytest.raises(SolverError, match="time limit"):
        solve("TE-DIZO", "reflectance", backend="meep", wavelength_nm=[600, 640],
              options={"resolution": 3000, "timeout_s": 3})
    assert time.time() - t0 < 60


def test_diverging_simulation_is_reported():
    """A non-dispersive negative permittivity makes FDTD unstable: the worker says so."""
    from qdcavity.plugins.meep.runner import default_interpreter, run_worker

    struct = {"media": [{"eps_inf": 2.25, "poles": []}, {"eps_inf": -4.0, "poles": []},
                        {"eps_inf": 1.0, "poles": []}],
              "substrate": 0, "layers": [1], "superstrate": 2, "thicknesses": [0.1],
              "interfaces": []}
    job = {"task": "reflectance", "structure": struct, "frequencies": [1.5, 1.6], "kx": [0.0],
           "polarizations": ["s"], "incidence": "superstrate",
           "numerics": {"resolution": 50.0, "pml": 0.5, "padding": 0.3, "decay_by": 1e-6,
                        "max_time": 400.0}}
    with pytest.raises(SolverError, match="diverged"):
        run_worker(job, interpreter=default_interpreter(), timeout_s=300, what="divergence test")


# ------------------------------------------------------------------ material fits (host only)


def test_fit_reproduces_tables_over_the_band():
    from qdcavity.plugins.meep.fitting import fit_medium

    stack = load_stack("TE-DIZO")
    lam = 1000.0 / np.linspace(1000 / 700, 1000 / 584, 41)
    n = stack.indices(lam)
    for j, name in enumerate(stack.media_names):
        med = fit_medium(name, lam, n[:, j])
        # the Johnson & Christy Ag table is piecewise linear (kinks): ~1e-3 relative
        assert med.max_dn <= 5e-3 * np.max(np.abs(n[:, j])), (name, med.max_dn)
        assert np.all(med.eps(1000 / lam).imag >= -1e-12), "passive"
        assert med.eps_inf >= 1.0
        for p in med.poles:
            assert p.sigma >= 0 and p.gamma >= 0


def test_fit_gain_and_bad_input_raise():
    from qdcavity.plugins.meep.fitting import FitError, fit_medium

    lam = np.linspace(600, 660, 11)
    with pytest.raises(FitError, match="gain"):
        fit_medium("x", lam, np.full(11, 1.7 - 0.01j))
    with pytest.raises(FitError, match="< 1"):
        fit_medium("x", lam, np.full(11, 0.5 + 0j))
    const = fit_medium("c", lam, np.full(11, 1.5 + 0j))
    assert const.poles == () and const.eps_inf == pytest.approx(2.25)


def test_fit_of_lossless_data_is_lossless_and_resonance_free():
    from qdcavity.plugins.meep.fitting import fit_medium

    stack = load_stack("TE-DIZO")
    f0 = 1000 / 630
    f = np.linspace(f0 / 1.05, f0 * 1.05, 41)
    n = stack.indices(1000 / f, zero_k=["QD"])[:, stack.media_names.index("QD")]
    med = fit_medium("QD", 1000 / f, n)
    assert np.max(med.eps(f).imag) < 1e-5
    for p in med.poles:
        assert not (f[0] / 1.2 < p.frequency < f[-1] * 1.2)
    assert abs(med.index(f0) - n[20]) < 1e-3


def test_richardson():
    from qdcavity.plugins.meep.convergence import richardson

    h = 1 / np.array([100.0, 200.0, 400.0])
    exact = 1.234
    vals = exact + 0.3 * h**2 + 2.0 * h**3
    r = richardson([100, 200, 400], vals)
    assert r["observed"] and abs(r["value"] - exact) < 1e-6 < r["error"] + 1e-6
    r2 = richardson([100, 200], vals[:2])
    assert not r2["observed"] and abs(r2["value"] - exact) < 5e-5
    assert r2["error"] >= abs(r2["value"] - exact)
    with pytest.raises(ValueError):
        richardson([200, 100], vals[:2])


# ------------------------------------------------------------------ mode-search rules (host only)


def _two_claddings(eps_sub: float, eps_sup: float) -> dict:
    media = [{"eps_inf": eps_sub, "poles": []}, {"eps_inf": 4.0, "poles": []},
             {"eps_inf": eps_sup, "poles": []}]
    return {"media": media, "substrate": 0, "layers": [1], "superstrate": 2,
            "thicknesses": [0.3], "interfaces": []}


def test_mode_cell_pads_for_the_tail_and_picks_the_boundary_per_side():
    """Four decay lengths of the evanescent tail (capped), a PML where the mode radiates, an
    absorber where it is evanescent, nothing in a metal (docs/meep.md, "Guided modes")."""
    from qdcavity.plugins.meep import worker

    num = {"padding": 0.3, "pml": 0.5, "max_padding": 3.0}
    f0 = 1000 / 630
    struct = _two_claddings(1.0, 1.0)
    q = 2 * np.pi * f0 * np.sqrt(1.026**2 - 1.0)  # a metal/air SPP's tail in air
    assert worker.tail_padding(struct, f0, 1.026, num) == pytest.approx([4 / q, 4 / q])
    assert worker.tail_padding(struct, f0, 1.0001, num) == [3.0, 3.0]  # capped
    assert worker.tail_padding(struct, f0, 1.9, num)[0] == 0.3  # short tail: the minimum
    radiating = _two_claddings(3.9**2, 1.0)  # Si below, air above; neff 1.6
    lay = worker.mode_cell(radiating, f0, 1.6, num, 100.0)
    assert lay.sides == ("pml", "absorber")
    metal = _two_claddings(1.0, 1.0)
    metal["media"][0] = {"eps_inf": 1.0, "poles": [{"kind": "drude", "frequency": 1.0,
                                                    "gamma": 0.04, "sigma": 52.7}]}
    assert worker.mode_cell(metal, f0, 1.03, num, 100.0).sides == ("none", "absorber")


def test_continuum_resonances_are_rejected_and_lossless_modes_kept():
    from qdcavity.plugins.meep import worker

    f0 = 1.5
    struct = _two_claddings(1.45**2, 1.0)
    assert worker._continuum(1.7, 1.0, struct, f0) == ""
    assert "below the light line" in worker._continuum(0.99, 1.0, struct, f0)
    assert "glancing" in worker._continuum(1.445, 1.0, struct, f0)  # 0.3 % below glass
    assert worker._continuum(1.46, 1.0, struct, f0) == ""  # just above glass: guided
    # Harminv's decay of a lossless mode has either sign at the 1e-12 level: kept, as lossless;
    # a clearly growing resonance (Im f > 0) is dropped
    found = [(1.50, 1e-12, 1.0, -7e11, 0.0), (1.52, 4e-3, 1.0, -190.0, 0.0),
             (1.48, -2e-3, 0.5, 370.0, 0.0)]
    kept = worker._merge_harminv(found, 1.5, 0.2)
    assert [round(m[0], 2) for m in kept] == [1.50, 1.48]
    assert kept[0][1] == 0.0 and kept[0][3] > 0
