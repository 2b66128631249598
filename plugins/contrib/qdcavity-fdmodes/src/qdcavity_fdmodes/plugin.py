"""The ``fdmodes`` backend: qdcavity's ``modes`` analysis on the finite-difference solver.

qdcavity finds this module through the entry point ``[project.entry-points.qdcavity]
fdmodes = "qdcavity_fdmodes.plugin"`` and calls its :func:`qdcavity_backends` hook; nothing in
qdcavity imports it. The numerics live in :mod:`qdcavity_fdmodes.solver` (pure numpy/scipy);
this module maps a :class:`~qdcavity.stack.Stack` onto it, decides which eigenvalues are modes,
classifies and labels them exactly like the TMM backend (so ``qdcavity compare`` lines modes up
by label), derives gamma_P and the field components, and builds the contract dataset with
:func:`qdcavity.modeset.modes_dataset`.

Which eigenvalues are modes
---------------------------
The discretised operator also has eigenvalues of the truncated radiation continuum (cladding-box
and PML modes). A candidate is kept when

1. it lies in the region the TMM backend searches: Re(neff) above the largest index of the
   claddings that radiate freely (not shielded by a metal; if all are shielded, the smallest),
   -0.05 <= Im(neff) <= max(1, 1.5 max Im(plasmon estimate) + 0.25);
2. it does not depend on the truncation: re-solved with two physical claddings long enough for
   its own tails (8 field decay lengths, 2 to 8 wavelengths, and 1.37 times that) and two
   different PMLs, it moves by less than ``stability_tol`` (relative); continuum eigenvalues
   move by ~1e-3 or more, modes by ~1e-7.

Candidates are the ``candidates`` eigenvalues nearest to the largest dielectric index and the
eigenvalue nearest to every planar-plasmon estimate (single interfaces, thin films) of the
stack. Survivors are refined on ``levels`` nested grids and Richardson-extrapolated.

Classification (docs/conventions.md, same rules as the TMM backend): each cladding uses the
outgoing sheet (Re kz >= 0) when it is dielectric and Re(neff) < Re(N_c), else the proper sheet
(Im kz >= 0); ``leaky`` if a cladding field grows, ``substrate-radiating`` if it carries power
away while decaying, else ``bound``; ``plasmonic`` when Re(neff) exceeds the largest Re n of the
dielectric layers, else ``photonic``; labels TE0.., TM0.. (photonic), SPP0.. (plasmonic), with a
``-leaky`` infix for leaky modes, numbered per polarization by decreasing Re(neff).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field
from qdcavity.analyses import Analysis, ModesAnalysis
from qdcavity.backend import Backend
from qdcavity.errors import QdcavityError, SolverError
from qdcavity.hookspecs import hookimpl
from qdcavity.modeset import (
    ModeRecord,
    field_grid,
    guided_re_floor,
    mode_branch,
    mode_labels,
    mode_material_kind,
    modes_dataset,
    normalize_to_peak_e,
    plasmon_estimates,
)
from qdcavity.stack import Stack
from qdcavity.validation import validated
from threadpoolctl import threadpool_limits

from . import __version__

IM_MIN = -0.05  # lowest Im(neff) kept (slightly amplified modes of a gain layer stay in)
EDGE_MARGIN = 1e-5  # distance kept from the radiating-cladding light line
FIELDS = {"TE": ("Ey",), "TM": ("Hy", "Ex", "Ez")}


class FDModesOptions(BaseModel):
    """Options of the ``fdmodes`` backend (a study's ``backend_options``); unknown keys are
    errors. Every option changes results, so all of them enter the cache key."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    points_per_wavelength: float = Field(
        30.0, ge=8, le=1000, allow_inf_nan=False,
        description="cells per local wavelength on the coarsest grid")
    levels: int = Field(3, ge=1, le=3, description="nested grids for Richardson extrapolation")
    candidates: int | None = Field(
        None, ge=2, le=1000,
        description="eigenvalues examined near the largest dielectric index (default: from the "
                    "mode count the stack's optical thickness allows, at least 16)")
    stability_tol: float = Field(
        1e-4, gt=0, lt=0.1, allow_inf_nan=False,
        description="largest relative neff change under a different truncation for a mode")


def parse_options(options: Mapping[str, Any]) -> FDModesOptions:
    return validated(lambda: FDModesOptions.model_validate(dict(options)),
                     "fdmodes backend options")


