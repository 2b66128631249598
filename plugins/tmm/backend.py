"""TMM backend: exact answers for planar stacks (the default and the reference backend)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import xarray as xr

from qdcavity.analyses import (
    Analysis,
    DipoleEmissionAnalysis,
    ModesAnalysis,
    OutcouplingAnalysis,
    ReflectanceAnalysis,
)
from qdcavity.backend import Backend
from qdcavity.contracts import CHANNELS, ORIENTATIONS, with_units
from qdcavity.errors import ConfigError, SolverError
from qdcavity.stack import Stack

from .reflectance import rt_spectra

VERSION = "0.1.0"


class TmmBackend(Backend):
    """Transfer/scattering-matrix solver: reflectance, guided modes, dipole emission."""

    name: ClassVar[str] = "tmm"
    version: ClassVar[str] = VERSION
    analyses: ClassVar[frozenset[str]] = frozenset(
        {"reflectance", "modes", "dipole_emission", "outcoupling"})
    description: ClassVar[str] = "built-in transfer-matrix solver (exact for planar stacks)"
    tolerances: ClassVar[Mapping[str, float]] = {"R": 1e-10, "T": 1e-10, "neff": 1e-9,
                                                 "gamma_E": 1e-8, "gamma_P": 1e-8}

    def solver_versions(self) -> dict[str, str]:
        import scipy

        return {"numpy": np.__version__, "scipy": scipy.__version__}

    def run(self, stack: Stack, analysis: Analysis, options: Mapping[str, Any]) -> xr.Dataset:
        if isinstance(analysis, ReflectanceAnalysis):
            return reflectance(stack, analysis)
        if isinstance(analysis, ModesAnalysis):
            return modes(stack, analysis)
        if isinstance(analysis, DipoleEmissionAnalysis):
            return dipole_emission(stack, analysis)
        if isinstance(analysis, OutcouplingAnalysis):
            from .outcoupling_tmm import solve_outcoupling

            return solve_outcoupling(stack, analysis)
        raise SolverError(f"tmm cannot answer '{analysis.kind}'")


def reflectance(stack: Stack, analysis: ReflectanceAnalysis) -> xr.Dataset:
    """R, T, A for s and p over wavelength and angle, incidence from the named side."""
    lam = np.asarray(analysis.wavelength_nm)
    n = stack.indices(lam)
    inc = n[:, -1] if analysis.incidence == "superstrate" else n[:, 0]
    if np.any(np.abs(inc.imag) > 1e-3):
        raise ConfigError(
            f"the {analysis.incidence} absorbs (k up to {np.max(inc.imag):.3g}); plane-wave "
            "incidence needs a transparent incidence medium", field="incidence")
    out = rt_spectra(n, stack.thicknesses_nm, lam, np.asarray(analysis.angle_deg),
                     incidence=analysis.incidence)
    pol_index = [("s", "p").index(p) for p in analysis.polarizations]
    dims = ("wavelength_nm", "angle_deg", "polarization")
    ds = xr.Dataset(
        {key: (dims, out[key][..., pol_index]) for key in ("R", "T", "A")},
        coords={"wavelength_nm": lam, "angle_deg": np.asarray(analysis.angle_deg),
                "polarization": list(analysis.polarizations)},
    )
    ds.attrs["incidence"] = analysis.incidence
    return with_units(ds, "reflectance")


def modes(stack: Stack, analysis: ModesAnalysis) -> xr.Dataset:
    from .modeset_tmm import solve_modes

    return solve_modes(stack, analysis)


def dipole_emission(stack: Stack, analysis: DipoleEmissionAnalysis) -> xr.Dataset:
    from .dipole_tmm import solve_dipole

    return solve_dipole(stack, analysis, ORIENTATIONS, CHANNELS)
