"""Execute sweep tasks: in-process, on a dask LocalCluster, on an existing scheduler, on SLURM.

The driver (:func:`execute`) is the same for every executor:

* tasks already in the cache are not run (a corrupt entry counts as missing);
* the others are grouped into batches and submitted with a bounded number in flight (two per
  worker), so that killing the run loses at most those;
* every finished task is written to the cache as soon as it is done, atomically: by the worker
  itself when it sees the cache folder (same machine, shared file system), else by the client
  as results stream back;
* a task that raises is a ``failed`` result with its message (never retried: the solver would
  say the same again); a batch lost with its worker (``KilledWorker``, a closed connection, a
  cancelled future) is resubmitted up to ``retries`` times, then its tasks fail with the reason;
* batch size: fixed (``batch_size``) or automatic: one task per batch (one batch per worker
  until the first one is back) until the first timings arrive, then as many tasks as fit in
  ``target_batch_s`` of solver time (small TMM tasks are grouped by the thousand; a Meep task
  that takes seconds runs alone), shrinking towards the end (:class:`BatchSizer`) so that no
  worker is left idle.

Workers run :func:`qdcavity.batches.run_batch`, which writes each result to the cache itself
(when it sees the folder) and hands the arrays back as columns, from which the client rebuilds
the records without decoding anything (it at most writes to the cache the blocks a worker could
not), so the client stays light at thousands of tasks a second.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import CancelledError
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .batches import (
    cache_block,
    pack_batch,
    run_batch,
    run_batch_packed,
    sweep_gc,
    unpack_batch,
    with_records,
)
from .cache import TaskCache
from .errors import ConfigError, QdcavityError
from .progress import NullProgress, SweepProgress
from .tasks import Task, TaskResult

KINDS = ("inprocess", "local", "address", "slurm")
JOBQUEUE_CONFIG_ENV = "QDCAVITY_JOBQUEUE_CONFIG"


# ---------------------------------------------------------------- configuration

@dataclass(frozen=True)
class ExecConfig:
    """How to run a sweep (the study's ``[executor]`` table plus command-line overrides).

    ``min_cluster_work_s``: with ``kind = "local"`` and no explicit ``workers``, a sweep whose
    tasks (timed on the first ones, run in-process) would take less than this in total is
    finished in-process instead of paying for a cluster start-up. 0 always starts the cluster.

    ``target_batch_s``: solver time per automatic batch. Each batch costs about 10 ms of CPU
    in all (dask's threads in the client process ~5 ms, its worker ~3 ms, the driver ~2 ms;
    measured on a 2-core machine from fixed batch sizes); at 1 s per batch (23 batches), that
    was about 23 us of a 10,000-point 1 ms TMM sweep's ~95 us of overhead per point.
    """

    kind: str = "local"
    workers: int | None = None
    address: str | None = None
    retries: int = 2
    batch_size: int | None = None
    jobs: int = 1
    slurm: Mapping[str, Any] = field(default_factory=dict)
    connect_timeout_s: float = 10.0
    target_batch_s: float = 2.0
    cache_flush_s: float = 0.25
    min_cluster_work_s: float = 3.0
    base_dir: str = "."

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown executor '{self.kind}'; known: {', '.join(KINDS)}",
                              field="executor")
        if self.kind == "address" and not self.address:
            raise ConfigError("executor 'address' needs a scheduler address "
                              "(tcp://host:port; --scheduler on the command line)",
                              field="executor")
        if self.workers is not None and self.workers < 1:
            raise ConfigError("workers must be >= 1", field="executor.workers")
        if self.retries < 0:
            raise ConfigError("retries must be >= 0", field="executor.retries")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1", field="executor.batch_size")
        if self.cache_flush_s < 0:
            raise ConfigError("cache_flush_s must be >= 0", field="executor.cache_flush_s")

    @classmethod
    def from_study(cls, study: Any, **overrides: Any) -> ExecConfig:
        ex = study.executor
        values = dict(kind=ex.kind, workers=ex.workers, address=ex.address, retries=ex.retries,
                      batch_size=ex.batch_size, cache_flush_s=ex.cache_flush_s, jobs=ex.jobs,
                      slurm=dict(ex.slurm),
                      base_dir=study.base_dir)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if overrides.get("address") and not overrides.get("kind"):
            values["kind"] = "address"
        return cls(**values)

    def with_(self, **changes: Any) -> ExecConfig:
        return replace(self, **changes)


@dataclass
class Report:
    """What a run did (also stored as JSON in the result's ``run`` attribute)."""

    executor: str = ""
    n_tasks: int = 0
    n_unique: int = 0
    n_cached: int = 0
    n_computed: int = 0
    n_failed: int = 0
    n_retried: int = 0
    n_corrupt_cache: int = 0
    n_written_by_workers: int = 0
    n_batches: int = 0
    max_batch_size: int = 0
    max_workers: int = 0
    solver_s: float = 0.0  # wall time inside run_task, summed over tasks
    solver_cpu_s: float = 0.0  # CPU time of the worker processes while solving (run_task)
    wall_s: float = 0.0
    startup_s: float = 0.0  # starting the pool (cluster start-up, SLURM job submission)
    dashboard: str | None = None
    workers_used: set[str] = field(default_factory=set)  # "host:pid" that computed tasks
    slurm_job_ids: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if not isinstance(v, set)}
        out["workers_used"] = sorted(self.workers_used)
        out["slurm_job_ids"] = sorted(self.slurm_job_ids)
        return out

    def as_attr(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)


# ---------------------------------------------------------------- pools

def _is_transient(exc: BaseException) -> bool:
    """Infrastructure failures worth a retry: a lost worker or connection, a cancelled future."""
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    return isinstance(exc, KilledWorker | CommClosedError | CancelledError | OSError
                      | TimeoutError | ConnectionError | EOFError)


def _describe(exc: BaseException) -> str:
    """``Type: first sentence of the message`` (dask's messages run to a paragraph)."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001  a broken __str__ must not hide the failure
        text = ""
    first = text.split(". ")[0].strip()
    if len(first) > 200:
        first = first[:197] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class InlinePool:
    """Runs batches in this process, one at a time, when the driver asks for a result."""

    kind = "inprocess"
    dashboard_link: str | None = None

    def __init__(self) -> None:
        self._queue: deque[tuple[int, tuple[Any, ...]]] = deque()
        self._n = 0

    def workers(self) -> int:
        return 1

    def window(self) -> int:
        return 1

    def submit(self, batch: Sequence[Task], keys: Sequence[str] = (),
               cache: tuple[str, str, float] | None = None) -> int:
        self._n += 1
        self._queue.append((self._n, (batch, keys, cache)))
        return self._n

    def wait(self, handles: Any, timeout: float) -> list[tuple[Any, Any]]:
        handle, args = self._queue.popleft()
        try:
            return [(handle, with_records(run_batch(*args)))]
        except Exception as exc:  # noqa: BLE001  e.g. an encoding bug: fail the batch only
            return [(handle, exc)]

    def heartbeat(self) -> str | None:
        return None

    def close(self) -> None:
        self._queue.clear()


#: dask future states after which ``result()`` returns or raises at once
FINAL_FUTURE_STATES = ("finished", "error", "cancelled")
#: how long one attempt to fetch a finished result may take before its state is checked again
GATHER_SLICE_S = 2.0
_IN_FLIGHT = object()


def _collect(fut: Any) -> Any:
    """A finished future's result (or its exception), else ``_IN_FLIGHT``.

    A result lives on the worker that computed it. If that worker leaves (scancel, SIGTERM)
    before the result is fetched, dask resets the future and waits for a rerun inside
    ``result()``, forever when no worker comes back. So the fetch runs in slices and gives the
    future back to the driver (whose heartbeat notices lost workers) once it is no longer
    finished. A slice that runs out cancels that fetch, so each next one is twice as long: a
    slow but live transfer still completes, in at most about twice its own time.
    """
    slice_s = GATHER_SLICE_S
    while (status := fut.status) in FINAL_FUTURE_STATES:
        try:
            return fut.result(timeout=slice_s)
        except TimeoutError as exc:
            if status != "finished":  # an errored future raises its own exception at once
                return exc
            slice_s *= 2
        except BaseException as exc:  # noqa: BLE001  classified by the driver
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            return exc
    return _IN_FLIGHT


class DaskPool:
    """Batches as futures on a dask.distributed client."""

    def __init__(self, client: Any, cluster: Any = None, kind: str = "local") -> None:
        self.client, self.cluster, self.kind = client, cluster, kind
        self._slurm_job_ids: set[str] = set()  # every worker job seen (the cluster forgets them)
        self._workers = (0, -math.inf)
        self._done: queue.Queue[Any] = queue.Queue()
        self._parked: set[Any] = set()  # futures that stopped being final, polled each wait
        self.dashboard_link = _dashboard(client)

    def workers(self) -> int:
        n, when = self._workers
        if time.monotonic() - when > 1.0:
            n = len(self.client.scheduler_info().get("workers", {}))
            self._workers = (n, time.monotonic())
            self.remember_jobs()
        return n

    def remember_jobs(self) -> None:
        """Note the SLURM job ids of the cluster's workers (the cluster forgets lost ones)."""
        if self.kind == "slurm":
            self._slurm_job_ids.update(
                str(job.job_id) for job in list(getattr(self.cluster, "workers", {}).values())
                if getattr(job, "job_id", None))

    def window(self) -> int:
        return 2 * max(self.workers(), 1)

    def submit(self, batch: Sequence[Task], keys: Sequence[str] = (),
               cache: tuple[str, str, float] | None = None) -> Any:
        key = f"qdcavity-batch-{uuid.uuid4().hex[:12]}"
        fut = self.client.submit(run_batch_packed, pack_batch(batch, keys, cache), key=key,
                                 pure=False, retries=0)
        fut.add_done_callback(self._done.put)  # called from a client thread when finished
        return fut

    def wait(self, handles: Any, timeout: float) -> list[tuple[Any, Any]]:
        self._parked &= set(handles)  # the driver gave up on the others
        ready = [fut for fut in self._parked if fut.status in FINAL_FUTURE_STATES]
        self._parked.difference_update(ready)
        if not ready:
            try:
                ready = [self._done.get(timeout=timeout)]
            except queue.Empty:
                return []
        with suppress(queue.Empty):
            while True:
                ready.append(self._done.get_nowait())
        out = []
        for fut in ready:
            if fut not in handles:
                continue
            outcome = _collect(fut)
            if outcome is not _IN_FLIGHT:
                if isinstance(outcome, bytes):
                    outcome = unpack_batch(outcome)
                out.append((fut, outcome))
                fut.release()
            elif fut.status == "pending":
                fut.add_done_callback(self._done.put)  # reported again when dask reruns it
            else:
                # "lost" (its worker left): a done callback would fire at once, again and
                # again; it is looked at on each wait instead, paced by the driver's timeout
                self._parked.add(fut)
        return out

    def heartbeat(self) -> str | None:
        """Called while nothing finishes: a message to show, or raise if it never will."""
        if self.workers() > 0:
            return None
        if self.kind == "slurm":
            self.remember_jobs()
            _check_slurm_jobs(self.cluster, self._slurm_job_ids)
            return "waiting for SLURM workers (jobs queued)"
        return "waiting for workers"

    def close(self) -> None:
        with suppress(Exception):
            self.client.close(timeout=10)
        if self.cluster is not None:
            with suppress(Exception):
                self.cluster.close(timeout=20)


def _dashboard(client: Any) -> str | None:
    try:
        services = client.scheduler_info().get("services", {})
    except Exception:  # noqa: BLE001
        return None
    return client.dashboard_link if "dashboard" in services else None


def _have_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def _quiet_dask() -> None:
    """Worker deaths are handled (retried) here; dask's own warnings about them are noise."""
    import logging

    for name in ("distributed.nanny", "distributed.core", "distributed.worker",
                 "distributed.client", "distributed.deploy.spec"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # "task marked as failed because 1 workers died": the driver retries it and says so
    logging.getLogger("distributed.scheduler").setLevel(logging.CRITICAL)
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _AbandonedGatherFilter) for f in asyncio_log.filters):
        asyncio_log.addFilter(_AbandonedGatherFilter())


