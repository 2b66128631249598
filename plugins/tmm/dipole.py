"""Classical dipole power dissipation in a planar stack (Chance-Prock-Silbey, Neyts, Furno).

Conventions (docs/conventions.md): exp(-i omega t); N = n + ik with k > 0 absorbing; media
``[substrate, layer_1 (bottom), ..., layer_L (top), superstrate]``; lengths in nm;
u = kx / (k0 n_e) with n_e = Re(N_emitter).

Normalization. K(u) is the power dissipated per du by a dipole of fixed moment, divided by the
power the same dipole radiates in the unbounded emitter medium, so that int_0^inf K du is the
Purcell factor (1 in bulk). With l = kz_e / (k0 n_e) = sqrt(1 - u^2), a_+- = r_+- exp(2 i kz_e z_+-)
(r_+ / r_- the reflection coefficients of the top / bottom half-stacks seen from the emitter,
s: E_y, p: H_y tangential-field convention, z_+ / z_- the distances to the top / bottom
interfaces) and D = 1 - a_+ a_-:

  K_v = 3/2 Re[u^3/l (1 + a_+^p)(1 + a_-^p) / D^p]
  K_h = 3/4 Re[u/l (1 + a_+^s)(1 + a_-^s) / D^s + u l (1 - a_+^p)(1 - a_-^p) / D^p]

``horizontal`` is already averaged over the in-plane azimuth (hence 3/4), ``isotropic`` is
(2 horizontal + vertical) / 3; all three equal 1 in bulk. P_top(u) / P_bottom(u) are the
z-fluxes leaving into the superstrate / substrate, in the same normalization (e.g. for the
vertical dipole P_top = 3/4 u^3 / |l|^2 Re(q_sup) |t_+ e^{i kz_e z_+} (1 + a_-) / D|^2 with the
dimensionless p admittance q = kz n_e / (k0 eps)). R(u) = K - P_top - P_bottom is absorbed in
the layers. The emitter layer is taken as lossless: the imaginary part of its index is ignored
(the classical normalization diverges for an absorbing host); it is reported as
``DipoleResult.emitter_k_ignored``.

Channels (fractions of the total, they sum to one): air = int P_top, substrate = int P_bottom,
absorbed = int_{u<u_esc} R, waveguide = int_{u_esc}^{u_wg} R, spp = int_{u>u_wg} R, with
u_air = Re n_sup / n_e, u_wg = max Re n of the dielectric layers (Re eps > 0, substrate and
superstrate excluded) / n_e, u_esc = max(u_air, Re n_sub / n_e) if Re n_sub < max dielectric
Re n, else u_air (and u_esc <= u_wg).

Integration. A vectorized, globally adaptive Gauss-Kronrod (7/15) quadrature (scipy's
quad_vec evaluates one point at a time, far too slow here) runs on segments split at every
branch point Re n_j / n_e, at u_air, u_esc, u_wg and at the resonances; it stops when the
summed |K15 - G7| of every quantity is below rtol times the total power of its orientation.
The emitter and the two outer media give 1/sqrt (or sqrt) branch points; the segments ending
there are mapped with u = a + (b - a) s^2 (or a smoothstep for both ends), which removes the
singularity. The evanescent tail is integrated to infinity with u = a + c s / (1 - s),
c = max(0.5, 1 / (2 k0 n_e z_min)).

Resonances (guided modes, SPPs, cavity and leaky modes) are the zeros of the pole-free
characteristic function Delta = M_+ M_- - N_+ N_- e^{2i kz_e (z_+ + z_-)} (r_+- = N_+- / M_+-
with entire N, M), for s and p. They are found on a scan grid (uniform in u, and uniform in
the normal wavevector near the branch points where guided modes crowd) from the minima of
|Delta| and from jumps of its phase (a zero hidden next to another), refined on a 16x finer
grid and then by damped Newton steps (the complex derivative is taken along the real axis, in
the normal-wavevector variable near a branch point); ``pole_hints`` add starting points. This
gives complex poles u_p = u_r + i w. A pole with w >= 1e-10 gets breakpoints at u_r and
u_r +- w 4^k, which resolves peaks of any width down to that. Narrower poles (a lossless or
nearly lossless guided mode: a delta in K) are integrated analytically: on a window
[u_r - delta, u_r + delta] the symmetric sum f(u_r + t) + f(u_r - t) is integrated (the 1/t
parts cancel) minus the pole's Lorentzian, whose integral -2 atan(delta / w) Im(residue)
(-> -pi Im(residue), the causal limit) is added to the channel of u_r. This requires that no
outer medium radiates at u_r: a nearly lossless mode that leaks weakly into an outer medium
(width < 1e-10, weight > 10 rtol) raises a ValueError (add a little absorption); lighter
ones are just given breakpoints. Delta-like poles are not visible on the output grid.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ._interfaces import half_stack, kz_branch

ORIENTATIONS = ("horizontal", "vertical", "isotropic")
CHANNELS = ("air", "substrate", "waveguide", "spp", "absorbed")

_W_MIN = 1e-10  # narrower poles are integrated by residue
_W_MAX = 0.05  # broader "poles" need no special breakpoints
_FD_STEP = 1e-7  # finite-difference step (relative) for dG/du
_NUDGE = 1e-9  # output points on the emitter branch point u = 1 are evaluated at u (1 - nudge)

# Gauss-Kronrod 7/15 nodes and weights (QUADPACK qk15)
_XGK = np.array([
    0.991455371120812639206854697526329, 0.949107912342758524526189684047851,
    0.864864423359769072789712788640926, 0.741531185599394439863864773280788,
    0.586087235467691130294144845693013, 0.405845151377397166906606412076961,
    0.207784955007898467600689403773245, 0.0,
])
_WGK = np.array([
    0.022935322010529224963732008058970, 0.063092092629978553290700663189204,
    0.104790010322250183839876322541518, 0.140653259715525918745189590510238,
    0.169004726639267902826583426598550, 0.190350578064785409913256402421014,
    0.204432940075298892414161999234649, 0.209482141084727828012999174891714,
])
_WG = np.array([
    0.129484966168869693270611432679082, 0.279705391489276667901467771423780,
    0.381830050505118944950369775488975, 0.417959183673469387755102040816327,
])
_X15 = np.concatenate([-_XGK[:-1], _XGK[::-1]])  # 15 nodes, ascending
_W15 = np.concatenate([_WGK[:-1], _WGK[::-1]])
_W7 = np.zeros(15)
_W7[1:7:2] = _WG[:3]
_W7[9:15:2] = _WG[2::-1]
_W7[7] = _WG[3]

# segment mappings of s in [0, 1] onto [a, b]
_LINEAR, _SQRT_LEFT, _SQRT_RIGHT, _SQRT_BOTH, _TAIL = range(5)


@dataclass(frozen=True, eq=False)
class DipoleResult:
    """Dipole emission of one wavelength.

    Attributes
    ----------
    u : (U,) output grid of u = kx / (k0 n_e) (dense near resonances unless given).
    K, P_top, P_bottom : (3, U) power per du for ``ORIENTATIONS``; R = K - P_top - P_bottom.
    purcell : (3,) int K du (total power / power in the unbounded emitter medium).
    fractions : (3, 5) over ``CHANNELS``; each row sums to one.
    u_air, u_esc, u_wg : channel limits (see module docstring).
    n_emitter : Re of the emitter index used for u and the normalization.
    emitter_k_ignored : Im of the emitter index that was dropped (0 for a lossless emitter).
    poles : (P,) complex poles u_r + i w used as breakpoints (or integrated by residue).
    pole_polarization : (P,) "s" or "p" per pole.
    error_estimate : (3,) absolute quadrature error estimate of purcell.
    n_evaluations : number of u points at which the stack was evaluated.
    """

    u: np.ndarray
    K: np.ndarray
    P_top: np.ndarray
    P_bottom: np.ndarray
    purcell: np.ndarray
    fractions: np.ndarray
    u_air: float
    u_esc: float
    u_wg: float
    n_emitter: float
    emitter_k_ignored: float
    poles: np.ndarray
    pole_polarization: tuple[str, ...]
    error_estimate: np.ndarray
    n_evaluations: int
    orientations: tuple[str, ...] = ORIENTATIONS
    channels: tuple[str, ...] = CHANNELS


# --------------------------------------------------------------------------- stack physics


@dataclass(frozen=True)
class _Geometry:
    eps: np.ndarray  # (M,) permittivities, emitter replaced by n_e^2
    d: np.ndarray  # (M,) thicknesses, 0 for the outer media
    emitter: int
    n_e: float
    k0: float
    z_plus: float  # dipole to the emitter's top interface (nm)
    z_minus: float  # dipole to the emitter's bottom interface (nm)


@dataclass(frozen=True)
class _Amplitudes:
    lz: np.ndarray  # (N,) l = kz_e / (k0 n_e)
    a_top: np.ndarray  # (N, 2) r_+ exp(2 i kz_e z_+), pol axis [s, p]
    a_bot: np.ndarray  # (N, 2)
    t_top: np.ndarray  # (N, 2) half-stack transmission (tangential field)
    t_bot: np.ndarray  # (N, 2)
    e_top: np.ndarray  # (N,) exp(i kz_e z_+)
    e_bot: np.ndarray  # (N,)
    q_sup: np.ndarray  # (N, 2) Re of the dimensionless admittances of the outer media
    q_sub: np.ndarray  # (N, 2)


def _amplitudes(g: _Geometry, u: np.ndarray) -> _Amplitudes:
    """Half-stack reflection / transmission seen from the emitter at in-plane u (N,)."""
    kz = kz_branch(g.eps[:, None] - (g.n_e * u)[None, :] ** 2)  # (M, N), units of k0
    q = np.stack([kz / g.n_e, kz * (g.n_e / g.eps)[:, None]], axis=-1)  # (M, N, 2)
    ph = np.exp(1j * g.k0 * g.d[1:-1, None] * kz[1:-1])[..., None]  # (M-2, N, 1)
    e = g.emitter
    r_top, t_top = half_stack(q[e:], ph[e:])
    r_bot, t_bot = half_stack(q[e::-1], ph[: e - 1][::-1])
    kze = kz[e]
    e_top = np.exp(1j * g.k0 * kze * g.z_plus)
    e_bot = np.exp(1j * g.k0 * kze * g.z_minus)
    return _Amplitudes(
        lz=kze / g.n_e,
        a_top=r_top * (e_top * e_top)[:, None],
        a_bot=r_bot * (e_bot * e_bot)[:, None],
        t_top=t_top,
        t_bot=t_bot,
        e_top=e_top,
        e_bot=e_bot,
        q_sup=q[-1].real,
        q_sub=q[0].real,
    )


@dataclass(frozen=True)
class _Waves:
    """Waves at the source per unit source strength, shared by every dipole kernel: upward
    (``up_*``) and downward (``dn_*``) for s, for p with an even source term (a vertical point
    dipole, a z line current) and for p with an odd one (horizontal, x); the amplitudes carried
    through into the superstrate (``tt``) and the substrate (``tb``), and 1 / |l_z|^2."""

    up_s: np.ndarray
    dn_s: np.ndarray
    up_pe: np.ndarray
    dn_pe: np.ndarray
    up_po: np.ndarray
    dn_po: np.ndarray
    tt: np.ndarray
    tb: np.ndarray
    inv_l2: np.ndarray


def _waves(a: _Amplitudes) -> _Waves:
    ap, am = a.a_top, a.a_bot
    den = 1.0 - ap * am
    return _Waves(
        up_s=(1.0 + am[:, 0]) / den[:, 0], dn_s=(1.0 + ap[:, 0]) / den[:, 0],
        up_pe=(1.0 + am[:, 1]) / den[:, 1], dn_pe=(1.0 + ap[:, 1]) / den[:, 1],
        up_po=(1.0 - am[:, 1]) / den[:, 1], dn_po=(1.0 - ap[:, 1]) / den[:, 1],
        tt=a.t_top * a.e_top[:, None], tb=a.t_bot * a.e_bot[:, None],
        inv_l2=1.0 / np.abs(a.lz) ** 2,
    )


def _spectra(g: _Geometry, u: np.ndarray) -> np.ndarray:
    """(6, N) real: K_h, K_v, P_top_h, P_top_v, P_bottom_h, P_bottom_v at u (N,)."""
    a = _amplitudes(g, u)
    w = _waves(a)
    ap, lz = a.a_top, a.lz
    up_s, dn_s, up_v, dn_v, up_h, dn_h = w.up_s, w.dn_s, w.up_pe, w.dn_pe, w.up_po, w.dn_po
    k_v = 1.5 * (u**3 / lz * (1.0 + ap[:, 1]) * up_v).real
    k_h = 0.75 * (u / lz * (1.0 + ap[:, 0]) * up_s + u * lz * (1.0 - ap[:, 1]) * up_h).real
    inv_l2, tt, tb = w.inv_l2, w.tt, w.tb
    pt_v = 0.75 * u**3 * inv_l2 * a.q_sup[:, 1] * np.abs(tt[:, 1] * up_v) ** 2
    pb_v = 0.75 * u**3 * inv_l2 * a.q_sub[:, 1] * np.abs(tb[:, 1] * dn_v) ** 2
    pt_h = 0.375 * u * (
        inv_l2 * a.q_sup[:, 0] * np.abs(tt[:, 0] * up_s) ** 2
        + a.q_sup[:, 1] * np.abs(tt[:, 1] * up_h) ** 2
    )
    pb_h = 0.375 * u * (
        inv_l2 * a.q_sub[:, 0] * np.abs(tb[:, 0] * dn_s) ** 2
        + a.q_sub[:, 1] * np.abs(tb[:, 1] * dn_h) ** 2
    )
    return np.stack([k_h, k_v, pt_h, pt_v, pb_h, pb_v])


@dataclass(frozen=True)
class _Characteristic:
    """Pole-free form of the stack response: r_+- = N_+- / M_+- with N, M entire in u (the
    recursion with unnormalized Fresnel numerators q_i -+ q_f, no divisions), E_+- =
    exp(2 i kz_e z_+-). Delta = M_+ M_- - N_+ N_- E_+ E_- vanishes at the resonances of the
    whole stack, and (1 +- a_+)(1 +- a_-) / D = (M_+ +- N_+ E_+)(M_- +- N_- E_-) / Delta.
    Only for |u| <~ 10 (no normalization: N, M grow like prod |q|)."""

    delta: np.ndarray  # (N, 2) pol axis [s, p]
    plus: np.ndarray | None  # (N, 2) (M_+ + N_+ E_+)(M_- + N_- E_-)
    minus: np.ndarray | None  # (N, 2) (M_+ - N_+ E_+)(M_- - N_- E_-)
    lz: np.ndarray | None  # (N,)
    q_sup: np.ndarray | None  # (N, 2) Re of the outer admittances
    q_sub: np.ndarray | None


def _nm(q: np.ndarray, phase2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entire numerator / denominator of the half-stack reflection (see _Characteristic);
    phase2 = exp(2 i kz_j d_j) of the finite layers."""
    n_ = np.zeros(q.shape[1:], dtype=complex)
    m_ = np.ones(q.shape[1:], dtype=complex)
    for j in range(q.shape[0] - 2, -1, -1):
        nr, dr = q[j] - q[j + 1], q[j] + q[j + 1]
        n_, m_ = nr * m_ + dr * n_, dr * m_ + nr * n_
        if j >= 1:
            n_ = n_ * phase2[j - 1]
    return n_, m_


