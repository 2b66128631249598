"""Power dissipation of a LINE dipole (a y-invariant line current) in a planar stack.

The 2D (y-invariant) counterpart of :mod:`.dipole`: the source is a line current
J = I delta(x) delta(z - z0) along y (``"y"``, s/TE waves only), along x (``"x"``) or along z
(``"z"``) (both p/TM waves only). It radiates only in the x-z plane: its plane-wave spectrum
has an in-plane wavevector kx (both signs) and no azimuth, so there is no 2 pi u du Jacobian
and no azimuthal average. This is what a scatterer of a 2D (y-invariant) full-wave cell does:
an infinite cylinder along y driven by the field of a guided mode radiates like a line dipole
(TE mode: E along the axis -> a "y" line current; TM mode: E in the x-z plane -> "x" and "z").

Conventions as in :mod:`.dipole` (docs/conventions.md): exp(-i omega t), N = n + ik with k > 0
absorbing, media ``[substrate, layers bottom..top, superstrate]``, lengths in nm,
u = kx / (k0 n_e), l = sqrt(1 - u^2) (Im >= 0), a_+- = r_+- exp(2 i kz_e z_+-), D = 1 - a_+ a_-
with r_+- the half-stack reflection coefficients seen from the emitter (s: E_y, p: H_y), u >= 0
folding +kx and -kx together.

Normalization and formulas. In the unbounded emitter medium a y line current radiates
P0_y = omega mu0 |I|^2 / 8 per unit length (independent of the medium's index), an x or z
line current half of that (2D Green dyadic: Im G_xx + Im G_zz = Im G_yy). Each orientation is
normalized to its own bulk power, so int_0^inf K du is the 2D Purcell factor (1 in bulk):

  K_y = 2/pi Re[(1/l) (1 + a_+^s)(1 + a_-^s) / D^s]
  K_x = 4/pi Re[l (1 - a_+^p)(1 - a_-^p) / D^p]
  K_z = 4/pi Re[(u^2/l) (1 + a_+^p)(1 + a_-^p) / D^p]

(derivation: the 1D Green function e^{i kz |z - z0|} / (2 i kz) of each kx component, the
power -1/2 Re(I* E(z0)) and int_{-k}^{k} dkx / kz = pi). The fluxes into the outer media are
P_top_y = 1/pi |l|^-2 Re(q_sup^s) |t_+ e^{i kz_e z_+} (1 + a_-^s) / D^s|^2,
P_top_x = 2/pi Re(q_sup^p) |t_+ e^{i kz_e z_+} (1 - a_-^p) / D^p|^2,
P_top_z = 2/pi u^2 |l|^-2 Re(q_sup^p) |t_+ e^{i kz_e z_+} (1 + a_-^p) / D^p|^2 (bottom alike),
with the dimensionless admittances q of :mod:`.dipole`. In bulk P_top = P_bottom = K / 2.
Checked against closed forms (tests/test_tmm_dipole2d.py): bulk, and a line current at
height h above a perfect conductor: P_y / P0 = 1 - J0(2kh) (image line current -I),
P_x / P0 = 1 - 2 [J0(2kh) - J1(2kh) / (2kh)], P_z / P0 = 1 + 2 J1(2kh) / (2kh).

Channels (air, substrate, waveguide, spp, absorbed) exactly as in :mod:`.dipole`.
Integration: the same pole-aware adaptive Gauss-Kronrod machinery (poles found from the zeros
of the pole-free characteristic function, delta-like poles of lossless guided modes integrated
by residue); only the integrands and residue prefactors differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .dipole import (
    DipoleResult,
    _amplitudes,
    _at_pole,
    _checked_inputs,
    _evaluate_on,
    _Geometry,
    _integrate,
    _Kernel,
    _output_grid_for,
    _Pole,
    _residue_result,
    _waves,
)

ORIENTATIONS_2D = ("y", "x", "z")
_PI = np.pi


@dataclass(frozen=True, eq=False)
class LineDipoleResult(DipoleResult):
    """Line-dipole emission at one wavelength (rows in ``ORIENTATIONS_2D`` = y, x, z).

    u : (U,) output grid; K, P_top, P_bottom : (3, U) power per du (both signs of kx);
    purcell : (3,) int K du; fractions : (3, 5) over ``CHANNELS``; u_air, u_esc, u_wg, n_emitter,
    poles, pole_polarization, error_estimate, n_evaluations as in :class:`.dipole.DipoleResult`
    (of which it is the 2D variant).
    """

    orientations: tuple[str, ...] = ORIENTATIONS_2D

    def angular_distribution(self, theta_rad: np.ndarray, n_air: float) -> np.ndarray:
        """(3, T) power per radian in the superstrate's x-z plane at angles theta from the
        normal (theta and -theta together), in units of the total power: dP/dtheta =
        P_top(u) du/dtheta / purcell with u = n_air sin(theta) / n_e."""
        theta = np.asarray(theta_rad, dtype=float)
        u = n_air * np.sin(theta) / self.n_emitter
        jac = n_air * np.cos(theta) / self.n_emitter
        out = np.empty((3, theta.size))
        for row in range(3):
            out[row] = np.interp(u, self.u, self.P_top[row]) * jac / self.purcell[row]
        return out


def _spectra2d(g: _Geometry, u: np.ndarray) -> np.ndarray:
    """(9, N) real: K_y, K_x, K_z, P_top_{y,x,z}, P_bottom_{y,x,z} at u (N,)."""
    a = _amplitudes(g, u)
    w = _waves(a)
    ap, lz = a.a_top, a.lz
    up_s, dn_s, up_z, dn_z, up_x, dn_x = w.up_s, w.dn_s, w.up_pe, w.dn_pe, w.up_po, w.dn_po
    k_y = (2 / _PI) * (1.0 / lz * (1.0 + ap[:, 0]) * up_s).real
    k_x = (4 / _PI) * (lz * (1.0 - ap[:, 1]) * up_x).real
    k_z = (4 / _PI) * (u**2 / lz * (1.0 + ap[:, 1]) * up_z).real
    inv_l2, tt, tb = w.inv_l2, w.tt, w.tb
    pt_y = (1 / _PI) * inv_l2 * a.q_sup[:, 0] * np.abs(tt[:, 0] * up_s) ** 2
    pb_y = (1 / _PI) * inv_l2 * a.q_sub[:, 0] * np.abs(tb[:, 0] * dn_s) ** 2
    pt_x = (2 / _PI) * a.q_sup[:, 1] * np.abs(tt[:, 1] * up_x) ** 2
    pb_x = (2 / _PI) * a.q_sub[:, 1] * np.abs(tb[:, 1] * dn_x) ** 2
    pt_z = (2 / _PI) * u**2 * inv_l2 * a.q_sup[:, 1] * np.abs(tt[:, 1] * up_z) ** 2
    pb_z = (2 / _PI) * u**2 * inv_l2 * a.q_sub[:, 1] * np.abs(tb[:, 1] * dn_z) ** 2
    return np.stack([k_y, k_x, k_z, pt_y, pt_x, pt_z, pb_y, pb_x, pb_z])


def _residue2d(g: _Geometry, p: _Pole, singular: np.ndarray) -> tuple[np.ndarray, float, bool]:
    """Residues (3,) of the complex K_y, K_x, K_z integrands at a (quasi-)real pole, its
    weight pi |residue| and whether an outer medium radiates there (as dipole._residue)."""
    c, d1 = _at_pole(g, p, singular)
    lz, ur = c.lz[0], p.u
    with np.errstate(all="ignore"):
        if p.pol == 0:
            res = np.array([(2 / _PI) / lz * c.plus[0, 0] / d1, 0.0, 0.0])
        else:
            res = np.array([0.0, (4 / _PI) * lz * c.minus[0, 1] / d1,
                            (4 / _PI) * ur**2 / lz * c.plus[0, 1] / d1])
    return _residue_result(c, p, res)


def _fractions2d(totals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3 channel segments, 9 components) -> fractions (3, 5), purcell (3,)."""
    k, pt, pb = totals[:, 0:3], totals[:, 3:6], totals[:, 6:9]
    r = k - pt - pb
    powers = np.stack([pt.sum(0), pb.sum(0), r[1], r[2], r[0]]).T  # (3 orient, 5 channels)
    purcell = powers.sum(axis=1)
    return powers / purcell[:, None], purcell