class _AbandonedGatherFilter:
    """Drops asyncio's "Task exception was never retrieved" for dask's internal ``AllExit``:
    left behind when :func:`_collect` stops fetching a result whose worker has gone."""

    @staticmethod
    def filter(record: Any) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return type(exc).__name__ != "AllExit"


# Per-process background work that a batch of millisecond solver calls notices (CPU, and GIL
# switches that interrupt the solver thread): a stack profiler every 10 ms and a GIL monitor
# every 1 ms (off); the event-loop responsiveness tick every 20 ms and the system monitor every
# 0.5 s (slowed: they only feed diagnostics and dashboard plots). Measured on an idle 2-worker
# LocalCluster: 0.078 CPU s per second with dask's defaults, 0.02 with the tick at 1 s.
LEAN_WORKERS = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
}
#: the same settings as environment variables, for worker jobs started by a batch scheduler
LEAN_WORKERS_ENV = [
    "export DASK_" + key.upper().replace(".", "__").replace("-", "_") + f"={value}"
    for key, value in LEAN_WORKERS.items()
]


def _usable_cores() -> int:
    """Cores this process may run on (the allocation under SLURM/cgroups), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _local_pool(cfg: ExecConfig) -> DaskPool:
    import dask
    from distributed import Client, LocalCluster

    n = cfg.workers or _usable_cores()
    _quiet_dask()
    # A worker loss surfaces at once as KilledWorker; the driver's retries are the only ones.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0, **LEAN_WORKERS}):
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=":0",
                               silence_logs=50, memory_limit=0)  # errors are in results
    client = Client(cluster, set_as_default=False)
    return DaskPool(client, cluster, "local")


def _address_pool(cfg: ExecConfig) -> DaskPool:
    from distributed import Client

    _quiet_dask()
    try:
        client = Client(cfg.address, timeout=cfg.connect_timeout_s, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise QdcavityError(
            f"cannot reach the dask scheduler at {cfg.address} within "
            f"{cfg.connect_timeout_s:g} s ({type(exc).__name__}: {str(exc).splitlines()[0]})",
            field="executor.address") from None
    return DaskPool(client, None, "address")


# ---------------------------------------------------------------- SLURM

DEFAULT_SLURM: dict[str, Any] = {
    "cores": 1,
    "processes": 1,
    "memory": "2GB",
    "walltime": "01:00:00",
    "death_timeout": 60,
    "job_script_prologue": ["export OMP_NUM_THREADS=1", "export OPENBLAS_NUM_THREADS=1"],
}


def _jobqueue_file(cfg: ExecConfig) -> Path | None:
    ref = cfg.slurm.get("config") or os.environ.get(JOBQUEUE_CONFIG_ENV)
    if not ref:
        return None
    path = Path(ref).expanduser()
    if not path.is_absolute():
        path = Path(cfg.base_dir) / path
    if not path.exists():
        raise ConfigError(f"dask-jobqueue configuration not found: {path}",
                          field="executor.slurm.config")
    return path


def slurm_kwargs(cfg: ExecConfig) -> dict[str, Any]:
    """SLURMCluster keyword arguments: defaults < the jobqueue YAML file < the study's table."""
    import yaml

    kwargs = dict(DEFAULT_SLURM)
    kwargs["python"] = sys.executable
    kwargs["log_directory"] = str(Path(cfg.base_dir) / "slurm-logs")
    path = _jobqueue_file(cfg)
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text()) or {}
            section = data.get("jobqueue", {}).get("slurm", {})
        except (yaml.YAMLError, AttributeError) as exc:
            raise ConfigError(f"{path}: not a dask-jobqueue YAML file ({exc})") from None
        kwargs.update({k.replace("-", "_"): v for k, v in section.items() if v is not None})
    kwargs.update({k.replace("-", "_"): v for k, v in cfg.slurm.items() if k != "config"})
    kwargs["job_script_prologue"] = [*LEAN_WORKERS_ENV,
                                     *(kwargs.get("job_script_prologue") or [])]
    options = dict(kwargs.get("scheduler_options") or {})
    options.setdefault("dashboard_address", ":0")
    kwargs["scheduler_options"] = options
    return kwargs


