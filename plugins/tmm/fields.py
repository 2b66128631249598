"""Mode field profiles and confinement factors (closed-form, layer by layer).

Conventions (docs/conventions.md): exp(-i omega t), N = n + i k (k > 0 absorbing), z = 0 at the
substrate top, media ``[substrate, layer_1 .. layer_L, superstrate]``, fields
~ exp(i (beta x - omega t)) with beta = k0 neff, vacuum impedance 1 (H is Z0 H_SI).
From curl E = i k0 H and curl H = -i k0 eps E:

* TE (Ey, Hx, Hz):  Hx = (i / k0) dEy/dz,  Hz = neff Ey;  Re(E x H*)_x = Re(neff) |Ey|^2;
* TM (Hy, Ex, Ez):  Ex = -(i / (k0 eps)) dHy/dz,  Ez = -(neff / eps) Hy;
  Re(E x H*)_x = -Re(Ez Hy*) = Re(neff / eps) |Hy|^2.

Both are positive for a forward mode in a lossless dielectric. In layer j (thickness d, bottom
at z_j, kz = k0 sqrt(eps_j - neff^2) with Im kz >= 0) the field is written in the bounded basis
``psi = A exp(i kz s) + B exp(i kz (d - s))``, s = z - z_j, so that every integral
int |psi|^2, int |dpsi/dz|^2, int psi^2 is a closed-form sum of exponentials without overflow;
the cladding tails ``C exp(-i kz_s z)`` (z < 0) and ``C exp(i kz_c (z - z_top))`` are integrated
to infinity in closed form. The coefficients come from two-sided shooting (bottom-up and
top-down, joined at the interface where the mode is largest), which stays accurate for modes
localised anywhere in the stack (e.g. the Ag/Si plasmon under 440 nm of dielectrics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from qdcavity.modeset import peak_e_scale

from .modes import _Ctx, _ctx, _expm1_pair, _sqrt_proper, _sqrt_sheet

__all__ = ["Confinement", "confinement", "confinements", "confinements_and_profiles",
           "gain_overlap", "mode_profile"]


class _ModeLike(Protocol):
    neff: complex
    polarization: str
    kz_branch: dict[str, str]


@dataclass(frozen=True)
class _Coef:
    """Field coefficients of one mode (psi = Ey for TE, Hy for TM)."""

    ctx: _Ctx
    neff: complex
    tm: bool
    kz: np.ndarray  # (L+2,) 1/nm: claddings on the mode's sheets, layers with Im >= 0
    z: np.ndarray  # (L+1,) interface positions, nm
    A: np.ndarray  # (L,) up-going amplitude at the layer bottom
    B: np.ndarray  # (L,) down-going amplitude at the layer top
    Cs: complex  # substrate amplitude at z = 0
    Cc: complex  # superstrate amplitude at z_top
    p: np.ndarray  # (L+2,) 1 (TE) or eps (TM)


def _mode_sheets(mode: _ModeLike) -> tuple[bool, bool, bool]:
    br = getattr(mode, "kz_branch", None) or {}
    return (mode.polarization.upper() == "TM", br.get("substrate") == "outgoing",
            br.get("superstrate") == "outgoing")


def _coefficients_many(ctx: _Ctx, neff: np.ndarray, tm: np.ndarray, out_s: np.ndarray,
                       out_c: np.ndarray) -> list[_Coef]:
    """Field coefficients of M modes at once (every array has shape (M,))."""
    eps, kd, k0 = ctx.eps, ctx.kd, ctx.k0
    L = kd.size
    M = neff.size
    nn = (neff * neff)[:, None]
    kap = np.empty((M, L + 2), dtype=complex)
    kap[:, 0] = _sqrt_sheet(eps[0] - nn[:, 0], out_s)
    kap[:, -1] = _sqrt_sheet(eps[-1] - nn[:, 0], out_c)
    kap[:, 1:-1] = _sqrt_proper(eps[1:-1] - nn)
    p = np.where(tm[:, None], eps, 1.0 + 0j)
    theta = kap[:, 1:-1] * kd
    em1, g = _expm1_pair(2j * theta)
    g = g * kd
    ct = 1.0 + 0.5 * em1
    k2g = kap[:, 1:-1] ** 2 * g / p[:, 1:-1]
    pg = p[:, 1:-1] * g
    # bottom-up: ub[:, j] * exp(Sb[:, j]) = (psi, phi) at interface j (phi = dpsi/dzeta / p),
    # max |ub[:, j]| = 1; top-down likewise
    ub = np.empty((M, L + 1, 2), dtype=complex)
    Sb = np.empty((M, L + 1), dtype=complex)
    ub[:, 0, 0], ub[:, 0, 1] = 1.0, -1j * kap[:, 0] / p[:, 0]
    Sb[:, 0] = _normalize(ub[:, 0])
    for j in range(L):
        u0, u1 = ub[:, j, 0], ub[:, j, 1]
        ub[:, j + 1, 0] = ct[:, j] * u0 + pg[:, j] * u1
        ub[:, j + 1, 1] = ct[:, j] * u1 - k2g[:, j] * u0
        Sb[:, j + 1] = Sb[:, j] + _normalize(ub[:, j + 1]) - 1j * theta[:, j]
    ut = np.empty((M, L + 1, 2), dtype=complex)
    St = np.empty((M, L + 1), dtype=complex)
    ut[:, L, 0], ut[:, L, 1] = 1.0, 1j * kap[:, -1] / p[:, -1]
    St[:, L] = _normalize(ut[:, L])
    for j in range(L - 1, -1, -1):
        u0, u1 = ut[:, j + 1, 0], ut[:, j + 1, 1]
        ut[:, j, 0] = ct[:, j] * u0 - pg[:, j] * u1
        ut[:, j, 1] = k2g[:, j] * u0 + ct[:, j] * u1
        St[:, j] = St[:, j + 1] + _normalize(ut[:, j]) - 1j * theta[:, j]
    rows = np.arange(M)
    m = np.argmax((Sb + St).real, axis=1)
    um, vm = ut[rows, m], ub[rows, m]
    overlap = np.sum(np.conj(um) * vm, axis=1) / np.sum(np.abs(um) ** 2, axis=1)
    logscale = np.log(overlap + 0j) + Sb[rows, m] - St[rows, m]
    below = np.arange(L + 1)[None, :] <= m[:, None]
    logs = np.where(below, Sb, St + logscale[:, None])
    vec = np.where(below[:, :, None], ub, ut)
    logs = logs - logs.real.max(axis=1, keepdims=True)
    states = vec * np.exp(logs)[:, :, None]  # (psi, phi) at each interface, O(1)
    iq = 1.0 / (1j * kap[:, 1:-1] / p[:, 1:-1])
    A = 0.5 * (states[:, :-1, 0] + states[:, :-1, 1] * iq)
    B = 0.5 * (states[:, 1:, 0] - states[:, 1:, 1] * iq)
    z = np.concatenate([[0.0], np.cumsum(kd / k0)])
    return [_Coef(ctx=ctx, neff=complex(neff[i]), tm=bool(tm[i]), kz=k0 * kap[i], z=z, A=A[i],
                  B=B[i], Cs=complex(states[i, 0, 0]), Cc=complex(states[i, L, 0]), p=p[i])
            for i in range(M)]


def _normalize(v: np.ndarray) -> np.ndarray:
    """Scale the rows of the (M, 2) view ``v`` in place to max |.| = 1; returns log(scale)."""
    nrm = np.abs(v).max(axis=1)
    v /= nrm[:, None]
    return np.log(nrm)


def _coef_for(n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float, mode: _ModeLike) -> _Coef:
    return _coefficients_of(n, d_nm, wavelength_nm, [mode])[0]


def _coefficients_of(n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float,
                     modes: list[_ModeLike]) -> list[_Coef]:
    """Field coefficients of several modes of one stack, in one vectorised computation."""
    ctx = _ctx(n, d_nm, wavelength_nm)
    sheets = np.array([_mode_sheets(m) for m in modes], dtype=bool)
    return _coefficients_many(ctx, np.array([complex(m.neff) for m in modes]), sheets[:, 0],
                              sheets[:, 1], sheets[:, 2])


def _psi(c: _Coef, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """psi, dpsi/dz (1/nm) and the medium index at every z (an interface is in the upper one)."""
    z = np.asarray(z, dtype=float)
    med = np.searchsorted(c.z, z, side="right")  # 0 substrate, j layer j, L+1 superstrate
    psi = np.zeros(z.shape, dtype=complex)
    dpsi = np.zeros(z.shape, dtype=complex)
    L = c.A.size
    with np.errstate(all="ignore"):
        sel = med == 0
        e = c.Cs * np.exp(-1j * c.kz[0] * z[sel])
        psi[sel], dpsi[sel] = e, -1j * c.kz[0] * e
        sel = med == L + 1
        e = c.Cc * np.exp(1j * c.kz[-1] * (z[sel] - c.z[-1]))
        psi[sel], dpsi[sel] = e, 1j * c.kz[-1] * e
        for j in range(1, L + 1):
            sel = med == j
            if not sel.any():
                continue
            k, d = c.kz[j], c.z[j] - c.z[j - 1]
            s = z[sel] - c.z[j - 1]
            up = c.A[j - 1] * np.exp(1j * k * s)
            dn = c.B[j - 1] * np.exp(1j * k * (d - s))
            psi[sel], dpsi[sel] = up + dn, 1j * k * (up - dn)
    return psi, dpsi, med


def _components(c: _Coef, z: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                 np.ndarray]:
    """Unscaled field components, |E|^2 and the medium index at every z."""
    psi, dpsi, med = _psi(c, z)
    k0, neff = c.ctx.k0, c.neff
    if c.tm:
        eps = c.ctx.eps[med]
        comps = {"Hy": psi, "Ex": -1j * dpsi / (k0 * eps), "Ez": -neff * psi / eps}
        e2 = np.abs(comps["Ex"]) ** 2 + np.abs(comps["Ez"]) ** 2
    else:
        comps = {"Ey": psi, "Hx": 1j * dpsi / k0, "Hz": neff * psi}
        e2 = np.abs(psi) ** 2
    return comps, e2, med


def _peak(c: _Coef) -> float:
    """z of max |E| over the stack and the cladding sides of its two outer interfaces (where the
    cladding fields of non-leaky modes peak; TM |E| jumps there): 256 samples per layer, refined
    by a parabola through the best three."""
    zi = c.z
    edges = np.array([-1e-9, zi[-1] + 1e-9])
    if zi.size == 1:
        _, e2, _ = _components(c, edges)
        return float(edges[int(np.argmax(e2))])
    t = np.linspace(0.0, 1.0, 256)
    z = np.concatenate([a + (b - a) * t for a, b in zip(zi[:-1], zi[1:], strict=True)])
    z[0::256] += 1e-9  # inside each layer, not on the interface above it
    z[255::256] -= 1e-9
    z = np.concatenate([z, edges])
    _, e2, _ = _components(c, z)
    i = int(np.argmax(e2))
    if i >= z.size - 2 or i % 256 in (0, 255):
        return float(z[i])
    y0, y1, y2 = e2[i - 1], e2[i], e2[i + 1]
    den = y0 - 2 * y1 + y2
    shift = 0.5 * (y0 - y2) / den if den < 0 else 0.0
    return float(z[i] + shift * (z[i + 1] - z[i]))


def mode_profile(n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float, mode: _ModeLike,
                 z_nm: np.ndarray, normalize: str = "grid") -> dict[str, Any]:
    """Field profile of ``mode`` on ``z_nm`` (nm; z = 0 at the substrate top, may extend into
    both claddings; a point on an interface is assigned to the upper medium).

    Returns a dict with ``z_nm``, ``medium`` (index into the media array), the field components
    (TE: ``Ey``, ``Hx``, ``Hz``; TM: ``Hy``, ``Ex``, ``Ez``), ``E_abs2`` = |E|^2,
    ``Sx`` = Re(E x H*)_x, ``neff`` and ``polarization``. All components share one complex
    scale: ``normalize="grid"`` makes max |E| over ``z_nm`` equal to 1; ``normalize="stack"``
    makes it 1 at the true maximum over the stack and the cladding sides of its outer interfaces
    (where non-leaky cladding fields peak; located to ~1e-8), independent of ``z_nm``. The
    dominant E component is real and positive at that maximum.
    """
    if normalize not in ("grid", "stack"):
        raise ValueError("normalize must be 'grid' or 'stack'")
    return _profile(_coef_for(n, d_nm, wavelength_nm, mode), z_nm, normalize)


def _profile(c: _Coef, z_nm: np.ndarray, normalize: str) -> dict[str, Any]:
    """:func:`mode_profile` from the mode's field coefficients."""
    z = np.asarray(z_nm, dtype=float)
    comps, e2, med = _components(c, z)
    e_names = ("Ex", "Ez") if c.tm else ("Ey",)
    scale = None
    if normalize == "stack":
        scale = peak_e_scale(_components(c, np.array([_peak(c)]))[0], e_names, 0)
    elif z.size:
        scale = peak_e_scale(comps, e_names, int(np.argmax(e2)))
    if scale is not None:
        e2 = e2 * abs(scale) ** 2
        comps = {k: v * scale for k, v in comps.items()}
    if c.tm:
        sx = (-(comps["Ez"] * np.conj(comps["Hy"]))).real
    else:
        sx = (comps["Ey"] * np.conj(comps["Hz"])).real
    return {"z_nm": z, "medium": med, **comps, "E_abs2": e2, "Sx": sx,
            "neff": c.neff, "polarization": "TM" if c.tm else "TE"}


