"""The Meep backend: full-wave FDTD answers from real MIT Meep, run in a worker process.

Meep (Debian ``python3-meep`` 1.25, numpy 1.x) cannot be imported into the project's numpy 2
process, so every simulation runs in ``worker.py`` under ``options["interpreter"]`` (default
``/usr/bin/python3``, or ``QDCAVITY_MEEP_PYTHON``), optionally behind ``options["launcher"]``
(e.g. ``"mpirun -np 4"`` with the MPI build). Materials are Drude-Lorentz fits of the
project's own tables over the simulated band (:mod:`.fitting`); the fit errors are in the
result attributes. Options, defaults and their accuracy: docs/meep.md.
"""

from __future__ import annotations

import math
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
from qdcavity.backend import Availability, Backend
from qdcavity.errors import BackendError, ConfigError, SolverError
from qdcavity.stack import Stack

from . import runner

VERSION = "0.1.0"

#: Options common to every analysis (see docs/meep.md for what each does).
COMMON_DEFAULTS: dict[str, Any] = {
    "interpreter": None,          # default: $QDCAVITY_MEEP_PYTHON or /usr/bin/python3
    "launcher": None,             # e.g. "mpirun -np 4" (default: $QDCAVITY_MEEP_LAUNCHER)
    "timeout_s": 3600.0,          # wall-clock limit of one worker call
    "max_time": 2000.0,           # simulated-time limit of one Meep run (Meep units, 1 um / c)
    "fit_rtol": 1e-3,             # material fit target (relative eps error; see fitting.py)
    "fit_fail_rtol": 0.02,        # a fit worse than this (relative |dN|) is an error
    "fit_max_poles": 4,
    "meep_materials": {},         # {"Ag": "Ag"}: use meep.materials for these stack materials
    "interface_media": True,      # harmonic-mean media on interface nodes of the normal E
    "keep_files": False,          # keep the worker's job/result files (debugging)
}

#: Per-analysis defaults (resolution in pixels per um; lengths in um).
ANALYSIS_DEFAULTS: dict[str, dict[str, Any]] = {
    "reflectance": {
        "resolution": 400.0, "pml_um": 0.5, "padding_um": 0.3, "decay_by": 1e-6,
        "max_band_ratio": 1.2, "angle_k_points": 12,
    },
    "modes": {
        "resolution": 200.0, "pml_um": 0.5, "padding_um": 0.3, "harminv_time": 30.0,
        "scan_time": 30.0, "scan_resolution": 100.0, "q_min": 5.0, "ftol": 5e-4,
        "max_refine": 6, "refine_bandwidth": 0.2, "fit_halfwidth": 0.05,
        "scan_halfwidth": 0.15, "spp_search_factor": 1.6, "max_padding_um": 3.0,
    },
    "dipole_emission": {
        "resolution": 50.0, "pml_um": 0.5, "padding_um": 0.3, "decay_by": 1e-4,
        "radius_um": 6.0, "absorber_um": 1.0, "absorber_sigma": 3.0, "fit_halfwidth": 0.02,
        "flux_height_um": 0.05,
    },
    # 2D cell with random cylinders (docs/outcoupling.md; checks in outcoupling.check_options)
    "outcoupling": {
        "resolution": 100.0, "realizations": 4, "seed": 1, "window_um": 8.0, "gap_um": 0.8,
        "tail_um": 0.6, "source_margin_um": 0.3, "x_boundary": "pml", "x_boundary_um": 0.8,
        "pml_um": 0.5, "pad_lo_um": 0.1, "pad_hi_um": 0.4, "flux_height_um": 0.2,
        "flux_depth_um": 0.05, "region_below_um": -0.02, "region_above_um": 0.15,
        "fit_margin_um": 0.5, "ratio_margin_um": 0.1, "ratio_length_um": 0.4, "source_fwidth": 0.4,
        "source_cutoff": 4.0, "decay_by": 1e-4, "decay_dt": 10.0, "fit_band": 0.05,
        "plain_reference": True,
    },
}

RESERVED_PREFIXES = ("work_dir", "dry_run")


