"""Guided modes of a planar multilayer: global complex root finding on the TMM dispersion function.

Pure-numpy kernels (inputs are arrays, no Stack objects). Conventions (docs/conventions.md):

* time dependence exp(-i omega t); complex index N = n + i k with k > 0 absorbing; eps = N**2;
* z = 0 at the substrate top; media ``n = [substrate, layer_1 (bottom) .. layer_L, superstrate]``,
  thicknesses ``d_nm = [d_1 .. d_L]``; vacuum wavelength in nm, k0 = 2 pi / lambda;
* fields ~ exp(i (beta x - omega t)), ``neff = beta / k0`` with Im(neff) >= 0 for a decaying mode,
  ``alpha_cm = 4 pi Im(neff) / lambda`` (intensity attenuation, lambda in cm);
* TE: psi = Ey; TM: psi = Hy (vacuum impedance 1).

Dispersion function
-------------------
With zeta = k0 z, kappa_j = sqrt(eps_j - neff**2), p_j = 1 (TE) or eps_j (TM), psi and
phi = (1/p) dpsi/dzeta are continuous at every interface; a layer maps (psi, phi) by
``[[cos t, p sin t / kappa], [-kappa sin t / p, cos t]]`` with t = kappa k0 d: an entire function of
kappa**2, hence of neff (no branch cut, no pole from any layer). The substrate field is
psi = exp(-i kappa_s zeta) (z < 0), the superstrate field psi = exp(+i kappa_c (zeta - zeta_top)),
and the mode condition is::

    f(neff) = phi_top - i (kappa_c / p_c) psi_top = 0,   (psi, phi)_0 = (1, -i kappa_s / p_s).

f is evaluated stably as ``log f``: each layer matrix is applied as exp(-i t) * Mtilde with
Im t >= 0, so Mtilde only contains the bounded exp(2 i t) and the factor exp(-i t) is added to the
logarithm (state renormalised every 16 layers). Because f is even in every layer kappa, the
pointwise branch choice for the layers is exact; nothing overflows. (Forward shooting is accurate
for the zeros: a rounding error made where the field is largest is amplified exactly like the
signal; the FD solver agrees to ~1e-10 on the paper stacks, 9.32 + 0.84i Ag/Si plasmon included.)

Cladding branches (Riemann sheets)
----------------------------------
``proper``: Im kappa_c >= 0 (field decays away from the stack); ``outgoing``: Re kappa_c >= 0
(power leaves the stack; principal square root). Both agree just above the real neff axis of the
physical problem. The search rectangle is split at Re(neff) = Re(N_c) for every cladding whose
index lies inside it (e.g. Si under a 100 nm Ag mirror): left of the line the cladding uses the
``outgoing`` sheet (the branch continuous from the physical radiation condition: substrate
radiating modes), right of it the ``proper`` sheet (evanescent, bound). The outgoing sheet's cut
(N_c**2 - neff**2 < 0) lies right of Re(N_c) and the proper sheet's (N_c**2 - neff**2 > 0) left of
it, and claddings with Re(N_c) below the rectangle use the proper sheet, so on each sub-rectangle
f is analytic with no pole: the argument principle counts exactly the modes. A mode found on the
outgoing sheet whose cladding field grows (Im kz_c < 0) is classified "leaky" (e.g. lossy modes
radiating into a lossless substrate); one whose field still decays (absorbing substrate, e.g. Si
under Ag) "substrate-radiating".

Root finding
------------
Argument principle on rectangles. ``log f`` and ``f'/f`` (forward-differentiated recursion) are
sampled along every edge; a sample interval of length h is accepted only when the step of
log f is small (phase <= 1 rad, log|f| <= 1), |h f'/f| <= 1 at both ends, and the step equals
the trapezoid integral of f'/f to 0.3. A phase that turns by 2 pi k between two samples -- which
no midpoint probe can see for even k -- fails the last two tests, and so does an interval close
to a zero. (This matters near the Ag/Si surface-plasmon resonance, eps_Si + eps_Ag ~ 0 at
560-600 nm, where the search rectangle reaches Im(neff) ~ 15-25 and arg f turns by ~2 pi per
unit of Im(neff).) Rejected intervals are cut into as many pieces as |h f'/f| asks for, and
edges passing near a cladding branch point get samples graded towards it, so refinement takes
two or three vectorised passes. A coarse grid of square cells is subdivided until each cell
holds at most 5 zeros; these are estimated from contour moments (Delves-Lyness, Newton
identities; moments by Gauss quadrature of the Hermite interpolant of log f) and polished by
Newton's method with the exact f'/f; a cell is accepted only when as many distinct converged
roots lie inside as its winding number says, else it is split again. Zeros closer than 1e-6
relative (degenerate to round-off, e.g. the two plasmons of a Si film between thick Ag films)
are returned once with a ``multiplicity`` (warning). All evaluations are vectorised over points,
polarizations, sheets and layers (TE + TM of a paper stack in one search: ~2-3.5 ms).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from qdcavity.modeset import (
    guided_re_floor,
    mode_branch,
    mode_labels,
    mode_material_kind,
    plasmon_estimates,
    radiating_claddings,
)

__all__ = [
    "Mode",
    "SearchRegion",
    "continue_modes",
    "count_modes",
    "dispersion_log",
    "find_modes",
    "search_region",
]

_PH_MAX = 1.0  # max phase step between edge samples (rad)
_MAG_MAX = 1.0  # max step of log|f| between edge samples
_LIN_MAX = 1.0  # max |h f'/f| at either end of a sample interval
_MAX_PIECES = 64  # most pieces a rejected sample interval is cut into in one pass
_TRAP_TOL = 0.3  # max |step of log f - trapezoid integral of f'/f| over a sample interval
_MAX_DL = 5  # largest zero count solved directly from contour moments
_N0 = 8  # initial intervals per edge
_MAX_LEVELS = 60
_EDGE_MARGIN = 1e-5  # distance of the search rectangle from a cladding branch point


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class SearchRegion:
    """Rectangle of the complex neff plane searched for modes.

    ``splits`` are the Re(N_c) of claddings whose branch point lies inside the rectangle; left of
    such a line that cladding uses the outgoing sheet, right of it the proper one.
    """

    re_min: float
    re_max: float
    im_min: float
    im_max: float
    splits: tuple[float, ...] = ()


@dataclass(frozen=True)
class Mode:
    """One guided (or leaky) mode at one wavelength.

    ``kz_branch`` maps "substrate"/"superstrate" to the sheet used ("proper": Im kz >= 0,
    "outgoing": Re kz >= 0) and ``kz_cladding`` gives kz = k0 sqrt(N_c**2 - neff**2) on that sheet
    (1/nm). ``kind_branch`` is "bound", "substrate-radiating" (a cladding -- in practice the
    substrate -- carries power away, Re kz > 0 with Re(N_c^2 - neff^2) > 0, while the field decays)
    or "leaky" (growing cladding field, Im kz < 0) as in docs/conventions.md,
    ``kind_material`` "photonic" or "plasmonic". ``label``: TE0, TE1.. / TM0.. for photonic
    non-leaky modes (highest Re neff first), SPP0.. for plasmonic non-leaky modes, with a
    "-leaky" infix for leaky ones (e.g. "TE-leaky0", "SPP-leaky1"). ``multiplicity`` > 1 marks
    zeros closer than ~1e-6 relative that could not be separated (degenerate modes, e.g. the two
    plasmons of a thick Ag/Si/Ag sandwich, split by ~exp(-k0 neff d) below round-off).
    """

    neff: complex
    polarization: str
    wavelength_nm: float
    alpha_cm: float
    kind_material: str
    kind_branch: str
    kz_branch: dict[str, str]
    kz_cladding: dict[str, complex]
    label: str = ""
    multiplicity: int = 1


# --------------------------------------------------------------------------- dispersion function


def _sqrt_sheet(w: np.ndarray, outgoing: np.ndarray | bool) -> np.ndarray:
    """sqrt(w) on the outgoing (Re >= 0) or proper (Im >= 0) sheet."""
    s = np.sqrt(w)
    proper = np.where(s.imag < 0, -s, s)
    return np.where(outgoing, s, proper)


def _sqrt_proper(w: np.ndarray) -> np.ndarray:
    """sqrt(w) with Im >= 0 (i * principal sqrt(-w))."""
    return 1j * np.sqrt(-w)


def _expm1_pair(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(exp(x) - 1, (exp(x) - 1) / x), the latter accurate near x = 0."""
    em1 = np.expm1(x)
    with np.errstate(all="ignore"):
        g = em1 / x
    small = np.abs(x) < 1e-4
    if small.any():
        xs = x[small]
        g[small] = 1 + xs * (0.5 + xs * (1 / 6 + xs / 24))
    return em1, g