# --------------------------------------------------------------------------- closed-form integrals


def _abs2_parts(A: Any, B: Any, k: Any, d: Any) -> tuple[Any, Any]:
    """The two parts of int_0^d |A e^{iks} + B e^{ik(d-s)}|^2 ds (Im k >= 0): the squared
    amplitudes' ``(|A|^2 + |B|^2) int e^{-2 Im k s}`` and the cross term. Scalars or arrays
    (broadcast); |d/ds|^2 of the same field integrates to ``|k|^2 (parts[0] - parts[1])``."""
    ki, kr = np.imag(k), np.real(k)
    with np.errstate(all="ignore"):
        f = np.where(ki * d < 1e-12, d, -np.expm1(-2 * ki * d) / (2 * ki))
    cross = 2.0 * np.exp(-ki * d) * d * np.sinc(kr * d / math.pi) * (A * np.conj(B)).real
    return (np.abs(A) ** 2 + np.abs(B) ** 2) * f, cross


def _int_abs2(A: complex, B: complex, k: complex, d: float) -> float:
    """int_0^d |A e^{iks} + B e^{ik(d-s)}|^2 ds (Im k >= 0)."""
    diagonal, cross = _abs2_parts(A, B, k, d)
    return float(diagonal + cross)


def _int_sq(A: complex, B: complex, k: complex, d: float) -> complex:
    """int_0^d (A e^{iks} + B e^{ik(d-s)})^2 ds (non-conjugated)."""
    _, g = _expm1_pair(np.array([2j * k * d]))
    return complex((A * A + B * B) * d * g[0] + 2 * A * B * d * np.exp(1j * k * d))