def resolve_options(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults merged with ``options``; unknown keys are a ConfigError naming them."""
    allowed = {**COMMON_DEFAULTS, **ANALYSIS_DEFAULTS.get(kind, {})}
    unknown = [k for k in options if k not in allowed and not k.startswith(RESERVED_PREFIXES)]
    if unknown:
        raise ConfigError(f"unknown meep option(s) {sorted(unknown)} for '{kind}'; known: "
                          f"{', '.join(sorted(allowed))}", field="options")
    opts = {**allowed, **{k: v for k, v in options.items() if k in allowed}}
    opts["work_dir"] = options.get("work_dir")
    opts["interpreter"] = opts["interpreter"] or runner.default_interpreter()
    opts["launcher"] = runner.as_launcher(opts["launcher"])
    for key in ("resolution", "timeout_s", "max_time"):
        if key in opts:
            opts[key] = positive_option(opts, key)
    return opts


def positive_option(opts: Mapping[str, Any], key: str) -> float:
    """``opts[key]`` as a finite float > 0; a ConfigError naming the option otherwise (NaN,
    infinity, text that is not a number, a bool: ``True`` is not a resolution)."""
    value = opts[key]
    try:
        number = math.nan if isinstance(value, bool | np.bool_) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (number > 0 and math.isfinite(number)):
        raise ConfigError(f"option '{key}' must be a finite number > 0, got {value!r}",
                          field="options")
    return number


class MeepBackend(Backend):
    """MIT Meep (FDTD) in a worker process: reflectance, guided modes, dipole emission."""

    name: ClassVar[str] = "meep"
    version: ClassVar[str] = VERSION
    analyses: ClassVar[frozenset[str]] = frozenset({"reflectance", "modes", "dipole_emission",
                                                 "outcoupling"})
    description: ClassVar[str] = "MIT Meep FDTD (Debian python3-meep) in a worker process"
    #: absolute agreement with TMM at the default options on the paper stacks (docs/meep.md)
    tolerances: ClassVar[Mapping[str, float]] = {
        "R": 0.03, "T": 0.03, "A": 0.03, "neff": 3e-3, "alpha_cm": 10.0,
        "gamma_E": 0.01, "gamma_P": 0.01, "purcell": 0.05, "fraction": 0.05,
    }

    def availability(self) -> Availability:
        interp = runner.default_interpreter()
        try:
            runner.resolve_interpreter(interp)
            runner.probe(interp, runner.default_launcher())
        except BackendError as exc:
            reason = str(exc).removeprefix("backend: ")
            reason = reason.split(runner.INSTALL_HINT)[0].rstrip(" ;.") or reason
            return Availability(False, reason, runner.INSTALL_HINT)
        return Availability(True)

    def solver_versions(self) -> dict[str, str]:
        try:
            info = runner.probe()
        except BackendError:
            return {"meep": "unavailable"}
        return {"meep": str(info.get("meep")), "worker_numpy": str(info.get("numpy")),
                "worker_python": str(info.get("python")), "mpi": str(info.get("mpi"))}

    def run(self, stack: Stack, analysis: Analysis, options: Mapping[str, Any]) -> xr.Dataset:
        opts = resolve_options(analysis.kind, options)
        # every wavelength must lie inside every material's data (no extrapolation), checked
        # before any fit or simulation: WavelengthRangeError names the medium and material
        stack.indices(list(analysis.wavelength_nm))
        runner.probe(opts["interpreter"], opts["launcher"])  # BackendError if unusable
        if isinstance(analysis, ReflectanceAnalysis):
            from .reflectance import run_reflectance

            ds = run_reflectance(stack, analysis, opts)
        elif isinstance(analysis, ModesAnalysis):
            from .modes import run_modes

            ds = run_modes(stack, analysis, opts)
        elif isinstance(analysis, DipoleEmissionAnalysis):
            from .dipole import run_dipole

            ds = run_dipole(stack, analysis, opts)
        elif isinstance(analysis, OutcouplingAnalysis):
            from .outcoupling import run_outcoupling

            ds = run_outcoupling(stack, analysis, opts)
        else:
            raise SolverError(f"meep cannot answer '{analysis.kind}'")
        ds.attrs["meep_options"] = _options_attr(opts)
        return ds


def _options_attr(opts: Mapping[str, Any]) -> str:
    import json

    keep = {k: v for k, v in opts.items() if k not in ("work_dir",)}
    return json.dumps(keep, sort_keys=True, default=str)
