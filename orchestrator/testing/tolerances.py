"""The agreement a backend promises, per result variable (used by the conformance suite and by
``qdcavity compare``).

A backend declares ``tolerances`` = {variable: absolute tolerance} against the exact answer at
its default options (:class:`qdcavity.backend.Backend`). A variable it does not declare gets a
tolerance derived from the ones it does (alpha_cm from neff, modal gain from gamma_P, net gain
from both), else the strict default of :data:`DEFAULT_TOLERANCES` -- so an approximate solver
must say how approximate it is, it cannot pass by saying nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

DEFAULT_TOLERANCES: dict[str, float] = {
    "neff": 1e-6,
    "gamma_E": 1e-5,
    "gamma_P": 1e-5,
    "R": 1e-6,
    "T": 1e-6,
    "A": 1e-6,
    "K": 1e-3,
    "fraction": 1e-3,
    "purcell": 1e-3,
}
DEFAULT_TOLERANCE = 1e-6
"""Tolerance of a variable neither declared, derived nor listed above."""


def tolerance(declared: Mapping[str, float], var: str, *, wavelength_nm: Any = 630.0,
              material_gain_cm: Any = 690.0) -> Any:
    """Absolute tolerance of ``var`` for a backend declaring ``declared``.

    Derived (when not declared): ``alpha_cm`` (and the outcoupling ``alpha_abs_cm``)
    = 4 pi tol(neff) / lambda (cm^-1); ``modal_gain_cm`` = tol(gamma_P) * G_mat;
    ``net_gain_cm`` = tol(modal) + tol(alpha). ``wavelength_nm`` and ``material_gain_cm`` may
    be numbers, arrays or xarray DataArrays (then so is the result, broadcast by name).
    """
    if var in declared:
        return float(declared[var])
    lam = np.asarray(wavelength_nm, dtype=float) if isinstance(wavelength_nm, list | tuple) \
        else wavelength_nm
    gain = np.asarray(material_gain_cm, dtype=float) if isinstance(material_gain_cm,
                                                                   list | tuple) \
        else material_gain_cm
    if var in ("alpha_cm", "alpha_abs_cm"):
        return 4 * math.pi * tolerance(declared, "neff") / (lam * 1e-7)
    if var == "modal_gain_cm":
        return tolerance(declared, "gamma_P") * abs(gain)
    if var == "net_gain_cm":
        return (tolerance(declared, "modal_gain_cm", material_gain_cm=gain)
                + tolerance(declared, "alpha_cm", wavelength_nm=lam))
    return DEFAULT_TOLERANCES.get(var, DEFAULT_TOLERANCE)
