"""The Python API: load a stack, ask one question of one backend, get a labelled dataset."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import xarray as xr

from . import __version__
from .analyses import Analysis, make_analysis
from .contracts import check_dataset
from .errors import BackendError
from .registry import default_registry
from .stack import Stack, load_stack

DEFAULT_BACKEND = "tmm"


def as_stack(stack: Stack | str | Path) -> Stack:
    return stack if isinstance(stack, Stack) else load_stack(stack)


def as_analysis(analysis: Analysis | str, parameters: Mapping[str, Any]) -> Analysis:
    if isinstance(analysis, Analysis):
        if parameters:
            return make_analysis(analysis.kind, **{**analysis.model_dump(), **parameters})
        return analysis
    return make_analysis(analysis, **parameters)


def provenance(stack: Stack, analysis: Analysis, backend_name: str) -> dict[str, str]:
    backend = default_registry().get(backend_name)
    solvers = backend.solver_versions()
    return {
        "qdcavity_version": __version__,
        "backend": backend.name,
        "backend_version": backend.version,
        "solver_versions": json.dumps(solvers, sort_keys=True),
        "stack_name": stack.name,
        "stack_hash": stack.content_hash,
        "stack": stack.canonical_json,
        "analysis": analysis.canonical_json,
    }


def solve(stack: Stack | str | Path, analysis: Analysis | str, backend: str = DEFAULT_BACKEND,
          options: Mapping[str, Any] | None = None, **parameters: Any) -> xr.Dataset:
    """Answer one analysis for one stack on one backend.

    >>> ds = solve("TE-DIZO", "modes", wavelength_nm=630)          # doctest: +SKIP
    >>> ds.neff.sel(polarization="TE", mode=0)                     # doctest: +SKIP
    """
    stack = as_stack(stack)
    analysis = as_analysis(analysis, parameters)
    solver = default_registry().get(backend)
    if analysis.kind not in solver.analyses:
        raise BackendError(
            f"backend '{solver.name}' does not answer '{analysis.kind}'; it answers "
            f"{', '.join(sorted(solver.analyses))}",
            field="backend",
        )
    status = solver.availability()
    if not status.available:
        hint = f" ({status.install_hint})" if status.install_hint else ""
        raise BackendError(f"backend '{solver.name}' is unavailable: {status.reason}{hint}",
                           field="backend")
    ds = solver.run(stack, analysis, dict(options or {}))
    check_dataset(ds, analysis.kind, solver.name)
    ds.attrs.update(provenance(stack, analysis, solver.name))
    return ds
