"""The conformance cases and their runner (no pytest needed; see :mod:`qdcavity.testing.suite`).

Every case is a function ``(ctx, chk)`` that runs the backend on a small stack and records each
violation in ``chk`` (a case reports every problem it finds, not only the first). Cases are
selected by id, category or glob pattern; a case of an analysis the backend does not declare
is not applicable -- declaring its analyses is the only way a backend opts out of a case.
Solver-running cases are skipped, with the backend's reason, when it is unavailable here.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from ..analyses import ANALYSES, Analysis, make_analysis
from ..backend import Availability, Backend
from ..contracts import CHANNELS, CONTRACTS, ORIENTATIONS, check_dataset
from ..errors import BackendError, ConfigError, ContractError, QdcavityError
from ..registry import ENTRY_POINT_GROUP, Registry, default_registry
from ..stack import Stack
from ..tasks import NON_RESULT_OPTIONS, Task
from . import analytic
from .tolerances import tolerance

BACKEND_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
KINDS = ("photonic", "plasmonic")
BRANCHES = ("bound", "substrate-radiating", "leaky")


class NotApplicable(Exception):  # noqa: N818  a control-flow signal, not an error
    """Raised by a case that does not apply to this backend (reason in the message)."""


# ----- results ------------------------------------------------------------------------------


@dataclass
class CaseResult:
    """Outcome of one case: ``passed``, ``failed`` or ``skipped`` (``message`` says why)."""

    case: str
    status: str
    message: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "failed"


@dataclass
class ConformanceReport:
    backend: str
    results: list[CaseResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if r.status == "failed"]

    def summary(self) -> str:
        lines = [f"qdcavity conformance of backend '{self.backend}': "
                 f"{sum(r.status == 'passed' for r in self.results)} passed, "
                 f"{len(self.failed)} failed, "
                 f"{sum(r.status == 'skipped' for r in self.results)} skipped"]
        for r in self.results:
            lines.append(f"  {r.status.upper():7s} {r.case} ({r.seconds:.2f} s)")
            if r.message:
                lines += [f"          {line}" for line in r.message.splitlines()]
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise AssertionError(self.summary())


class Checker:
    """Collects violations of one case."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.notes: list[str] = []

    def expect(self, condition: Any, message: str) -> bool:
        if not bool(condition):
            self.failures.append(message)
            return False
        return True

    def close(self, what: str, got: Any, want: Any, tol: float) -> bool:
        """|got - want| <= tol (complex and arrays allowed; NaN never passes)."""
        got_a = np.asarray(got)
        want_a = np.asarray(want)
        diff = np.abs(got_a - want_a)
        worst = float(np.nanmax(diff)) if diff.size and not np.all(np.isnan(diff)) else math.nan
        if diff.size == 0 or np.any(~np.isfinite(diff)) or worst > tol:
            self.failures.append(f"{what}: got {_fmt(got)}, expected {_fmt(want)} "
                                 f"(|difference| {worst:.3g} > tolerance {tol:.3g})")
            return False
        return True


def _fmt(x: Any) -> str:
    a = np.asarray(x)
    if a.size == 1:
        v = a.item()
        return f"{v:.10g}" if isinstance(v, float) else (
            f"{v.real:.10g}{v.imag:+.10g}j" if isinstance(v, complex) else repr(v))
    return np.array2string(a, precision=6, threshold=12)


# ----- context ------------------------------------------------------------------------------


@dataclass
class Context:
    """What a case may use: the backend, the caller's options, the registry it came from."""

    backend: Backend
    options: Mapping[str, Any]
    registry: Registry | None
    from_default_registry: bool
    #: per analysis kind, parameters replacing the contract case's defaults (None removes one)
    analysis_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    _availability: Availability | None = field(default=None, repr=False)

    def availability(self) -> Availability:
        """The backend's availability, asked once per context (probes may be slow)."""
        if self._availability is None:
            self._availability = self.backend.availability()
        return self._availability

    def tol(self, var: str, **kw: Any) -> float:
        return float(np.max(tolerance(self.backend.tolerances, var, **kw)))

    def run(self, stack: Stack, analysis: Analysis, chk: Checker | None = None) -> xr.Dataset:
        """Run the backend; the dataset must obey the analysis' result contract."""
        ds = self.backend.run(stack, analysis, dict(self.options))
        try:
            check_dataset(ds, analysis.kind, self.backend.name)
        except ContractError as exc:
            if chk is None:
                raise
            chk.failures.append(f"result contract: {exc}")
            raise _Abort from None
        return ds


class _Abort(Exception):
    """Stop a case after a contract failure (later checks would only repeat it)."""


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    analysis: str | None
    description: str
    func: Callable[[Context, Checker], None] = field(repr=False)
    runs_solver: bool = True


CASES: dict[str, Case] = {}


def _case(id_: str, analysis: str | None, description: str, runs_solver: bool = True
          ) -> Callable[[Callable[[Context, Checker], None]], Callable[[Context, Checker], None]]:
    def deco(func: Callable[[Context, Checker], None]) -> Callable[[Context, Checker], None]:
        CASES[id_] = Case(id_, id_.partition(".")[0], analysis, description, func, runs_solver)
        return func

    return deco


# ----- stacks -------------------------------------------------------------------------------


def _stack(name: str, substrate: Any, layers: Sequence[tuple[str, Any, float]],
           superstrate: Any, **roles: str) -> Stack:
    def mat(m: Any) -> Any:
        if isinstance(m, str | dict):
            return m
        z = complex(m)
        return {"n": z.real, "k": z.imag}

    return Stack.from_dict({
        "name": name,
        "substrate": {"material": mat(substrate)},
        "superstrate": {"material": mat(superstrate)},
        "layers": [{"name": n, "material": mat(m), "thickness_nm": t} for n, m, t in layers],
        **roles,
    }, source=f"conformance stack '{name}'")