def _slurm_error(exc: BaseException) -> str:
    """The useful part of a failed sbatch call (dask-jobqueue wraps it in a long message)."""
    text = str(exc)
    if "stderr:" in text:
        err = text.split("stderr:", 1)[1].strip()
        return " ".join(err.split()) or text
    return " ".join(text.split())


#: squeue states of a job that may still bring a worker (pending, configuring, running...);
#: COMPLETING, CANCELLED, FAILED, TIMEOUT... will not
_LIVE_JOB_STATES = {"PD", "CF", "R", "RS", "RQ", "RF", "RH", "S", "SO", "ST"}


def _check_slurm_jobs(cluster: Any, seen: set[str]) -> None:
    """Raise if every worker job of the run has left the queue (or is completing) while no
    worker is connected.

    ``seen``: every job id the run has had (:meth:`DaskPool.remember_jobs`), not only those in
    ``cluster.workers``: dask's SpecCluster drops a lost worker's job from there, and a check
    that only looked there could find nothing to check and wait forever.
    """
    if not seen:
        return
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i %t", "-j", ",".join(sorted(seen))],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return
    live = {parts[0] for parts in (line.split() for line in out.stdout.splitlines())
            if len(parts) == 2 and parts[1] in _LIVE_JOB_STATES}
    # squeue -j exits non-zero when every id is unknown to it (purged): none is live then
    if not live and (out.returncode == 0 or "Invalid job id" in out.stderr):
        log_dir = getattr(cluster, "_job_kwargs", {}).get("log_directory") or "."
        raise QdcavityError(
            f"no dask worker is connected and none of the SLURM jobs {', '.join(sorted(seen))} "
            f"is queued or running any more (failed, cancelled or out of time); see the job "
            f"logs in {log_dir}. Finished tasks are cached: run again (--resume) to continue",
            field="executor.slurm")