def _characteristic(g: _Geometry, u: np.ndarray, full: bool = True) -> _Characteristic:
    """Delta (and, if ``full``, the residue numerators and outer admittances) at u (N,)."""
    kz = kz_branch(g.eps[:, None] - (g.n_e * u)[None, :] ** 2)
    q = np.stack([kz / g.n_e, kz * (g.n_e / g.eps)[:, None]], axis=-1)
    ph2 = np.exp(2j * g.k0 * g.d[1:-1, None] * kz[1:-1])[..., None]
    e = g.emitter
    n_t, m_t = _nm(q[e:], ph2[e:])
    n_b, m_b = _nm(q[e::-1], ph2[: e - 1][::-1])
    e_t = np.exp(2j * g.k0 * kz[e] * g.z_plus)[:, None]
    e_b = np.exp(2j * g.k0 * kz[e] * g.z_minus)[:, None]
    nt_e, nb_e = n_t * e_t, n_b * e_b
    if not full:
        return _Characteristic(delta=m_t * m_b - nt_e * nb_e, plus=None, minus=None, lz=None,
                               q_sup=None, q_sub=None)
    return _Characteristic(
        delta=m_t * m_b - nt_e * nb_e,
        plus=(m_t + nt_e) * (m_b + nb_e),
        minus=(m_t - nt_e) * (m_b - nb_e),
        lz=kz[e] / g.n_e,
        q_sup=q[-1].real,
        q_sub=q[0].real,
    )


