"""The worker side of a sweep: run a batch of tasks, encode their results, write the cache.

:func:`run_batch` is what a dask worker (or the client itself, in-process) runs for each batch
the driver in :mod:`qdcavity.executors` submits; it returns plain data (status and timings per
task, the results as blocks of columns, whether each block is in the cache), never raises for
a task's own error, and writes finished results to the cache folder itself when it can see it.
"""

from __future__ import annotations

import gc
import os
import pickle
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .cache import TaskCache
from .encoding import (
    CacheError,
    Encoded,
    encode_result,
    records_from_columns,
    result_columns,
)
from .packs import Block
from .tasks import STACK_ATTR, Task, TaskResult, run_task

if TYPE_CHECKING:
    import xarray as xr


def worker_identity() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


#: results encoded back to back (see run_batch)
ENCODE_CHUNK = 16


def run_batch(tasks: Sequence[Task], keys: Sequence[str] = (),
              cache: tuple[str, str, float] | None = None) -> dict[str, Any]:
    """Run tasks one after the other (on a worker); never raises for a task's own error.

    Returns ``{"where", "results", "blocks", "solver_cpu_s"}``: per task its status and wall
    time, or the dataset itself if it cannot be encoded (``dataset``); the CPU time the
    process spent solving (see :class:`_BatchRun`); the encoded results as blocks, one
    per structure and cache flush: ``rows`` (indices in ``results``), ``structure``,
    ``attrs``, ``arrays`` as columns, and whether the block is ``written`` to the cache.
    :func:`with_records` turns them into each result's :class:`~qdcavity.encoding.Record`.
    With ``cache = (folder, token, flush_s)`` and that folder visible here (a local cluster, a
    shared file system under SLURM), the blocks are written to the cache right here, one pack
    file per ``flush_s`` seconds of work (a task that takes longer is written alone as soon
    as it is done); otherwise the client writes them (:mod:`qdcavity.packs`).
    """
    from .registry import default_registry

    default_registry()  # plugin loading is start-up cost, not solver time
    store = TaskCache.if_shared(*cache[:2]) if cache and keys else None
    batch = _BatchRun(tasks, keys, store, cache[2] if cache else 0.0)
    with sweep_gc():
        for task in tasks:
            batch.run(task)
        batch.flush()
    return {"where": batch.where, "results": batch.out, "blocks": batch.blocks,
            "solver_cpu_s": batch.solver_cpu_s}


def pack_batch(tasks: Sequence[Task], keys: Sequence[str] = (),
               cache: tuple[str, str, float] | None = None) -> bytes:
    """The arguments of :func:`run_batch_packed`, pickled into one bytes object by the client.

    Handed to dask as objects, a batch's hundreds of tasks (pydantic stacks and analyses) were
    serialized piece by piece on their way through the scheduler: dask's threads in the client
    process (where a local cluster's scheduler runs) spent 0.52-0.65 s of CPU on a 10,000-task
    sweep, 0.37-0.44 s with the arguments packed. Bytes pass through untouched. The pickling
    follows dask's own rules (``distributed.protocol.pickle.dumps``): anything defined in the
    user's ``__main__`` script, or that plain pickle refuses (a lambda among the options),
    goes by value through cloudpickle.
    """
    from distributed.protocol.pickle import dumps

    return dumps((list(tasks), list(keys), cache), protocol=pickle.HIGHEST_PROTOCOL)


def run_batch_packed(args: bytes) -> bytes:
    """:func:`run_batch` of the arguments :func:`pack_batch` packed, for a dask worker; its
    result pickled into one bytes object.

    dask handles a returned structure of many small objects piece by piece; one bytes object
    of the same content saved the client process 8 ms of CPU per batch of 270 TMM results.
    The results' arrays travel as columns per structure, so the client rebuilds the records
    as views of the columns (:func:`unpack_batch`). Only qdcavity's own workers and client
    exchange these bytes (the cache never holds pickles).
    """
    _freeze_worker_once()
    with sweep_gc():  # Python's default threshold made unpickling the tasks 17-20 us each
        tasks, keys, cache = pickle.loads(args)
        return pickle.dumps(run_batch(tasks, keys, cache), protocol=pickle.HIGHEST_PROTOCOL)


