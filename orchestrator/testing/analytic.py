"""Exact answers for the analytic stacks of the conformance suite (independent of any backend).

Conventions as in docs/conventions.md: exp(-i omega t), N = n + ik with k > 0 absorbing,
neff = kx / k0, fields of a slab mode ~ exp(i (beta x - omega t)), vacuum impedance 1.

* :func:`spp_neff`: the surface plasmon of one metal/dielectric interface,
  neff = sqrt(e1 e2 / (e1 + e2));
* :func:`slab_modes`: every guided TE/TM mode of a symmetric lossless slab from its dispersion
  equation k0 d kappa = m pi + 2 atan(r gamma / kappa) (r = 1 for TE, n1^2 / n2^2 for TM), each
  root bracketed and found with :func:`scipy.optimize.brentq`, with closed-form confinement
  factors gamma_E and gamma_P of core and claddings;
* :func:`fresnel` and :func:`film_reflectance`: plane-wave R and T of one interface and of one
  film (Airy summation);
* :func:`homogeneous_dipole_K`: K(u) of a dipole in an unbounded lossless medium (the Purcell
  factor is 1 and half of the power goes up, half down).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq


def spp_neff(eps_metal: complex, eps_dielectric: complex) -> complex:
    """Planar surface-plasmon index sqrt(e1 e2 / (e1 + e2)) (Im >= 0 branch)."""
    value = complex(np.sqrt(eps_metal * eps_dielectric / (eps_metal + eps_dielectric)))
    return value if value.imag >= 0 else -value


@dataclass(frozen=True)
class SlabMode:
    """A guided mode of a symmetric slab: ``gamma_*`` are (lower cladding, core, upper
    cladding)."""

    polarization: str
    order: int
    neff: float
    gamma_E: tuple[float, float, float]
    gamma_P: tuple[float, float, float]

    @property
    def label(self) -> str:
        return f"{self.polarization}{self.order}"


def _slab_dispersion(neff: float, n1: float, n2: float, kd: float, r: float, m: int) -> float:
    kappa = math.sqrt(max(n1 * n1 - neff * neff, 0.0))
    gamma = math.sqrt(max(neff * neff - n2 * n2, 0.0))
    return kd * kappa - m * math.pi - 2 * math.atan2(r * gamma, kappa)


def slab_modes(n_core: float, n_clad: float, thickness_nm: float, wavelength_nm: float,
               polarization: str) -> list[SlabMode]:
    """All guided modes (highest neff first) of a lossless symmetric slab."""
    pol = polarization.upper()
    if not n_core > n_clad > 0:
        raise ValueError("a guiding slab needs n_core > n_clad > 0")
    r = 1.0 if pol == "TE" else (n_core / n_clad) ** 2
    kd = 2 * math.pi / wavelength_nm * thickness_nm
    out = []
    lo, hi = n_clad * (1 + 1e-15), n_core * (1 - 1e-15)
    m = 0
    while _slab_dispersion(lo, n_core, n_clad, kd, r, m) > 0:
        neff = brentq(_slab_dispersion, lo, hi, args=(n_core, n_clad, kd, r, m),
                      xtol=1e-15, rtol=1e-15, maxiter=500)
        ge, gp = _slab_gammas(neff, n_core, n_clad, kd, pol, even=(m % 2 == 0))
        out.append(SlabMode(pol, m, neff, ge, gp))
        m += 1
    return out


def _slab_gammas(neff: float, n1: float, n2: float, kd: float, pol: str, even: bool
                 ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Closed-form integrals (lengths in units of 1/k0, slab centred on 0).

    psi = cos(kappa z) (even) or sin(kappa z) (odd) in the core, psi_b exp(-gamma (|z| - a))
    outside, a = kd / 2. TE: E = psi. TM: psi = Hy, |E|^2 = (|psi'|^2 + neff^2 psi^2) / eps^2,
    Re(E x H*)_x = neff psi^2 / eps.
    """
    kappa = math.sqrt(n1 * n1 - neff * neff)
    gamma = math.sqrt(neff * neff - n2 * n2)
    a = kd / 2
    s = math.sin(2 * kappa * a) / (2 * kappa)
    i_psi = a + s if even else a - s            # int_core psi^2
    i_dpsi = kappa**2 * (a - s if even else a + s)  # int_core psi'^2
    psi_b2 = math.cos(kappa * a) ** 2 if even else math.sin(kappa * a) ** 2
    tail = psi_b2 / (2 * gamma)                 # int psi^2 over one cladding
    e1, e2 = n1 * n1, n2 * n2
    if pol == "TE":
        e_core, e_clad = i_psi, tail
        s_total = neff * (i_psi + 2 * tail)
    else:
        e_core = (i_dpsi + neff**2 * i_psi) / e1**2
        e_clad = (gamma**2 + neff**2) * tail / e2**2
        s_total = neff * (i_psi / e1 + 2 * tail / e2)
    e_total = e_core + 2 * e_clad
    ge = (e_clad / e_total, e_core / e_total, e_clad / e_total)
    gp = (n2 * e_clad / s_total, n1 * e_core / s_total, n2 * e_clad / s_total)
    return ge, gp