def modes_stack() -> Stack:
    """Glass / lossy core / lossy gain layer / air: TE0 and TM0 exist, alpha > 0."""
    return _stack("conformance-modes", 1.45,
                  [("core", 1.9 + 0.002j, 300.0), ("QD", 1.8 + 0.01j, 50.0)], 1.0,
                  gain_layer="QD", emitter_layer="QD")


def reflectance_stack() -> Stack:
    return _stack("conformance-reflectance", 1.5, [("film", 2.0 + 0.01j, 120.0)], 1.0)


def dipole_stack() -> Stack:
    return _stack("conformance-dipole", 1.45, [("E", 1.8, 80.0)], 1.0, emitter_layer="E")


# An Ag-like Drude metal (eps = -19.9 + 0.53i at 630 nm): exactly representable by FDTD
# backends (no material fit), analytic for the others.
SPP_METAL = {"model": "drude-lorentz", "eps_inf": 1.0, "plasma_ev": 9.0, "gamma_ev": 0.05}
SPP_GAP_NM = 300.0


def spp_stack() -> Stack:
    """One metal/air interface: metal substrate, an air layer (no index step), air on top."""
    return _stack("conformance-spp", SPP_METAL, [("gap", 1.0, SPP_GAP_NM)], 1.0)


SLAB = {"n_core": 2.0, "n_clad": 1.45, "thickness_nm": 600.0, "wavelength_nm": 630.0}


def slab_stack() -> Stack:
    return _stack("conformance-slab", SLAB["n_clad"],
                  [("core", SLAB["n_core"], SLAB["thickness_nm"])], SLAB["n_clad"])


def homogeneous_stack() -> Stack:
    return _stack("conformance-homogeneous", 1.5,
                  [("below", 1.5, 100.0), ("E", 1.5, 50.0), ("above", 1.5, 100.0)], 1.5,
                  emitter_layer="E")


def _analysis(kind: str, **params: Any) -> Analysis:
    return make_analysis(kind, source=f"conformance {kind}", **params)


CONTRACT_ANALYSES: dict[str, dict[str, Any]] = {
    "modes": {"wavelength_nm": [620.0, 640.0], "polarizations": ["TE", "TM"], "max_modes": 4,
              "fields": True, "field_points": 120, "field_padding_nm": 200.0},
    "reflectance": {"wavelength_nm": [500.0, 600.0], "angle_deg": [0.0, 30.0],
                    "polarizations": ["s", "p"]},
    "dipole_emission": {"wavelength_nm": [620.0], "u_max": 2.0, "u_points": 300},
    "outcoupling": {"wavelength_nm": [630.0], "mode": "TE0", "alpha_sca_cm": 50.0,
                    "gain_scan_cm": [0.0, 500.0, 1000.0], "stripe_length_um": [0.0, 100.0, 200.0],
                    "angle_points": 31, "positions": 2},
}
CONTRACT_STACKS: dict[str, Callable[[], Stack]] = {
    "modes": modes_stack, "reflectance": reflectance_stack, "dipole_emission": dipole_stack,
    "outcoupling": modes_stack,
}


# ----- registration, capabilities ------------------------------------------------------------


@_case("registration", None, "is a Backend with a valid name, version and analyses, registered "
       "through the 'qdcavity' entry-point group without failures", runs_solver=False)
def _registration(ctx: Context, chk: Checker) -> None:
    b = ctx.backend
    if not chk.expect(isinstance(b, Backend), f"{b!r} is not a qdcavity.backend.Backend"):
        return
    name = getattr(b, "name", None)
    chk.expect(isinstance(name, str) and BACKEND_NAME.fullmatch(name),
               f"name {name!r} must be a non-empty string of letters, digits, '_', '.', '-' "
               "(it is used in study files and comma-separated on the command line)")
    chk.expect(isinstance(b.version, str) and b.version.strip(),
               f"version {b.version!r} must be a non-empty string (it enters every cache key)")
    analyses = getattr(b, "analyses", None)
    if chk.expect(isinstance(analyses, frozenset | set) and analyses,
                  f"analyses {analyses!r} must be a non-empty frozenset of analysis kinds"):
        unknown = sorted(set(analyses) - set(ANALYSES))
        chk.expect(not unknown, f"analyses {unknown} are not qdcavity analyses "
                                f"(known: {', '.join(ANALYSES)})")
    reg = ctx.registry
    if reg is None:
        chk.notes.append("no registry given: registration not checked")
        return
    where = "the qdcavity entry-point registry" if ctx.from_default_registry else "the registry"
    registered = reg.backends.get(name) if isinstance(name, str) else None
    if not chk.expect(registered is b or type(registered) is type(b),
                      f"backend '{name}' is not registered in {where} (entry-point group "
                      f"'{ENTRY_POINT_GROUP}', hook 'qdcavity_backends')"):
        return
    origin = reg.origins.get(name, "")
    failures = [f for f in reg.failures if f.plugin == origin]
    chk.expect(not failures, "its plugin also failed to register: "
               + "; ".join(f.reason for f in failures))
    if ctx.from_default_registry:
        from importlib.metadata import entry_points

        eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        if chk.expect(origin in eps, f"plugin '{origin}' is not an entry point of the "
                      f"'{ENTRY_POINT_GROUP}' group"):
            dist = getattr(eps[origin], "dist", None)
            chk.notes.append(f"entry point {origin} = {eps[origin].value} "
                             f"(distribution {getattr(dist, 'name', '?')})")


@_case("capabilities", None, "declares description, tolerances (for variables of its "
       "analyses), availability with a reason, and solver versions", runs_solver=False)