class FDModesBackend(Backend):
    """Finite-difference 1D eigenmodes: non-uniform grid with every interface on a node,
    PML-terminated claddings, complex permittivity, Richardson extrapolation."""

    name: ClassVar[str] = "fdmodes"
    version: ClassVar[str] = __version__
    analyses: ClassVar[frozenset[str]] = frozenset({"modes"})
    description: ClassVar[str] = (
        "finite-difference 1D eigenmode solver (third-party plugin qdcavity-fdmodes)")
    # Agreement with the exact (TMM) answer at the default options, measured on the four
    # paper stacks and the conformance suite's analytic stacks (README.md): worst neff error
    # 2e-6 (the Ag/Si plasmon), gammas 1e-5 (TM modes near metals).
    tolerances: ClassVar[Mapping[str, float]] = {
        "neff": 2e-5, "alpha_cm": 5.0, "gamma_E": 2e-4, "gamma_P": 5e-4,
        "modal_gain_cm": 0.5, "net_gain_cm": 5.0,
    }

    def solver_versions(self) -> dict[str, str]:
        import scipy

        return {"qdcavity-fdmodes": __version__, "numpy": np.__version__,
                "scipy": scipy.__version__}

    def run(self, stack: Stack, analysis: Analysis, options: Mapping[str, Any]) -> xr.Dataset:
        opts = parse_options(options)
        if not isinstance(analysis, ModesAnalysis):
            raise SolverError(f"backend 'fdmodes' does not answer '{analysis.kind}'; it answers "
                              f"{', '.join(sorted(self.analyses))}")
        return solve_modes(stack, analysis, opts)


@hookimpl
def qdcavity_backends() -> list[FDModesBackend]:
    return [FDModesBackend()]


# ----- the modes analysis ----------------------------------------------------------------


def solve_modes(stack: Stack, analysis: ModesAnalysis, opts: FDModesOptions) -> xr.Dataset:
    lams = list(analysis.wavelength_nm)
    zero_k = [stack.gain_layer] if stack.gain_layer and analysis.gain_layer_k == "bleached" \
        else []
    n_all = stack.indices(lams, zero_k=zero_k)
    d = stack.thicknesses_nm
    interfaces = stack.interfaces_nm
    z = field_grid(interfaces, analysis.field_padding_nm, analysis.field_points) \
        if analysis.fields else np.empty(0)
    records: dict[tuple[float, str], list[ModeRecord]] = {}
    errors: dict[tuple[float, str], list[float]] = {}
    # one BLAS thread: ARPACK on short vectors with OpenBLAS threads on a loaded 2-core machine
    # took 9-40 s per TE-DIZO wavelength instead of 1.2 s (results do not depend on it)
    with threadpool_limits(limits=1, user_api="blas"):
        for lam, n in zip(lams, n_all, strict=True):
            for pol in analysis.polarizations:
                modes = find_modes(n, d, lam, pol, opts)
                records[(lam, pol)] = [_record(n, interfaces, lam, m, z) for m in modes]
                errors[(lam, pol)] = [m.error for m in modes]
    ds = modes_dataset(records, lams, analysis.polarizations, stack.media_names, z,
                       stack.gain_layer, analysis.material_gain_cm, analysis.max_modes)
    err = np.full(ds.neff.shape, np.nan)
    for i, lam in enumerate(lams):
        for j, pol in enumerate(analysis.polarizations):
            found = errors[(lam, pol)][:analysis.max_modes]
            err[i, j, :len(found)] = found
    ds["neff_error"] = (ds.neff.dims, err, {
        "units": "1", "long_name": "Richardson error estimate of neff (last two levels)"})
    ds.attrs["gain_layer_k"] = analysis.gain_layer_k
    ds.attrs["method"] = (
        "finite differences on a non-uniform grid with interfaces on nodes, PML claddings, "
        f"{opts.levels}-level Richardson extrapolation, {opts.points_per_wavelength:g} points "
        "per wavelength (qdcavity-fdmodes)")
    return ds


class _Found:
    """A kept eigenmode with its classification (mirrors the TMM backend's Mode)."""

    def __init__(self, fd: Any, pol: str, kind: str, branch: str, sheets: dict[str, bool],
                 kz: dict[str, complex]) -> None:
        self.fd = fd
        self.neff = complex(fd.neff)
        self.polarization = pol
        self.kind = kind
        self.branch = branch
        self.outgoing = sheets
        self.kz = kz
        self.label = ""
        self.error = float(getattr(fd, "error", float("nan")))
        self.ratio = float("nan")  # int |E|^2 / int Re(E x H*)_x, set by find_modes


