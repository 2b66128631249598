"""Coherent reflectance / transmittance of a planar stack (vectorized, pure numpy).

Conventions (docs/conventions.md): exp(-i omega t); N = n + ik with k > 0 absorbing; media
are ordered ``[substrate, layer_1 (bottom), ..., layer_L (top), superstrate]``; thicknesses and
wavelengths in nm. Polarization axis ``["s", "p"]`` (s = TE, p = TM).

Power conventions are those of the ``tmm`` package (Byrnes, arXiv:1603.02720): R = |r|^2 and
T is the z-flux of the transmitted wave divided by the incident z-flux, i.e.
T_s = |t_E|^2 Re(n_out cos th_out) / Re(n_in cos th_in) and
T_p = |t_E|^2 Re(n_out conj(cos th_out)) / Re(n_in conj(cos th_in)); A = 1 - R - T is the power
absorbed in the layers. An absorbing exit medium is handled the same way (T is the flux
entering it).

Numerics: the Airy / scattering-matrix recursion of :func:`._interfaces.half_stack` only
multiplies by decaying factors exp(+i kz d), Im kz >= 0, so 1 um of Ag or grazing evanescent
waves neither overflow nor give NaN.
"""

from __future__ import annotations

import numpy as np

from ._interfaces import half_stack, kz_branch

POLARIZATIONS = ("s", "p")
_MAX_K_INCIDENT = 1e-3


def _validate(n: np.ndarray, d_nm: np.ndarray, wl: np.ndarray, ang: np.ndarray) -> None:
    if n.ndim != 2 or n.shape[0] != wl.size:
        raise ValueError(f"n must have shape (W, L+2) with W = {wl.size}; got {n.shape}")
    if n.shape[1] != d_nm.size + 2:
        raise ValueError(f"n has {n.shape[1]} media but d_nm has {d_nm.size} layers (need L+2)")
    if np.any(~np.isfinite(n)) or np.any(~np.isfinite(d_nm)) or np.any(d_nm < 0):
        raise ValueError("n must be finite and thicknesses finite and >= 0")
    if np.any(~np.isfinite(wl)) or np.any(wl <= 0):
        raise ValueError("wavelengths must be finite and > 0 (nm)")
    if np.any(~np.isfinite(ang)) or np.any(ang < 0) or np.any(ang >= 90):
        raise ValueError("angles must be in [0, 90) degrees")


def rt_spectra(
    n: np.ndarray,
    d_nm: np.ndarray,
    wavelength_nm: np.ndarray,
    angle_deg: np.ndarray,
    incidence: str = "superstrate",
) -> dict[str, np.ndarray]:
    """Power reflectance, transmittance and absorptance of a stack.

    Parameters
    ----------
    n : (W, L+2) complex
        Indices per wavelength, columns ``[substrate, layers bottom..top, superstrate]``;
        a single row (1, L+2) or (L+2,) is used for every wavelength.
    d_nm : (L,) layer thicknesses in nm.
    wavelength_nm : (W,) vacuum wavelengths in nm.
    angle_deg : (A,) angles of incidence in degrees, measured in the incidence medium, [0, 90).
    incidence : ``"superstrate"`` (light from the top) or ``"substrate"`` (from below).

    Returns
    -------
    dict with ``"R"``, ``"T"``, ``"A"``, each (W, A, 2), last axis ``["s", "p"]``.

    The incidence medium must be (nearly) lossless, |Im n_inc| <= 1e-3, otherwise ValueError;
    the in-plane wavevector is k0 Re(n_inc) sin(theta). The exit medium must not have gain.
    """
    n = np.atleast_2d(np.asarray(n, dtype=complex))
    d_nm = np.atleast_1d(np.asarray(d_nm, dtype=float))
    wl = np.atleast_1d(np.asarray(wavelength_nm, dtype=float))
    ang = np.atleast_1d(np.asarray(angle_deg, dtype=float))
    if n.shape[0] == 1 and wl.size > 1:  # dispersionless indices given once
        n = np.broadcast_to(n, (wl.size, n.shape[1]))
    _validate(n, d_nm, wl, ang)
    if incidence == "substrate":
        n, d_nm = n[:, ::-1], d_nm[::-1]
    elif incidence != "superstrate":
        raise ValueError(f"incidence must be 'superstrate' or 'substrate', not {incidence!r}")
    # propagation order: media[0] = incidence medium ... media[-1] = exit medium
    media = np.ascontiguousarray(n[:, ::-1].T)  # (M, W)
    d = d_nm[::-1]
    n_in, n_out = media[0], media[-1]
    if np.any(np.abs(n_in.imag) > _MAX_K_INCIDENT):
        raise ValueError(
            f"the incidence medium ({incidence}) must be (nearly) lossless: |Im n| = "
            f"{np.abs(n_in.imag).max():.3g} > {_MAX_K_INCIDENT}; R and T are ill-defined when "
            "the incident wave decays (see the tmm package, arXiv:1603.02720)"
        )
    if np.any(n_out.imag < -1e-12):
        raise ValueError("the exit medium has gain (Im n < 0): outgoing branch is ambiguous")

    k0 = 2.0 * np.pi / wl  # (W,)
    beta = n_in.real[:, None] * np.sin(np.deg2rad(ang))[None, :]  # (W, A), units of k0
    eps = media * media  # (M, W)
    kz = kz_branch(eps[:, :, None] - (beta * beta)[None])  # (M, W, A), units of k0
    q = np.stack([kz, kz / eps[:, :, None]], axis=-1)  # (M, W, A, 2): s, p admittances
    phase = np.exp(1j * (k0[None, :, None] * d[:, None, None]) * kz[1:-1])[..., None]
    r, t = half_stack(q, phase)

    with np.errstate(divide="ignore", invalid="ignore"):
        T = np.abs(t) ** 2 * q[-1].real / q[0].real
    T = np.where(np.isfinite(T), T, 0.0)
    R = np.abs(r) ** 2
    return {"R": R, "T": T, "A": 1.0 - R - T}