def _import_slurm_cluster() -> Any:
    """``dask_jobqueue.SLURMCluster``, imported without its side effect on SIGINT.

    dask-jobqueue 0.9's ``runner`` module runs ``signal.signal(SIGINT, lambda *_: sys.exit())``
    at import: Ctrl-C would then exit with status 0 instead of interrupting, and the import fails
    outright outside the main thread. The SIGINT handler is left as it was.
    """
    import signal

    original = signal.signal

    def keep_sigint(signum: Any, handler: Any) -> Any:
        if signum == signal.SIGINT:
            return signal.getsignal(signum)
        return original(signum, handler)

    signal.signal = keep_sigint
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise QdcavityError("executor 'slurm' needs dask-jobqueue: pip install "
                            "'qdcavity[cluster]'", field="executor") from None
    finally:
        signal.signal = original
    return SLURMCluster


def _slurm_pool(cfg: ExecConfig) -> DaskPool:
    SLURMCluster = _import_slurm_cluster()
    import dask
    from distributed import Client

    if shutil.which("sbatch") is None:
        raise QdcavityError("executor 'slurm': sbatch not found on PATH (run on a SLURM "
                            "login node)", field="executor")
    kwargs = slurm_kwargs(cfg)
    Path(kwargs["log_directory"]).mkdir(parents=True, exist_ok=True)
    _quiet_dask()
    try:
        with dask.config.set({"distributed.scheduler.allowed-failures": 0, **LEAN_WORKERS}):
            cluster = SLURMCluster(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid SLURMCluster setting: {exc}", field="executor.slurm") \
            from None
    try:
        _preflight(cluster)
        if cfg.workers:  # --workers N: that many dask workers (jobs x processes per job)
            cluster.scale(n=cfg.workers)
        else:
            cluster.scale(jobs=cfg.jobs)
        try:  # submit now, so that an sbatch error is reported here and not in a log
            cluster.sync(cluster._correct_state)
        except AttributeError:  # private API moved: the heartbeat check still catches it
            pass
        except Exception as exc:  # noqa: BLE001
            raise QdcavityError(f"SLURM job submission failed: {_slurm_error(exc)}",
                                field="executor.slurm") from None
        client = Client(cluster, set_as_default=False)
    except BaseException:
        with suppress(Exception):
            cluster.close(timeout=10)
        raise
    pool = DaskPool(client, cluster, "slurm")
    pool.remember_jobs()
    return pool


def _preflight(cluster: Any) -> None:
    """``sbatch --test-only`` on the real job script: a bad partition/memory/time fails here."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as fh:
        fh.write(cluster.job_script())
    try:
        out = subprocess.run(["sbatch", "--test-only", fh.name], capture_output=True,
                             text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise QdcavityError("sbatch --test-only did not answer within 60 s (is slurmctld "
                            "running?)", field="executor.slurm") from None
    finally:
        Path(fh.name).unlink(missing_ok=True)
    if out.returncode != 0:
        msg = " ".join((out.stderr or out.stdout).split())
        raise QdcavityError(f"SLURM rejects the worker job: {msg}", field="executor.slurm")


@contextmanager
def open_pool(cfg: ExecConfig) -> Iterator[InlinePool | DaskPool]:
    if cfg.kind == "inprocess":
        pool: InlinePool | DaskPool = InlinePool()
    elif cfg.kind == "local":
        pool = _local_pool(cfg)
    elif cfg.kind == "address":
        pool = _address_pool(cfg)
    else:
        pool = _slurm_pool(cfg)
    try:
        yield pool
    finally:
        pool.close()


# ---------------------------------------------------------------- the driver

#: the smallest batch worth a dask task, in solver time: each batch costs about 10 ms of CPU
MIN_BATCH_S = 0.1
#: the part of what is left that each round of batches (one per worker) shares out
ROUND_SHARE = 2 / 3


class BatchSizer:
    """Fixed size, or ``target_s`` of measured solver time per batch (median of recent tasks).

    Towards the end of a sweep, batches shrink by *factoring* (Hummel, Schonberg and Flynn,
    Commun. ACM 35(8), 1992): each round of ``workers`` batches shares out ``ROUND_SHARE`` of
    what is left, ``remaining x ROUND_SHARE / workers`` each (a new round as soon as the number
    of workers changes), so that the workers finish together; but no batch is cut below
    ``MIN_BATCH_S`` of work: a tail of ever smaller batches cost more in dask's bookkeeping
    than it balanced. Simulated on 10,000 1 ms tasks of +-50 % spread, also getting faster or
    slower along the sweep (docs/sweeps.md; 2 s per batch, a 0.1 s floor), two thirds per
    round made 13-14 batches on 2 workers and 34-36 on 8, the last worker done 0.40-0.55 % and
    2.9-4.5 % of the sweep's time after a perfect split; the textbook half made 16-17 and
    43-49, done 0.41-0.60 % and 2.9-4.4 % after, and with the earlier 1 s and 0.05 s 20-23
    and 50-58, done 0.53-0.58 % and 2.0-2.5 % after."""

    def __init__(self, fixed: int | None, target_s: float) -> None:
        self.fixed, self.target_s = fixed, target_s
        self.recent: deque[float] = deque(maxlen=64)
        self._share, self._left_in_round, self._round_workers = 0, 0, 0

    @property
    def measured(self) -> bool:
        """Whether batch sizes are known (fixed, or from measured task times); until then
        each batch holds one task."""
        return bool(self.fixed or self.recent)

    def observe(self, seconds: float) -> None:
        self.recent.append(seconds)

    def size(self, remaining: int, workers: int) -> int:
        if self.fixed:
            return self.fixed
        if not self.recent:
            return 1
        typical = max(statistics.median(self.recent), 1e-6)
        wanted = max(1, int(self.target_s / typical))
        workers = max(workers, 1)
        if self._left_in_round <= 0 or workers != self._round_workers:  # a new round
            self._share = math.ceil(remaining * ROUND_SHARE / workers)
            self._left_in_round, self._round_workers = workers, workers
        self._left_in_round -= 1
        floor = max(1, int(MIN_BATCH_S / typical))
        return min(wanted, max(self._share, floor), 5000)


class Driver:
    """Runs the missing tasks of a sweep on a pool, writing each result to the cache."""

    def __init__(self, tasks: Sequence[Task], keys: Sequence[str], cache: TaskCache | None,
                 cfg: ExecConfig, progress: SweepProgress | None = None,
                 raw: bool = False) -> None:
        self.tasks, self.keys, self.cache, self.cfg = tasks, keys, cache, cfg
        self.raw = raw  # results hold encoding.Record (cheap) instead of datasets
        self.cache_spec = ((str(cache.root), cache.token(), cfg.cache_flush_s)
                           if cache is not None else None)
        self.progress = progress or NullProgress()
        self.results: list[TaskResult | None] = [None] * len(tasks)
        self.by_key: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            self.by_key.setdefault(key, []).append(i)
        self.report = Report(executor=cfg.kind, n_tasks=len(tasks), n_unique=len(self.by_key))
        self.attempts: dict[str, int] = {}
        self.sizer = BatchSizer(cfg.batch_size, cfg.target_batch_s)
        self.heard_back = False  # whether a batch has come back from the pool yet

    # ------------------------------------------------------------ results
    def _set(self, key: str, status: str, ds: Any = None, error: str = "",
             seconds: float = 0.0) -> None:
        for i in self.by_key[key]:
            self.results[i] = TaskResult(i, status, dataset=ds, error=error, seconds=seconds)

    def _lookup_cache(self) -> list[str]:
        if self.cache is None:
            return list(self.by_key)
        todo = []
        for key, record in self.cache.get_records(self.by_key):
            if record is None:
                todo.append(key)
            else:
                self._set(key, "cached", record if self.raw else record.to_dataset())
                self.report.n_cached += len(self.by_key[key])
        self.report.n_corrupt_cache = self.cache.stats.corrupt
        return todo

    def _accept(self, key: str, item: Mapping[str, Any]) -> tuple[int, int]:
        """Record one task result from a worker; returns (ok, failed) counts."""
        n = len(self.by_key[key])
        self.report.solver_s += item["seconds"]
        if item["status"] != "ok":
            self._set(key, "failed", error=item["error"], seconds=item["seconds"])
            self.report.n_failed += n
            return 0, n
        self.sizer.observe(item["seconds"])
        ds, record = item["dataset"], item.get("record")
        if record is not None:  # an encoded result (one that cannot be encoded: ds)
            ds = record if self.raw else record.to_dataset()
        self._set(key, "ok", ds, seconds=item["seconds"])
        self.report.n_computed += n
        return n, 0

    def _store(self, keys: Sequence[str], value: Mapping[str, Any]) -> None:
        """Count the blocks a worker wrote to the cache; write the others (no shared folder,
        or the worker's write failed): one pack per batch."""
        unwritten = []
        for block in value["blocks"]:
            if block["written"]:
                self.report.n_written_by_workers += sum(len(self.by_key[keys[j]])
                                                        for j in block["rows"])
            else:
                unwritten.append(block)
        if self.cache is None or not unwritten:
            return
        backends = [self.tasks[self.by_key[key][0]].backend for key in keys]
        try:
            self.cache.put_blocks([cache_block(b, keys, backends, value["results"])
                                   for b in unwritten], {"by": value["where"]})
        except OSError as exc:
            self.progress.note(f"warning: cannot write the cache ({exc}); "
                               "continuing without it")
            self.cache = None
        except Exception as exc:  # noqa: BLE001  e.g. an attribute a pack cannot hold
            n = sum(len(b["rows"]) for b in unwritten)
            self.progress.note(f"warning: {n} result{'s' * (n != 1)} not cached "
                               f"({type(exc).__name__}: {exc}); a rerun computes them again")

    def _lost(self, keys: list[str], exc: BaseException, pending: deque[str]
              ) -> tuple[int, int, int]:
        """A batch that did not come back: retry transient losses, fail the rest.

        Returns the counts (recovered from the cache, failed, resubmitted).
        """
        transient = _is_transient(exc)
        reason = _describe(exc)
        failed = recovered = 0
        retry = []
        if self.cache is not None:
            self.cache.refresh()  # packs the lost worker wrote before it died
        for key in keys:
            # the lost worker may have finished (and cached) part of its batch before dying
            rec = self.cache.get_record(key) if self.cache is not None else None
            if rec is not None:
                self._set(key, "ok", rec if self.raw else rec.to_dataset())
                self.report.n_computed += len(self.by_key[key])
                recovered += len(self.by_key[key])
                continue
            self.attempts[key] = self.attempts.get(key, 0) + 1
            if transient and self.attempts[key] <= self.cfg.retries:
                retry.append(key)
            else:
                what = (f"lost {self.attempts[key]} time(s) with its worker"
                        if transient else "could not be run")
                self._set(key, "failed", error=f"task {what}: {reason}")
                self.report.n_failed += len(self.by_key[key])
                failed += len(self.by_key[key])
        pending.extendleft(reversed(retry))
        self.report.n_retried += len(retry)
        return recovered, failed, len(retry)

    # ------------------------------------------------------------ run
    def run(self) -> list[TaskResult]:
        start = time.perf_counter()
        if self.cache is not None:
            self.cache.clean_temporaries()
        todo = self._lookup_cache()
        if self.report.n_cached:
            where = self.cache.root if self.cache is not None else ""
            self.progress.note(f"{self.report.n_cached} of {self.report.n_tasks} tasks found in "
                               f"the cache {where}; computing the other {len(todo)}")
        self.progress.start(sum(len(self.by_key[k]) for k in todo), cached=self.report.n_cached)
        if todo:
            pending = deque(todo)
            cfg = self.cfg
            if cfg.kind == "local" and cfg.workers is None and cfg.min_cluster_work_s > 0:
                self._probe_inline(pending)
            if pending:
                t_open = time.perf_counter()
                with open_pool(cfg) as pool:
                    self.report.startup_s = time.perf_counter() - t_open
                    self.report.executor = cfg.kind
                    if pool.dashboard_link:
                        self.report.dashboard = pool.dashboard_link
                        hint = "" if _have_bokeh() else " (install bokeh>=3.1 to see it)"
                        self.progress.note(f"dask dashboard: {pool.dashboard_link}{hint}")
                    self._drive(pool, pending)
        self.report.wall_s = time.perf_counter() - start
        return [r for r in self.results if r is not None]

    def _probe_inline(self, pending: deque[str]) -> None:
        """Run the first tasks here, and the rest too if the sweep is too small for a cluster.

        Keeps going in-process while the projected serial time of what is left (median task
        time so far times the tasks left) stays under ``min_cluster_work_s``; otherwise stops
        after two tasks (the first one carries one-off start-up costs) and lets the cluster
        take over.
        """
        pool, done, limit = InlinePool(), 0, self.cfg.min_cluster_work_s
        t0 = time.perf_counter()
        while pending:
            self._drive(pool, deque([pending.popleft()]))
            done += 1
            typical = statistics.median(self.sizer.recent) if self.sizer.recent else \
                (time.perf_counter() - t0) / done
            if typical * len(pending) <= limit:
                continue
            if done >= 2 or time.perf_counter() - t0 > limit:
                return
        self.report.executor = "local (ran in-process: too small for a cluster)"

    def _drive(self, pool: InlinePool | DaskPool, pending: deque[str]) -> None:
        in_flight: dict[Any, list[str]] = {}
        last_note = ""
        while pending or in_flight:
            workers = pool.workers()
            self.report.max_workers = max(self.report.max_workers, workers)
            # until the first batch is back, batches hold one task: one per worker is enough
            window = pool.window() if self.sizer.measured or self.heard_back else max(workers, 1)
            while pending and len(in_flight) < window:
                size = self.sizer.size(len(pending), workers)
                batch_keys = [pending.popleft() for _ in range(min(size, len(pending)))]
                batch = [self.tasks[self.by_key[k][0]] for k in batch_keys]
                in_flight[pool.submit(batch, batch_keys, self.cache_spec)] = batch_keys
                self.report.n_batches += 1
                self.report.max_batch_size = max(self.report.max_batch_size, len(batch))
            done = pool.wait(in_flight, timeout=2.0)
            if not done:
                note = pool.heartbeat()
                if note and note != last_note:
                    self.progress.status(note)
                    last_note = note
                continue
            if last_note:
                self.progress.status(self.progress.label)
                last_note = ""
            self.heard_back = True
            for handle, value in done:
                keys = in_flight.pop(handle)
                if isinstance(value, BaseException):
                    ok, failed, retried = self._lost(keys, value, pending)
                    self.progress.update(ok=ok, failed=failed, retried=retried)
                    continue
                where = value["where"]
                self.report.solver_cpu_s += value.get("solver_cpu_s", 0.0)
                self.report.workers_used.add(f"{where.get('host')}:{where.get('pid')}")
                if where.get("slurm_job_id"):
                    self.report.slurm_job_ids.add(str(where["slurm_job_id"]))
                ok = failed = 0
                for key, item in zip(keys, value["results"], strict=True):
                    if item.get("transient") and self.attempts.get(key, 0) < self.cfg.retries:
                        self.attempts[key] = self.attempts.get(key, 0) + 1
                        pending.appendleft(key)
                        self.report.n_retried += 1
                        continue
                    a, b = self._accept(key, item)
                    ok, failed = ok + a, failed + b
                self._store(keys, value)
                self.progress.update(ok=ok, failed=failed)


def execute(tasks: Sequence[Task], keys: Sequence[str], cache: TaskCache | None,
            cfg: ExecConfig, progress: SweepProgress | None = None, raw: bool = False
            ) -> tuple[list[TaskResult], Report]:
    """Results of every task (cached, computed or failed, in task order) and a report.

    ``raw=True``: each result's ``dataset`` is a :class:`qdcavity.encoding.Record` (what
    :func:`qdcavity.runner.combine` works from, fast for large sweeps).
    """
    driver = Driver(tasks, keys, cache, cfg, progress, raw=raw)
    with sweep_gc():
        results = driver.run()
    return results, driver.report