def _solver():  # late import: keeps `qdcavity backends` fast and isolates solver problems
    from . import solver

    return solver


def search_bounds(n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float
                  ) -> tuple[float, float, float]:
    """(Re lower bound, Im lower bound, Im upper bound) of the modes reported."""
    eps = n * n
    lo = guided_re_floor(eps)
    est = plasmon_estimates(eps, 2 * math.pi / wavelength_nm * np.asarray(d_nm))
    im_hi = max(1.0, 1.5 * max((abs(x.imag) for x in est), default=0.0) + 0.25)
    return max(float(lo), 1e-3) + EDGE_MARGIN, IM_MIN, im_hi


def decay_length(eps: np.ndarray, neff: complex, k0: float) -> float:
    """Longest 1 / Im(kz) of the two claddings on the mode's sheets (nm; inf if one does not
    decay)."""
    longest = 0.0
    for j in (0, eps.size - 1):
        s = complex(np.sqrt(eps[j] - neff * neff))
        outgoing = eps[j].real > 0 and np.sqrt(eps[j]).real > neff.real
        if not outgoing and s.imag < 0:
            s = -s
        longest = max(longest, math.inf if s.imag <= 0 else 1.0 / (k0 * s.imag))
    return longest


def candidate_count(n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float, lo: float) -> int:
    """Eigenvalues to examine: 1.3 x the guided-mode count of the layers' optical thickness
    above the search floor (sum of 2 d sqrt(n^2 - lo^2) / lambda) + 10, at least 16."""
    eps = (n[1:-1] * n[1:-1]).real
    count = float(np.sum(2 * d_nm * np.sqrt(np.clip(eps - lo * lo, 0, None)) / wavelength_nm))
    return max(16, math.ceil(1.3 * count) + 10)


def _dedupe(values: Sequence[complex], tol: float) -> list[complex]:
    out: list[complex] = []
    for v in values:
        if all(abs(v - w) > tol * (1 + abs(w)) for w in out):
            out.append(v)
    return out