@dataclass(frozen=True)
class _Ctx:
    eps: np.ndarray  # (L+2,) complex permittivities
    kd: np.ndarray  # (L,) k0 * d
    k0: float


def _ctx(n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float) -> _Ctx:
    n = np.asarray(n, dtype=complex).ravel()
    d = np.asarray(d_nm, dtype=float).ravel()
    if n.size != d.size + 2:
        raise ValueError(f"n has {n.size} media but d_nm has {d.size} layers (need L+2 and L)")
    if not (np.isfinite(wavelength_nm) and wavelength_nm > 0):
        raise ValueError("wavelength_nm must be > 0")
    k0 = 2 * math.pi / float(wavelength_nm)
    return _Ctx(eps=n * n, kd=k0 * d, k0=k0)


def _kappa_layers(kap2: np.ndarray) -> np.ndarray:
    """sqrt(kap2) with Im >= 0 (ties either way: f is even in every layer kappa). Large arrays
    go through real operations (numpy's complex sqrt is ~2x slower than hypot + real sqrt)."""
    if kap2.size < 2048:
        s = np.sqrt(kap2)
        return np.where(s.imag < 0, -s, s)
    a, b = kap2.real, kap2.imag
    t = np.sqrt(0.5 * (np.hypot(a, b) + np.abs(a)))
    o = np.abs(b) / np.where(t > 0, 2 * t, 1.0)
    pos = a >= 0
    out = np.empty_like(kap2)
    out.real = np.copysign(np.where(pos, t, o), b)
    out.imag = np.where(pos, o, t)
    return out