def _capabilities(ctx: Context, chk: Checker) -> None:
    b = ctx.backend
    chk.expect(isinstance(b.description, str), "description must be a string")
    tols = b.tolerances
    if chk.expect(isinstance(tols, Mapping), f"tolerances must be a mapping, got {tols!r}"):
        known = {v for a in b.analyses if a in CONTRACTS for v in CONTRACTS[a].variables}
        for var, value in tols.items():
            chk.expect(var in known, f"tolerance for '{var}', which none of its analyses "
                       f"returns (variables: {', '.join(sorted(known))})")
            chk.expect(isinstance(value, int | float) and not isinstance(value, bool)
                       and math.isfinite(value) and value >= 0,
                       f"tolerance of '{var}' must be a finite number >= 0, got {value!r}")
    t0 = time.perf_counter()
    status = b.availability()
    dt = time.perf_counter() - t0
    if not chk.expect(isinstance(status, Availability),
                      f"availability() returned {status!r}, not a qdcavity.backend.Availability"):
        return
    if dt > 5:
        chk.notes.append(f"availability() took {dt:.1f} s; it should be a cheap check")
    if not status.available:
        chk.expect(str(status.reason).strip(), "unavailable without a reason")
        chk.notes.append(f"unavailable here: {status.reason}")
        return
    versions = b.solver_versions()
    if chk.expect(isinstance(versions, dict), "solver_versions() must return a dict"):
        chk.expect(all(isinstance(k, str) and isinstance(v, str) for k, v in versions.items()),
                   f"solver_versions() must map names to version strings, got {versions!r}")
        try:
            json.dumps(versions, sort_keys=True)
        except TypeError as exc:
            chk.failures.append(f"solver_versions() is not JSON-serializable: {exc}")


# ----- result contracts ----------------------------------------------------------------------


def _check_common(ds: xr.Dataset, chk: Checker, analysis: Analysis) -> None:
    chk.expect("conventions" in ds.attrs, "the dataset lacks the 'conventions' attribute "
               "(qdcavity.contracts.with_units sets it)")
    chk.close("wavelength_nm coordinate", ds.wavelength_nm.values,
              np.asarray(analysis.wavelength_nm), 1e-9)


def check_modes_contract(ds: xr.Dataset, analysis: Analysis, chk: Checker, ctx: Context,
                         stack: Stack) -> None:
    """Semantics of the modes contract beyond dims, dtypes and units."""
    _check_common(ds, chk, analysis)
    chk.expect(list(ds.polarization.values) == list(analysis.polarizations),
               f"polarization coordinate {list(ds.polarization.values)} != requested "
               f"{list(analysis.polarizations)}")
    chk.expect(list(ds.layer.values) == stack.media_names,
               f"layer coordinate {list(ds.layer.values)} != Stack.media_names "
               f"{stack.media_names}")
    chk.expect(ds.sizes["mode"] <= analysis.max_modes,
               f"{ds.sizes['mode']} mode slots for max_modes = {analysis.max_modes}")
    lam = ds.wavelength_nm.values[:, None, None]
    tol_a = 1e-9 * (1 + np.nanmax(np.abs(ds.alpha_cm.values), initial=0))
    g_tol = ctx.tol("gamma_E")
    for i, w in enumerate(ds.wavelength_nm.values):
        for j, pol in enumerate(ds.polarization.values):
            where = f"{w:g} nm {pol}"
            n = int(ds.n_modes.values[i, j])
            chk.expect(0 <= n <= ds.sizes["mode"], f"{where}: n_modes {n} out of range")
            labels = [str(x) for x in ds.label.values[i, j]]
            chk.expect(all(labels[:n]) and not any(labels[n:]),
                       f"{where}: labels {labels} must be set exactly for the n_modes = {n} "
                       "real modes")
            chk.expect(len(set(labels[:n])) == n, f"{where}: duplicate labels {labels[:n]}")
            neff = ds.neff.values[i, j, :n]
            chk.expect(np.all(np.isfinite(neff)), f"{where}: neff of a real mode is NaN")
            chk.expect(np.all(np.isnan(ds.neff.values[i, j, n:])),
                       f"{where}: padding slots beyond n_modes must hold NaN")
            chk.expect(np.all(np.diff(neff.real) <= 1e-12),
                       f"{where}: modes must be sorted by decreasing Re(neff), got {neff}")
            for m in range(n):
                lab, kind = labels[m], str(ds.kind.values[i, j, m])
                br = str(ds.branch.values[i, j, m])
                chk.expect(kind in KINDS, f"{where} {lab}: kind {kind!r} not in {KINDS}")
                chk.expect(br in BRANCHES, f"{where} {lab}: branch {br!r} not in {BRANCHES}")
                pattern = rf"{pol}(-leaky)?\d+" if kind == "photonic" else r"SPP(-leaky)?\d+"
                chk.expect(re.fullmatch(pattern, lab),
                           f"{where}: label {lab!r} of a {kind} mode must match {pattern}")
                chk.expect(("-leaky" in lab) == (br == "leaky"),
                           f"{where}: label {lab!r} and branch {br!r} disagree")
                ge = ds.gamma_E.values[i, j, m]
                chk.close(f"{where} {lab}: sum of gamma_E", ge.sum(), 1.0, 2 * g_tol + 1e-9)
                chk.expect(np.all(ge >= -g_tol), f"{where} {lab}: negative gamma_E {ge}")
    alpha = 4 * np.pi * np.imag(ds.neff.values) / (lam * 1e-7)
    ok = np.isfinite(alpha)
    chk.close("alpha_cm vs 4 pi Im(neff) / lambda", ds.alpha_cm.values[ok], alpha[ok], tol_a)
    if stack.gain_layer:
        gp = ds.gamma_P.sel(layer=stack.gain_layer).values
        modal = gp * analysis.material_gain_cm
        ok = np.isfinite(modal)
        chk.close("modal_gain_cm vs gamma_P[gain layer] * material_gain_cm",
                  ds.modal_gain_cm.values[ok], modal[ok], 1e-9 * (1 + np.nanmax(np.abs(modal))))
    net = ds.modal_gain_cm.values - ds.alpha_cm.values
    ok = np.isfinite(net)
    chk.close("net_gain_cm vs modal_gain_cm - alpha_cm", ds.net_gain_cm.values[ok], net[ok],
              1e-9 * (1 + np.nanmax(np.abs(net), initial=0)))
    if analysis.fields:
        chk.expect(ds.sizes["z_nm"] > 1, "fields = true but the z_nm grid is empty")
        for i in range(ds.sizes["wavelength_nm"]):
            for j, pol in enumerate(ds.polarization.values):
                for m in range(int(ds.n_modes.values[i, j])):
                    names = ("field_Ey",) if pol == "TE" else ("field_Ex", "field_Ez")
                    e2 = sum(np.abs(ds[k].values[i, j, m]) ** 2 for k in names)
                    chk.close(f"{pol} mode {m}: max |E| over z_nm (fields are normalized to "
                              "max |E| = 1)", np.sqrt(np.nanmax(e2)), 1.0, 1e-6)
                    main = "field_Ey" if pol == "TE" else "field_Hy"
                    chk.expect(np.all(np.isfinite(ds[main].values[i, j, m])),
                               f"{pol} mode {m}: {main} has NaN on z_nm")
    chk.expect(int(ds.n_modes.sum()) > 0, "no mode found on a stack that guides TE0 and TM0")