def _tail_abs2(C: Any, k: Any, window: float) -> tuple[Any, Any]:
    """int_0^inf |C e^{iks}|^2 ds where Im k > 0 (``decays``), else int_0^window: ``(value,
    decays)``, scalars or arrays (broadcast)."""
    ki = np.imag(k)
    decays = ki > 0
    with np.errstate(all="ignore"):
        grow = np.where(-ki * window < 1e-12, window, np.expm1(-2 * ki * window) / (-2 * ki))
        value = np.abs(C) ** 2 * np.where(decays, 1.0 / (2 * np.where(decays, ki, 1.0)), grow)
    return value, decays


class Confinement(tuple):
    """``(gamma_E, gamma_P)`` per medium (arrays of shape (L+2,)), with diagnostics.

    Attributes: ``tails_finite`` (both cladding fields decay, tails integrated to infinity),
    ``truncated`` (claddings whose field does not decay -- leaky sheet -- and whose tail was
    integrated only over ``window_nm`` from the interface; the gammas are then window-dependent)
    and ``window_nm``.
    """

    tails_finite: bool
    truncated: tuple[str, ...]
    window_nm: float

    def __new__(cls, gamma_e: np.ndarray, gamma_p: np.ndarray, truncated: tuple[str, ...],
                window_nm: float) -> Confinement:
        obj = super().__new__(cls, (gamma_e, gamma_p))
        obj.truncated = truncated
        obj.tails_finite = not truncated
        obj.window_nm = window_nm
        return obj

    @property
    def gamma_E(self) -> np.ndarray:  # noqa: N802 - physics name
        return self[0]

    @property
    def gamma_P(self) -> np.ndarray:  # noqa: N802 - physics name
        return self[1]


