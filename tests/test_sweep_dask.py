"""Sweeps on a real dask LocalCluster (two worker processes): results, retries, lost workers."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import xarray as xr
from distributed.scheduler import KilledWorker

from qdcavity.cache import TaskCache, unpack
from qdcavity.executors import Driver, ExecConfig, InlinePool
from qdcavity.runner import execute_study, expand, task_keys
from qdcavity.study import Study

# ~15 ms of TMM per task on this machine: long enough to kill a worker in the middle of a batch
HEAVY = {"kind": "reflectance", "wavelength_nm": {"start": 450, "stop": 750, "num": 800},
         "angle_deg": [0, 20, 40, 60]}


def sweep(n_izo: int, n_qd: int, analysis: dict | None = None) -> Study:
    return Study(stack="TE-DIZO", analyses=[analysis or HEAVY], sweep={"axes": {
        "IZO_top.thickness_nm": [80.0 + 5 * i for i in range(n_izo)],
        "QD.thickness_nm": [20.0 + 2 * i for i in range(n_qd)]}})


@pytest.mark.slow
def test_local_cluster_two_workers_matches_in_process(tmp_path: Path) -> None:
    study = sweep(6, 5, {"kind": "reflectance", "wavelength_nm": [600, 630, 660]})
    ds, rep = execute_study(study, executor="local", workers=2, batch_size=3,
                            cache_dir=tmp_path / "c")
    assert rep.executor == "local" and rep.max_workers == 2
    assert len(rep.workers_used) == 2, rep.workers_used  # both worker processes computed
    assert all(int(w.rsplit(":", 1)[1]) != os.getpid() for w in rep.workers_used)
    assert rep.n_computed == 30 and rep.n_failed == 0 and rep.n_batches == 10
    assert rep.n_written_by_workers == 30  # the workers see the cache folder: they write it
    assert 0 < rep.solver_cpu_s < 3 * rep.solver_s  # the workers' solving CPU, summed
    ref = execute_study(study, executor="inprocess", use_cache=False)[0]
    xr.testing.assert_identical(ds.drop_attrs(), ref.drop_attrs())
    assert json.loads(ds.attrs["run"])["executor"] == "local"


@pytest.mark.slow
def test_existing_scheduler_address(tmp_path: Path) -> None:
    from distributed import LocalCluster

    study = sweep(3, 3, {"kind": "reflectance", "wavelength_nm": [630]})
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=40) as cluster:
        ds, rep = execute_study(study, executor="address", address=cluster.scheduler_address,
                                cache_dir=tmp_path / "c")
    assert rep.executor == "address" and rep.max_workers == 2
    assert rep.n_computed == 9 and rep.n_written_by_workers == 9
    assert rep.dashboard and rep.dashboard.startswith("http")
    ref = execute_study(study, executor="inprocess", use_cache=False)[0]
    xr.testing.assert_identical(ds.drop_attrs(), ref.drop_attrs())


def _worker_pids(exclude: set[int]) -> list[int]:
    import psutil

    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in cmd and "resource_tracker" not in cmd and child.pid not in exclude:
            out.append(child.pid)
    return out


@pytest.mark.slow
def test_killed_worker_is_retried(tmp_path: Path) -> None:
    """SIGKILL one of two workers in the middle of a batch: its batch is resubmitted, the
    tasks it had already finished come from the cache, and the sweep completes."""
    import psutil

    study = sweep(8, 6)  # 48 tasks, batches of 8
    cache_dir = tmp_path / "c"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            by_pid: Counter[int] = Counter()
            for path in cache_dir.glob("??/*.qdc"):
                try:
                    header, _ = unpack(path.stem, path.read_bytes())
                except Exception:  # noqa: BLE001  being written
                    continue
                by_pid[header["by"]["pid"]] += 1
            for pid, n in by_pid.items():
                if 1 <= n % 8 <= 5 and pid in _worker_pids(before):  # mid-batch
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    # cache_flush_s=0: each task is written as soon as it is done (not one pack per batch), so
    # a worker killed mid-batch leaves its finished tasks in the cache
    ds, rep = execute_study(study, executor="local", workers=2, batch_size=8, retries=2,
                            cache_flush_s=0, cache_dir=cache_dir)
    thread.join(5)
    assert killed, "no worker was killed (the sweep finished too fast?)"
    assert rep.n_retried >= 1, rep
    assert rep.n_failed == 0 and (ds.status == "ok").all()
    assert rep.n_computed == 48
    ref = execute_study(study, executor="inprocess", use_cache=False)[0]
    xr.testing.assert_identical(ds.drop_attrs(), ref.drop_attrs())


LOST = SimpleNamespace(address="tcp://10.0.0.1:4000")


class FlakyPool(InlinePool):
    """Runs batches here, but the first ``losses`` batches come back as a lost worker."""

    def __init__(self, losses: int, exc: BaseException) -> None:
        super().__init__()
        self.losses, self.exc, self.calls = losses, exc, 0

    def wait(self, handles, timeout):  # noqa: ANN001, ANN201
        self.calls += 1
        if self.calls <= self.losses:
            handle, _ = self._queue.popleft()
            return [(handle, self.exc)]
        return super().wait(handles, timeout)


@pytest.mark.parametrize(("losses", "retries", "exc", "failed", "retried"), [
    (2, 2, KilledWorker("t", LOST, 0), 0, 2),          # transient: retried, then fine
    (3, 2, KilledWorker("t", LOST, 0), 1, 2),          # transient, too often: failed
    (1, 0, ConnectionError("gone"), 1, 0),         # retries = 0
    (1, 5, RuntimeError("cannot unpickle"), 1, 0),  # permanent: never retried
])
def test_retry_policy(monkeypatch: pytest.MonkeyPatch, losses: int, retries: int,
                      exc: BaseException, failed: int, retried: int) -> None:
    import qdcavity.executors as ex

    study = Study(stack="TE-DIZO", analyses=[{"kind": "reflectance", "wavelength_nm": 630}])
    tasks = expand(study)
    pool = FlakyPool(losses, exc)
    monkeypatch.setattr(ex, "open_pool", lambda cfg: _Ctx(pool))
    cfg = ExecConfig(kind="inprocess", retries=retries, batch_size=1)
    driver = Driver(tasks, task_keys(tasks), None, cfg)
    results = driver.run()
    assert driver.report.n_failed == failed and driver.report.n_retried == retried
    if failed:
        assert results[0].status == "failed"
        assert type(exc).__name__ in results[0].error
        if retried:
            assert "lost 3 time(s) with its worker" in results[0].error
    else:
        assert results[0].status == "ok"


class TwoWorkerPool(InlinePool):
    """Runs batches here, one per wait, as if on two workers; notes what is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight_at_submit: list[int] = []
        self.sizes: list[int] = []

    def workers(self) -> int:
        return 2

    def window(self) -> int:
        return 4

    def submit(self, batch, keys=(), cache=None):  # noqa: ANN001, ANN201
        self.in_flight_at_submit.append(len(self._queue))
        self.sizes.append(len(batch))
        return super().submit(batch, keys, cache)