def check_reflectance_contract(ds: xr.Dataset, analysis: Analysis, chk: Checker,
                               ctx: Context) -> None:
    _check_common(ds, chk, analysis)
    chk.close("angle_deg coordinate", ds.angle_deg.values, np.asarray(analysis.angle_deg), 1e-9)
    chk.expect(list(ds.polarization.values) == list(analysis.polarizations),
               f"polarization coordinate {list(ds.polarization.values)} != requested "
               f"{list(analysis.polarizations)}")
    tol = ctx.tol("R") + ctx.tol("T") + ctx.tol("A")
    for var in ("R", "T", "A"):
        v = ds[var].values
        chk.expect(np.all((v >= -tol) & (v <= 1 + tol)), f"{var} outside [0, 1]: {_fmt(v)}")
    chk.close("R + T + A", (ds.R + ds.T + ds.A).values, 1.0, tol)


def check_dipole_contract(ds: xr.Dataset, analysis: Analysis, chk: Checker,
                          ctx: Context) -> None:
    _check_common(ds, chk, analysis)
    u = ds.u.values
    chk.expect(u.size > 1 and np.all(np.diff(u) > 0) and u[0] >= 0
               and u[-1] <= analysis.u_max * (1 + 1e-12),
               f"u must increase within [0, u_max = {analysis.u_max}], got {_fmt(u)}")
    f_tol, p_tol, k_tol = ctx.tol("fraction"), ctx.tol("purcell"), ctx.tol("K")
    chk.close("sum of fraction over channels", ds.fraction.sum("channel").values, 1.0,
              len(CHANNELS) * f_tol)
    chk.expect(np.all(ds.purcell.values > 0), f"purcell must be > 0: {ds.purcell.values}")
    for var, tol in {"purcell": p_tol, "K": k_tol}.items():
        h, v, i = (ds[var].sel(orientation=o).values for o in ORIENTATIONS)
        chk.close(f"{var}: isotropic = (2 horizontal + vertical) / 3", i, (2 * h + v) / 3, tol)
    ph, pv = (ds.purcell.sel(orientation=o).values for o in ORIENTATIONS[:2])
    fh, fv, fi = (ds.fraction.sel(orientation=o).values for o in ORIENTATIONS)
    chk.close("fraction: isotropic = power-weighted mean of horizontal (x2) and vertical", fi,
              (2 * ph[..., None] * fh + pv[..., None] * fv) / (2 * ph + pv)[..., None], f_tol)
    chk.expect(np.all(ds.K.values >= -k_tol), "K(u) must be >= 0")


def check_outcoupling_contract(ds: xr.Dataset, analysis: Analysis, chk: Checker,
                               ctx: Context) -> None:
    _check_common(ds, chk, analysis)
    chk.close("material_gain_cm coordinate (the gain scan)", ds.material_gain_cm.values,
              np.asarray(analysis.gain_scan_cm), 1e-9)
    chk.close("stripe_length_um coordinate", ds.stripe_length_um.values,
              np.asarray(analysis.stripe_length_um), 1e-9)
    theta = ds.angle_deg.values
    chk.expect(theta.size == analysis.angle_points and np.all(np.diff(theta) > 0)
               and theta[0] >= 0 and theta[-1] < 90,
               f"angle_deg must be {analysis.angle_points} increasing angles in [0, 90)")
    lam = ds.wavelength_nm.values
    chk.close("alpha_abs_cm vs 4 pi Im(neff) / lambda", ds.alpha_abs_cm.values,
              4 * np.pi * np.imag(ds.neff.values) / (lam * 1e-7),
              1e-9 * (1 + np.max(np.abs(ds.alpha_abs_cm.values))))
    if analysis.alpha_sca_cm is not None:
        chk.close("alpha_sca_cm (given)", ds.alpha_sca_cm.values, analysis.alpha_sca_cm, 1e-9)
    net = (ds.gamma_P * ds.material_gain_cm - ds.alpha_abs_cm - ds.alpha_sca_cm).transpose(
        *ds.net_gain_cm.dims)
    chk.close("net_gain_cm vs gamma_P G_mat - alpha_abs_cm - alpha_sca_cm",
              ds.net_gain_cm.values, net.values, 1e-9 * (1 + float(np.max(np.abs(net.values)))))
    f_tol = ctx.tol("fraction")
    chk.close("sum of scattered_fraction over channels", ds.scattered_fraction.sum("channel"),
              1.0, len(CHANNELS) * f_tol)
    chk.close("escape_fraction = scattered_fraction['air']", ds.escape_fraction.values,
              ds.scattered_fraction.sel(channel="air").values, 1e-12)
    for var in ("escape_fraction", "beta", "spontaneous_air_fraction"):
        v = ds[var].values
        chk.expect(np.all((v >= -f_tol) & (v <= 1 + f_tol)), f"{var} outside [0, 1]: {_fmt(v)}")
    pattern = ds.angular_pattern.values
    chk.expect(np.all(pattern >= -1e-12), "angular_pattern must be >= 0")
    chk.close("max of angular_pattern (normalized to 1)", pattern.max(axis=-1), 1.0, 1e-9)
    zero = ds.stripe_length_um.values == 0
    if zero.any():
        chk.close("lateral_output at stripe length 0", ds.lateral_output.values[..., zero],
                  0.0, 1e-12)