def find_modes(n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float, polarization: str,
               opts: FDModesOptions) -> list[_Found]:
    """The modes of one polarization at one wavelength, classified, labelled, sorted by
    decreasing Re(neff)."""
    fd = _solver()
    lam = float(wavelength_nm)
    k0 = 2 * math.pi / lam
    eps = n * n
    lo, im_lo, im_hi = search_bounds(n, d_nm, lam)

    def inside(x: complex, slack: float = 0.0) -> bool:
        return x.real > lo - slack and im_lo - slack <= x.imag <= im_hi + slack

    ppw = opts.points_per_wavelength
    grid_a = fd.FDGrid(points_per_wavelength=ppw, levels=1, cladding_nm=2.0 * lam,
                       pml_nm=0.5 * lam, pml_phi_nm=2.0 * lam)

    def stable(c: complex) -> complex | None:
        """The candidate re-solved with two claddings long enough for its own tails (8 decay
        lengths, 2-8 wavelengths) and two PMLs: a mode moves by round-off, the truncated
        continuum by ~1e-3. Returns the first re-solve, or None."""
        length = float(np.clip(8 * decay_length(eps, c, k0), 2 * lam, 8 * lam))
        one, two = (fd.solve_modes_fd(n, d_nm, lam, polarization, guesses=[c], grid=fd.FDGrid(
            points_per_wavelength=ppw, levels=1, cladding_nm=f * length, pml_nm=p * lam,
            pml_phi_nm=phi * lam))[0].neff for f, p, phi in ((1.0, 0.5, 2.0), (1.37, 0.8, 3.1)))
        ok = abs(two - one) <= opts.stability_tol * (1 + abs(one))
        return complex(one) if ok and abs(one - c) < 1e-2 * (1 + abs(c)) else None

    try:
        count = opts.candidates or candidate_count(n, d_nm, lam, lo)
        cands = [m.neff for m in fd.solve_modes_fd(n, d_nm, lam, polarization,
                                                   n_modes=count, grid=grid_a)]
        extra = [e for e in plasmon_estimates(eps, k0 * np.asarray(d_nm)) if inside(e, 0.5)]
        if extra:
            cands += [m.neff for m in fd.solve_modes_fd(n, d_nm, lam, polarization,
                                                        guesses=extra, grid=grid_a)]
        cands = _dedupe([complex(c) for c in cands if inside(complex(c), 0.02)], 1e-9)
        if not cands:
            return []
        kept_cands = [x for x in (stable(c) for c in cands) if x is not None]
        kept_cands = _dedupe(kept_cands, 1e-9)
        if not kept_cands:
            return []
        grid = fd.FDGrid(points_per_wavelength=ppw, levels=opts.levels)
        refined = fd.solve_modes_fd(n, d_nm, lam, polarization, guesses=kept_cands, grid=grid)
    except QdcavityError:
        raise
    except Exception as exc:  # noqa: BLE001  numerical failure: one clear solver error
        raise SolverError(f"fdmodes: the FD eigen-solve failed at {lam:g} nm, "
                          f"{polarization}: {type(exc).__name__}: {exc}") from exc
    kept: list[tuple[Any, complex]] = []
    for m, guess in zip(refined, kept_cands, strict=True):
        x = complex(m.neff)
        if not inside(x) or not np.isfinite(x):
            continue
        err = float(getattr(m, "error", 0.0) or 0.0)
        tol = max(1e-7 * (1 + abs(x)), 3 * err if np.isfinite(err) else 0.0)
        if all(abs(x - complex(k.neff)) > tol for k, _ in kept):
            kept.append((m, guess))
    modes = [_classify(eps, m, polarization.upper(), k0) for m, _ in kept]
    interfaces = np.concatenate([[0.0], np.cumsum(d_nm)])
    for mode, (_, guess) in zip(modes, kept, strict=True):
        mode.ratio = power_ratio(mode, mode.fd, eps, interfaces, k0, lam)
        if mode.polarization == "TM" and opts.levels >= 2:
            # Richardson on the finest two grids: the same grids (same guess) one level less.
            try:
                half = fd.solve_modes_fd(n, d_nm, lam, polarization, guesses=[guess],
                                         grid=fd.FDGrid(points_per_wavelength=ppw,
                                                        levels=opts.levels - 1))[0]
            except Exception as exc:  # noqa: BLE001
                raise SolverError(f"fdmodes: the FD eigen-solve failed at {lam:g} nm, "
                                  f"{polarization}: {type(exc).__name__}: {exc}") from exc
            if abs(complex(half.neff) - mode.neff) < 1e-3 * (1 + abs(mode.neff)):  # same mode
                coarse = power_ratio(mode, half, eps, interfaces, k0, lam)
                mode.ratio = (4 * mode.ratio - coarse) / 3
    return _label(modes)


def _classify(eps: np.ndarray, m: Any, pol: str, k0: float) -> _Found:
    neff = complex(m.neff)
    nn = neff * neff
    nidx = np.sqrt(eps)
    sheets, kap = {}, {}
    for name, j in (("substrate", 0), ("superstrate", eps.size - 1)):
        out = bool(eps[j].real > 0 and nidx[j].real > neff.real)
        s = complex(np.sqrt(eps[j] - nn))
        if not out and s.imag < 0:
            s = -s
        sheets[name], kap[name] = out, s
    branch = mode_branch({"substrate": eps[0], "superstrate": eps[-1]}, kap, neff)
    kind = mode_material_kind(eps, neff)
    return _Found(m, pol, kind, branch, sheets, {c: k0 * k for c, k in kap.items()})


def _label(modes: list[_Found]) -> list[_Found]:
    """Labels of one polarization's modes (the rule every backend shares)."""
    labels = mode_labels([m.neff for m in modes], [m.polarization for m in modes],
                         [m.kind for m in modes], [m.branch for m in modes])
    for m, label in zip(modes, labels, strict=True):
        m.label = label
    return sorted(modes, key=lambda m: -m.neff.real)


# ----- gamma_P and field components from the FD profile -----------------------------------


def _media_of(z: np.ndarray, interfaces: np.ndarray) -> np.ndarray:
    """Medium index (0 = substrate .. L+1 = superstrate) of points; a point on an interface
    belongs to the upper medium (as in the TMM backend's profiles)."""
    return np.searchsorted(interfaces, z, side="right")


