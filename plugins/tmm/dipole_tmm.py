"""The ``dipole_emission`` analysis on the TMM kernels, over wavelength, in one dataset."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from qdcavity.analyses import DipoleEmissionAnalysis
from qdcavity.contracts import with_units
from qdcavity.errors import ConfigError
from qdcavity.stack import Stack

from .dipole import dipole_emission
from .modes import find_modes


def emitter_of(stack: Stack) -> str:
    name = stack.emitter_layer or stack.gain_layer
    if not name:
        raise ConfigError("the stack names no emitter_layer (nor gain_layer) for the dipoles",
                          field="emitter_layer")
    return name


def solve_dipole(stack: Stack, analysis: DipoleEmissionAnalysis, orientations: Sequence[str],
                 channels: Sequence[str]) -> xr.Dataset:
    """K(u) on a uniform grid, exact (adaptive, pole-aware) fractions and Purcell factors.

    The emitter layer's k is dropped (classical normalization needs a lossless emitter
    medium); the mode solver's Re(neff)/n_e are passed as peak hints to the quadrature.
    """
    emitter = emitter_of(stack)
    pos = stack.layer_position(emitter)
    lams = list(analysis.wavelength_nm)
    n_all = stack.indices(lams, zero_k=[emitter])
    d = stack.thicknesses_nm
    z_in = analysis.position * d[pos - 1]
    u = np.linspace(0.0, analysis.u_max, analysis.u_points)
    K = np.empty((3, len(lams), len(u)))
    fractions = np.empty((3, len(lams), len(channels)))
    purcell = np.empty((3, len(lams)))
    n_emitter = np.empty(len(lams))
    for i, (lam, n) in enumerate(zip(lams, n_all, strict=True)):
        n_e = n[pos].real
        hints = [m.neff.real / n_e for m in find_modes(n, d, lam, "both")]
        res = dipole_emission(n, d, lam, pos, z_in, u=u, pole_hints=hints, rtol=analysis.rtol)
        K[:, i], fractions[:, i], purcell[:, i] = res.K, res.fractions, res.purcell
        n_emitter[i] = res.n_emitter
    ds = xr.Dataset(
        {
            "K": (("orientation", "wavelength_nm", "u"), K),
            "fraction": (("orientation", "wavelength_nm", "channel"), fractions),
            "purcell": (("orientation", "wavelength_nm"), purcell),
            "n_emitter": (("wavelength_nm",), n_emitter),
        },
        coords={"orientation": list(orientations), "wavelength_nm": np.asarray(lams),
                "channel": list(channels), "u": u},
    )
    ds.attrs.update({"emitter_layer": emitter, "position": analysis.position,
                     "z_in_layer_nm": z_in,
                     "normalization": "int K du = total power / power in the bulk emitter"})
    return with_units(ds, "dipole_emission")
