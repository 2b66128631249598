"""Shared planar-interface kernels (pure numpy) for the reflectance and dipole modules.

Conventions (docs/conventions.md): exp(-i omega t), N = n + ik with k > 0 absorbing. For an
in-plane wavevector beta (in units of k0) the normal wavevector of medium j is
kz_j / k0 = sqrt(N_j^2 - beta^2) on the branch Im >= 0 (Re >= 0 when Im == 0), so that every
forward wave decays (or propagates) along its propagation direction.

A plane wave is described by its tangential field: E_y for s (TE) and H_y for p (TM). With the
admittances q_s = kz and q_p = kz / eps (any common scale factor cancels) the Fresnel
coefficients of an interface i -> f are r = (q_i - q_f) / (q_i + q_f) and t = 1 + r (E_y for s,
H_y for p). The z-flux of a single forward wave of amplitude A is Re(q) |A|^2 (same scale).
"""

from __future__ import annotations

import numpy as np


def kz_branch(arg: np.ndarray) -> np.ndarray:
    """sqrt(arg) on the branch Im >= 0 (and Re >= 0 when Im == 0); arg = N^2 - beta^2."""
    kz = np.sqrt(np.asarray(arg, dtype=complex))
    return np.where(kz.imag < 0, -kz, kz)


def fresnel_r(q: np.ndarray) -> np.ndarray:
    """Fresnel reflection coefficients of the M-1 interfaces of media q[0..M-1] (axis 0).

    r_j = (q_j - q_{j+1}) / (q_j + q_{j+1}); two identical media at their common branch point
    (q_j = q_{j+1} = 0) give r = 0 instead of 0/0.
    """
    num = q[:-1] - q[1:]
    den = q[:-1] + q[1:]
    return num / np.where(den == 0, 1.0, den)


def half_stack(
    q: np.ndarray, phase: np.ndarray, want_t: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Reflection and transmission amplitudes of a multilayer, scattering-matrix recursion.

    Parameters
    ----------
    q : (M, ...) complex
        Admittances of the media in propagation order: q[0] the medium the wave comes from,
        q[-1] the semi-infinite exit medium, q[1..M-2] finite layers.
    phase : (M-2, ...) complex
        exp(i kz_j d_j) of the finite layers 1..M-2 (|phase| <= 1 on the decaying branch).

    Returns
    -------
    r : (...) amplitude reflection coefficient seen from medium 0 at its interface with 1.
    t : (...) forward amplitude in the exit medium (at its interface) per unit forward
        amplitude in medium 0 (at its interface). Tangential field, see module docstring.
        None if ``want_t`` is False.

    The Airy recursion runs from the exit side and only ever multiplies by the decaying
    factors exp(+i kz d), so thick metals and deep evanescence never overflow.
    """
    r_if = fresnel_r(q)
    m = q.shape[0]
    gam = np.zeros(q.shape[1:], dtype=complex)
    t = np.ones(q.shape[1:], dtype=complex) if want_t else None
    for j in range(m - 2, -1, -1):
        r = r_if[j]
        den = 1.0 + r * gam
        if t is not None:
            t = t * (1.0 + r) / den
        gam = (r + gam) / den
        if j >= 1:
            ph = phase[j - 1]
            gam = gam * (ph * ph)
            if t is not None:
                t = t * ph
    return gam, t