def _tail(k: complex, window: float) -> float:
    """int_0^inf |exp(i k s)|^2 ds, or over ``window`` when the field does not decay."""
    ki = k.imag
    if ki > 0:
        return 1.0 / (2 * ki)
    if ki == 0:
        return window
    return math.expm1(-2 * ki * window) / (-2 * ki)


def power_ratio(mode: _Found, fdmode: Any, eps: np.ndarray, interfaces: np.ndarray,
                k0: float, wavelength_nm: float) -> float:
    """int_all |E|^2 dz / int_all Re(E x H*)_x dz of an FD profile (tails analytic).

    TE: exactly 1 / Re(neff). TM: |E|^2 = (|dHy/dz|^2 / k0^2 + |neff|^2 |Hy|^2) / |eps|^2 and
    Re(E x H*)_x = Re(neff / eps) |Hy|^2 (vacuum impedance 1), cell by cell (trapezoid for
    |Hy|^2, midpoint for the derivative; second order, extrapolated by the caller).
    """
    neff = mode.neff
    if mode.polarization == "TE":
        return 1.0 / neff.real
    z = np.asarray(fdmode.z, dtype=float)
    psi = np.asarray(fdmode.field, dtype=complex)
    h = np.diff(z)
    med = _media_of(0.5 * (z[:-1] + z[1:]), interfaces)
    e = eps[med]
    a2 = np.abs(psi) ** 2
    avg = 0.5 * (a2[:-1] + a2[1:])
    dpsi = np.diff(psi) / h
    e_int = float(np.sum((np.abs(dpsi) ** 2 / k0**2 + abs(neff) ** 2 * avg) / np.abs(e) ** 2 * h))
    s_int = float(np.sum((neff / e).real * avg * h))
    for name, j, node in (("substrate", 0, 0), ("superstrate", eps.size - 1, -1)):
        kz = mode.kz[name]
        t = a2[node] * _tail(kz, wavelength_nm)
        e_int += t * (abs(kz) ** 2 / k0**2 + abs(neff) ** 2) / abs(eps[j]) ** 2
        s_int += t * (neff / eps[j]).real
    return e_int / s_int


def _profile(mode: _Found, eps: np.ndarray, interfaces: np.ndarray, k0: float,
             z_out: np.ndarray) -> dict[str, np.ndarray]:
    """psi (Ey or Hy) and its derivative on ``z_out``: linear inside the FD domain (derivative
    of the cell holding the point), analytic cladding exponentials beyond it."""
    z = np.asarray(mode.fd.z, dtype=float)
    psi = np.asarray(mode.fd.field, dtype=complex)
    out = np.interp(z_out, z, psi.real) + 1j * np.interp(z_out, z, psi.imag)
    cell = np.clip(np.searchsorted(z, z_out, side="right") - 1, 0, z.size - 2)
    dpsi = (np.diff(psi) / np.diff(z))[cell]
    below, above = z_out < z[0], z_out > z[-1]
    kb, kt = mode.kz["substrate"], mode.kz["superstrate"]
    out[below] = psi[0] * np.exp(1j * kb * (z[0] - z_out[below]))
    dpsi[below] = -1j * kb * out[below]
    out[above] = psi[-1] * np.exp(1j * kt * (z_out[above] - z[-1]))
    dpsi[above] = 1j * kt * out[above]
    tm = mode.polarization == "TM"
    if tm:
        e_med = eps[_media_of(z_out, interfaces)]
        comps = {"Hy": out, "Ex": -1j * dpsi / (k0 * e_med), "Ez": -mode.neff * out / e_med}
        e_names: tuple[str, ...] = ("Ex", "Ez")
    else:
        comps = {"Ey": out}
        e_names = ("Ey",)
    comps = normalize_to_peak_e(comps, e_names)
    return {k: comps[k] for k in FIELDS[mode.polarization]}


def _record(n: np.ndarray, interfaces: np.ndarray, wavelength_nm: float, mode: _Found,
            z: np.ndarray) -> ModeRecord:
    eps = n * n
    k0 = 2 * math.pi / wavelength_nm
    gamma_e = np.asarray(mode.fd.gamma_E, dtype=float)
    gamma_p = np.sqrt(eps).real * gamma_e * mode.ratio
    fields = _profile(mode, eps, interfaces, k0, z) if z.size else {}
    return ModeRecord(neff=mode.neff, label=mode.label, kind=mode.kind, branch=mode.branch,
                      gamma_E=gamma_e, gamma_P=gamma_p, fields=fields)
