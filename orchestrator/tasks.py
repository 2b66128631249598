"""Tasks: one stack, one analysis, one backend. Their content key and their execution.

A task's key is the SHA-256 of its canonical inputs (stack, analysis, backend options) plus the
backend's name and version, so a cache entry is reused only for the very same question asked of
the very same solver version.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import xarray as xr

from .analyses import Analysis
from .errors import QdcavityError
from .identity import canonical_dumps
from .stack import Stack

# Options that steer where or how a backend runs but never change its answer.
NON_RESULT_OPTIONS = frozenset({"work_dir", "dry_run", "timeout_s", "interpreter", "launcher"})

#: The result attribute that the task itself fixes: the canonical JSON of the task's stack, which
#: :func:`qdcavity.api.solve` records (the task's key is a hash of it). A sweep's workers
#: neither send nor store it: 1.7 of a TE-DIZO reflectance result's 2.1 kB. The combine puts it
#: back where all points agree on ``stack_hash`` (:func:`qdcavity.runner.restore_stack_attr`).
STACK_ATTR = "stack"


@dataclass(frozen=True)
class Task:
    """One point of a study: the question, the solver, and the sweep coordinates."""

    stack: Stack
    analysis: Analysis
    analysis_name: str
    backend: str
    options: Mapping[str, Any] = field(default_factory=dict)
    point: Mapping[str, Any] = field(default_factory=dict)
    index: int = 0
    #: the content hash of the stack the study names, before the sweep's axes change it
    #: (provenance of the combined result; not part of the key)
    base_stack_hash: str = ""

    def key(self, backend_version: str) -> str:
        """SHA-256 of ``canonical_dumps({"analysis", "backend", "backend_version", "options",
        "stack"})`` (``default=str`` for option values), assembled from the stack's and the
        analysis' cached canonical JSON."""
        return key_from_prefix(self.key_prefix(backend_version), self.stack.canonical_json)

    def key_prefix(self, backend_version: str) -> str:
        """The canonical JSON of the key up to the stack's: the same for every task of one
        analysis, backend and options (:func:`qdcavity.runner.task_keys` builds it once)."""
        options = {k: v for k, v in self.options.items() if k not in NON_RESULT_OPTIONS}
        return (f'{{"analysis":{self.analysis.canonical_json},'
                f'"backend":{json.dumps(self.backend)},'
                f'"backend_version":{json.dumps(backend_version)},'
                f'"options":{canonical_dumps(options, default=str)},'
                f'"stack":')


def key_from_prefix(prefix: str, stack_json: str) -> str:
    """:meth:`Task.key` from its :meth:`Task.key_prefix` and the stack's canonical JSON."""
    return hashlib.sha256(f"{prefix}{stack_json}}}".encode()).hexdigest()


@dataclass
class TaskResult:
    """``status`` is ``ok``, ``cached`` or ``failed`` (then ``error`` says why)."""

    index: int
    status: str
    dataset: xr.Dataset | None = None
    error: str = ""
    seconds: float = 0.0
    transient: bool = False


def run_task(task: Task) -> TaskResult:
    """Run one task in this process; an exception becomes a ``failed`` result, never a crash."""
    from .api import solve  # late import: workers unpickle tasks before the API is needed

    start = time.perf_counter()
    try:
        ds = solve(task.stack, task.analysis, backend=task.backend, options=task.options)
    except QdcavityError as exc:
        return TaskResult(task.index, "failed", error=str(exc),
                          seconds=time.perf_counter() - start)
    except (Exception, SystemExit) as exc:  # noqa: BLE001  isolate the sweep from a solver bug
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        where = f" (at {tb.filename.rsplit('/', 1)[-1]}:{tb.lineno})"
        return TaskResult(task.index, "failed", error=f"{type(exc).__name__}: {exc}{where}",
                          seconds=time.perf_counter() - start)
    return TaskResult(task.index, "ok", dataset=ds, seconds=time.perf_counter() - start)
