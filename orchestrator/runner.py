"""Run a study: expand its sweep into tasks, execute them, combine one labelled dataset."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from . import __version__
from .errors import ConfigError
from .stack import load_stack
from .study import Study, load_study
from .tasks import Task, TaskResult, run_task

Executor = Callable[[Sequence[Task], Study], list[TaskResult]]
SPECIAL_AXES = ("stack", "backend")


def sweep_points(study: Study) -> list[dict[str, Any]]:
    """Every point of the sweep as ``{axis: value}`` (one empty point without axes)."""
    axes = study.sweep.axes
    if not axes:
        return [{}]
    names = list(axes)
    if study.sweep.mode == "zip":
        return [dict(zip(names, values, strict=True)) for values in zip(*axes.values(),
                                                                         strict=True)]
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]


def expand(study: Study, backend: str | None = None) -> list[Task]:
    """Tasks of a study, one per sweep point and analysis; bad axes fail before any work."""
    labels = {a.label for a in study.analyses}
    base_cache: dict[str, Any] = {}
    tasks: list[Task] = []
    for point in sweep_points(study):
        stack_overrides = {k: v for k, v in point.items()
                           if k not in SPECIAL_AXES and k.partition(".")[0] not in labels}
        analysis_overrides = {k: v for k, v in point.items() if k.partition(".")[0] in labels}
        stack_name = study.stack_ref(point.get("stack"))
        if stack_name not in base_cache:
            base_cache[stack_name] = load_stack(stack_name, study.overrides or None)
        stack = base_cache[stack_name].with_overrides(stack_overrides) if stack_overrides \
            else base_cache[stack_name]
        analyses = study.analysis_objects(analysis_overrides)
        for name, analysis in analyses.items():
            tasks.append(Task(
                stack=stack, analysis=analysis, analysis_name=name,
                backend=point.get("backend", backend or study.backend),
                options=dict(study.backend_options), point=point, index=len(tasks),
            ))
    return tasks


def serial_executor(tasks: Sequence[Task], study: Study) -> list[TaskResult]:
    return [run_task(task) for task in tasks]


def _placeholder(template: xr.Dataset) -> xr.Dataset:
    """A dataset shaped like ``template`` holding 'no result': NaN, '' and 0."""
    out = template.copy(deep=True)
    for name, var in out.data_vars.items():
        kind = var.dtype.kind
        fill = np.nan if kind in "fc" else ("" if kind in "UO" else 0)
        out[name] = var.copy(data=np.full(var.shape, fill, dtype=var.dtype))
    return out


def _combine_one(study: Study, tasks: list[Task], results: list[TaskResult]) -> xr.Dataset:
    axes = list(study.sweep.axes)
    ok = [r.dataset for r in results if r.dataset is not None]
    if not ok:
        data = xr.Dataset()
    elif not axes:
        data = ok[0]
    else:
        template = ok[0]
        parts = [r.dataset if r.dataset is not None else _placeholder(template) for r in results]
        data = xr.concat(parts, dim="point", join="outer", combine_attrs="drop_conflicts",
                         coords="minimal", compat="override", data_vars="all")
    status = np.array([r.status for r in results])
    error = np.array([r.error for r in results])
    if not axes:
        data = data.assign(status=((), status[0]), error=((), error[0]))
        return data
    coords = {name: ("point", _axis_values(study, name, tasks)) for name in axes}
    data = data.assign(status=("point", status), error=("point", error)).assign_coords(coords)
    if study.sweep.mode == "product":
        data = data.set_index(point=axes).unstack("point")
    return data


def _axis_values(study: Study, name: str, tasks: list[Task]) -> np.ndarray:
    return np.array([t.point[name] for t in tasks])


def combine(study: Study, tasks: list[Task], results: list[TaskResult]) -> xr.Dataset:
    """One dataset: sweep axes as coordinates, ``status`` and ``error`` per point.

    A study with a single analysis gives that analysis' contract variables as they are. With
    several analyses, every variable and analysis dimension is prefixed ``<name>.``
    (``reflectance.R``, ``modes.neff``); :func:`qdcavity.results.analysis_view` undoes it.
    """
    by_name: dict[str, tuple[list[Task], list[TaskResult]]] = {}
    for task, result in zip(tasks, results, strict=True):
        entry = by_name.setdefault(task.analysis_name, ([], []))
        entry[0].append(task)
        entry[1].append(result)
    parts = {name: _combine_one(study, *pair) for name, pair in by_name.items()}
    if len(parts) == 1:
        ds = next(iter(parts.values()))
    else:
        axes = set(study.sweep.axes)
        renamed = []
        for name, part in parts.items():
            mapping = {v: f"{name}.{v}" for v in [*part.variables, *part.dims]
                       if v not in axes}
            renamed.append(part.rename(mapping).drop_attrs())
        ds = xr.merge(renamed, combine_attrs="drop")
    first_ok = next((r.dataset for r in results if r.dataset is not None), None)
    if first_ok is not None:
        keep = ("conventions", "qdcavity_version", "solver_versions")
        ds.attrs.update({k: v for k, v in first_ok.attrs.items() if k in keep})
    ds.attrs.update({
        "qdcavity_version": __version__,
        "study_name": study.name,
        "study": study.text,
        "analyses": json.dumps([a.label for a in study.analyses]),
        "backends": json.dumps(sorted({t.backend for t in tasks})),
        "stack_hashes": json.dumps(sorted({t.stack.content_hash for t in tasks})),
        "n_failed": int(sum(r.status == "failed" for r in results)),
    })
    return ds


def run_study(study: Study | str | Path, backend: str | None = None,
              executor: Executor | None = None) -> xr.Dataset:
    """Run every task of a study and return the combined dataset (not written to disk)."""
    if not isinstance(study, Study):
        study = load_study(study)
    tasks = expand(study, backend)
    if not tasks:
        raise ConfigError("the study expands to no task")
    results = (executor or serial_executor)(tasks, study)
    return combine(study, tasks, results)