CONTRACT_CHECKS: dict[str, Callable[..., None]] = {
    "modes": check_modes_contract,
    "reflectance": check_reflectance_contract,
    "dipole_emission": check_dipole_contract,
    "outcoupling": check_outcoupling_contract,
}


def _contract_case(kind: str) -> None:
    @_case(f"contract.{kind}", kind, f"the '{kind}' result contract: dims, dtypes, units, "
           "attributes, requested coordinates and internal consistency")
    def _run(ctx: Context, chk: Checker) -> None:
        stack = CONTRACT_STACKS[kind]()
        params = {**CONTRACT_ANALYSES[kind], **ctx.analysis_params.get(kind, {})}
        analysis = _analysis(kind, **{k: v for k, v in params.items() if v is not None})
        ds = ctx.run(stack, analysis, chk)
        extra = (stack,) if kind == "modes" else ()
        CONTRACT_CHECKS[kind](ds, analysis, chk, ctx, *extra)


for _kind in CONTRACT_ANALYSES:
    _contract_case(_kind)


# ----- physics on analytic stacks ------------------------------------------------------------


def _mode(ds: xr.Dataset, pol: str, label: str, chk: Checker) -> xr.Dataset | None:
    sub = ds.isel(wavelength_nm=0).sel(polarization=pol)
    labels = [str(x) for x in sub.label.values]
    if not chk.expect(label in labels, f"{pol}: no mode labelled {label} (found "
                      f"{[x for x in labels if x]})"):
        return None
    return sub.isel(mode=labels.index(label))


@_case("physics.spp", "modes", "single metal/air interface: SPP0 (TM) at "
       "neff = sqrt(e1 e2 / (e1 + e2)) with its alpha and confinement, no TE mode")
def _spp(ctx: Context, chk: Checker) -> None:
    lam = 630.0
    stack = spp_stack()
    ds = ctx.run(stack, _analysis("modes", wavelength_nm=lam, fields=False, max_modes=4), chk)
    eps_m = complex(stack.indices(lam)[0, 0]) ** 2
    exact = analytic.spp_neff(eps_m, 1.0)
    n_te = int(ds.n_modes.sel(polarization="TE").values[0])
    chk.expect(n_te == 0, f"TE: {n_te} mode(s) found; a single metal/air interface guides none")
    n_tm = int(ds.n_modes.sel(polarization="TM").values[0])
    chk.expect(n_tm == 1, f"TM: {n_tm} modes found; expected exactly the SPP")
    mode = _mode(ds, "TM", "SPP0", chk)
    if mode is None:
        return
    chk.expect(str(mode.kind.values) == "plasmonic", f"SPP0 kind {mode.kind.values}")
    chk.expect(str(mode.branch.values) == "bound", f"SPP0 branch {mode.branch.values}")
    chk.close("SPP0 neff", complex(mode.neff), exact, ctx.tol("neff"))
    alpha = 4 * np.pi * exact.imag / (lam * 1e-7)
    chk.close("SPP0 alpha_cm", float(mode.alpha_cm), alpha, ctx.tol("alpha_cm", wavelength_nm=lam))
    # Hy = exp(-q |z|) on both sides, q = k0 sqrt(neff^2 - eps) (units of k0 below)
    eps = np.array([eps_m, 1.0, 1.0])
    q = np.sqrt(exact**2 - eps)
    kd = 2 * np.pi / lam * SPP_GAP_NM
    w = np.array([1.0, -math.expm1(-2 * q[1].real * kd), math.exp(-2 * q[1].real * kd)])
    w = w / (2 * np.array([q[0].real, q[1].real, q[1].real]))
    e_int = w * (np.abs(q) ** 2 + abs(exact) ** 2) / np.abs(eps) ** 2
    s_int = np.sum(w * (exact / eps).real)
    gamma_e = e_int / e_int.sum()
    gamma_p = np.sqrt(eps).real * e_int / s_int
    chk.close("SPP0 gamma_E [metal, gap, air]", mode.gamma_E.values, gamma_e, ctx.tol("gamma_E"))
    chk.close("SPP0 gamma_P [metal, gap, air]", mode.gamma_P.values, gamma_p, ctx.tol("gamma_P"))


@_case("physics.slab", "modes", "symmetric lossless slab: every TE/TM mode from the dispersion "
       "equation (brentq), neff, alpha = 0, gamma_E and gamma_P of core and claddings")