def _propagate(ct: np.ndarray, m12: np.ndarray, m21: np.ndarray, psi: np.ndarray,
               phi: np.ndarray, dm: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
               dpsi: np.ndarray | None, dphi: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """(psi, phi) -- and their derivatives when ``dm`` = (dct, dm12, dm21) is given -- through
    the layers (axis 0 of the (L, N) matrix entries), renormalised every 16 layers; returns
    (psi, phi, dpsi, dphi, log of the removed scale)."""
    nl, npt = ct.shape
    logs = np.zeros(npt)
    if dm is not None and npt <= 128:  # few points: one einsum per layer on 4x4 blocks
        dct, dm12, dm21 = dm
        zero = np.zeros_like(ct)
        blk = np.stack([ct, m12, zero, zero, m21, ct, zero, zero,
                        dct, dm12, ct, m12, dm21, dct, m21, ct], axis=1).reshape(nl, 4, 4, npt)
        v = np.stack([psi, phi, dpsi, dphi])
        for j in range(nl):
            v = np.einsum("ijn,jn->in", blk[j], v)
            if j % 16 == 15:
                nrm = np.abs(v[0]) + np.abs(v[1])
                v /= nrm
                logs += np.log(nrm)
        return v[0], v[1], v[2], v[3], logs
    for j in range(nl):
        if dm is not None:
            dct, dm12, dm21 = dm
            dpsi, dphi = (ct[j] * dpsi + m12[j] * dphi + dct[j] * psi + dm12[j] * phi,
                          m21[j] * dpsi + ct[j] * dphi + dm21[j] * psi + dct[j] * phi)
        psi, phi = ct[j] * psi + m12[j] * phi, m21[j] * psi + ct[j] * phi
        if j % 16 == 15:
            nrm = np.abs(psi) + np.abs(phi)
            psi, phi = psi / nrm, phi / nrm
            logs += np.log(nrm)
            if dm is not None:
                dpsi, dphi = dpsi / nrm, dphi / nrm
    return psi, phi, dpsi, dphi, logs


def _log_f(ctx: _Ctx, neff: np.ndarray, tm: np.ndarray | bool, out_s: np.ndarray | bool,
           out_c: np.ndarray | bool, deriv: bool = False
           ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """log of the dispersion function (see module docstring), vectorised over points.

    ``tm``: TM polarization; ``out_s``/``out_c``: outgoing sheet for the substrate/superstrate
    (else proper); each a bool or a bool array broadcastable to ``neff`` (1-D). With ``deriv``
    also returns f'/f = d(log f)/d(neff), by forward differentiation of the same recursion: the
    derivative of each bounded layer matrix exp(i t) M(kappa**2) is taken without the
    exp(i t) factor, whose logarithmic derivative cancels the -i t' of the prefactor exactly, so
    f'/f is finite at the layers' branch points (only the claddings' sqrt is singular).
    """
    neff = np.atleast_1d(np.asarray(neff, dtype=complex))
    nn = neff * neff
    eps = ctx.eps
    tm = np.asarray(tm, dtype=bool)
    kd = ctx.kd[:, None]
    with np.errstate(all="ignore"):
        # all layers at once: (L, N) arrays; layer matrix exp(i t) [[cos t, p sin t / kappa],
        # [-kappa sin t / p, cos t]] = [[ct, p g], [-kappa**2 g / p, ct]]
        kap2 = eps[1:-1, None] - nn
        kap = _kappa_layers(kap2)
        theta = kd * kap
        e2 = np.exp(2j * theta)  # |.| <= 1
        ct = 0.5 + 0.5 * e2  # exp(i t) cos t
        g = (e2 - 1.0) / (2j * kap)  # exp(i t) sin t / kappa
        at = np.abs(theta)
        small = at < 1e-2
        if small.any():  # (exp(x) - 1) / x by its series, x = 2 i t
            x = 2j * theta[small]
            g[small] = ctx.kd[np.nonzero(small)[0]] * (
                1 + x * (1 / 2 + x * (1 / 6 + x * (1 / 24 + x * (1 / 120 + x / 720)))))
        if not tm.any():
            p = ip = None
        elif tm.all():
            p, ip = eps[1:-1, None], 1.0 / eps[1:-1, None]
        else:
            p = np.where(tm, eps[1:-1, None], 1.0)
            ip = np.where(tm, 1.0 / eps[1:-1, None], 1.0)
        m12 = g if p is None else p * g
        m21 = -g * kap2 if ip is None else -g * kap2 * ip
        kap_s = _sqrt_sheet(eps[0] - nn, out_s)
        kap_c = _sqrt_sheet(eps[-1] - nn, out_c)
        ips = np.where(tm, 1.0 / eps[0], 1.0)
        ipc = np.where(tm, 1.0 / eps[-1], 1.0)
        psi = np.ones_like(nn)
        phi = -1j * ips * kap_s
        if deriv:
            # d/d(kappa**2) of the matrix entries (times exp(i t)), then times -2 neff
            dct = (neff * kd) * g
            ds12 = (kd * ct - g) / (2.0 * kap2)  # exp(i t) d(sin t / kappa)/d(kappa**2)
            small = at < 0.1
            if small.any():  # its series (the closed form cancels)
                u = theta[small] ** 2
                kds = ctx.kd[np.nonzero(small)[0]]
                ds12[small] = (np.exp(1j * theta[small]) * kds**3
                               * (-1 / 6 + u * (1 / 60 + u * (-1 / 1680 + u / 90720))))
            dm12 = (-2.0 * neff) * (ds12 if p is None else p * ds12)
            dm21 = neff * (g + kd * ct)
            if ip is not None:
                dm21 = dm21 * ip
            dpsi = np.zeros_like(nn)
            dphi = 1j * ips * neff / kap_s
        psi, phi, dpsi, dphi, logs = _propagate(ct, m12, m21, psi, phi,
                                                (dct, dm12, dm21) if deriv else None,
                                                dpsi if deriv else None,
                                                dphi if deriv else None)
        ft = phi - 1j * ipc * kap_c * psi
        # log via real functions (numpy's complex log is ~20x slower than log + arctan2)
        L = np.empty_like(ft)
        L.real = np.log(np.abs(ft)) + logs + theta.imag.sum(axis=0)
        L.imag = np.arctan2(ft.imag, ft.real) - theta.real.sum(axis=0)
        if not deriv:
            return L
        dft = dphi - 1j * ipc * (kap_c * dpsi - neff / kap_c * psi)
        return L, dft / ft


def dispersion_log(n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float, polarization: str,
                   neff: np.ndarray, substrate_branch: str = "proper",
                   superstrate_branch: str = "proper") -> np.ndarray:
    """log f(neff) of the dispersion function (module docstring), for any array of neff.

    The imaginary part is the phase of f modulo 2 pi. Branches: "proper" or "outgoing".
    """
    ctx = _ctx(n, d_nm, wavelength_nm)
    tm = _is_tm(polarization)
    return _log_f(ctx, np.asarray(neff, dtype=complex), tm, substrate_branch == "outgoing",
                  superstrate_branch == "outgoing")


def _is_tm(polarization: str) -> bool:
    pol = polarization.upper()
    if pol not in ("TE", "TM"):
        raise ValueError(f"polarization must be 'TE' or 'TM', got {polarization!r}")
    return pol == "TM"


# --------------------------------------------------------------------------- search region


def search_region(n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float,
                  im_min: float = -0.05) -> SearchRegion:
    """Default search rectangle for :func:`find_modes`.

    Re(neff) from the largest Re(N) of the claddings that are dielectric and not shielded by an
    adjacent metal (Re eps < 0) -- or, when all dielectric claddings are shielded, from the
    smallest of them -- plus a 1e-5 margin, up to 1.25 x the largest of (|N| of every medium,
    plasmon estimates) + 0.5. Im(neff) from ``im_min`` (< 0 so that lossless and amplifying
    modes are inside) to max(1, 1.5 max Im(plasmon estimate) + 0.25).
    """
    ctx = _ctx(n, d_nm, wavelength_nm)
    eps = ctx.eps
    nidx = np.sqrt(eps)
    radiating = radiating_claddings(eps)
    lo = max(guided_re_floor(eps), 1e-3) + _EDGE_MARGIN
    est = plasmon_estimates(eps, ctx.kd)
    top = max([abs(x) for x in nidx] + [abs(x.real) for x in est])
    hi = 1.25 * top + 0.5
    im_hi = max(1.0, 1.5 * max([abs(x.imag) for x in est], default=0.0) + 0.25)
    splits = tuple(sorted({float(nidx[c].real) for c in radiating
                           if lo < nidx[c].real < hi}))
    return SearchRegion(re_min=float(lo), re_max=float(hi), im_min=float(im_min),
                        im_max=float(im_hi), splits=splits)


def _parts(region: SearchRegion, eps: np.ndarray) -> list[tuple[float, float, bool, bool]]:
    """Sub-rectangles (x0, x1, out_s, out_c) with one analytic sheet each."""
    xs = [region.re_min, *[s for s in region.splits if region.re_min < s < region.re_max],
          region.re_max]
    nre = np.sqrt(eps).real
    parts = []
    for x0, x1 in zip(xs[:-1], xs[1:], strict=True):
        xm = 0.5 * (x0 + x1)
        out_s = bool(eps[0].real > 0 and nre[0] > xm)
        out_c = bool(eps[-1].real > 0 and nre[-1] > xm)
        parts.append((x0, x1, out_s, out_c))
    return parts


# --------------------------------------------------------------------------- contour machinery


class _Edge:
    """Straight segment sampled at points ``z`` (canonical direction) with values ``L`` = log f."""

    __slots__ = ("D", "L", "_dL", "_phase", "key", "singular", "z")

    def __init__(self, z: np.ndarray, key: int) -> None:
        self.z = z
        self.key = key
        self.L = np.empty(0, dtype=complex)
        self.D = np.empty(0, dtype=complex)  # f'/f at the samples
        self.singular = False
        self._dL: np.ndarray | None = None
        self._phase: float | None = None

    def dL(self) -> np.ndarray:
        """Steps of log f between samples, phase wrapped to (-pi, pi]."""
        if self._dL is None:
            self._dL = _wrap(np.diff(self.L))
        return self._dL

    def phase(self) -> float:
        """Change of arg f along the edge."""
        if self._phase is None:
            self._phase = float(self.dL().imag.sum())
        return self._phase


def _wrap(d: np.ndarray) -> np.ndarray:
    """Steps of log f with the phase wrapped to [-pi, pi)."""
    return d.real + 1j * (np.mod(d.imag + np.pi, 2 * np.pi) - np.pi)


def _moments(edges: Sequence[_Edge], signs: Sequence[float], c: complex, r: float,
             kmax: int) -> np.ndarray:
    """sum over edges of sign * int w**k f'/f dz (canonical direction), w = (z - c) / r,
    k = 0..kmax: 3-point Gauss on each sample interval with f'/f from the cubic Hermite
    interpolant of log f (values and derivatives at both ends; the k = 0 term is the exact
    step of log f)."""
    dL = np.concatenate([sg * e.dL() for e, sg in zip(edges, signs, strict=True)])
    z0 = np.concatenate([e.z[:-1] for e in edges])
    h = np.concatenate([np.diff(e.z) for e in edges])
    sg = np.concatenate([np.full(e.z.size - 1, sg) for e, sg in zip(edges, signs, strict=True)])
    m0 = sg * h * np.concatenate([e.D[:-1] for e in edges])
    m1 = sg * h * np.concatenate([e.D[1:] for e in edges])
    s = _GS[None, :]
    dlds = (m0[:, None] * (1 - 4 * s + 3 * s * s) + m1[:, None] * (3 * s * s - 2 * s)
            + dL[:, None] * (6 * s - 6 * s * s))
    if not np.isfinite(dlds).all():  # a sample on a cladding branch point
        dlds = np.where(np.isfinite(dlds), dlds, dL[:, None])
    w = ((z0[:, None] + h[:, None] * s) - c) / r
    wd = dlds * _GW[None, :]
    out = np.empty(kmax + 1, dtype=complex)
    out[0] = dL.sum()
    wk = np.ones_like(w)
    for k in range(1, kmax + 1):
        wk = wk * w
        out[k] = np.sum(wk * wd)
    return out


class _Evaluator:
    """Batched evaluation of log f for (point, problem) pairs; counts calls and points."""

    def __init__(self, ctx: _Ctx, problems: list[tuple[bool, bool, bool]]) -> None:
        self.ctx = ctx
        arr = np.array(problems, dtype=bool).reshape(-1, 3)
        self.tm, self.out_s, self.out_c = arr[:, 0], arr[:, 1], arr[:, 2]
        self.calls = 0
        self.points = 0

    def __call__(self, z: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log f, f'/f) at the points ``z`` of the problems ``keys``."""
        self.calls += 1
        self.points += z.size
        if z.size == 0:
            return np.empty(0, dtype=complex), np.empty(0, dtype=complex)
        return _log_f(self.ctx, z, self.tm[keys], self.out_s[keys], self.out_c[keys],
                      deriv=True)  # type: ignore[return-value]


def _eval_new_edges(ev: _Evaluator, edges: list[_Edge]) -> None:
    if not edges:
        return
    z = np.concatenate([e.z for e in edges])
    k = np.repeat([e.key for e in edges], [e.z.size for e in edges])
    L, D = ev(z, k)
    i = 0
    for e in edges:
        e.L = L[i:i + e.z.size]
        e.D = D[i:i + e.z.size]
        e._dL = e._phase = None
        i += e.z.size


def _accept(z: np.ndarray, L: np.ndarray, D: np.ndarray, i: np.ndarray) -> np.ndarray:
    """Whether the sample intervals (i, i+1) resolve the phase of f (no 2 pi aliasing).

    The step of log f, phase wrapped, must be small (phase <= _PH_MAX, log|f| <= _MAG_MAX), the
    linear change |h f'/f| at both ends at most _LIN_MAX, and the step must equal the trapezoid
    integral of f'/f to _TRAP_TOL. A phase ramp that turns by 2 pi k between samples (which a
    midpoint probe cannot see when k is even) fails the last two tests; a zero close to the
    interval makes |h f'/f| ~ h / distance large.
    """
    h = z[i + 1] - z[i]
    step = _wrap(L[i + 1] - L[i])
    da, db = h * D[i], h * D[i + 1]
    with np.errstate(invalid="ignore"):
        trap = np.abs(step - 0.5 * (da + db))
        return ((np.abs(step.imag) <= _PH_MAX) & (np.abs(step.real) <= _MAG_MAX)
                & (np.abs(da) <= _LIN_MAX) & (np.abs(db) <= _LIN_MAX) & (trap <= _TRAP_TOL))


def _smooth(d: np.ndarray) -> np.ndarray:
    """Steps of log f small enough to unwrap: |phase| <= _PH_MAX and |log|f|| <= _MAG_MAX."""
    step = _wrap(d)
    return (np.abs(step.imag) <= _PH_MAX) & (np.abs(step.real) <= _MAG_MAX) & np.isfinite(d)


def _refine_edges(ev: _Evaluator, edges: list[_Edge], min_len: float) -> None:
    """Bisect sample intervals until each one is verified by :func:`_accept`.

    All edges are refined together on flat arrays (one evaluation call per pass). Intervals
    that shrink to ``min_len`` are accepted; if their step is still not smooth (a zero on the
    edge) the edge is flagged ``singular``. (Only at a cladding branch point hit exactly, where
    f'/f is infinite, does a smooth interval go down to ``min_len``.)
    """
    if not edges:
        return
    sizes = np.array([e.z.size for e in edges])
    Z = np.concatenate([e.z for e in edges])
    Lv = np.concatenate([e.L for e in edges])
    Dv = np.concatenate([e.D for e in edges])
    eid = np.repeat(np.arange(len(edges)), sizes)
    key = np.repeat([e.key for e in edges], sizes)
    ok = eid[1:] != eid[:-1]  # gaps between edges are not intervals
    sing = np.zeros(len(edges), dtype=bool)
    idx = np.nonzero(~ok)[0]
    idx = idx[~_accept(Z, Lv, Dv, idx)]
    while idx.size:
        h = np.abs(Z[idx + 1] - Z[idx])
        small = h <= min_len
        if small.any():
            tiny = idx[small]
            sing[eid[tiny[~_smooth(Lv[tiny + 1] - Lv[tiny])]]] = True
            idx, h = idx[~small], h[~small]
            if idx.size == 0:
                break
        # pieces per failing interval: enough for |h f'/f| ~ _LIN_MAX / 2 at its ends
        with np.errstate(invalid="ignore"):
            q = h * np.maximum(np.abs(Dv[idx]), np.abs(Dv[idx + 1]))
        k = np.clip(np.where(np.isfinite(q), np.ceil(2 * q / _LIN_MAX), 2.0), 2, _MAX_PIECES)
        k = np.minimum(k, np.maximum(2, np.floor(h / min_len))).astype(int)
        rep = np.repeat(np.arange(idx.size), k - 1)
        frac = (np.arange(rep.size) - np.repeat(np.cumsum(k - 1) - (k - 1), k - 1) + 1) / k[rep]
        zm = Z[idx[rep]] + (Z[idx[rep] + 1] - Z[idx[rep]]) * frac
        Lm, Dm = ev(zm, key[idx[rep]])
        at = idx[rep] + 1
        Z = np.insert(Z, at, zm)
        Lv = np.insert(Lv, at, Lm)
        Dv = np.insert(Dv, at, Dm)
        eid = np.insert(eid, at, eid[at - 1])
        key = np.insert(key, at, key[at - 1])
        start = idx + np.cumsum(k - 1) - (k - 1)  # interval idx now starts here
        pieces = np.repeat(start, k) + (np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k))
        idx = pieces[~_accept(Z, Lv, Dv, pieces)]
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(eid)) + 1, [eid.size]])
    dL = _wrap(np.diff(Lv))  # steps across edge boundaries are never used
    cum = np.concatenate([[0.0], np.cumsum(dL.imag)])
    phases = (cum[bounds[1:] - 1] - cum[bounds[:-1]]).tolist()
    for e, a, b, ph, sg in zip(edges, bounds[:-1].tolist(), bounds[1:].tolist(), phases,
                               sing.tolist(), strict=True):
        e.z, e.L, e.D = Z[a:b], Lv[a:b], Dv[a:b]
        e._dL = dL[a:b - 1]
        e._phase = ph
        e.singular = e.singular or sg