_worker_frozen = False


def _freeze_worker_once() -> None:
    """On a dask worker, before its first batch: freeze what the process holds (its imports,
    dask's state; about 112,000 objects) for good (``gc.freeze``), so that full collections no
    longer walk it. Such a collection took 60-80 ms per worker and came every five or so
    10,000-point sweeps, adding 12-16 us per point to that sweep. Garbage made later is
    collected as usual. Not done in the client, a user's process: objects frozen there for a
    sweep kept the garbage of earlier sweeps from being collected while sweeps ran back to
    back. A process whose objects are frozen already is left as it is."""
    global _worker_frozen
    if not _worker_frozen:
        _worker_frozen = True
        if gc.get_freeze_count() == 0 and _on_dask_worker():
            gc.freeze()


def _on_dask_worker() -> bool:
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:  # called in another process (the client, a test)
        return False
    return True


def unpack_batch(blob: bytes) -> dict[str, Any]:
    """The result of :func:`run_batch_packed`, each result with its ``record``."""
    return with_records(pickle.loads(blob))


def with_records(out: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_batch`'s result with each encoded result's ``record`` (what decoding its
    payload would give: read-only views of the block's columns, see
    :func:`~qdcavity.encoding.records_from_columns`)."""
    results = out["results"]
    for block in out["blocks"]:
        records = records_from_columns(block["structure"], block["attrs"], block["arrays"])
        for j, record in zip(block["rows"], records, strict=True):
            results[j]["record"] = record
    return out


class _BatchRun:
    """The results of one batch, encoded and written to the cache as they accumulate.

    Tasks are solved ``ENCODE_CHUNK`` at a time, back to back, and only then recorded and
    encoded: encoding results back to back costs 15-25 us less per result than interleaving it
    with millisecond solves, which leave the processor's caches cold for it. The process's CPU
    time is read around each such run of solves (``solver_cpu_s``), not around each task: a
    CPU clock is a system call, 3.3 us when read right after a solve here, against 0.05 us
    for the wall clock each task is timed with; between the solves of a run lies a list append
    and a wall-clock read. Each flush stacks the results encoded since the last one into
    blocks (one per structure), which are written to the cache as they are (columns, see
    :mod:`qdcavity.packs`) and sent to the client.
    """

    def __init__(self, tasks: Sequence[Task], keys: Sequence[str], store: TaskCache | None,
                 flush_s: float) -> None:
        self.keys, self.store, self.flush_s = keys, store, flush_s
        self.backends = [task.backend for task in tasks]
        self.where = worker_identity()
        self.out: list[dict[str, Any]] = []
        self.solved: list[TaskResult] = []  # the current run of solves, not recorded yet
        self.solver_cpu_s = 0.0
        self._run_cpu0: float | None = None  # process CPU time when the current run began
        self.unencoded: list[tuple[int, xr.Dataset]] = []  # (index in out, dataset)
        self.encoded: dict[bytes, tuple[list[int], list[Encoded]]] = {}  # by structure
        self.blocks: list[dict[str, Any]] = []
        self.last_flush = time.perf_counter()

    def run(self, task: Task) -> None:
        if self._run_cpu0 is None:
            self._run_cpu0 = time.process_time()
        self.solved.append(run_task(task))
        if self.store is not None and time.perf_counter() - self.last_flush >= self.flush_s:
            self.flush()
        elif len(self.solved) >= ENCODE_CHUNK:
            self.encode()

    def _record_solved(self) -> None:
        """End the current run of solves: add its CPU time, record each task's outcome."""
        if self._run_cpu0 is not None:
            self.solver_cpu_s += time.process_time() - self._run_cpu0
            self._run_cpu0 = None
        for res in self.solved:
            self.out.append({"index": res.index, "status": res.status, "error": res.error,
                             "seconds": res.seconds, "transient": res.transient,
                             "dataset": None})
            if res.dataset is not None:
                self.unencoded.append((len(self.out) - 1, res.dataset))
        self.solved.clear()

    def encode(self) -> None:
        self._record_solved()
        for j, ds in self.unencoded:
            try:
                enc = encode_result(ds, with_payload=False)
            except CacheError:
                self.out[j]["dataset"] = ds  # sent as it is; the client decides what to do
                continue
            enc.attrs.pop(STACK_ATTR, None)  # the client has the task
            rows, results = self.encoded.setdefault(enc.structure, ([], []))
            rows.append(j)
            results.append(enc)
        self.unencoded.clear()

    def flush(self) -> None:
        """Encode what is left, stack it into blocks and write them to the cache (one pack)."""
        self.encode()
        blocks = [{"rows": rows, "structure": structure, "arrays": result_columns(results),
                   "attrs": [r.attrs for r in results], "written": False}
                  for structure, (rows, results) in self.encoded.items()]
        self.encoded.clear()
        if self.store is not None and blocks:
            try:
                self.store.put_blocks([cache_block(b, self.keys, self.backends, self.out)
                                       for b in blocks], {"by": self.where})
            except OSError:
                self.store = None  # the client writes what is left
            except Exception:  # noqa: BLE001  a pack that cannot be made: its results still
                pass  # travel; the client tries to store them and says so if it cannot
            else:
                for block in blocks:
                    block["written"] = True
        self.blocks += blocks
        self.last_flush = time.perf_counter()


def cache_block(block: Mapping[str, Any], keys: Sequence[str], backends: Sequence[str],
                results: Sequence[Mapping[str, Any]]) -> Block:
    """A block of :func:`run_batch`'s result as the cache stores it. ``keys``, ``backends``
    and ``results`` are the whole batch's, in task order (the block's rows index them)."""
    rows = block["rows"]
    return Block(block["structure"], [keys[j] for j in rows], block["attrs"], block["arrays"],
                 {"backend": [backends[j] for j in rows],
                  "seconds": [round(results[j]["seconds"], 6) for j in rows]})


#: first-generation threshold of the garbage collector during a sweep (Python's default: 700)
SWEEP_GC_THRESHOLD = 10_000


_GC_LOCK = threading.Lock()
_gc_users = 0  # sweeps and batches running in this process
_gc_saved: tuple[int, ...] = ()  # the threshold before the first of them


@contextmanager
def sweep_gc() -> Iterator[None]:
    """The garbage collector's first-generation threshold raised for a sweep, then restored.

    Each solve makes and drops thousands of small objects; with Python's default threshold the
    collector runs several times per 1 ms TMM task and, as a sweep's tasks and results pile
    up, keeps walking all of them in full collections: about 40 us per task, 17 us with the
    threshold at 10,000 (measured on a 10,000-point sweep). Garbage without reference cycles
    is freed at once either way; cycles are still collected, only less often.

    Sweeps that overlap (threads of one worker, nested in-process batches) share the setting:
    the first one saves the threshold, the last one to finish restores it. A threshold of 0
    (automatic collection switched off by the program) is left alone. (Dask workers also
    freeze their imports once: :func:`_freeze_worker_once`.)
    """
    global _gc_users, _gc_saved
    with _GC_LOCK:
        if _gc_users == 0:
            _gc_saved = gc.get_threshold()
            if _gc_saved[0] > 0:
                gc.set_threshold(max(_gc_saved[0], SWEEP_GC_THRESHOLD), *_gc_saved[1:])
        _gc_users += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _gc_users -= 1
            if _gc_users == 0:
                gc.set_threshold(*_gc_saved)