def _slab(ctx: Context, chk: Checker) -> None:
    s = SLAB
    ds = ctx.run(slab_stack(), _analysis("modes", wavelength_nm=s["wavelength_nm"],
                                         fields=False, max_modes=8), chk)
    for pol in ("TE", "TM"):
        exact = analytic.slab_modes(s["n_core"], s["n_clad"], s["thickness_nm"],
                                    s["wavelength_nm"], pol)
        n = int(ds.n_modes.sel(polarization=pol).values[0])
        chk.expect(n == len(exact), f"{pol}: {n} modes found, the slab guides {len(exact)} "
                   f"({', '.join(m.label for m in exact)})")
        for ex in exact:
            mode = _mode(ds, pol, ex.label, chk)
            if mode is None:
                continue
            chk.expect(str(mode.kind.values) == "photonic" and str(mode.branch.values) == "bound",
                       f"{ex.label}: kind/branch {mode.kind.values}/{mode.branch.values}, "
                       "expected photonic/bound")
            chk.close(f"{ex.label} neff", complex(mode.neff), ex.neff, ctx.tol("neff"))
            chk.close(f"{ex.label} alpha_cm", float(mode.alpha_cm), 0.0,
                      ctx.tol("alpha_cm", wavelength_nm=s["wavelength_nm"]))
            chk.close(f"{ex.label} gamma_E [substrate, core, superstrate]", mode.gamma_E.values,
                      ex.gamma_E, ctx.tol("gamma_E"))
            chk.close(f"{ex.label} gamma_P [substrate, core, superstrate]", mode.gamma_P.values,
                      ex.gamma_P, ctx.tol("gamma_P"))


@_case("physics.fresnel", "reflectance", "one air/glass interface from both sides, incl. "
       "total internal reflection: Fresnel R and T, A = 0")
def _fresnel(ctx: Context, chk: Checker) -> None:
    stack = _stack("conformance-fresnel", 1.5, [("air_layer", 1.0, 100.0)], 1.0)
    for incidence, angles, n_in, n_out in (("superstrate", [0.0, 45.0], 1.0, 1.5),
                                           ("substrate", [0.0, 30.0, 60.0], 1.5, 1.0)):
        ds = ctx.run(stack, _analysis("reflectance", wavelength_nm=[550.0, 650.0],
                                      angle_deg=angles, incidence=incidence), chk)
        for a in angles:
            for p in ("s", "p"):
                R, T = analytic.fresnel(n_in, n_out, a, p)
                sel = {"angle_deg": a, "polarization": p}
                chk.close(f"from the {incidence}, {a:g} deg, {p}: R", ds.R.sel(sel).values, R,
                          ctx.tol("R"))
                chk.close(f"from the {incidence}, {a:g} deg, {p}: T", ds.T.sel(sel).values, T,
                          ctx.tol("T"))
                chk.close(f"from the {incidence}, {a:g} deg, {p}: A", ds.A.sel(sel).values, 0.0,
                          ctx.tol("A"))


@_case("physics.film", "reflectance", "one lossless film on glass: Airy R and T versus "
       "wavelength, angle and polarization")
def _film(ctx: Context, chk: Checker) -> None:
    n_f, d = 2.1, 137.0
    stack = _stack("conformance-film", 1.5, [("film", n_f, d)], 1.0)
    lams, angles = [500.0, 630.0], [0.0, 40.0]
    ds = ctx.run(stack, _analysis("reflectance", wavelength_nm=lams, angle_deg=angles), chk)
    for lam in lams:
        for a in angles:
            for p in ("s", "p"):
                R, T = analytic.film_reflectance(1.0, n_f, d, 1.5, lam, a, p)
                sel = {"wavelength_nm": lam, "angle_deg": a, "polarization": p}
                chk.close(f"{lam:g} nm, {a:g} deg, {p}: R", float(ds.R.sel(sel)), R, ctx.tol("R"))
                chk.close(f"{lam:g} nm, {a:g} deg, {p}: T", float(ds.T.sel(sel)), T, ctx.tol("T"))


def _k_available(ds: xr.Dataset, chk: Checker) -> bool:
    """False when the dataset says it carries no angular spectrum (``attrs["K_available"] ==
    "no"``, e.g. a real-space full-wave backend): K must then be exactly zero, not numbers that
    look like a spectrum, and the checks of K against the exact answer are skipped (noted)."""
    if str(ds.attrs.get("K_available", "yes")).lower() != "no":
        return True
    chk.expect(np.all(ds.K.values == 0), "K_available = 'no' but K holds non-zero values")
    note = "K(u) not provided (attrs K_available = 'no'): its physics checks are skipped"
    if note not in chk.notes:
        chk.notes.append(note)
    return False


@_case("physics.homogeneous-dipole", "dipole_emission", "dipole in a homogeneous lossless "
       "medium: Purcell factor 1, half up and half down, K(u) of the bulk medium (unless the "
       "dataset declares K_available = 'no', when K must be zero)")
def _homogeneous(ctx: Context, chk: Checker) -> None:
    ds = ctx.run(homogeneous_stack(), _analysis("dipole_emission", wavelength_nm=630.0,
                                                u_max=2.0, u_points=201), chk)
    want = dict.fromkeys(CHANNELS, 0.0) | {"air": 0.5, "substrate": 0.5}
    u = ds.u.values
    for o in ORIENTATIONS:
        sub = ds.sel(orientation=o).isel(wavelength_nm=0)
        chk.close(f"{o}: Purcell factor", float(sub.purcell), 1.0, ctx.tol("purcell"))
        for c, v in want.items():
            chk.close(f"{o}: fraction '{c}'", float(sub.fraction.sel(channel=c)), v,
                      ctx.tol("fraction"))
        if not _k_available(ds, chk):
            continue
        near = u <= 0.9
        chk.close(f"{o}: K(u) for u <= 0.9", sub.K.values[near],
                  analytic.homogeneous_dipole_K(u[near], o), ctx.tol("K"))
        far = u >= 1.1
        chk.close(f"{o}: K(u) for u >= 1.1 (no evanescent power in a lossless bulk)",
                  sub.K.values[far], 0.0, ctx.tol("K"))


# ----- error behaviour ------------------------------------------------------------------------


def _expect_qdcavity_error(chk: Checker, what: str, call: Callable[[], Any]) -> str | None:
    try:
        result = call()
    except QdcavityError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001
        chk.failures.append(f"{what}: raised {type(exc).__name__}: {exc} -- a problem with the "
                            "input must raise a qdcavity.errors.QdcavityError subclass")
        return None
    chk.failures.append(f"{what}: no error raised (returned {type(result).__name__})")
    return None