def line_dipole_emission(
    n: np.ndarray,
    d_nm: np.ndarray,
    wavelength_nm: float,
    emitter: int,
    z_in_layer_nm: float,
    u: np.ndarray | None = None,
    pole_hints: Sequence[float] = (),
    rtol: float = 1e-6,
) -> LineDipoleResult:
    """K(u), 2D Purcell factors and channel fractions of y, x and z line currents.

    Arguments as :func:`.dipole.dipole_emission` (the emitter layer's Im(n) is ignored). See the
    module docstring for formulas, normalization and channels.
    """
    n, d, u = _checked_inputs(n, d_nm, wavelength_nm, emitter, z_in_layer_nm, u, rtol)
    it = _integrate(LINE_DIPOLES, n, d, wavelength_nm, emitter, float(z_in_layer_nm),
                    pole_hints, rtol)
    fractions, purcell = _fractions2d(it.totals)
    u_out = _output_grid_for(it, u)
    spec = _evaluate_on(LINE_DIPOLES, it.g, u_out)
    return LineDipoleResult(
        u=u_out, K=spec[0:3], P_top=spec[3:6], P_bottom=spec[6:9], purcell=purcell,
        fractions=fractions, u_air=it.limits[0], u_esc=it.limits[1], u_wg=it.limits[2],
        n_emitter=it.n_e, emitter_k_ignored=it.emitter_k,
        poles=np.array([p.u + 1j * p.w for p in it.poles], dtype=complex),
        pole_polarization=tuple("sp"[p.pol] for p in it.poles),
        error_estimate=it.error[0:3], n_evaluations=it.n_eval + spec.shape[1],
    )