@dataclass(slots=True)
class _Rect:
    x0: float
    x1: float
    y0: float
    y1: float
    key: int
    bottom: _Edge  # left -> right
    right: _Edge  # bottom -> top
    top: _Edge  # left -> right
    left: _Edge  # bottom -> top
    count: int = 0

    def winding(self) -> float:
        ph = self.bottom.phase() + self.right.phase() - self.top.phase() - self.left.phase()
        return ph / (2 * math.pi)

    def center(self) -> complex:
        return complex(0.5 * (self.x0 + self.x1), 0.5 * (self.y0 + self.y1))

    def radius(self) -> float:
        return 0.5 * math.hypot(self.x1 - self.x0, self.y1 - self.y0)

    def moments(self, kmax: int) -> np.ndarray:
        """(1 / 2 pi i) contour integrals of w**k f'/f, w = (z - center) / radius."""
        m = _moments((self.bottom, self.right, self.top, self.left), (1.0, 1.0, -1.0, -1.0),
                     self.center(), self.radius(), kmax)
        return m / (2j * math.pi)

    def contains(self, z: complex, tol: float) -> bool:
        return (self.x0 - tol <= z.real <= self.x1 + tol
                and self.y0 - tol <= z.imag <= self.y1 + tol)

    def singular(self) -> bool:
        return any(e.singular for e in (self.bottom, self.right, self.top, self.left))