@_case("errors.wavelength-range", None, "a tabulated material asked outside its data raises a "
       "QdcavityError (no extrapolation, no crash) for every declared analysis")
def _wavelength_range(ctx: Context, chk: Checker) -> None:
    stack = _stack("conformance-range", 1.45, [("metal", "Ag", 50.0), ("E", 1.7, 60.0)], 1.0,
                   gain_layer="E", emitter_layer="E")
    for kind in sorted(set(ctx.backend.analyses) & set(CONTRACT_ANALYSES)):
        analysis = _analysis(kind, **{**CONTRACT_ANALYSES[kind], "wavelength_nm": 50000.0})
        msg = _expect_qdcavity_error(
            chk, f"{kind} at 50000 nm (outside the Ag table)",
            lambda a=analysis: ctx.backend.run(stack, a, dict(ctx.options)))
        if msg is not None:
            chk.expect("Ag" in msg or "50000" in msg,
                       f"{kind}: the error should name the material or the wavelength: {msg!r}")


@_case("errors.undeclared-analysis", None, "run() asked for an analysis it does not declare "
       "raises a QdcavityError")
def _undeclared(ctx: Context, chk: Checker) -> None:
    missing = [k for k in ANALYSES if k not in ctx.backend.analyses]
    if not missing:
        raise NotApplicable("the backend declares every analysis")
    for kind in missing:
        analysis = _analysis(kind, **CONTRACT_ANALYSES.get(kind, {}))
        _expect_qdcavity_error(chk, f"run() with undeclared analysis '{kind}'",
                               lambda a=analysis: ctx.backend.run(modes_stack(), a,
                                                                  dict(ctx.options)))


@_case("errors.options", None, "an unknown backend option is rejected with a QdcavityError "
       "naming it (or ignored by a backend without options; never a crash)")
def _options(ctx: Context, chk: Checker) -> None:
    kind = sorted(set(ctx.backend.analyses) & set(CONTRACT_ANALYSES))[0]
    bogus = "no_such_option_conformance"
    stack = CONTRACT_STACKS[kind]()
    analysis = _analysis(kind, **CONTRACT_ANALYSES[kind])
    try:
        ds = ctx.backend.run(stack, analysis, {**ctx.options, bogus: 1})
    except QdcavityError as exc:
        chk.expect(bogus in str(exc), f"the error should name the option '{bogus}': {exc}")
        return
    except Exception as exc:  # noqa: BLE001
        chk.failures.append(f"unknown option: raised {type(exc).__name__}: {exc} (expected a "
                            "ConfigError naming the option)")
        return
    try:
        check_dataset(ds, kind, ctx.backend.name)
    except ContractError as exc:
        chk.failures.append(f"with an unknown option: {exc}")
    chk.notes.append(f"the unknown option '{bogus}' was ignored (allowed for a backend "
                     "without options)")


@_case("errors.host", None, "through the host: an unsupported analysis names the supported "
       "ones; an unknown backend name lists this one among the available", runs_solver=False)
def _host(ctx: Context, chk: Checker) -> None:
    if not ctx.from_default_registry:
        raise NotApplicable("the backend is not in the entry-point registry the host uses")
    from ..api import solve

    name = ctx.backend.name
    missing = [k for k in ANALYSES if k not in ctx.backend.analyses]
    if missing:
        analysis = _analysis(missing[0], **CONTRACT_ANALYSES.get(missing[0], {}))
        try:
            solve(modes_stack(), analysis, backend=name)
            chk.failures.append(f"solve(..., '{missing[0]}', backend='{name}') did not fail")
        except BackendError as exc:
            listed = [a for a in ctx.backend.analyses if a in str(exc)]
            chk.expect(len(listed) == len(ctx.backend.analyses),
                       f"the error should list {sorted(ctx.backend.analyses)}: {exc}")
    try:
        default_registry().get("no-such-backend-conformance")
        chk.failures.append("an unknown backend name did not fail")
    except BackendError as exc:
        chk.expect(f"{name}" in str(exc), f"the unknown-backend error should list '{name}': {exc}")


# ----- cache key ----------------------------------------------------------------------------


_KEY_SCRIPT = """
import json, sys
from qdcavity.analyses import make_analysis
from qdcavity.stack import Stack
from qdcavity.tasks import Task
d = json.load(sys.stdin)
a = d["analysis"]
task = Task(Stack.from_dict(d["stack"]), make_analysis(a.pop("kind"), **a), "x", d["backend"],
            d["options"])
print(task.key(d["version"]))
"""


@_case("cache-key", None, "the cache key (qdcavity.tasks.Task.key) is deterministic across "
       "rebuilds and processes, and changes with the backend version and its options",
       runs_solver=False)
