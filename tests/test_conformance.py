"""The conformance suite (qdcavity.testing): the built-in and contrib backends pass it, and it
really catches what it promises to catch (broken toy backends fail with a precise message)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pytest
import xarray as xr

from qdcavity.backend import Availability, Backend
from qdcavity.errors import ConfigError
from qdcavity.hookspecs import hookimpl
from qdcavity.plugins.tmm.backend import TmmBackend
from qdcavity.registry import build_registry, default_registry
from qdcavity.testing import (
    CASES,
    BackendConformance,
    analytic,
    run_conformance,
    select_cases,
    tolerance,
)


def _registered(name: str) -> bool:
    return name in default_registry().backends


def _available(name: str) -> bool:
    return _registered(name) and default_registry().get(name).availability().available


# ----- the real backends --------------------------------------------------------------------


class TestTmmConformance(BackendConformance):
    backend = "tmm"


@pytest.mark.skipif(not _registered("fdmodes"),
                    reason="qdcavity-fdmodes is not installed "
                           "(pip install ./plugins/contrib/qdcavity-fdmodes)")
class TestFDModesConformance(BackendConformance):
    backend = "fdmodes"


@pytest.mark.tidy3d
@pytest.mark.skipif(not _available("tidy3d"), reason="the tidy3d extra is not installed")
class TestTidy3DConformance(BackendConformance):
    """The local mode solver; reflectance and dipole emission run on Tidy3D's cloud (API key,
    credits) and are not part of an offline test run."""

    backend = "tidy3d"
    cases = ("registration", "capabilities", "cache-key", "errors.*", "contract.modes",
             "physics.spp", "physics.slab")


MEEP = [pytest.mark.meep,
        pytest.mark.skipif(not _registered("meep"), reason="the meep backend is not registered")]


class TestMeepConformance(BackendConformance):
    """Real Meep runs in a worker process at the backend's default options: registration,
    error behaviour, the modes and dipole-emission contracts and the analytic modes and
    dipole stacks (1.5-3 minutes on 2 shared cores). Meep gives no angular spectrum
    K(u) (``attrs["K_available"] = "no"``), so the suite checks that K is zero instead of
    comparing it with the bulk spectrum. ``contract.outcoupling``: TestMeepOutcoupling-
    Conformance."""

    pytestmark = MEEP
    backend = "meep"
    cases = ("registration", "capabilities", "cache-key", "errors.*", "contract.modes",
             "contract.dipole_emission", "physics.spp", "physics.slab",
             "physics.homogeneous-dipole")


class TestMeepReflectanceConformance(BackendConformance):
    """Reflectance at 100 pixels/um (the default 400 takes minutes per case); the declared
    R/T/A tolerances hold there already."""

    pytestmark = MEEP
    backend = "meep"
    cases = ("contract.reflectance", "physics.film", "physics.fresnel")
    options: ClassVar[Mapping[str, Any]] = {"resolution": 100}


class TestMeepOutcouplingConformance(BackendConformance):
    """The outcoupling contract from Meep's 2D scatterer cell: the particle model in 2D (the
    cell has no given-alpha_sca or 3D mode, and refuses them by name), a small cell at
    resolution 50 with two placements (the contract, not the accuracy: that is
    tests/test_outcoupling_meep.py)."""

    pytestmark = MEEP
    backend = "meep"
    cases = ("contract.outcoupling",)
    # the suite's stack sits on glass: the TE0 tail needs room below (see _check_tails)
    options: ClassVar[Mapping[str, Any]] = {
        "resolution": 50, "window_um": 3.0, "realizations": 2, "seed": 1, "timeout_s": 600,
        "pad_lo_um": 0.8, "region_below_um": -0.5, "flux_depth_um": 0.6}
    analysis_params: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "outcoupling": {"geometry": "2d", "alpha_sca_cm": None, "particle_radius_nm": 15.0,
                        "volume_fraction": 0.05}}


# ----- the analytic answers themselves ------------------------------------------------------


def test_analytic_slab_satisfies_its_dispersion_equation_and_limits() -> None:
    te = analytic.slab_modes(2.0, 1.45, 600.0, 630.0, "TE")
    tm = analytic.slab_modes(2.0, 1.45, 600.0, 630.0, "TM")
    assert [m.label for m in te] == ["TE0", "TE1", "TE2"]
    assert [m.label for m in tm] == ["TM0", "TM1", "TM2"]
    for a, b in zip(te, tm, strict=True):
        assert 1.45 < b.neff < a.neff < 2.0  # TM below TE of the same order
        assert sum(a.gamma_E) == pytest.approx(1.0) and sum(b.gamma_E) == pytest.approx(1.0)
        # TE: gamma_P = n_j gamma_E_j / neff exactly
        assert a.gamma_P[1] == pytest.approx(2.0 * a.gamma_E[1] / a.neff)
    thin = analytic.slab_modes(2.0, 1.45, 50.0, 630.0, "TE")
    assert len(thin) == 1 and thin[0].neff - 1.45 < 0.1  # single-mode, weakly guided


def test_analytic_fresnel_and_film_conserve_energy() -> None:
    R, T = analytic.fresnel(1.0, 1.5, 0.0, "s")
    assert R == pytest.approx(0.04) and R + T == pytest.approx(1.0)
    assert analytic.fresnel(1.5, 1.0, 60.0, "p") == pytest.approx((1.0, 0.0))  # TIR
    R, T = analytic.film_reflectance(1.0, 1.5 ** 0.5, 630 / 4 / 1.5 ** 0.5, 1.5, 630.0, 0.0, "s")
    assert R == pytest.approx(0.0, abs=1e-12)  # quarter-wave antireflection coating
    u = np.linspace(0, 0.999999, 200001)
    for o in ("horizontal", "vertical", "isotropic"):
        assert np.trapezoid(analytic.homogeneous_dipole_K(u, o), u) == pytest.approx(1, abs=3e-3)


# ----- the suite catches broken backends ----------------------------------------------------


class Shifted(Backend):
    """TMM with neff shifted by ``shift`` (declares tolerances that may or may not cover it)."""

    name = "shifted"
    version = "1"
    analyses = frozenset({"modes"})
    shift = 1e-3

    def run(self, stack, analysis, options):
        ds = TmmBackend().run(stack, analysis, {})
        ds["neff"] = ds.neff + self.shift
        return ds


class HonestShifted(Shifted):
    name = "honest"
    tolerances: ClassVar[Mapping[str, float]] = {"neff": 2e-3}


class WrongUnits(Backend):
    name = "wrongunits"
    version = "1"
    analyses = frozenset({"reflectance"})

    def run(self, stack, analysis, options):
        ds = TmmBackend().run(stack, analysis, {})
        ds["R"].attrs["units"] = "%"
        return ds


class Leaky(Backend):
    """Violates conservation (R + T + A = 1.1) and crashes on bad input with a bare error."""

    name = "leaky"
    version = "1"
    analyses = frozenset({"reflectance"})
    tolerances: ClassVar[Mapping[str, float]] = {"Rx": 0.1}

    def run(self, stack, analysis, options):
        if max(analysis.wavelength_nm) > 10000:
            raise TypeError("cannot handle that")
        ds = TmmBackend().run(stack, analysis, {})
        ds["A"] = ds.A + 0.1
        return ds


class Unavailable(Shifted):
    name = "unavailable"

    def availability(self) -> Availability:
        return Availability(False, "solver library missing", "pip install it")


class SetOptions(Backend):
    name = "setoptions"
    version = "1"
    analyses = frozenset({"reflectance"})

    def run(self, stack, analysis, options):
        return TmmBackend().run(stack, analysis, {})


class NoSpectrum(Backend):
    """TMM dipole emission that claims to carry no K(u) but leaves the spectrum in place."""

    name = "nospectrum"
    version = "1"
    analyses = frozenset({"dipole_emission"})
    zero_k = False

    def run(self, stack, analysis, options):
        ds = TmmBackend().run(stack, analysis, {})
        ds.attrs["K_available"] = "no"
        if self.zero_k:
            ds["K"] = ds.K * 0.0
        return ds


class HonestNoSpectrum(NoSpectrum):
    name = "honestnospectrum"
    zero_k = True


class ToyPlugin:
    @hookimpl
    def qdcavity_backends(self):
        return [Shifted(), HonestShifted(), WrongUnits(), Leaky(), Unavailable(), SetOptions(),
                NoSpectrum(), HonestNoSpectrum()]


@pytest.fixture(scope="module")
def toys():
    return build_registry(allow=[], extra_plugins=[("toys", ToyPlugin())])


def _result(report, case):
    (r,) = [r for r in report.results if r.case == case]
    return r


def test_a_tolerance_violation_fails_and_a_declared_tolerance_passes(toys) -> None:
    bad = run_conformance("shifted", ["physics.slab", "physics.spp"], registry=toys)
    slab = _result(bad, "physics.slab")
    assert slab.status == "failed"
    assert "TE0 neff" in slab.message and "> tolerance 1e-06" in slab.message
    assert "SPP0 neff" in _result(bad, "physics.spp").message
    with pytest.raises(AssertionError, match="physics.slab"):
        bad.raise_if_failed()
    good = run_conformance("honest", ["physics.slab", "physics.spp"], registry=toys)
    assert good.ok, good.summary()


def test_contract_and_conservation_violations_are_named(toys) -> None:
    units = run_conformance("wrongunits", "contract.reflectance", registry=toys)
    assert "'R' has units '%', expected '1'" in units.results[0].message
    leaky = run_conformance("leaky", registry=toys)
    assert "R + T + A" in _result(leaky, "contract.reflectance").message
    assert "A" in _result(leaky, "physics.fresnel").message
    assert "raised TypeError" in _result(leaky, "errors.wavelength-range").message
    assert "tolerance for 'Rx'" in _result(leaky, "capabilities").message
    assert _result(leaky, "registration").status == "passed"


def test_a_backend_without_k_must_return_zero_k_and_is_checked_otherwise(toys) -> None:
    """K_available = 'no' (a real-space full-wave backend) skips the K(u) comparisons only when
    K really is zero; the Purcell factor and the channels are still checked."""
    bad = _result(run_conformance("nospectrum", "physics.homogeneous-dipole", registry=toys),
                  "physics.homogeneous-dipole")
    assert bad.status == "failed" and "K_available = 'no' but K holds non-zero" in bad.message
    good = _result(run_conformance("honestnospectrum", "physics.homogeneous-dipole",
                                   registry=toys), "physics.homogeneous-dipole")
    assert good.status == "passed", good.message
    assert any("K(u) not provided" in n for n in good.notes)


def test_unavailable_backend_skips_solver_cases_with_its_reason(toys) -> None:
    report = run_conformance("unavailable", registry=toys)
    assert _result(report, "registration").status == "passed"
    assert _result(report, "cache-key").status == "passed"
    skipped = _result(report, "physics.slab")
    assert skipped.status == "skipped" and "solver library missing" in skipped.message
    assert report.ok


def test_options_that_break_the_cache_key_are_caught(toys) -> None:
    report = run_conformance("setoptions", "cache-key", options={"modes": {"TE", "TM"}},
                             registry=toys)
    assert "not JSON-serializable" in report.results[0].message


def test_case_selection() -> None:
    tmm = default_registry().get("tmm")
    every = select_cases(tmm)
    assert {"registration", "physics.slab", "physics.homogeneous-dipole"} <= {c.id for c in every}
    assert [c.id for c in select_cases(tmm, "physics.s*")] == ["physics.spp", "physics.slab"]
    assert {c.id for c in select_cases(tmm, ["errors"])} == {
        c for c in CASES if c.startswith("errors.")}
    with pytest.raises(ConfigError, match="no conformance case matches 'nope'"):
        select_cases(tmm, ["nope"])
    # a case of an undeclared analysis: only by explicit choice, and then reported as skipped
    modes_only = Shifted()
    assert "physics.fresnel" not in {c.id for c in select_cases(modes_only)}
    report = run_conformance(modes_only, "physics.fresnel",
                             registry=build_registry(allow=[], extra_plugins=[
                                 ("toys", ToyPlugin())]))
    assert report.results[0].status == "skipped"
    assert "does not declare 'reflectance'" in report.results[0].message


def test_tolerances_default_strict_and_derived() -> None:
    assert tolerance({}, "neff") == 1e-6
    assert tolerance({"neff": 1e-3}, "neff") == 1e-3
    assert tolerance({"neff": 1e-3}, "alpha_cm", wavelength_nm=500) == pytest.approx(
        4 * np.pi * 1e-3 / 500e-7)
    assert tolerance({"gamma_P": 0.01}, "modal_gain_cm", material_gain_cm=690) == \
        pytest.approx(6.9)
    lam = xr.DataArray([500.0, 1000.0], dims="wavelength_nm")
    tol = tolerance({"neff": 1e-3}, "net_gain_cm", wavelength_nm=lam)
    assert tol.dims == ("wavelength_nm",) and float(tol[0]) > float(tol[1])


def test_module_entry_point_prints_the_report(capsys) -> None:
    from qdcavity.testing.__main__ import main

    assert main(["tmm", "registration", "physics.fresnel"]) == 0
    out = capsys.readouterr().out
    assert "backend 'tmm': 2 passed, 0 failed" in out
    assert main(["tmm", "nope"]) == 2


def test_analysis_params_reach_the_contract_case() -> None:
    """Per-analysis parameters replace the contract case's (None removes one): the TMM 2D
    particle model passes the contract; a mode the stack does not have fails the case."""
    ok = run_conformance("tmm", "contract.outcoupling", analysis_params={
        "outcoupling": {"geometry": "2d", "alpha_sca_cm": None, "particle_radius_nm": 15.0,
                        "volume_fraction": 0.05}})
    assert ok.ok and ok.results[0].status == "passed", ok.summary()
    bad = run_conformance("tmm", "contract.outcoupling",
                          analysis_params={"outcoupling": {"mode": "TE7"}})
    assert not bad.ok and "TE7" in bad.summary()