_T = np.linspace(0.0, 1.0, _N0 + 1)
_GS = 0.5 + 0.5 * np.array([-math.sqrt(0.6), 0.0, math.sqrt(0.6)])  # Gauss nodes on [0, 1]
_GW = np.array([5.0, 8.0, 5.0]) / 18.0
_H0 = 0.1  # initial sample spacing along Re(neff): 2 |im_min| with the default im_min


def _line(z0: complex, z1: complex, key: int) -> _Edge:
    return _Edge(z0 + (z1 - z0) * _T, key)


def _grid(x0: float, x1: float, y0: float, y1: float, key: int, cell: float,
          branch: np.ndarray) -> tuple[list[_Rect], list[_Edge]]:
    """nx x ny rectangles covering [x0,x1]x[y0,y1] with shared edges.

    Horizontal edges start with samples every <= _H0 (roots may sit on the real axis, only
    |im_min| below the bottom edge), vertical ones with _N0 intervals, graded towards the
    cladding branch points ``branch`` that lie close to them (:func:`_graded`).
    """
    nx = max(1, math.ceil((x1 - x0) / cell))
    ny = max(1, math.ceil((y1 - y0) / cell))
    xs = x0 + (x1 - x0) * np.arange(nx + 1) / nx
    ys = y0 + (y1 - y0) * np.arange(ny + 1) / ny
    nh = max(_N0, math.ceil((x1 - x0) / nx / _H0))
    th = np.arange(nh + 1) / nh
    hz = (xs[:-1, None] + np.diff(xs)[:, None] * th)[None, :, :] + 1j * ys[:, None, None]
    vy = ys[:-1, None] + np.diff(ys)[:, None] * _T
    near = np.abs(xs[:, None] - branch.real[None, :]).min(axis=1) < 1e-2
    h = [[_Edge(hz[j, i], key) for i in range(nx)] for j in range(ny + 1)]
    v = [[_Edge(x + 1j * (_graded(vy[j], x, branch) if close else vy[j]), key)
          for j in range(ny)] for x, close in zip(xs.tolist(), near.tolist(), strict=True)]
    rects = [_Rect(xs[i], xs[i + 1], ys[j], ys[j + 1], key, h[j][i], v[i + 1][j], h[j + 1][i],
                   v[i][j]) for i in range(nx) for j in range(ny)]
    edges = [e for row in h for e in row] + [e for col in v for e in col]
    return rects, edges


def _branch_points(eps: np.ndarray) -> np.ndarray:
    """N_c of the two claddings: where their kz = k0 sqrt(eps_c - neff**2) branches."""
    return np.sqrt(eps[[0, -1]].astype(complex))


def _graded(y: np.ndarray, x: float, branch: np.ndarray) -> np.ndarray:
    """Samples ``y`` (Im neff) of a vertical edge at Re neff = x, plus samples graded towards
    every cladding branch point N_c within 1e-2 of the edge (e.g. the left edge, 1e-5 from the
    light line of an unshielded cladding, or a split line through N_c): at geometric distances
    max(dist, 1e-6) * 4**k < 0.1 above and below Im N_c. f'/f grows like 1 / sqrt(distance)
    there, and these samples spare the refinement its slow bisection. (No sample on N_c itself,
    where f'/f is infinite.)"""
    extra = []
    for c in branch:
        dist = abs(x - c.real)
        if dist < 1e-2 and y[0] < c.imag < y[-1]:
            off = max(dist, 1e-6) * 4.0 ** np.arange(12)
            off = off[off < 0.1]
            extra.append(c.imag + np.concatenate([-off, off]))
    if not extra:
        return y
    out = np.concatenate([y, *extra])
    return np.unique(out[(out >= y[0]) & (out <= y[-1])])


