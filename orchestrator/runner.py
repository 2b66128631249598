"""Run a study: expand its sweep into tasks, execute them, combine one labelled dataset."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from . import __version__
from .batches import sweep_gc
from .cache import TaskCache, default_cache_dir
from .encoding import Record
from .errors import BackendError, ConfigError
from .executors import ExecConfig, Report, execute
from .progress import SweepProgress
from .registry import default_registry, get_backend
from .stack import load_stack
from .study import Study, load_study
from .tasks import STACK_ATTR, Task, TaskResult, key_from_prefix, run_task

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
    refs: dict[str | None, str] = {}
    analyses_memo: dict[str, dict[str, Any]] = {}
    tasks: list[Task] = []
    options = dict(study.backend_options)  # one object for all tasks: its key part is built once
    analysis_axes = [k for k in study.sweep.axes if k.partition(".")[0] in labels]
    stack_axes = [k for k in study.sweep.axes if k not in SPECIAL_AXES and k not in analysis_axes]
    for point in sweep_points(study):
        stack_overrides = {k: point[k] for k in stack_axes}
        analysis_overrides = {k: point[k] for k in analysis_axes}
        ref = point.get("stack")
        if ref not in refs:
            refs[ref] = study.stack_ref(ref)
        stack_name = refs[ref]
        if stack_name not in base_cache:
            base_cache[stack_name] = load_stack(stack_name, study.overrides or None)
            _check_axes(study, base_cache[stack_name], labels)
        try:
            stack = base_cache[stack_name].with_overrides(stack_overrides) if stack_overrides \
                else base_cache[stack_name]
            memo_key = repr(sorted(analysis_overrides.items())) if analysis_overrides else ""
            if memo_key not in analyses_memo:
                analyses_memo[memo_key] = study.analysis_objects(analysis_overrides)
            analyses = analyses_memo[memo_key]
        except ConfigError as exc:
            shown = ", ".join(f"{k} = {v!r}" for k, v in point.items())
            raise ConfigError(f"sweep point ({shown}): {exc}") from None
        base_hash = base_cache[stack_name].content_hash
        for name, analysis in analyses.items():
            tasks.append(Task(
                stack=stack, analysis=analysis, analysis_name=name,
                backend=point.get("backend", backend or study.backend),
                options=options, point=point, index=len(tasks), base_stack_hash=base_hash,
            ))
    check_backends(tasks)
    return tasks


def _check_axes(study: Study, stack: Any, labels: set[str]) -> None:
    """Every sweep axis must name a stack field, an analysis parameter, 'stack' or 'backend'."""
    fields = set(stack.addressable_fields())
    for name in study.sweep.axes:
        head = name.partition(".")[0]
        if name in SPECIAL_AXES or name in fields or head in labels:
            continue
        raise ConfigError(
            f"unknown sweep axis '{name}': not a field of stack '{stack.name}' "
            f"({', '.join(sorted(fields))}), not an analysis parameter "
            f"(<analysis>.<parameter> with analysis in {sorted(labels)}), "
            "nor 'stack' or 'backend'", field="sweep.axes")


def check_backends(tasks: Sequence[Task]) -> None:
    """Unknown backends and unsupported analyses are usage errors, raised before any work."""
    registry = default_registry()
    for name, kind in sorted({(t.backend, t.analysis.kind) for t in tasks}):
        backend = registry.get(name)
        if kind not in backend.analyses:
            raise BackendError(f"backend '{name}' does not answer '{kind}'; it answers "
                               f"{', '.join(sorted(backend.analyses))}", field="backend")


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


def _as_record(x: xr.Dataset | Record | None) -> Record | None:
    if x is None or isinstance(x, Record):
        return x
    return Record.from_dataset(x)


def _as_dataset(x: xr.Dataset | Record | None) -> xr.Dataset | None:
    return x.to_dataset() if isinstance(x, Record) else x


def _fill(dtype: np.dtype) -> Any:
    return np.nan if dtype.kind in "fc" else ("" if dtype.kind in "UO" else 0)


def _stack_fast(records: list[Record | None]) -> xr.Dataset | None:
    """Stack same-shaped results along ``point`` with plain numpy (None if they differ).

    Equivalent to concatenating the datasets (failed points filled with NaN, '' or 0), but
    without building one xarray object per point: a 10,000-point sweep combines in a blink.
    Records that are rows of one batch's columns (their ``origin``) are checked and copied a
    column at a time when the batch has at least ``_COLUMN_ROWS`` of them here (below that,
    one by one is quicker).
    """
    ok = [r for r in records if r is not None]
    template = ok[0]
    sig = _signature(template)
    coords = {j: (template.arrays[j], template.arrays[j].tobytes())
              for j, v in enumerate(template.variables) if v["coord"]}
    batches: dict[int, tuple[list[np.ndarray], list[int], list[int]]] = {}  # columns, rows, points
    alone: list[tuple[int, Record]] = []  # records of their own (point, record)
    for i, rec in enumerate(records):
        if rec is None:
            continue
        # records decoded from the same structure share its variable list: same names, dims,
        # flags and attributes; dtypes and shapes then follow from that structure too
        if rec.variables is not template.variables and not _same_signature(rec, sig):
            return None
        origin = rec.origin
        if origin is None or origin[2] is not rec.arrays:
            alone.append((i, rec))
            continue
        found = batches.get(id(origin[0]))
        if found is None:
            found = batches[id(origin[0])] = (origin[0], [], [])
        found[1].append(origin[1])
        found[2].append(i)
    for key, (_, rows, points) in list(batches.items()):
        if len(rows) < _COLUMN_ROWS:  # a few rows: one by one is quicker than numpy's set-up
            alone += [(i, records[i]) for i in points]
            del batches[key]
    for j, (arr0, raw0) in coords.items():
        if not all(_rows_equal(columns[j][rows], arr0, raw0)
                   for columns, rows, _ in batches.values()):
            return None
        for _, rec in alone:
            arr = rec.arrays[j]
            if arr.tobytes() != raw0 and not np.array_equal(arr, arr0):
                return None
    n = len(records)
    data_vars, coords_out = {}, {}
    for j, v in enumerate(template.variables):
        arr0 = template.arrays[j]
        if v["coord"]:
            coords_out[v["name"]] = xr.Variable(v["dims"], np.array(arr0),
                                                attrs=dict(v["attrs"]))
            continue
        out = np.full((n, *arr0.shape), _fill(arr0.dtype), dtype=arr0.dtype)
        for columns, rows, points in batches.values():
            out[points] = columns[j][rows]
        for i, rec in alone:
            out[i] = rec.arrays[j]
        data_vars[v["name"]] = xr.Variable(("point", *v["dims"]), out, attrs=dict(v["attrs"]))
    return xr.Dataset(data_vars, coords=coords_out, attrs=_common_attrs(ok))


#: rows of one batch's columns below which the combine reads the records one by one
_COLUMN_ROWS = 16


def _rows_equal(rows: np.ndarray, arr0: np.ndarray, raw0: bytes) -> bool:
    """Whether every row (along the first axis) equals ``arr0``: byte for byte (NaN included),
    else value for value (-0.0 and 0.0)."""
    data = np.ascontiguousarray(rows).view(np.uint8).reshape(len(rows), -1)
    if np.array_equal(data, np.broadcast_to(np.frombuffer(raw0, np.uint8), data.shape)):
        return True
    return bool(np.all(rows == arr0))


def _signature(rec: Record) -> list[tuple[Any, ...]]:
    return [(v["name"], tuple(v["dims"]), v["coord"], v["attrs"], a.dtype, a.shape)
            for v, a in zip(rec.variables, rec.arrays, strict=True)]


def _same_signature(rec: Record, sig: list[tuple[Any, ...]]) -> bool:
    try:
        return _signature(rec) == sig
    except ValueError:  # arrays among the variable attributes: let xarray's concat decide
        return False


def _common_attrs(records: list[Record]) -> dict[str, Any]:
    """The attributes every record that has them agrees on, as xarray's ``drop_conflicts``
    keeps them (the value of the first record that has one, compared with every other)."""
    first: dict[str, Any] = {}
    conflicting: set[str] = set()
    for rec in records:  # one pass; most values are the very object the first record holds
        for key, value in rec.attrs.items():
            ref = first.setdefault(key, value)
            if value is not ref and key not in conflicting and not _same(value, ref):
                conflicting.add(key)
    return {key: value for key, value in first.items() if key not in conflicting}


def _same(a: Any, b: Any) -> bool:
    """Whether two attribute values agree as xarray's ``equivalent`` decides it: arrays element
    by element (broadcast), NaN equal to NaN."""
    if type(a) is str and type(b) is str:  # the usual case: no numpy
        return a == b
    try:
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            x, y = np.asarray(a), np.asarray(b)
            equal = x == y
            if x.dtype.kind in "fc" and y.dtype.kind in "fc":
                equal = equal | (np.isnan(x) & np.isnan(y))
            return bool(np.all(equal))
        return bool(a == b) or (_is_nan(a) and _is_nan(b))
    except (TypeError, ValueError):
        return False


def _is_nan(value: Any) -> bool:
    return isinstance(value, float | complex | np.floating | np.complexfloating) \
        and value != value


def _combine_one(study: Study, tasks: list[Task], results: list[TaskResult]) -> xr.Dataset:
    axes = list(study.sweep.axes)
    records = [_as_record(r.dataset) for r in results]
    squeezed = _own_parameter_values(study, tasks, records)
    sources: list[Any] = [r.dataset for r in results]  # what the slow path stacks
    if squeezed is not None:
        records = sources = squeezed
    ok = [r for r in records if r is not None]
    data = None
    if not ok:
        data = xr.Dataset()
    elif not axes:
        data = ok[0].to_dataset()
    else:
        data = _stack_fast(records)
        if data is None:
            datasets = [_as_dataset(x) for x in sources]
            template = next(d for d in datasets if d is not None)
            parts = [d if d is not None else _placeholder(template) for d in datasets]
            data = xr.concat(parts, dim="point", join="outer", combine_attrs="drop_conflicts",
                             coords="minimal", compat="override", data_vars="all")
    data.attrs = restore_stack_attr(data.attrs, tasks, records)
    # A point's status is its outcome (ok | failed): whether it came from the cache is run
    # history (the 'run' attribute), so a resumed run gives the same dataset as a fresh one.
    status = np.array(["ok" if r.status == "cached" else r.status for r in results])
    error = np.array([r.error for r in results])
    if not axes:
        data = data.assign(status=((), status[0]), error=((), error[0]))
        return data
    coords = {name: ("point", _axis_values(study, name, tasks)) for name in axes}
    data = data.assign(status=("point", status), error=("point", error)).assign_coords(coords)
    if study.sweep.mode == "product":
        if len(axes) == 1:  # a one-level index cannot be unstacked: make the axis the dim
            data = data.swap_dims(point=axes[0])
        else:
            data = data.set_index(point=axes).unstack("point")
    return data


def restore_stack_attr(attrs: dict[str, Any], tasks: list[Task],
                       records: list[Record | None]) -> dict[str, Any]:
    """The combined results' attributes with ``stack``, which workers do not send
    (``STACK_ATTR``), as xarray would have kept it: only if all points with a result agree on
    it, that is on ``stack_hash`` (its hash); then it is the stack of any such point, placed
    right after ``stack_hash`` as :func:`qdcavity.api.solve` places it."""
    attrs = {k: v for k, v in attrs.items() if k != STACK_ATTR}  # old packs still hold it
    digest = attrs.get("stack_hash")
    if digest is None:
        return attrs
    stack = next(task.stack for task, rec in zip(tasks, records, strict=True) if rec is not None)
    if stack.content_hash != digest:
        return attrs
    out = {}
    for key, value in attrs.items():
        out[key] = value
        if key == "stack_hash":
            out[STACK_ATTR] = stack.canonical_json
    return out


def _own_parameter_values(study: Study, tasks: list[Task], records: list[Record | None]
                          ) -> list[Record | None] | None:
    """For a swept analysis parameter that each result holds as a one-value dimension of its
    own, at the point's value (the axis ``reflectance.angle_deg``, the coordinate ``angle_deg``
    = [the point's angle] in every result): the records without that dimension, which the
    axis then holds; else None. Stacked as they came, the points would make an outer product,
    NaN off its diagonal. A parameter that is not that dimension's only value (outcoupling's
    nominal ``material_gain_cm`` against its gain scan) is left alone."""
    label, changed = tasks[0].analysis_name, False
    for axis in study.sweep.axes:
        head, _, param = axis.partition(".")
        if head != label:
            continue
        owned = [(rec, task.point[axis]) for rec, task in zip(records, tasks, strict=True)
                 if rec is not None]
        if owned and all(np.isscalar(value) and _only_value(rec, param) == value
                         for rec, value in owned):
            records = [None if rec is None else _without_dim(rec, param) for rec in records]
            changed = True
    return records if changed else None


_NO_VALUE = object()


def _only_value(rec: Record, name: str) -> Any:
    """The value of a record's one-value dimension coordinate ``name``, if no other coordinate
    depends on that dimension (else a sentinel)."""
    value = _NO_VALUE
    for var, arr in zip(rec.variables, rec.arrays, strict=True):
        if var["name"] == name and var["coord"] and list(var["dims"]) == [name]:
            if arr.shape != (1,):
                return _NO_VALUE
            value = arr[0]
        elif var["coord"] and name in var["dims"]:
            return _NO_VALUE  # e.g. sin_theta(angle_deg): it would have to become per point
    return value


def _without_dim(rec: Record, name: str) -> Record:
    """The record with its one-value dimension ``name`` and that coordinate taken out."""
    variables, arrays = [], []
    for var, arr in zip(rec.variables, rec.arrays, strict=True):
        if var["name"] == name:
            continue
        dims = list(var["dims"])
        if name in dims:
            arr = np.take(arr, 0, axis=dims.index(name))
            dims.remove(name)
            var = {**var, "dims": dims}
        variables.append(var)
        arrays.append(arr)
    return Record(rec.attrs, variables, arrays)


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
        axes = {*study.sweep.axes, "point"}  # shared by every analysis
        renamed = []
        for name, part in parts.items():
            mapping = {v: _prefixed(name, v, axes) for v in [*part.variables, *part.dims]
                       if v not in axes}
            renamed.append(part.rename(mapping).drop_attrs())
        ds = xr.merge(renamed, combine_attrs="drop", compat="no_conflicts", join="outer")
    first_ok = next((_as_record(r.dataset) for r in results if r.dataset is not None), None)
    if first_ok is not None:
        keep = ("conventions", "qdcavity_version", "solver_versions")
        ds.attrs.update({k: v for k, v in first_ok.attrs.items() if k in keep})
    ds.attrs.update({
        "qdcavity_version": __version__,
        "study_name": study.name,
        "study": study.text,
        "analyses": json.dumps([a.label for a in study.analyses]),
        "analysis_kinds": json.dumps({a.label: a.kind for a in study.analyses}),
        "backends": json.dumps(sorted({t.backend for t in tasks})),
        "base_stack_hashes": json.dumps(sorted({t.base_stack_hash or t.stack.content_hash
                                                for t in tasks})),
        "n_failed": int(sum(r.status == "failed" for r in results)),
    })
    return ds


def _prefixed(analysis: str, name: Any, axes: set[str]) -> str:
    """``<analysis>.<name>``, or ``<analysis>.<name>_result`` where that is a sweep axis: a swept
    parameter whose results have a dimension or variable of the same name that holds something
    else (outcoupling's nominal ``material_gain_cm`` and its gain scan)."""
    prefixed = f"{analysis}.{name}"
    return f"{prefixed}_result" if prefixed in axes else prefixed


def task_keys(tasks: Sequence[Task], keep_json: bool = False) -> list[str]:
    """Each task's cache key; an unknown backend (e.g. on the ``backend`` axis) fails here.

    Unless ``keep_json``, a stack that only one task holds (a point of a stack axis) has its
    canonical JSON built for its key but not kept: at 1.7 kB per TE-DIZO point it was 40 % of
    the client's memory per point; workers rebuild it for the result's provenance, as pickles
    never carry it. Keep it when the tasks are solved in this process (which builds it again
    otherwise). A stack that several tasks share, or whose JSON was already built, keeps it."""
    tasks = tasks if isinstance(tasks, list | tuple) else list(tasks)
    versions: dict[str, str] = {}
    prefixes: dict[tuple[int, str, int], str] = {}  # by the objects' ids: all alive here
    holders = Counter(id(task.stack) for task in tasks)
    keys = []
    for task in tasks:
        if task.backend not in versions:
            versions[task.backend] = get_backend(task.backend).version
        which = (id(task.analysis), task.backend, id(task.options))
        prefix = prefixes.get(which)
        if prefix is None:
            prefix = prefixes[which] = task.key_prefix(versions[task.backend])
        stack = task.stack
        drop = not keep_json and holders[id(stack)] == 1 and "canonical_json" not in stack.__dict__
        keys.append(key_from_prefix(prefix, stack.canonical_json))
        if drop:
            del stack.__dict__["canonical_json"]
    return keys


def study_cache(study: Study, cache_dir: str | Path | None = None) -> TaskCache:
    """The cache folder: argument, else ``output.cache_dir`` (relative to the study file), else
    ``$QDCAVITY_CACHE_DIR``, else ``.qdcavity-cache`` next to the study file."""
    if cache_dir is None and study.output.cache_dir:
        cache_dir = Path(study.base_dir) / study.output.cache_dir
    return TaskCache(cache_dir if cache_dir is not None else default_cache_dir(study.base_dir))


def _exec_config(study: Study, executor: str | ExecConfig | None,
                 overrides: dict[str, Any]) -> ExecConfig:
    if isinstance(executor, ExecConfig):
        return executor.with_(**{k: v for k, v in overrides.items() if v is not None})
    if isinstance(executor, str):
        overrides = {**overrides, "kind": executor}
    return ExecConfig.from_study(study, **overrides)


def execute_study(study: Study | str | Path, backend: str | None = None,
                  executor: str | ExecConfig | Executor | None = None, *,
                  cache_dir: str | Path | None = None, use_cache: bool = True,
                  resume: bool = False, progress: SweepProgress | None = None,
                  **exec_overrides: Any) -> tuple[xr.Dataset, Report]:
    """Run a study; return the combined dataset and a :class:`~qdcavity.executors.Report`.

    ``executor``: None (the study's ``[executor]``), a kind (``"inprocess"``, ``"local"``,
    ``"address"``, ``"slurm"``), an :class:`~qdcavity.executors.ExecConfig`, or a callable
    ``(tasks, study) -> results`` (no cache). ``exec_overrides`` are ExecConfig fields
    (``workers``, ``address``, ``retries``, ``batch_size``...). Finished tasks are read from and
    written to the cache unless ``use_cache=False``; ``resume=True`` insists on the cache.
    """
    if not isinstance(study, Study):
        study = load_study(study)
    with sweep_gc():  # expansion, keys and the combine make objects by the hundred thousand
        tasks = expand(study, backend)
        if not tasks:
            raise ConfigError("the study expands to no task")
        custom = callable(executor) and not isinstance(executor, str | ExecConfig)
        cfg = None if custom else _exec_config(study, executor, exec_overrides)
        # solved in this process, a stack keeps its canonical JSON anyway (provenance)
        keys = task_keys(tasks, keep_json=cfg is None or cfg.kind == "inprocess")
        if cfg is None:
            results = executor(tasks, study)
            report = Report(executor=getattr(executor, "__name__", "custom"), n_tasks=len(tasks),
                            n_computed=sum(r.status == "ok" for r in results),
                            n_failed=sum(r.status == "failed" for r in results))
        else:
            if resume and not use_cache:
                raise ConfigError("--resume needs the cache (do not combine it with --no-cache)")
            cache = study_cache(study, cache_dir) if use_cache else None
            results, report = execute(tasks, keys, cache, cfg, progress, raw=True)
        ds = combine(study, tasks, results)
        ds.attrs["run"] = report.as_attr()
        return ds, report


def run_study(study: Study | str | Path, backend: str | None = None,
              executor: str | ExecConfig | Executor | None = None, **kwargs: Any
              ) -> xr.Dataset:
    """Run every task of a study and return the combined dataset (not written to disk).

    See :func:`execute_study` for the keyword arguments (cache, resume, progress, executor
    overrides).
    """
    return execute_study(study, backend, executor, **kwargs)[0]