#: Line currents along y, x, z: K rows y, x, z; then P_top and P_bottom rows alike.
LINE_DIPOLES = _Kernel(spectra=_spectra2d, residue=_residue2d, n_k=3)


def mode_emission_fraction(n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float, mode,
                           z_nm: np.ndarray, purcell: np.ndarray) -> np.ndarray:
    """Fraction of a scatterer's line-dipole power that goes into the FORWARD direction of
    ``mode``, for a dipole along the mode's own local E field (an isotropic scatterer).

    Lorentz reciprocity: a line current J at z0 excites the forward mode with amplitude
    a = -(E_m^- . J) / (4 N), E_m^- the backward mode's E (longitudinal E_x reversed),
    N = 1/2 int (E_m x H_m).x dz (unconjugated), and that amplitude carries |a|^2 P_m,
    P_m = 1/2 int Re(E_m x H_m*).x dz. Divided by the line current's power (F P0, with
    P0 = k0 |I|^2 / 8 for a y current and half of it for x or z, vacuum impedance 1):

    * TE (J along y, J ~ E_y): phi = |E_y|^2 Re(neff) int |E_y|^2 / (k0 |neff|^2
      |int E_y^2|^2 F_y);
    * TM (J ~ (E_x, E_z)): phi = 2 |E_z^2 - E_x^2|^2 int Re(neff/eps) |H_y|^2 / (k0 |neff|^2
      |int H_y^2 / eps|^2 (|E_x|^2 F_x + |E_z|^2 F_z)).

    (The backward direction gets |E_z^2 + E_x^2|^2 instead of |E_z^2 - E_x^2|^2; both are equal
    for TE.) ``z_nm`` are absolute heights (z = 0 at the substrate top) inside a lossless
    emitter layer; ``purcell`` is F_y (Z,) for TE or (F_x, F_z) (2, Z) for TM at those heights.
    Integrals over the whole stack in closed form (a radiating cladding tail is taken over one
    wavelength, as in fields.confinement). For a lossless guide, twice this (TE) is exactly
    the guided-mode share of :func:`line_dipole_emission` (tested).
    """
    from .fields import _coef_for, _components, _int_abs2, _int_sq, _tail_abs2

    c = _coef_for(n, d_nm, wavelength_nm, mode)
    tm = mode.polarization == "TM"
    p = c.p  # 1 (TE) or eps (TM): psi = E_y or H_y
    neff = complex(mode.neff)
    abs2, sq = 0.0, 0.0 + 0.0j  # int w |psi|^2, int psi^2 / p
    for j in range(c.A.size):
        dj = c.z[j + 1] - c.z[j]
        w = (neff / p[j + 1]).real / neff.real if tm else 1.0
        abs2 += w * _int_abs2(c.A[j], c.B[j], c.kz[j + 1], dj)
        sq += _int_sq(c.A[j], c.B[j], c.kz[j + 1], dj) / p[j + 1]
    window = float(wavelength_nm)
    for C, k, pj in ((c.Cs, c.kz[0], p[0]), (c.Cc, c.kz[-1], p[-1])):  # tails C e^{iks}
        a2, decays = _tail_abs2(C, k, window)
        w = (neff / pj).real / neff.real if tm else 1.0
        abs2 += w * a2
        sq += C * C * (1j / (2 * k) if decays else np.expm1(2j * k * window) / (2j * k)) / pj
    comps, _, _ = _components(c, np.asarray(z_nm, dtype=float))
    k0 = 2 * np.pi / float(wavelength_nm)
    base = neff.real * abs2 / (k0 * abs(neff) ** 2 * abs(sq) ** 2)
    purcell = np.asarray(purcell, dtype=float)
    if not tm:
        return np.abs(comps["Ey"]) ** 2 * base / purcell
    ex, ez = comps["Ex"], comps["Ez"]
    power = np.abs(ex) ** 2 * purcell[0] + np.abs(ez) ** 2 * purcell[1]
    return 2 * np.abs(ez**2 - ex**2) ** 2 * base / power