def _cut_edge(e: _Edge, zm: complex, Lm: complex, Dm: complex, horizontal: bool
              ) -> tuple[_Edge, _Edge]:
    """Split edge at the point zm (values Lm, Dm) into its two halves."""
    t = e.z.real if horizontal else e.z.imag
    tm = zm.real if horizontal else zm.imag
    tol = 1e-13 * max(1.0, abs(tm))
    lo = t < tm - tol
    hi = t > tm + tol
    a = _Edge(np.concatenate([e.z[lo], [zm]]), e.key)
    a.L = np.concatenate([e.L[lo], [Lm]])
    a.D = np.concatenate([e.D[lo], [Dm]])
    b = _Edge(np.concatenate([[zm], e.z[hi]]), e.key)
    b.L = np.concatenate([[Lm], e.L[hi]])
    b.D = np.concatenate([[Dm], e.D[hi]])
    a.singular = b.singular = e.singular
    return a, b


def _split(rect: _Rect, frac: float) -> tuple[list[_Rect], _Edge]:
    """Cut a rectangle across its longer side at fraction ``frac``; children and the new edge."""
    if rect.x1 - rect.x0 >= rect.y1 - rect.y0:
        xm = rect.x0 + frac * (rect.x1 - rect.x0)
        mid = _line(complex(xm, rect.y0), complex(xm, rect.y1), rect.key)
        return [_Rect(rect.x0, xm, rect.y0, rect.y1, rect.key, None, mid, None, rect.left),  # type: ignore[arg-type]
                _Rect(xm, rect.x1, rect.y0, rect.y1, rect.key, None, rect.right, None, mid)], mid  # type: ignore[arg-type]
    ym = rect.y0 + frac * (rect.y1 - rect.y0)
    mid = _line(complex(rect.x0, ym), complex(rect.x1, ym), rect.key)
    return [_Rect(rect.x0, rect.x1, rect.y0, ym, rect.key, rect.bottom, None, mid, None),  # type: ignore[arg-type]
            _Rect(rect.x0, rect.x1, ym, rect.y1, rect.key, mid, None, rect.top, None)], mid  # type: ignore[arg-type]


def _finish_split(parent: _Rect, kids: list[_Rect], mid: _Edge) -> None:
    """After ``mid`` is evaluated, give the children the halves of the parent's cut edges."""
    if kids[0].bottom is None:  # vertical cut
        b = _cut_edge(parent.bottom, mid.z[0], mid.L[0], mid.D[0], True)
        t = _cut_edge(parent.top, mid.z[-1], mid.L[-1], mid.D[-1], True)
        kids[0].bottom, kids[1].bottom = b
        kids[0].top, kids[1].top = t
    else:
        r = _cut_edge(parent.right, mid.z[-1], mid.L[-1], mid.D[-1], False)
        lft = _cut_edge(parent.left, mid.z[0], mid.L[0], mid.D[0], False)
        kids[0].right, kids[1].right = r
        kids[0].left, kids[1].left = lft