def _cos_t(n_in: complex, n_out: complex, angle_deg: float) -> tuple[complex, complex]:
    sin_in = math.sin(math.radians(angle_deg))
    cos_in = complex(math.cos(math.radians(angle_deg)))
    sin_out = n_in * sin_in / n_out
    cos_out = np.sqrt(1 - sin_out * sin_out + 0j)
    return cos_in, complex(cos_out if cos_out.imag >= 0 else -cos_out)


def _r_t(n1: complex, c1: complex, n2: complex, c2: complex, pol: str) -> tuple[complex, complex]:
    if pol == "s":
        den = n1 * c1 + n2 * c2
        return (n1 * c1 - n2 * c2) / den, 2 * n1 * c1 / den
    den = n2 * c1 + n1 * c2
    return (n2 * c1 - n1 * c2) / den, 2 * n1 * c1 / den


def _power_t(t: complex, n1: complex, c1: complex, n2: complex, c2: complex, pol: str) -> float:
    if pol == "s":
        return float(abs(t) ** 2 * (n2 * c2).real / (n1 * c1).real)
    return float(abs(t) ** 2 * (np.conj(n2) * c2).real / (np.conj(n1) * c1).real)


def fresnel(n_incidence: float, n_exit: float, angle_deg: float, pol: str
            ) -> tuple[float, float]:
    """(R, T) of a plane wave from a lossless medium onto a lossless half-space."""
    c1, c2 = _cos_t(n_incidence, n_exit, angle_deg)
    r, t = _r_t(n_incidence, c1, n_exit, c2, pol)
    return float(abs(r) ** 2), _power_t(t, n_incidence, c1, n_exit, c2, pol)


def film_reflectance(n_incidence: float, n_film: complex, thickness_nm: float, n_exit: float,
                     wavelength_nm: float, angle_deg: float, pol: str) -> tuple[float, float]:
    """(R, T) of one film between two lossless half-spaces (Airy summation)."""
    c0, c1 = _cos_t(n_incidence, n_film, angle_deg)
    _, c2 = _cos_t(n_incidence, n_exit, angle_deg)
    r01, t01 = _r_t(n_incidence, c0, n_film, c1, pol)
    r12, t12 = _r_t(n_film, c1, n_exit, c2, pol)
    phase = np.exp(2j * (2 * math.pi / wavelength_nm) * n_film * c1 * thickness_nm)
    den = 1 + r01 * r12 * phase
    r = (r01 + r12 * phase) / den
    t = t01 * t12 * np.sqrt(phase) / den
    return float(abs(r) ** 2), _power_t(t, n_incidence, c0, n_exit, c2, pol)


def homogeneous_dipole_K(u: np.ndarray, orientation: str) -> np.ndarray:
    """K(u) in an unbounded lossless medium (int_0^1 K du = 1; K = 0 for u > 1).

    vertical: (3/2) u^3 / sqrt(1 - u^2); horizontal (azimuth averaged):
    (3/4) u (sqrt(1 - u^2) + 1 / sqrt(1 - u^2)) (TM + TE); isotropic = (2 h + v) / 3.
    """
    u = np.asarray(u, dtype=float)
    out = np.zeros_like(u)
    ok = u < 1
    c = np.sqrt(1 - u[ok] ** 2)
    vertical = 1.5 * u[ok] ** 3 / c
    horizontal = 0.75 * u[ok] * (c + 1 / c)
    out[ok] = {"vertical": vertical, "horizontal": horizontal,
               "isotropic": (2 * horizontal + vertical) / 3}[orientation]
    return out