def _cache_key(ctx: Context, chk: Checker) -> None:
    b = ctx.backend
    version = b.version
    chk.expect(b.version == version and isinstance(version, str),
               "version must be a fixed string")
    try:
        json.dumps(dict(ctx.options), sort_keys=True)
    except TypeError as exc:
        chk.failures.append(f"options {dict(ctx.options)!r} are not JSON-serializable, so "
                            f"their cache key is not deterministic: {exc}")
        return
    kind = sorted(set(b.analyses) & set(CONTRACT_ANALYSES))
    kind_ = kind[0] if kind else "modes"
    stack = CONTRACT_STACKS[kind_]()
    analysis = _analysis(kind_, **CONTRACT_ANALYSES[kind_])
    opts = dict(ctx.options)

    def task(s: Stack, a: Analysis, o: Mapping[str, Any]) -> Task:
        return Task(s, a, "x", b.name, dict(o))

    key = task(stack, analysis, opts).key(version)
    again = task(Stack.from_dict(stack.model_dump()),
                 make_analysis(kind_, **{k: v for k, v in analysis.model_dump().items()
                                         if k != "kind"}),
                 dict(reversed(list(opts.items())))).key(version)
    chk.expect(key == again, "the key changes when the same inputs are rebuilt")
    chk.expect(task(stack, analysis, opts).key(version + "+1") != key,
               "the key does not change with the backend version")
    chk.expect(task(stack, analysis, {**opts, "_conformance_probe": 1}).key(version) != key,
               "the key does not change with a result-changing option")
    quiet = next(iter(sorted(NON_RESULT_OPTIONS)))
    chk.expect(task(stack, analysis, {**opts, quiet: "elsewhere"}).key(version) == key,
               f"the key changes with '{quiet}', which never changes a result")
    payload = json.dumps({"stack": stack.model_dump(), "analysis": analysis.model_dump(),
                          "backend": b.name, "version": version, "options": opts})
    proc = subprocess.run([sys.executable, "-c", _KEY_SCRIPT], input=payload, text=True,
                          capture_output=True, timeout=120,
                          env={**_env(), "PYTHONHASHSEED": "12345"})
    if chk.expect(proc.returncode == 0, f"computing the key in a fresh process failed: "
                  f"{proc.stderr.strip()[-500:]}"):
        chk.expect(proc.stdout.strip() == key,
                   "the key differs in another process (hash seed): "
                   f"{proc.stdout.strip()} != {key}")


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


# ----- selection and running ----------------------------------------------------------------


def resolve_backend(backend: str | Backend, registry: Registry | None = None
                    ) -> tuple[Backend, Registry | None, bool]:
    """(backend object, registry it is looked up in, whether that is the entry-point one)."""
    from_default = registry is None
    reg = registry if registry is not None else default_registry()
    if isinstance(backend, str):
        return reg.get(backend), reg, from_default
    return backend, reg, from_default


def select_cases(backend: Backend, cases: Iterable[str] | str | None = None) -> list[Case]:
    """Cases to run: ``None`` = every case that applies to the backend's declared analyses;
    else ids, categories (``physics``) or glob patterns (``contract.*``). A selected case of an
    undeclared analysis is kept (and reported as skipped)."""
    declared = set(getattr(backend, "analyses", ()) or ())
    if cases is None:
        return [c for c in CASES.values() if c.analysis is None or c.analysis in declared]
    patterns = [cases] if isinstance(cases, str) else list(cases)
    out: list[Case] = []
    for pat in patterns:
        hits = [c for c in CASES.values()
                if fnmatch.fnmatchcase(c.id, pat) or c.category == pat]
        if not hits:
            raise ConfigError(f"no conformance case matches '{pat}'; cases: "
                              f"{', '.join(CASES)}", field="cases")
        out += [c for c in hits if c not in out]
    return out


def run_case(case: Case, ctx: Context) -> CaseResult:
    start = time.perf_counter()
    chk = Checker()

    def done(status: str, message: str = "") -> CaseResult:
        return CaseResult(case.id, status, message, chk.notes,
                          time.perf_counter() - start)

    if case.analysis is not None and case.analysis not in ctx.backend.analyses:
        return done("skipped", f"backend '{ctx.backend.name}' does not declare "
                               f"'{case.analysis}' (it declares "
                               f"{', '.join(sorted(ctx.backend.analyses))})")
    if case.runs_solver:
        try:
            status = ctx.availability()
        except Exception as exc:  # noqa: BLE001
            return done("failed", f"availability() raised {type(exc).__name__}: {exc}")
        if not status.available:
            return done("skipped", f"backend '{ctx.backend.name}' is unavailable here: "
                                   f"{status.reason}")
    try:
        case.func(ctx, chk)
    except NotApplicable as exc:
        return done("skipped", f"not applicable: {exc}")
    except _Abort:
        pass
    except QdcavityError as exc:
        chk.failures.append(f"raised {type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001  report, never crash the suite
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        chk.failures.append(f"raised {type(exc).__name__}: {exc} "
                            f"(at {tb.filename.rsplit('/', 1)[-1]}:{tb.lineno})")
    if chk.failures:
        return done("failed", "\n".join(chk.failures))
    return done("passed")


def make_context(backend: str | Backend, options: Mapping[str, Any] | None = None,
                 registry: Registry | None = None,
                 analysis_params: Mapping[str, Mapping[str, Any]] | None = None) -> Context:
    obj, reg, from_default = resolve_backend(backend, registry)
    return Context(obj, dict(options or {}), reg, from_default,
                   analysis_params={k: dict(v) for k, v in (analysis_params or {}).items()})


def run_conformance(backend: str | Backend, cases: Iterable[str] | str | None = None, *,
                    options: Mapping[str, Any] | None = None,
                    registry: Registry | None = None,
                    analysis_params: Mapping[str, Mapping[str, Any]] | None = None
                    ) -> ConformanceReport:
    """Run the selected cases (default: all that apply) and return the report.

    ``backend``: a registered name (looked up in the entry-point registry, or ``registry``) or a
    backend object. ``options``: the backend options every run uses (the tolerances the backend
    declares must hold at these options). ``analysis_params``: per analysis kind, parameters
    of the ``contract.*`` cases' analyses to replace (None removes one), for a backend that
    answers an analysis only in some configurations (e.g. Meep's outcoupling: the 2D particle
    model, not a given ``alpha_sca_cm``); the contract itself is checked in full.
    """
    ctx = make_context(backend, options, registry, analysis_params)
    selected = select_cases(ctx.backend, cases)
    return ConformanceReport(ctx.backend.name, [run_case(c, ctx) for c in selected])


def assert_conforms(backend: str | Backend, cases: Iterable[str] | str | None = None, *,
                    options: Mapping[str, Any] | None = None,
                    registry: Registry | None = None) -> ConformanceReport:
    """:func:`run_conformance`, raising AssertionError with the full report on any failure."""
    report = run_conformance(backend, cases, options=options, registry=registry)
    report.raise_if_failed()
    return report