def _newton(ev: _Evaluator, z: np.ndarray, keys: np.ndarray, max_step: np.ndarray,
            maxit: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised Newton on f with the exact f'/f (step -f/f' = -1 / (f'/f)).

    A root is converged once a relative step s_k is below 1e-9 (with quadratic convergence the
    error left is ~1e-18 / (distance to the next zero); at a round-off floor or a degenerate
    zero the step size is the error), or once the iteration is visibly quadratic
    (s_k < 1e-2 s_{k-1}) and the error it predicts after the step, s_k**3 / s_{k-1}**2, is
    below 1e-14.
    """
    z = np.array(z, dtype=complex)
    conv = np.zeros(z.size, dtype=bool)
    prev = np.full(z.size, np.inf)
    active = np.arange(z.size)
    for _ in range(maxit):
        if active.size == 0:
            break
        za = z[active]
        _, D = ev(za, keys[active])
        with np.errstate(all="ignore"):
            step = -1.0 / D
        step = np.where(np.isfinite(step), step, 0.0)
        ms = max_step[active]
        step = np.where(np.abs(step) > ms, step * ms / np.maximum(np.abs(step), 1e-300), step)
        z[active] = za + step
        size = np.abs(step) / (1.0 + np.abs(za))
        pa = prev[active]
        with np.errstate(all="ignore"):
            quadratic = np.isfinite(pa) & (size < 1e-2 * pa) & (size**3 < 1e-14 * pa * pa)
        done = (size < 1e-9) | quadratic
        conv[active[done]] = True
        prev[active] = size
        active = active[~done]
    return z, conv


def _dl_guesses(rect: _Rect) -> np.ndarray:
    """Zeros of a rectangle from its contour moments (Newton identities)."""
    m = rect.count
    s = rect.moments(m)
    e = [1.0 + 0j]
    for k in range(1, m + 1):
        acc = sum(((-1) ** (i - 1)) * e[k - i] * s[i] for i in range(1, k + 1))
        e.append(acc / k)
    coeffs = [((-1) ** k) * e[k] for k in range(m + 1)]
    w = np.roots(coeffs) if m > 1 else np.array([coeffs[1] * -1])
    return rect.center() + rect.radius() * np.asarray(w, dtype=complex)


def _initial_rects(ev: _Evaluator, parts: list[tuple[float, float, int]], y0: float,
                   y1: float, min_len: float) -> list[_Rect]:
    """Coarse grid of square-ish cells over every part, edges evaluated and refined."""
    rects: list[_Rect] = []
    edges: list[_Edge] = []
    cell = max(y1 - y0, 0.2)
    branch = _branch_points(ev.ctx.eps)
    for x0, x1, key in parts:
        r, e = _grid(x0, x1, y0, y1, key, cell, branch)
        rects += r
        edges += e
    _eval_new_edges(ev, edges)
    _refine_edges(ev, edges, min_len)
    for r in rects:
        r.count = round(r.winding())
    return rects


_CLUSTER = 1e-6  # zeros closer than _CLUSTER (1 + |z|) are treated as one degenerate zero
_TINY = 1e-4  # rectangles smaller than _TINY (1 + |z|) that Newton cannot resolve: a cluster


def _cluster(zs: list[complex]) -> list[complex]:
    """Merge points closer than the cluster radius (single linkage); returns the means."""
    groups: list[list[complex]] = []
    for z in map(complex, zs):
        near = [g for g in groups if any(abs(z - w) < _CLUSTER * (1 + abs(w)) for w in g)]
        merged = [z] + [w for g in near for w in g]
        groups = [g for g in groups if g not in near] + [merged]
    return [sum(g) / len(g) for g in groups]


def _local_windings(ev: _Evaluator, zs: list[complex], keys: list[int]) -> list[int]:
    """Number of zeros within the cluster radius around each z (argument principle)."""
    if not zs:
        return []
    ang = np.exp(2j * np.pi * np.linspace(0.0, 1.0, 17))
    circles = [_Edge(z + _CLUSTER * (1 + abs(z)) * ang, k) for z, k in zip(zs, keys, strict=True)]
    _eval_new_edges(ev, circles)
    _refine_edges(ev, circles, 1e-14)
    return [round(c.phase() / (2 * math.pi)) for c in circles]


_Root = tuple[complex, int, int]  # (neff, problem key, multiplicity)


def _solve_direct(ev: _Evaluator, rects: list[_Rect]) -> tuple[list[_Root], list[_Rect]]:
    """Contour-moment guesses + Newton for rectangles with few zeros.

    Returns the roots of the rectangles that are fully resolved -- as many zeros, counted with
    multiplicity, as the winding number says -- and the rectangles that are not. A root whose
    local winding number exceeds one (zeros closer than ~1e-6 relative, e.g. the two plasmons of
    a thick Ag/Si/Ag sandwich, degenerate to round-off) carries that multiplicity.
    """
    if not rects:
        return [], []
    guesses = [_dl_guesses(r) for r in rects]
    sizes = [g.size for g in guesses]
    keys = np.repeat([r.key for r in rects], sizes)
    steps = np.repeat([0.5 * r.radius() for r in rects], sizes)
    zr, conv = _newton(ev, np.concatenate(guesses), keys, steps)
    per_rect: list[list[complex]] = []
    i = 0
    for size, r in zip(sizes, rects, strict=True):
        zz, cc = zr[i:i + size], conv[i:i + size]
        i += size
        tol = 1e-9 * max(1.0, r.radius())
        inside = [z for z, c in zip(zz, cc, strict=True) if c and r.contains(z, tol)]
        per_rect.append(_cluster(inside))
    short = [(j, z) for j, (r, zs) in enumerate(zip(rects, per_rect, strict=True))
             if len(zs) < r.count for z in zs]
    mult = dict(zip(short, _local_windings(ev, [z for _, z in short],
                                           [rects[j].key for j, _ in short]), strict=True))
    roots: list[_Root] = []
    failed: list[_Rect] = []
    for j, (r, zs) in enumerate(zip(rects, per_rect, strict=True)):
        ms = [mult.get((j, z), 1) for z in zs]
        if sum(ms) == r.count and all(m >= 1 for m in ms) and zs:
            roots += [(z, r.key, m) for z, m in zip(zs, ms, strict=True)]
        else:
            failed.append(r)
    return roots, failed


def _split_all(ev: _Evaluator, rects: list[_Rect], frac: float, min_len: float) -> list[_Rect]:
    """Split every rectangle in two (one batched evaluation of the new edges)."""
    pairs = [(r, *_split(r, frac)) for r in rects]
    mids = [mid for _, _, mid in pairs]
    _eval_new_edges(ev, mids)
    _refine_edges(ev, mids, min_len)
    out: list[_Rect] = []
    for r, kids, mid in pairs:
        _finish_split(r, kids, mid)
        for k in kids:
            k.count = round(k.winding())
        if kids[0].count + kids[1].count != r.count:
            warnings.warn("inconsistent winding numbers after a split", RuntimeWarning,
                          stacklevel=4)
        out += kids
    return out


def _solve_region(ev: _Evaluator, parts: list[tuple[float, float, int]], y0: float, y1: float,
                  scale: float) -> list[_Root]:
    """All zeros in the union of rectangles: (neff, problem key, multiplicity).

    Warns when the zeros found (with multiplicity) do not add up to the winding number of the
    outer boundary -- only seen for round-off-degenerate clusters (``_CLUSTER``).
    """
    min_len = 1e-12 * scale
    rects = _initial_rects(ev, parts, y0, y1, min_len)
    total = sum(r.count for r in rects)
    roots: list[_Root] = []
    for level in range(1, _MAX_LEVELS + 2):
        if any(r.count < 0 for r in rects):
            warnings.warn("negative winding number (round-off or under-resolved contour)",
                          RuntimeWarning, stacklevel=3)
        rects = [r for r in rects if r.count > 0]
        tiny = [r for r in rects if level > _MAX_LEVELS
                or r.radius() < _TINY * (1 + abs(r.center()))]
        for r in tiny:  # position: contour mean of the cluster (well conditioned)
            zc = r.center() + r.radius() * complex(r.moments(1)[1]) / r.count
            warnings.warn(f"unresolved cluster of {r.count} zeros near {zc:.10g}",
                          RuntimeWarning, stacklevel=3)
            roots.append((zc, r.key, r.count))
        rects = [r for r in rects if r not in tiny]
        if not rects:
            break
        direct = [r for r in rects if r.count <= _MAX_DL and not r.singular()]
        found, failed = _solve_direct(ev, direct)
        roots += found
        to_split = [r for r in rects if not (r.count <= _MAX_DL and not r.singular())]
        to_split += failed
        rects = _split_all(ev, to_split, 0.5 + 0.0123 * (1 if level % 2 else -1), min_len)
    if sum(m for _, _, m in roots) != total:
        warnings.warn(f"{sum(m for _, _, m in roots)} zeros found but the boundary winding "
                      f"number is {total}", RuntimeWarning, stacklevel=3)
    return roots


def _dedupe(zs: Sequence[complex], tol: float) -> list[complex]:
    out: list[complex] = []
    for z in zs:
        if all(abs(z - w) > tol * (1 + abs(w)) for w in out):
            out.append(complex(z))
    return out


# --------------------------------------------------------------------------- classification


def _classify(ctx: _Ctx, neff: complex, tm: bool, out_s: bool, out_c: bool,
              wavelength_nm: float) -> Mode:
    eps = ctx.eps
    neff = complex(neff)
    nn = neff * neff
    epsc = {"substrate": complex(eps[0]), "superstrate": complex(eps[-1])}
    kap = {"substrate": complex(_sqrt_sheet(np.complex128(epsc["substrate"] - nn), out_s)),
           "superstrate": complex(_sqrt_sheet(np.complex128(epsc["superstrate"] - nn), out_c))}
    branch = {"substrate": "outgoing" if out_s else "proper",
              "superstrate": "outgoing" if out_c else "proper"}
    kind_branch = mode_branch(epsc, kap, neff)
    kind_material = mode_material_kind(eps, neff)
    alpha = 4 * math.pi * neff.imag / (wavelength_nm * 1e-7)
    return Mode(neff=neff, polarization="TM" if tm else "TE",
                wavelength_nm=float(wavelength_nm), alpha_cm=float(alpha),
                kind_material=kind_material, kind_branch=kind_branch, kz_branch=branch,
                kz_cladding={c: ctx.k0 * k for c, k in kap.items()})


def _label(modes: list[Mode]) -> list[Mode]:
    labels = mode_labels([m.neff for m in modes], [m.polarization for m in modes],
                         [m.kind_material for m in modes], [m.kind_branch for m in modes])
    out = [replace(m, label=lab) for m, lab in zip(modes, labels, strict=True)]
    out.sort(key=lambda m: -m.neff.real)
    return out


# --------------------------------------------------------------------------- public API


def _problems(ctx: _Ctx, region: SearchRegion, pols: Sequence[bool]
              ) -> tuple[list[tuple[bool, bool, bool]], list[tuple[float, float, int]]]:
    problems: list[tuple[bool, bool, bool]] = []
    parts: list[tuple[float, float, int]] = []
    for tm in pols:
        for x0, x1, out_s, out_c in _parts(region, ctx.eps):
            problems.append((tm, out_s, out_c))
            parts.append((x0, x1, len(problems) - 1))
    return problems, parts


def _pols(polarization: str) -> list[bool]:
    if polarization.upper() in ("BOTH", "ALL"):
        return [False, True]
    return [_is_tm(polarization)]


def find_modes(n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float, polarization: str,
               region: SearchRegion | None = None) -> list[Mode]:
    """Every zero of the dispersion function in the search region, classified and labelled.

    ``polarization``: "TE", "TM" (or "both": TE and TM solved together). ``region`` defaults
    to :func:`search_region`. Modes are sorted by Re(neff), descending; each zero is reported
    once (``Mode.multiplicity`` counts degenerate zeros). Modes outside the region (Re neff
    below its lower edge, i.e. radiating into an unshielded cladding; Im neff below ``im_min``,
    i.e. net modal gain beyond 4 pi 0.05 / lambda; or Im neff above ``im_max``) are not searched.
    """
    ctx = _ctx(n, d_nm, wavelength_nm)
    if region is None:
        region = search_region(n, d_nm, wavelength_nm)
    problems, parts = _problems(ctx, region, _pols(polarization))
    ev = _Evaluator(ctx, problems)
    scale = max(region.re_max - region.re_min, region.im_max - region.im_min)
    found = _solve_region(ev, parts, region.im_min, region.im_max, scale)
    modes: list[Mode] = []
    for tm in sorted(set(p[0] for p in problems)):
        kept: list[_Root] = []
        for z, k, m in found:  # a root on a shared edge is found by both neighbours
            if problems[k][0] == tm and all(abs(z - w) > _CLUSTER * (1 + abs(w))
                                            for w, _, _ in kept):
                kept.append((z, k, m))
        modes += [replace(_classify(ctx, z, tm, problems[k][1], problems[k][2], wavelength_nm),
                          multiplicity=m) for z, k, m in kept]
    return _label(modes)


def count_modes(n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float, polarization: str,
                region: SearchRegion | None = None) -> int:
    """Number of zeros in the search region from the argument principle on its outer boundary
    (one contour per analytic sub-rectangle; independent of the subdivision in find_modes)."""
    ctx = _ctx(n, d_nm, wavelength_nm)
    if region is None:
        region = search_region(n, d_nm, wavelength_nm)
    problems, parts = _problems(ctx, region, _pols(polarization))
    ev = _Evaluator(ctx, problems)
    y0, y1 = region.im_min, region.im_max
    rects = []
    for x0, x1, key in parts:
        r, _ = _grid(x0, x1, y0, y1, key, 1e9, _branch_points(ctx.eps))
        rects += r
    edges = [e for r in rects for e in (r.bottom, r.right, r.top, r.left)]
    _eval_new_edges(ev, edges)
    _refine_edges(ev, edges, 1e-12)
    return int(sum(round(r.winding()) for r in rects))


def _sheet(mode: Mode) -> tuple[bool, bool, bool]:
    return (mode.polarization == "TM", mode.kz_branch["substrate"] == "outgoing",
            mode.kz_branch["superstrate"] == "outgoing")


def continue_modes(n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float,
                   previous: Sequence[Mode], *, fallback: bool = True,
                   guesses: Sequence[complex | None] | None = None) -> list[Mode | None]:
    """Track ``previous`` modes to a nearby wavelength (``n`` given at the new wavelength).

    Each mode is Newton-polished from its previous neff (or ``guesses[i]``) on its own sheet. A
    root is "lost" when Newton does not converge, moves by more than half the distance to the
    nearest other previous mode of the same polarization, or lands on a root already taken; lost
    modes are then matched (nearest neff, same polarization) among the modes of a global
    :func:`find_modes` solve when ``fallback`` is true, else returned as None. The returned list
    is parallel to ``previous``; labels are carried over (mode identity follows continuity, not
    the ordering at the new wavelength).
    """
    ctx = _ctx(n, d_nm, wavelength_nm)
    if not previous:
        return []
    sheets = [_sheet(m) for m in previous]
    uniq = sorted(set(sheets))
    ev = _Evaluator(ctx, uniq)
    keys = np.array([uniq.index(s) for s in sheets])
    z0 = np.array([g if (guesses and g is not None) else m.neff
                   for m, g in zip(previous, guesses or [None] * len(previous), strict=True)],
                  dtype=complex)
    gap = np.full(len(previous), np.inf)
    for i, m in enumerate(previous):
        for j, o in enumerate(previous):
            if i != j and o.polarization == m.polarization:
                gap[i] = min(gap[i], abs(o.neff - m.neff))
    max_step = np.where(np.isfinite(gap), 0.5 * gap, 0.5 * (1 + np.abs(z0)))
    z, conv = _newton(ev, z0, keys, max_step)
    out: list[Mode | None] = []
    taken: list[complex] = []
    for i, m in enumerate(previous):
        ok = conv[i] and abs(z[i] - z0[i]) < max_step[i] * 1.0000001
        ok = ok and all(abs(z[i] - w) > 1e-8 * (1 + abs(w)) for w in taken)
        if ok:
            taken.append(z[i])
            new = _classify(ctx, z[i], *sheets[i], wavelength_nm)
            out.append(replace(new, label=m.label))
        else:
            out.append(None)
    lost = [i for i, m in enumerate(out) if m is None]
    if lost and fallback:
        pool: dict[str, list[Mode]] = {}
        for i in lost:
            pol = previous[i].polarization
            if pol not in pool:
                pool[pol] = [c for c in find_modes(n, d_nm, wavelength_nm, pol)
                             if all(abs(c.neff - w) > 1e-8 * (1 + abs(w)) for w in taken)]
            cands = pool[pol]
            if not cands:
                continue
            j = int(np.argmin([abs(c.neff - previous[i].neff) for c in cands]))
            best = cands.pop(j)
            taken.append(best.neff)
            out[i] = replace(best, label=previous[i].label)
    return out