def _layer_terms_many(cs: list[_Coef], window: float
                      ) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Per medium, for several modes of one stack at once (shape (M, L+2)): the integrals of
    the field that gamma_E and gamma_P weigh, and the claddings integrated only over
    ``window`` (non-decaying tails)."""
    ctx = cs[0].ctx
    k0, eps = ctx.k0, ctx.eps
    L = cs[0].A.size
    kz = np.array([c.kz for c in cs])
    neff = np.array([c.neff for c in cs])[:, None]
    tm = np.array([c.tm for c in cs])[:, None]
    a2 = np.empty(kz.shape)
    d2 = np.empty(kz.shape)
    if L:
        k = kz[:, 1:-1]
        diagonal, cross = _abs2_parts(np.array([c.A for c in cs]), np.array([c.B for c in cs]),
                                      k, np.diff(cs[0].z))
        a2[:, 1:-1] = diagonal + cross
        d2[:, 1:-1] = np.abs(k) ** 2 * (diagonal - cross)
    # tails: the substrate's C e^{-ik z} (z < 0) is C e^{iks}, s = -z > 0, like the top one
    kc = kz[:, [0, -1]]
    tail, decays = _tail_abs2(np.array([[c.Cs, c.Cc] for c in cs]), kc, window)
    a2[:, [0, -1]] = tail
    d2[:, [0, -1]] = np.abs(kc) ** 2 * tail
    e_tm = (d2 / k0**2 + np.abs(neff) ** 2 * a2) / np.abs(eps) ** 2
    e_int = np.where(tm, e_tm, a2)
    s_int = np.where(tm, (neff / eps).real, neff.real) * a2
    truncated = [[name for name, ok in zip(("substrate", "superstrate"), row, strict=True)
                  if not ok] for row in decays]
    return e_int, s_int, truncated


def confinements(n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float,
                 modes: list[_ModeLike], window_nm: float | None = None) -> list[Confinement]:
    """:func:`confinement` of several modes of one stack, vectorised over the modes."""
    if not modes:
        return []
    window = float(wavelength_nm if window_nm is None else window_nm)
    return _confinements(_coefficients_of(n, d_nm, wavelength_nm, modes), window)


def confinements_and_profiles(n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float,
                              modes: list[_ModeLike], z_nm: np.ndarray,
                              window_nm: float | None = None
                              ) -> list[tuple[Confinement, dict[str, Any]]]:
    """:func:`confinements` and :func:`mode_profile` (``normalize="grid"``) of several modes
    of one stack, from one vectorised computation of their field coefficients (computing them
    mode by mode for the profiles took about a sixth of a ``modes`` analysis with fields)."""
    if not modes:
        return []
    window = float(wavelength_nm if window_nm is None else window_nm)
    cs = _coefficients_of(n, d_nm, wavelength_nm, modes)
    return [(conf, _profile(c, z_nm, "grid"))
            for conf, c in zip(_confinements(cs, window), cs, strict=True)]


def _confinements(cs: list[_Coef], window: float) -> list[Confinement]:
    e_int, s_int, truncated = _layer_terms_many(cs, window)
    gamma_e = e_int / e_int.sum(axis=1, keepdims=True)
    gamma_p = np.sqrt(cs[0].ctx.eps).real * e_int / s_int.sum(axis=1, keepdims=True)
    return [Confinement(gamma_e[i], gamma_p[i], tuple(truncated[i]), window)
            for i in range(len(cs))]


def confinement(n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float, mode: _ModeLike,
                window_nm: float | None = None) -> Confinement:
    """Confinement factors of ``mode`` in every medium (substrate, layers, superstrate).

    gamma_E[j] = int_j |E|^2 / int_all |E|^2 (sums to 1);
    gamma_P[j] = Re(n_j) int_j |E|^2 / int_all Re(E x H*)_x dz.
    All integrals are closed form; tails to infinity. If a cladding field does not decay (leaky
    sheet, Im kz <= 0) its tail is integrated over ``window_nm`` (default: one wavelength) and the
    result is flagged (``tails_finite`` False, ``truncated`` names the cladding).
    """
    return confinements(n, d_nm, wavelength_nm, [mode], window_nm)[0]


def gain_overlap(n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float,
                 mode: _ModeLike) -> np.ndarray:
    """Exact first-order gain response -d(alpha)/dg of every medium (shape (L+2,)).

    A material gain g (cm^-1) added to medium j (Delta k = -g lambda / 4 pi) changes the modal
    loss by Delta alpha = -gain_overlap[j] g + O(g^2). From the complex-symmetric variational
    form (no complex conjugates): TE  d(neff^2) = int d(eps) Ey^2 / int Ey^2;
    TM  d(neff^2) = int d(eps) (Ez^2 - Ex^2) / int Hy^2 / eps. Tails use the analytic
    continuation int_0^inf e^{2iks} ds = i / 2k (also for leaky sheets). gamma_P is the
    real-field approximation of this quantity.
    """
    c = _coef_for(n, d_nm, wavelength_nm, mode)
    L = c.A.size
    k0, neff, eps = c.ctx.k0, c.neff, c.ctx.eps
    num = np.zeros(L + 2, dtype=complex)
    den = 0j
    for j in range(L + 2):
        k = c.kz[j]
        if j in (0, L + 1):
            C = c.Cs if j == 0 else c.Cc
            s2 = C * C * 1j / (2 * k)
            ds2 = -(k * k) * s2
        else:
            d = c.z[j] - c.z[j - 1]
            s2 = _int_sq(c.A[j - 1], c.B[j - 1], k, d)
            ds2 = -(k * k) * _int_sq(c.A[j - 1], -c.B[j - 1], k, d)
        if c.tm:
            ez2 = neff**2 * s2 / eps[j] ** 2
            ex2 = -ds2 / (k0**2 * eps[j] ** 2)
            num[j] = ez2 - ex2
            den += s2 / eps[j]
        else:
            num[j] = s2
            den += s2
    nj = np.sqrt(eps)
    return (nj * num / (neff * den)).real