def _delta(g: _Geometry, u: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return _characteristic(g, u, full=False).delta


# --------------------------------------------------------------------------- resonances


@dataclass(frozen=True)
class _Pole:
    u: float
    w: float
    pol: int  # 0 s, 1 p
    residue: np.ndarray | None = None  # (2,) complex residues of K_h, K_v integrands (tier 2)


def _scan_grid(u_max: float, singular: np.ndarray) -> np.ndarray:
    """Uniform grid in u plus grids uniform in zeta = sqrt|u_b^2 - u^2| on both sides of every
    singular branch point u_b (guided modes crowd there, evenly spaced in zeta)."""
    n = int(min(max(600, u_max / 2e-3), 4000))
    grids = [(np.arange(n) + 0.5) * (u_max / n)]
    zeta = (np.arange(150) + 0.5) * 2e-3  # up to ~0.3, i.e. |u - u_b| <~ 0.045 / u_b
    for ub in singular[(singular > 0) & (singular < u_max)]:
        grids.append(np.sqrt(ub**2 - zeta[zeta < ub] ** 2))
        grids.append(np.sqrt(ub**2 + zeta**2))
    u = np.unique(np.concatenate(grids))
    u = u[(u > 0) & (u < u_max)]
    near = np.min(np.abs(u[:, None] - singular[None, :]), axis=1) < 1e-12
    return u[~near]


def _scan_minima(
    g: _Geometry, u_max: float, singular: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local minima of |Delta| (s, p) on the scan grid: Newton starting points (u, pol) and the
    local grid spacing (a zero lies within about one spacing of its minimum; Delta has no
    poles, so |Delta| is V-shaped around each zero on the scale of the mode spacing, even for
    a mode far from the emitter that couples only weakly)."""
    u = _scan_grid(u_max, singular)
    dval = _delta(g, u)
    dabs = np.where(np.isfinite(dval), np.abs(dval), np.inf)
    with np.errstate(all="ignore"):
        dphi = np.abs(np.angle(dval[1:] / dval[:-1]))  # ~pi across a zero narrower than a step
    lo, hi, pols = [], [], []
    last = u.size - 1
    for pol in (0, 1):
        x = dabs[:, pol]
        idx = np.flatnonzero((x[1:-1] < x[:-2]) & (x[1:-1] <= x[2:])) + 1
        jump = np.flatnonzero(dphi[:, pol] > 1.0)  # a zero hidden next to another one
        lo.append(u[np.concatenate([idx - 1, np.maximum(jump - 1, 0)])])
        hi.append(u[np.concatenate([idx + 1, np.minimum(jump + 2, last)])])
        pols.append(np.full(idx.size + jump.size, pol))
    lo, hi, pol = np.concatenate(lo), np.concatenate(hi), np.concatenate(pols)
    # second level: 16 sub-intervals around each coarse minimum or phase jump, which separates
    # close (e.g. accidentally near-degenerate) zeros seen as one coarse minimum
    t = np.linspace(0.0, 1.0, 17)
    fine = lo[:, None] + (hi - lo)[:, None] * t[None, :]  # (C, 17)
    fabs = np.abs(_delta(g, fine.ravel())[np.arange(fine.size), np.repeat(pol, t.size)])
    fabs = np.where(np.isfinite(fabs), fabs, np.inf).reshape(fine.shape)
    c, j = np.nonzero((fabs[:, 1:-1] < fabs[:, :-2]) & (fabs[:, 1:-1] <= fabs[:, 2:]))
    j = j + 1
    return fine[c, j], pol[c], (hi - lo)[c] / (t.size - 1)


# Newton variable x per candidate: x = u far from the singular branch points; near one (u_b)
# x = zeta = sqrt(u_b^2 - u^2) for u < u_b and x = -sqrt(u^2 - u_b^2) (zeta = -i x) for u > u_b,
# in which Delta is analytic (it depends on the normal wavevector zeta, not on u).


def _u_of_x(x: np.ndarray, ub: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(ub), x, np.sqrt(np.abs(np.nan_to_num(ub) ** 2 - x * np.abs(x))))


def _x_of_u(u: np.ndarray, ub: np.ndarray) -> np.ndarray:
    ubz = np.nan_to_num(ub)
    return np.where(np.isnan(ub), u, np.sign(ubz - u) * np.sqrt(np.abs(ubz**2 - u**2)))


def _delta_of_x(g: _Geometry, x: np.ndarray, ub: np.ndarray, pol: np.ndarray) -> np.ndarray:
    return _delta(g, _u_of_x(x, ub))[np.arange(x.size), pol]


def _newton(
    g: _Geometry, x: np.ndarray, pol: np.ndarray, ub: np.ndarray, max_step: np.ndarray,
    iters: int = 12,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Damped Newton (|Re step| <= max_step) on the zeros of Delta(x) with real-axis finite
    differences (an analytic function's derivative along the real axis is its complex
    derivative). Returns the complex pole u_p, the last real iterate x, the complex pole x_p
    and dDelta/dx (all per candidate; NaN if lost)."""
    local = ~np.isnan(ub)
    ubz = np.nan_to_num(ub)
    x_new = x.astype(complex)
    d1 = np.ones(x.size, dtype=complex)
    n = x.size
    for _ in range(iters):
        h = np.where(local, np.minimum(1e-7, 0.25 * np.abs(x)), _FD_STEP * np.maximum(1.0, x))
        f3 = _delta_of_x(g, np.concatenate([x, x + h, x - h]), np.tile(ub, 3), np.tile(pol, 3))
        with np.errstate(all="ignore"):
            d1 = (f3[n : 2 * n] - f3[2 * n :]) / (2 * h)
            step = f3[:n] / d1
            step = np.clip(step.real, -max_step, max_step) + 1j * step.imag
            x_new = x - step
            zeta = np.where(x >= 0, x_new, -1j * x_new)  # local candidates only
        near_real = np.abs(zeta.real) >= np.abs(zeta.imag)
        proper = np.where(near_real, zeta.real > 0, zeta.imag > 0)
        x_loc = np.where(near_real, zeta.real, -zeta.imag)
        x_next = np.where(local, np.where(proper, x_loc, np.nan), x_new.real)
        x_next = np.where(np.isfinite(x_next) & (local | (x_next > 0)), x_next, np.nan)
        done = np.abs(x_next - x) <= 1e-13 * np.maximum(1.0, np.abs(x))
        x = x_next
        if np.all(done | np.isnan(x)):
            break
    with np.errstate(all="ignore"):
        zeta_p = np.where(x >= 0, x_new, -1j * x_new)
        u_p = np.where(local, np.sqrt(ubz**2 - zeta_p**2 + 0j), x_new)
    return u_p, x, x_new, d1


def _is_zero(
    g: _Geometry, x: np.ndarray, x_p: np.ndarray, d1: np.ndarray, ub: np.ndarray, pol: np.ndarray
) -> np.ndarray:
    """Check Delta(x) ~ Delta'(x - x_p) at x_r +- delta: a zero of Delta, not a minimum of
    |Delta| far from any zero (where Newton may stall)."""
    w = np.abs(x_p.imag)
    delta = np.maximum(w, 1e-6 * np.maximum(1.0, np.abs(x)))
    ok = np.isnan(ub) | (delta < 0.5 * np.abs(x))
    xr = x_p.real
    f2 = _delta_of_x(g, np.concatenate([xr + delta, xr - delta]), np.tile(ub, 2), np.tile(pol, 2))
    for sign, fs in ((1.0, f2[: xr.size]), (-1.0, f2[xr.size :])):
        with np.errstate(all="ignore"):
            model = d1 * (sign * delta - 1j * x_p.imag)
            ok &= np.abs(fs - model) <= 0.2 * np.abs(d1) * np.hypot(delta, w)
    return ok


def _find_poles(
    g: _Geometry, u_scan: float, hints: np.ndarray, singular: np.ndarray
) -> list[_Pole]:
    """Resonances of s and p (zeros of Delta) from the scan minima and the hints, refined by
    Newton, deduplicated, sorted by u. A zero is accepted within 4 grid spacings of its start
    (a distant one is found from its own minimum)."""
    u0, pol, spacing = _scan_minima(g, u_scan, singular)
    if hints.size:  # hints may be off by a few 1e-3 (another solver, other discretization)
        u0 = np.concatenate([u0, hints, hints])
        pol = np.concatenate([pol, np.zeros(hints.size, int), np.ones(hints.size, int)])
        spacing = np.concatenate([spacing, np.full(2 * hints.size, 5e-3)])
    if u0.size == 0:
        return []
    dist = np.abs(u0[:, None] - singular[None, :])
    ub = np.where(dist.min(axis=1) < 0.05, singular[np.argmin(dist, axis=1)], np.nan)
    x0 = _x_of_u(u0, ub)
    dx = np.where(np.isnan(ub), spacing, spacing * u0 / np.maximum(np.abs(x0), 1e-300))
    u_p, x, x_p, d1 = _newton(g, x0, pol, ub, max_step=2.0 * dx)
    ur, w = u_p.real, np.abs(u_p.imag)
    keep = np.isfinite(ur) & np.isfinite(w) & (ur > 0) & (w < _W_MAX * np.maximum(1.0, ur))
    keep &= np.abs(x - x0) <= 4.0 * dx
    keep &= np.min(np.abs(ur[:, None] - singular[None, :]), axis=1) > 1e-12
    idx = np.flatnonzero(keep)
    idx = idx[_is_zero(g, x[idx], x_p[idx], d1[idx], ub[idx], pol[idx])]
    poles: list[_Pole] = []
    for i in idx[np.argsort(ur[idx])]:
        if not any(p.pol == pol[i] and abs(p.u - ur[i]) < 1e-3 * max(p.w, w[i], 1e-9)
                   for p in poles):
            poles.append(_Pole(u=float(ur[i]), w=float(w[i]), pol=int(pol[i])))
    return poles


def _at_pole(g: _Geometry, p: _Pole, singular: np.ndarray) -> tuple[_Characteristic, complex]:
    """The characteristic functions at a (quasi-)real pole u_r and Delta'(u_r) (5-point
    central difference) of the pole's polarization."""
    h = min(1e-5 * max(1.0, p.u), 0.1 * float(np.min(np.abs(singular - p.u))))
    u = p.u + h * np.array([0.0, 1.0, -1.0, 2.0, -2.0])
    with np.errstate(all="ignore"):
        c = _characteristic(g, u)
        dp = c.delta[:, p.pol]
        d1 = (8 * (dp[1] - dp[2]) - (dp[3] - dp[4])) / (12 * h)
    return c, d1


def _residue_result(c: _Characteristic, p: _Pole, res: np.ndarray
                    ) -> tuple[np.ndarray, float, bool]:
    """(residues, weight pi |residue|, whether an outer medium radiates at the pole)."""
    if not np.all(np.isfinite(res)):
        raise ValueError(f"could not evaluate the residue of the resonance at u = {p.u:.9g}")
    radiating = bool(np.max(np.abs([c.q_sup[0], c.q_sub[0]])) > 1e-13)
    return res, float(np.pi * np.max(np.abs(res))), radiating


def _residue(g: _Geometry, p: _Pole, singular: np.ndarray) -> tuple[np.ndarray, float, bool]:
    """Residues of the complex K_h, K_v integrands at a (quasi-)real pole (numerator /
    Delta'), the weight pi |residue| and whether an outer medium radiates there."""
    c, d1 = _at_pole(g, p, singular)
    lz, ur = c.lz[0], p.u
    with np.errstate(all="ignore"):
        if p.pol == 0:
            res = np.array([0.75 * ur / lz * c.plus[0, 0] / d1, 0.0])
        else:
            res = np.array(
                [0.75 * ur * lz * c.minus[0, 1] / d1, 1.5 * ur**3 / lz * c.plus[0, 1] / d1]
            )
    return _residue_result(c, p, res)


@dataclass
class _Segments:
    a: np.ndarray
    b: np.ndarray
    kind: np.ndarray
    channel: np.ndarray  # 0: u < u_esc, 1: u_esc..u_wg, 2: u > u_wg
    pole: np.ndarray  # index into the tier-2 pole list, -1 if none


def _map(seg: _Segments, idx: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """u(s) and du/ds for parameters s (I, 15) of intervals in segments idx (I,)."""
    a, b, kind = seg.a[idx][:, None], seg.b[idx][:, None], seg.kind[idx][:, None]
    ba = np.where(kind == _TAIL, 0.0, b - a)
    c = np.where(kind == _TAIL, b, 0.0)  # tail scale stored in b
    one_m = 1.0 - s
    u = np.select(
        [kind == _LINEAR, kind == _SQRT_LEFT, kind == _SQRT_RIGHT, kind == _SQRT_BOTH],
        [a + ba * s, a + ba * s * s, a + ba * (1.0 - one_m * one_m), a + ba * s * s * (3 - 2 * s)],
        default=a + c * s / one_m,
    )
    jac = np.select(
        [kind == _LINEAR, kind == _SQRT_LEFT, kind == _SQRT_RIGHT, kind == _SQRT_BOTH],
        [ba + 0 * s, 2 * ba * s, 2 * ba * one_m, 6 * ba * s * one_m],
        default=c / (one_m * one_m),
    )
    return u, jac


def _adaptive_gk(
    f: Callable[[np.ndarray, np.ndarray], np.ndarray],
    seg: _Segments,
    n_comp: int,
    rtol: float,
    comp_scale: np.ndarray,
    max_rounds: int = 60,
    max_eval: int = 400_000,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Globally adaptive, vectorized Gauss-Kronrod 7/15 over all segments at once.

    f(u, segment_index) -> (n_comp, N). Returns per-segment integrals (S, n_comp), the error
    estimate per component (sum of |K15 - G7| over intervals, conservative) and the number of
    evaluations. Stops when the summed error of every component c is below rtol times
    |integral of component comp_scale[c]| (the total power of its orientation).
    """
    idx = np.arange(seg.a.size)
    s0, s1 = np.zeros(idx.size), np.ones(idx.size)
    vals = np.zeros((0, n_comp))
    errs = np.zeros((0, n_comp))
    keep_idx, keep_s0, keep_s1 = (np.zeros(0, int), np.zeros(0), np.zeros(0))
    n_eval = 0
    for _ in range(max_rounds):
        half = 0.5 * (s1 - s0)
        s = (0.5 * (s0 + s1))[:, None] + half[:, None] * _X15[None, :]
        u, jac = _map(seg, idx, s)
        fv = f(u.ravel(), np.repeat(idx, 15)).reshape(n_comp, idx.size, 15) * jac[None]
        n_eval += u.size
        k15 = np.einsum("cij,j->ic", fv, _W15) * half[:, None]
        g7 = np.einsum("cij,j->ic", fv, _W7) * half[:, None]
        keep_idx = np.concatenate([keep_idx, idx])
        keep_s0, keep_s1 = np.concatenate([keep_s0, s0]), np.concatenate([keep_s1, s1])
        vals = np.concatenate([vals, k15])
        errs = np.concatenate([errs, np.abs(k15 - g7)])
        scale = np.abs(vals.sum(axis=0))[comp_scale]  # each component vs its total power
        tol_c = rtol * np.maximum(scale, 1e-300)
        err_i = (errs / tol_c).max(axis=1)
        total = (errs.sum(axis=0) / tol_c).max()
        tol = 1.0
        if total <= tol:
            break
        order = np.argsort(-err_i)
        remaining = err_i.sum() - np.cumsum(err_i[order])
        n_split = int(np.searchsorted(-remaining, -0.25 * tol)) + 1
        split = order[:n_split]
        split = split[(keep_s1[split] - keep_s0[split]) > 1e-13]
        if split.size == 0 or n_eval + 30 * split.size > max_eval:
            warnings.warn(
                f"dipole quadrature stopped before rtol={rtol:g} (error {total * rtol:.2e} "
                f"relative, {n_eval} evaluations)",
                RuntimeWarning,
                stacklevel=3,
            )
            break
        mid = 0.5 * (keep_s0[split] + keep_s1[split])
        idx = np.repeat(keep_idx[split], 2)
        s0 = np.stack([keep_s0[split], mid], axis=1).ravel()
        s1 = np.stack([mid, keep_s1[split]], axis=1).ravel()
        mask = np.ones(keep_idx.size, bool)
        mask[split] = False
        keep_idx, keep_s0, keep_s1 = keep_idx[mask], keep_s0[mask], keep_s1[mask]
        vals, errs = vals[mask], errs[mask]
    else:
        warnings.warn(
            f"dipole quadrature did not reach rtol={rtol:g} (error {total * rtol:.2e} relative)",
            RuntimeWarning,
            stacklevel=3,
        )
    out = np.zeros((seg.a.size, n_comp))
    np.add.at(out, keep_idx, vals)
    return out, errs.sum(axis=0), n_eval


# --------------------------------------------------------------------------- assembly


def _validate(n: np.ndarray, d: np.ndarray, wl: float, emitter: int, z: float) -> None:
    if n.ndim != 1 or n.size != d.size + 2:
        raise ValueError(f"n must have shape (L+2,) = ({d.size + 2},), got {n.shape}")
    if np.any(~np.isfinite(n)) or np.any(~np.isfinite(d)) or np.any(d <= 0):
        raise ValueError("indices must be finite and thicknesses finite and > 0")
    if not (np.isfinite(wl) and wl > 0):
        raise ValueError("wavelength_nm must be > 0")
    if not 1 <= emitter <= d.size:
        raise ValueError(f"emitter must index a layer, 1..{d.size}, got {emitter}")
    if not 0 < z < d[emitter - 1]:
        raise ValueError(f"z_in_layer_nm must be inside the emitter layer (0, {d[emitter - 1]})")
    if n[emitter].real <= 0:
        raise ValueError("the emitter layer must be a dielectric (Re n > 0)")
    if n[0].imag < -1e-12 or n[-1].imag < -1e-12:
        raise ValueError("substrate / superstrate with gain (Im n < 0) are not supported")


def _channel_limits(n: np.ndarray, n_e: float) -> tuple[float, float, float]:
    layers = n[1:-1]
    diel = layers[(layers**2).real > 0]
    n_max = max(float(np.max(diel.real)), n_e)
    u_air = float(n[-1].real) / n_e
    u_wg = n_max / n_e
    u_esc = max(u_air, float(n[0].real) / n_e) if n[0].real < n_max else u_air
    return u_air, min(u_esc, u_wg), u_wg


def _breakpoints(
    g: _Geometry, n: np.ndarray, limits: tuple[float, ...], poles: list[_Pole],
    hints: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted breakpoints in (0, inf) and their 'singular branch point' flags."""
    n_e = g.n_e
    singular = np.array([1.0, n[0].real / n_e, n[-1].real / n_e])
    plain = [np.abs(n.real) / n_e, np.asarray(limits), hints]
    for p in poles:
        if p.residue is None:
            k = np.arange(int(np.ceil(np.log(max(0.05, 64 * p.w) / p.w) / np.log(4))) + 1)
            off = p.w * 4.0**k
            plain.append(np.concatenate([[p.u], p.u + off, p.u - off]))
    pts = np.concatenate([singular, *plain])
    flag = np.concatenate([np.ones(3, bool), np.zeros(pts.size - 3, bool)])
    ok = np.isfinite(pts) & (pts > 0)
    pts, flag = pts[ok], flag[ok]
    order = np.lexsort((~flag, pts))
    pts, flag = pts[order], flag[order]
    new = np.concatenate([[True], np.diff(pts) > 1e-13 * np.maximum(1.0, pts[1:])])
    group = np.cumsum(new) - 1
    flags = np.zeros(group[-1] + 1, bool)
    np.logical_or.at(flags, group, flag)
    return pts[new], flags


def _segments(
    pts: np.ndarray, flags: np.ndarray, tier2: list[_Pole], limits: tuple[float, float, float],
    tail_scale: float,
) -> _Segments:
    """Segments between breakpoints, tier-2 windows, a finite tail piece and the infinite tail."""
    windows = []
    centers = np.array([p.u for p in tier2])
    for p in tier2:
        far = np.abs(pts - p.u) > 1e-6 * max(1.0, p.u)
        pts, flags = pts[far], flags[far]
    for i, p in enumerate(tier2):
        others = np.concatenate([pts, centers[np.arange(centers.size) != i]])
        delta = min(0.5 * np.min(np.abs(others - p.u)), 1e-2 * max(1.0, p.u))
        windows.append((p.u - delta, p.u, p.u + delta, i))
    for lo, mid, hi, _ in windows:
        pts = np.concatenate([pts, [lo, mid, hi]])
        flags = np.concatenate([flags, [False, False, False]])
    pts, inverse = np.unique(np.concatenate([[0.0], pts]), return_inverse=True)
    merged = np.zeros(pts.size, bool)
    np.logical_or.at(merged, inverse, np.concatenate([[False], flags]))
    flags = merged
    a, b = pts[:-1], pts[1:]
    fl, fr = flags[:-1], flags[1:]
    kind = np.where(fl & fr, _SQRT_BOTH, np.where(fl, _SQRT_LEFT, np.where(fr, _SQRT_RIGHT, 0)))
    pole = np.full(a.size, -1)
    keep = np.ones(a.size, bool)
    for lo, mid, hi, i in windows:  # [u_r, u_r + delta] integrates f(u_r + t) + f(u_r - t)
        keep &= ~((a == lo) & (b == mid))
        pole[(a == mid) & (b == hi)] = i
    a, b, kind, pole, flags = a[keep], b[keep], kind[keep], pole[keep], flags[np.r_[keep, True]]
    last = pts[-1]
    extra = max(0.5, 0.25 * last)
    a = np.concatenate([a, [last, last + extra]])
    b = np.concatenate([b, [last + extra, tail_scale]])
    kind = np.concatenate([kind, [_SQRT_LEFT if flags[-1] else _LINEAR, _TAIL]])
    pole = np.concatenate([pole, [-1, -1]])
    _, u_esc, u_wg = limits
    right = np.where(kind == _TAIL, np.inf, b)
    channel = np.where(right <= u_esc * (1 + 1e-12), 0, np.where(right <= u_wg * (1 + 1e-12), 1, 2))
    return _Segments(a=a, b=b, kind=kind, channel=channel, pole=pole)


def _output_grid(u_hi: float, poles: list[_Pole]) -> np.ndarray:
    grid = [np.linspace(0.0, u_hi, 1201)]
    far = np.geomspace(8, 1e4, 16)
    rel = np.concatenate([np.linspace(-8, 8, 33), far, -far])
    for p in poles:
        if p.residue is None:
            grid.append(p.u + p.w * rel)
    u = np.unique(np.concatenate(grid))
    return u[(u >= 0) & (u <= u_hi)]


def _orient(x: np.ndarray) -> np.ndarray:
    """(h, v, ...) rows -> (horizontal, vertical, isotropic)."""
    return np.stack([x[0], x[1], (2 * x[0] + x[1]) / 3])


@dataclass(frozen=True)
class _Kernel:
    """What distinguishes a dipole family: its spectra, its pole residues, its components.

    ``spectra(g, u)`` returns (3 m, N) rows: m K components, then m P_top, then m P_bottom;
    ``residue(g, pole, singular)`` the (m,) residues of the K rows with the pole's weight and
    whether an outer medium radiates there; ``groups`` labels the 3 m rows for the error
    control of the quadrature (rows of one dipole component share a label).
    """

    spectra: Callable[[_Geometry, np.ndarray], np.ndarray]
    residue: Callable[[_Geometry, _Pole, np.ndarray], tuple[np.ndarray, float, bool]]
    n_k: int

    @property
    def groups(self) -> np.ndarray:
        return np.tile(np.arange(self.n_k), 3)


@dataclass(frozen=True)
class _Integrated:
    """The channel integrals of one dipole family at one position."""

    g: _Geometry
    totals: np.ndarray  # (3 channel segments, 3 m rows)
    error: np.ndarray  # (3 m,)
    n_eval: int
    poles: list[_Pole]  # resolvable ones, then delta-like ones
    limits: tuple[float, float, float]
    u_hi: float  # upper end of the default output grid
    n_e: float
    emitter_k: float


def _checked_inputs(
    n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float, emitter: int, z_in_layer_nm: float,
    u: np.ndarray | None, rtol: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    n = np.asarray(n, dtype=complex).ravel()
    d = np.asarray(d_nm, dtype=float).ravel()
    _validate(n, d, float(wavelength_nm), emitter, float(z_in_layer_nm))
    if not 0 < rtol < 0.1:
        raise ValueError(f"rtol must be in (0, 0.1), got {rtol}")
    if u is not None:
        u = np.asarray(u, dtype=float).ravel()
        if np.any(~np.isfinite(u)) or np.any(u < 0):
            raise ValueError("the output grid u must be finite and >= 0")
    return n, d, u


def _integrate(
    kernel: _Kernel, n: np.ndarray, d: np.ndarray, wavelength_nm: float, emitter: int,
    z_in_layer_nm: float, pole_hints: Sequence[float], rtol: float,
) -> _Integrated:
    """Pole-aware adaptive integration of a dipole family's spectra over u, per channel."""
    n_e = float(n[emitter].real)
    eps = n * n
    eps[emitter] = n_e * n_e
    g = _Geometry(eps=eps, d=np.concatenate([[0.0], d, [0.0]]), emitter=emitter, n_e=n_e,
                  k0=2 * np.pi / float(wavelength_nm), z_plus=d[emitter - 1] - z_in_layer_nm,
                  z_minus=float(z_in_layer_nm))
    limits = _channel_limits(n, n_e)
    singular = np.array([1.0, n[0].real / n_e, n[-1].real / n_e])
    hints = np.real(np.asarray(pole_hints, dtype=complex)).ravel()
    hints = hints[np.isfinite(hints) & (hints > 0)]

    poles, tier2 = _classify_poles(g, n, singular, hints, rtol, kernel.residue)
    pts, flags = _breakpoints(g, n, limits, poles, hints)
    z_min = min(g.z_plus, g.z_minus)
    tail_scale = max(0.5, 1.0 / (2 * g.k0 * n_e * z_min))
    seg = _segments(pts, flags, tier2, limits, tail_scale)
    m = kernel.n_k
    res = np.array([p.residue for p in tier2]).reshape(-1, m) if tier2 else np.zeros((0, m))
    pu = np.array([p.u + 1j * p.w for p in tier2])

    def integrand(uu: np.ndarray, si: np.ndarray) -> np.ndarray:
        """Spectra; in a tier-2 window [u_r, u_r + delta] the symmetric sum f(u_r + t) +
        f(u_r - t) (the 1/t parts cancel) minus the pole's Lorentzian (added analytically)."""
        pid = seg.pole[si]
        sel = np.flatnonzero(pid >= 0)
        mirror = 2 * pu[pid[sel]].real - uu[sel]
        with np.errstate(all="ignore"):
            out = kernel.spectra(g, np.concatenate([uu, mirror]))
        out, out_m = out[:, : uu.size], out[:, uu.size :]
        if sel.size:
            out[:, sel] += out_m
            r, up = res[pid[sel]], pu[pid[sel]]
            pair = 1.0 / (uu[sel] - up) + 1.0 / (mirror - up)
            out[:m, sel] -= (r * pair[:, None]).real.T
        return out

    per_seg, err, n_eval = _adaptive_gk(integrand, seg, 3 * m, rtol, kernel.groups)
    totals = np.zeros((3, 3 * m))  # channel segment x row
    np.add.at(totals, seg.channel, per_seg)
    for i, p in enumerate(tier2):  # delta-like poles: analytic window integral, all in K
        ch = 0 if p.u < limits[1] else (1 if p.u < limits[2] else 2)
        delta = seg.b[seg.pole == i].max() - p.u
        totals[ch, :m] += -2.0 * np.arctan2(delta, p.w) * p.residue.imag
    return _Integrated(g=g, totals=totals, error=err, n_eval=n_eval, poles=poles + tier2,
                       limits=limits, u_hi=max(float(pts.max()) * 1.25, 1.5), n_e=n_e,
                       emitter_k=float(n[emitter].imag))


def _evaluate_on(kernel: _Kernel, g: _Geometry, u: np.ndarray) -> np.ndarray:
    """A family's spectra on an output grid; points on the branch point u = 1 are nudged."""
    u_eval = np.where(np.abs(u - 1.0) < 1e-12, 1.0 - _NUDGE, u)
    with np.errstate(all="ignore"):
        out = kernel.spectra(g, u_eval)
    return np.where(np.isfinite(out), out, 0.0)


def _output_grid_for(it: _Integrated, u: np.ndarray | None) -> np.ndarray:
    return _output_grid(it.u_hi, it.poles) if u is None else u


def dipole_emission(
    n: np.ndarray,
    d_nm: np.ndarray,
    wavelength_nm: float,
    emitter: int,
    z_in_layer_nm: float,
    u: np.ndarray | None = None,
    pole_hints: Sequence[float] = (),
    rtol: float = 1e-6,
) -> DipoleResult:
    """Power dissipation spectrum K(u), Purcell factors and channel fractions of a dipole.

    Parameters
    ----------
    n : (L+2,) complex indices ``[substrate, layers bottom..top, superstrate]`` at one wavelength.
    d_nm : (L,) layer thicknesses (nm).
    wavelength_nm : vacuum wavelength (nm).
    emitter : index of the emitter layer in ``n`` (1..L); its Im(n) is ignored.
    z_in_layer_nm : dipole height above the emitter layer's bottom interface, 0 < z < d.
    u : output grid for K / P_top / P_bottom (default: automatic, dense near resonances).
        The integrals never depend on it.
    pole_hints : u positions of mode peaks (e.g. Re(neff) / n_e from a mode solver), refined
        and used as breakpoints.
    rtol : relative accuracy of the integrals (relative to the total power).

    See the module docstring for formulas, normalization and channel definitions.
    """
    n, d, u = _checked_inputs(n, d_nm, wavelength_nm, emitter, z_in_layer_nm, u, rtol)
    it = _integrate(POINT_DIPOLES, n, d, wavelength_nm, emitter, float(z_in_layer_nm),
                    pole_hints, rtol)
    fractions, purcell = _fractions(it.totals)
    u_out = _output_grid_for(it, u)
    spec = _evaluate_on(POINT_DIPOLES, it.g, u_out)
    return DipoleResult(
        u=u_out,
        K=_orient(spec[0:2]),
        P_top=_orient(spec[2:4]),
        P_bottom=_orient(spec[4:6]),
        purcell=purcell,
        fractions=fractions,
        u_air=it.limits[0],
        u_esc=it.limits[1],
        u_wg=it.limits[2],
        n_emitter=it.n_e,
        emitter_k_ignored=it.emitter_k,
        poles=np.array([p.u + 1j * p.w for p in it.poles], dtype=complex),
        pole_polarization=tuple("sp"[p.pol] for p in it.poles),
        error_estimate=_orient(it.error[0:2]),
        n_evaluations=it.n_eval + spec.shape[1],
    )


def _spp_index(n: np.ndarray) -> float:
    """Largest Re sqrt(e_m e_d / (e_m + e_d)) over metal / dielectric neighbours (0 if none)."""
    eps = n * n
    best = 0.0
    for j in range(eps.size - 1):
        e1, e2 = eps[j], eps[j + 1]
        if (e1.real < 0) != (e2.real < 0) and abs(e1 + e2) > 1e-12:
            best = max(best, float(np.sqrt(e1 * e2 / (e1 + e2)).real))
    return best


def _classify_poles(
    g: _Geometry, n: np.ndarray, singular: np.ndarray, hints: np.ndarray, rtol: float,
    residue: Callable[[_Geometry, _Pole, np.ndarray], tuple[np.ndarray, float, bool]],
) -> tuple[list[_Pole], list[_Pole]]:
    """Split resonances into resolvable poles (breakpoints) and delta-like ones (residue)."""
    scan_max = 1.2 * max(float(np.max(np.abs(n.real))) / g.n_e, 1.0, _spp_index(n) / g.n_e) + 0.3
    scan_max = min(scan_max, 10.0)
    found = _find_poles(g, scan_max, hints, singular)
    poles, tier2 = [], []
    for p in found:
        if p.w >= _W_MIN * max(1.0, p.u):
            poles.append(p)
            continue
        res, weight, radiating = residue(g, p, singular)
        if not radiating:
            tier2.append(_Pole(u=p.u, w=p.w, pol=p.pol, residue=res))
        elif weight <= 10 * rtol:  # too light to matter: breakpoints only
            poles.append(_Pole(u=p.u, w=max(p.w, 1e-13 * max(1.0, p.u)), pol=p.pol))
        else:
            raise ValueError(
                f"a resonance at u = {p.u:.9g} ({'sp'[p.pol]}) is narrower than {_W_MIN:g} "
                f"(width {p.w:.2g}) while an outer medium radiates there (a nearly lossless "
                f"mode that leaks weakly); its weight ({weight:.2g}) and its split between the "
                "channels cannot be integrated reliably: add some absorption (k >= ~1e-7) to "
                "the layers that guide it"
            )
    return poles, tier2


def _fractions(totals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3 channel segments, 6 components) -> fractions (3, 5), purcell (3,)."""
    k = totals[:, 0:2]  # (3 seg, h/v)
    pt, pb = totals[:, 2:4], totals[:, 4:6]
    r = k - pt - pb
    powers = np.stack([pt.sum(0), pb.sum(0), r[1], r[2], r[0]])  # (5, 2) in CHANNELS order
    powers = _orient(powers.T)  # (3, 5)
    purcell = powers.sum(axis=1)
    return powers / purcell[:, None], purcell


#: Point dipoles (horizontal, vertical): K rows h, v; P_top rows h, v; P_bottom rows h, v.
POINT_DIPOLES = _Kernel(spectra=_spectra, residue=_residue, n_k=2)