def test_one_probe_per_worker_until_a_batch_is_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before any task time is measured, batches hold one task each, and only one per worker
    is sent (each batch costs dask milliseconds); then the window opens to two per worker."""
    import qdcavity.executors as ex

    tasks = expand(sweep(4, 5, {"kind": "reflectance", "wavelength_nm": [630]}))
    pool = TwoWorkerPool()
    monkeypatch.setattr(ex, "open_pool", lambda cfg: _Ctx(pool))
    monkeypatch.setattr(ex, "MIN_BATCH_S", 0.0)
    cfg = ExecConfig(kind="address", address="x", target_batch_s=1e-9)  # one task per batch
    driver = Driver(tasks, task_keys(tasks), None, cfg)
    results = driver.run()
    assert [r.status for r in results] == ["ok"] * 20
    assert pool.sizes[:2] == [1, 1] and pool.in_flight_at_submit[:3] == [0, 1, 1]
    assert max(pool.in_flight_at_submit[2:]) == 3  # four in flight once a batch is back
    assert pool.sizes == [1] * 20
    fixed = TwoWorkerPool()  # a fixed batch size needs no probes: the whole window at once
    monkeypatch.setattr(ex, "open_pool", lambda cfg: _Ctx(fixed))
    Driver(tasks, task_keys(tasks), None, cfg.with_(batch_size=2)).run()
    assert fixed.in_flight_at_submit[:4] == [0, 1, 2, 3] and fixed.sizes == [2] * 10


class _Ctx:
    def __init__(self, pool: InlinePool) -> None:
        self.pool = pool

    def __enter__(self) -> InlinePool:
        return self.pool

    def __exit__(self, *exc: object) -> None:
        self.pool.close()


def test_tiny_local_sweep_runs_in_process(tmp_path: Path) -> None:
    """No cluster start-up for a sweep that takes milliseconds (unless workers are asked for)."""
    study = sweep(2, 2, {"kind": "reflectance", "wavelength_nm": [630]})
    t0 = time.monotonic()
    ds, rep = execute_study(study, executor="local", cache_dir=tmp_path)
    assert rep.executor.startswith("local (ran in-process")
    assert (ds.status == "ok").all() and time.monotonic() - t0 < 10
    assert TaskCache(tmp_path).stats.corrupt == 0


class ResetOnFetch:
    """A dask future as the client sees it when its worker leaves before the result is
    fetched: "finished", then, while ``result()`` tries to gather, reset to "lost" (after
    which dask's own ``result()`` would wait for a rerun, forever without workers)."""

    def __init__(self) -> None:
        self.status, self.fetches = "finished", 0

    def result(self, timeout: float | None = None) -> object:
        assert timeout is not None, "an unbounded fetch can hang the driver"
        self.fetches += 1
        self.status = "lost"
        raise TimeoutError


def test_result_lost_while_fetching_goes_back_in_flight() -> None:
    from qdcavity.executors import _IN_FLIGHT, _collect

    fut = ResetOnFetch()
    assert _collect(fut) is _IN_FLIGHT and fut.fetches == 1


class SlowFetch:
    """A finished future whose result takes longer to move than the first fetch slices."""

    def __init__(self, needs_s: float) -> None:
        self.status, self.needs_s, self.slices = "finished", needs_s, []

    def result(self, timeout: float | None = None) -> object:
        self.slices.append(timeout)
        if timeout is None or timeout < self.needs_s:
            raise TimeoutError
        return "payload"


def test_slow_transfer_is_waited_for_in_growing_slices() -> None:
    from qdcavity.executors import GATHER_SLICE_S, _collect

    fut = SlowFetch(needs_s=5 * GATHER_SLICE_S)
    assert _collect(fut) == "payload"
    assert fut.slices == [GATHER_SLICE_S * 2 ** i for i in range(len(fut.slices))]
    assert fut.slices[-1] < 2 * fut.needs_s


class LostFuture:
    """A future whose worker left: "lost" until dask reruns it."""

    def __init__(self) -> None:
        self.status, self.callbacks, self.released = "lost", 0, False

    def __hash__(self) -> int:
        return id(self)

    def add_done_callback(self, fn: object) -> None:
        self.callbacks += 1

    def result(self, timeout: float | None = None) -> object:
        if self.status != "finished":
            raise AssertionError("fetched while not finished")
        return "rerun result"

    def release(self) -> None:
        self.released = True


def test_lost_future_is_polled_not_called_back_in_a_loop() -> None:
    """A done callback on a "lost" future fires at once: re-adding it after each look would
    spin. The pool parks the future and looks again on each wait, paced by its timeout."""
    from qdcavity.executors import DaskPool

    pool = DaskPool(client=object())
    fut = LostFuture()
    handles = {fut: ["k"]}
    pool._done.put(fut)
    t0 = time.monotonic()
    assert pool.wait(handles, timeout=0.2) == []  # looked at, parked
    assert pool.wait(handles, timeout=0.2) == []  # nothing new: waits out the timeout
    assert time.monotonic() - t0 >= 0.2 and fut.callbacks == 0
    fut.status = "finished"  # rerun done
    assert pool.wait(handles, timeout=5) == [(fut, "rerun result")] and fut.released
    assert pool.wait(handles, timeout=0.05) == []


def test_collect_returns_results_and_task_errors() -> None:
    from distributed import Client, LocalCluster

    from qdcavity.executors import _collect

    def boom() -> None:
        raise TimeoutError("the task's own")

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0", silence_logs=40) as cluster, \
            Client(cluster, set_as_default=False) as client:
        ok, bad = client.submit(sum, [1, 2], pure=False), client.submit(boom, pure=False)
        client.gather([ok], errors="skip")
        while bad.status != "error":
            time.sleep(0.01)
        assert _collect(ok) == 3
        err = _collect(bad)
        assert isinstance(err, TimeoutError) and "the task's own" in str(err)


def test_abandoned_gather_noise_is_dropped_and_nothing_else() -> None:
    import logging

    from distributed.client import AllExit

    from qdcavity.executors import _AbandonedGatherFilter

    def record(exc: BaseException) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1,
                                 "Task exception was never retrieved", None,
                                 (type(exc), exc, None))

    assert not _AbandonedGatherFilter.filter(record(AllExit()))
    assert _AbandonedGatherFilter.filter(record(RuntimeError("real")))


def test_workers_run_lean_and_slurm_jobs_get_the_same_settings(tmp_path: Path) -> None:
    """The background sampling that slows millisecond tasks is off (or slowed) in local
    workers, and a SLURM worker job exports the same settings before it starts."""
    import subprocess
    import sys

    from qdcavity.executors import LEAN_WORKERS, open_pool, slurm_kwargs

    def settings() -> dict:
        import dask

        return {key: dask.config.get(key) for key in LEAN_WORKERS}

    with open_pool(ExecConfig(kind="local", workers=1)) as pool:
        seen = pool.client.run(settings)
    assert list(seen.values()) == [LEAN_WORKERS]
    prologue = slurm_kwargs(ExecConfig(kind="slurm", base_dir=str(tmp_path)))[
        "job_script_prologue"]
    probe = tmp_path / "probe.py"
    probe.write_text("import dask, json, sys\n"
                     "print(json.dumps({k: dask.config.get(k) for k in sys.argv[1:]}))\n")
    script = "\n".join([*prologue, " ".join([sys.executable, str(probe), *LEAN_WORKERS])])
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == LEAN_WORKERS
