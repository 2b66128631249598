"""Sweep engine benchmarks: serial vs local cluster, orchestration overhead, Meep scaling.

    python benchmarks/bench_sweep.py                  # all parts, 10,000-point TMM sweep
    python benchmarks/bench_sweep.py --points 2500 --json bench.json
    python benchmarks/bench_sweep.py --meep-options '{"resolution": 50}'

1. Throughput of an N-point TMM reflectance sweep (TE-DIZO, IZO_top x QD thickness, 2
   wavelengths, s and p) run serially in-process and on a dask LocalCluster with ``--workers``
   processes, both through the full path (expand, cache writes, combine); the ratio is the
   speed-up.
2. Orchestration overhead per task, several ways: wall clock, ``(wall x workers - sum of solver
   time) / tasks`` for the execution phase; and CPU, ``(CPU of client and workers - solver CPU)
   / tasks`` over the whole run (start-up, expansion, cache writes and combine included), which
   other programs competing for the cores do not inflate. Both also as a fraction of the solver
   time per task (target < 10 %). "Solver time" is ``run_task`` (``qdcavity.api.solve``) on
   the worker. The cluster's CPU overhead after start-up is measured on a cluster that is
   already running (:func:`steady_cluster`: the workers' own CPU before and after; the median
   of three runs each with and without the cache, in alternating order, and their range); the dask
   share is that minus the serial overhead, both without the cache. A per-step breakdown
   (expand, key, encode, cache write/read, decode, combine) is printed first.
3. Parallel efficiency of a sweep of small Meep tasks on 1 versus 2 workers (target >= 1.7x),
   if a ``meep`` backend is registered and available; otherwise the report says so.

The numbers depend on what else runs on the machine: the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from typing import Any

import numpy as np

CACHE_BASE: str | None = None  # where the benchmark's caches go (--cache-base)


def tmm_study(points: int) -> Any:
    from qdcavity.study import Study

    side = int(round(points ** 0.5))
    izo = [float(v) for v in np.round(np.linspace(50, 150, side), 6)]
    qd = [float(v) for v in np.round(np.linspace(10, 50, points // side), 6)]
    return Study(name="bench-tmm", stack="TE-DIZO",
                 analyses=[{"kind": "reflectance", "wavelength_nm": [600, 630]}],
                 sweep={"axes": {"IZO_top.thickness_nm": izo, "QD.thickness_nm": qd}})


def _cpu() -> tuple[float, float]:
    """CPU seconds of this process and of its reaped children (the local cluster's workers)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def timed_run(study: Any, **kw: Any) -> dict[str, Any]:
    from qdcavity.runner import execute_study

    with tempfile.TemporaryDirectory(prefix="qdc-bench-", dir=CACHE_BASE) as cache_dir:
        cpu0 = _cpu()
        t0 = time.perf_counter()
        ds, rep = execute_study(study, cache_dir=cache_dir, **kw)
        wall = time.perf_counter() - t0
        cpu1 = _cpu()
    n = rep.n_tasks
    workers = max(rep.max_workers, 1)
    exec_wall = rep.wall_s
    overhead = (exec_wall * workers - rep.solver_s) / n
    client_cpu, workers_cpu = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    total_cpu = client_cpu + workers_cpu
    return {
        "executor": rep.executor, "tasks": n, "workers": workers, "failed": rep.n_failed,
        "wall_s": round(wall, 3), "execute_wall_s": round(exec_wall, 3),
        "startup_s": round(rep.startup_s, 3),
        "after_startup_s": round(exec_wall - rep.startup_s, 3),
        "throughput_per_s": round(n / wall, 1), "solver_s": round(rep.solver_s, 3),
        "solver_ms_per_task": round(1e3 * rep.solver_s / n, 3),
        "overhead_ms_per_task": round(1e3 * overhead, 3),
        "overhead_fraction": round(overhead / (rep.solver_s / n), 3),
        # CPU accounting: not inflated by other programs competing for the cores
        "client_cpu_s": round(client_cpu, 3), "workers_cpu_s": round(workers_cpu, 3),
        "solver_cpu_ms_per_task": round(1e3 * rep.solver_cpu_s / n, 3),
        "cpu_overhead_ms_per_task": round(1e3 * (total_cpu - rep.solver_cpu_s) / n, 3),
        "cpu_overhead_fraction": round((total_cpu - rep.solver_cpu_s) / rep.solver_cpu_s, 3),
        "batches": rep.n_batches, "max_batch_size": rep.max_batch_size,
        "ok": bool((ds.status == "ok").all()),
    }


def _process_cpu() -> float:
    """CPU seconds of the calling process (run on the workers by ``client.run``)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def steady_cluster(study: Any, workers: int, repeats: int = 3) -> dict[str, dict[str, Any]]:
    """CPU overhead per task on a local cluster that is already running: the study goes to
    its scheduler address, and the workers' own CPU is read before and after (``client.run``),
    so worker start-up, imports and shut-down are not in it, nor their noise (a 20-task run
    varies by tenths of a CPU second). The client process (which also hosts the scheduler)
    is measured as it is; the fixed cost of one run (connecting, a few small batches) is that
    of a 20-task run, subtracted. Runs with and without the cache alternate (each pair in the
    other order than the last), ``repeats`` of each on the same cluster; each is reported as
    the median run, with the range (on this shared 2-core machine one run differs from the
    next by up to 10 us per task)."""
    from qdcavity.executors import ExecConfig, open_pool
    from qdcavity.runner import execute_study

    with open_pool(ExecConfig(kind="local", workers=workers)) as pool:
        client = pool.client
        address = client.scheduler.address

        def run(st: Any, use_cache: bool) -> tuple[Any, float]:
            with tempfile.TemporaryDirectory(prefix="qdc-bench-", dir=CACHE_BASE) as d:
                w0, c0 = sum(client.run(_process_cpu).values()), _cpu()[0]
                _, rep = execute_study(st, executor="address", address=address, cache_dir=d,
                                       use_cache=use_cache)
                c1, w1 = _cpu()[0], sum(client.run(_process_cpu).values())
            return rep, (c1 - c0) + (w1 - w0)

        run(tmm_study(20), True)  # worker imports
        runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for repeat in range(repeats):
            for use_cache in ((True, False) if repeat % 2 == 0 else (False, True)):
                small, small_cpu = run(tmm_study(20), use_cache)
                rep, cpu = run(study, use_cache)
                n = rep.n_tasks - small.n_tasks
                over = (cpu - small_cpu - rep.solver_cpu_s + small.solver_cpu_s) / n
                solver = rep.solver_cpu_s / rep.n_tasks
                print(f"  running cluster, {'with' if use_cache else 'without'} the cache: "
                      f"{1e3 * over:.3f} ms per task beyond the solver", flush=True)
                runs[use_cache].append({
                    "tasks": rep.n_tasks, "batches": rep.n_batches, "cpu_s": round(cpu, 3),
                    "fixed_cpu_s": round(small_cpu, 3),
                    "solver_cpu_ms_per_task": round(1e3 * solver, 3),
                    "cpu_overhead_ms_per_task": round(1e3 * over, 3),
                    "cpu_overhead_fraction": round(over / solver, 3)})
    out = {}
    for use_cache, found in runs.items():
        found.sort(key=lambda r: r["cpu_overhead_ms_per_task"])
        median = dict(found[len(found) // 2])
        median["range_ms_per_task"] = [found[0]["cpu_overhead_ms_per_task"],
                                       found[-1]["cpu_overhead_ms_per_task"]]
        fractions = sorted(r["cpu_overhead_fraction"] for r in found)
        median["range_fraction"] = [fractions[0], fractions[-1]]
        median["runs"] = len(found)
        out["cache" if use_cache else "no_cache"] = median
    return out


def breakdown(study: Any, n: int = 500) -> dict[str, float]:
    """Per-task cost of each step, in microseconds, measured in this process (first n tasks),
    under the sweep's garbage-collector setting as a run has it."""
    from qdcavity.batches import sweep_gc

    with sweep_gc():
        return _breakdown(study, n)


def _breakdown(study: Any, n: int) -> dict[str, float]:
    from qdcavity.cache import TaskCache
    from qdcavity.encoding import decode_record, encode_dataset, encode_result, result_columns
    from qdcavity.packs import Block
    from qdcavity.runner import combine, expand, task_keys
    from qdcavity.tasks import TaskResult, run_task

    t0 = time.perf_counter()
    tasks = expand(study)
    expand_us = 1e6 * (time.perf_counter() - t0) / len(tasks)
    tasks = tasks[:n]
    t0 = time.perf_counter()
    keys = task_keys(tasks)
    key_us = 1e6 * (time.perf_counter() - t0) / n
    run_task(tasks[0])
    t0 = time.perf_counter()
    results = [run_task(t) for t in tasks]
    solve_us = 1e6 * (time.perf_counter() - t0) / n
    t0 = time.perf_counter()  # what a worker does with each result
    encoded = [encode_result(r.dataset, with_payload=False) for r in results]
    encode_us = 1e6 * (time.perf_counter() - t0) / n
    payloads = [encode_dataset(r.dataset) for r in results]
    with tempfile.TemporaryDirectory(prefix="qdc-bench-") as d:
        cache = TaskCache(d)
        t0 = time.perf_counter()  # one pack per flush, as workers write them (~250 tasks)
        for start in range(0, n, 250):
            part = encoded[start:start + 250]
            cache.put_blocks([Block(part[0].structure, keys[start:start + 250],
                                    [e.attrs for e in part], result_columns(part),
                                    {"seconds": [0.001] * len(part)})])
        write_us = 1e6 * (time.perf_counter() - t0) / n
        with tempfile.TemporaryDirectory(prefix="qdc-bench-") as other:
            singles = TaskCache(other)
            t0 = time.perf_counter()
            for k, p in zip(keys[:50], payloads[:50], strict=True):
                singles.put_payload(k, p)
            write_single_us = 1e6 * (time.perf_counter() - t0) / 50
        reader = TaskCache(d)
        reader.refresh()  # index the packs (once per run), not timed
        t0 = time.perf_counter()
        records = [reader.get_record(k) for k in keys]
        read_us = 1e6 * (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for p in payloads:
        decode_record(p)
    decode_us = 1e6 * (time.perf_counter() - t0) / n
    sub = study.model_copy(update={"sweep": study.sweep.model_copy(update={"mode": "zip",
        "axes": {k: [t.point[k] for t in tasks] for k in study.sweep.axes}})})
    t0 = time.perf_counter()
    combine(sub, tasks, [TaskResult(i, "ok", dataset=r) for i, r in enumerate(records)])
    combine_us = 1e6 * (time.perf_counter() - t0) / n
    out = {"solve_us": solve_us, "expand_us": expand_us, "key_us": key_us,
           "encode_us": encode_us, "cache_write_us": write_us,
           "cache_write_one_file_per_task_us": write_single_us,
           "cache_read_verify_us": read_us, "decode_one_file_us": decode_us,
           "combine_us": combine_us}
    return {k: round(v, 1) for k, v in out.items()}


def bench_tmm(points: int, workers: int) -> dict[str, Any]:
    study = tmm_study(points)
    costs = breakdown(study)
    print(f"per task (us): {json.dumps(costs)}", flush=True)
    serial = timed_run(study, executor="inprocess")
    print(f"serial        : {json.dumps(serial)}", flush=True)
    serial_bare = timed_run(study, executor="inprocess", use_cache=False)
    print(f"serial, no cache: {json.dumps(serial_bare)}", flush=True)
    # a first cluster in this process pays one-off client imports (~0.7 CPU s): not per task
    timed_run(tmm_study(20), executor="local", workers=workers, use_cache=False)
    cluster = timed_run(study, executor="local", workers=workers)
    print(f"local x{workers}      : {json.dumps(cluster)}", flush=True)
    bare = timed_run(study, executor="local", workers=workers, use_cache=False)
    print(f"local, no cache: {json.dumps(bare)}", flush=True)
    # fixed costs of a cluster run (start-up, worker imports, shut-down) from a 20-task sweep
    fixed = timed_run(tmm_study(20), executor="local", workers=workers, use_cache=False)
    fixed_cpu = fixed["client_cpu_s"] + fixed["workers_cpu_s"]
    steady = steady_cluster(study, workers)
    for run, which in ((cluster, "cache"), (bare, "no_cache")):
        run["cpu_overhead_ms_per_task_after_startup"] = steady[which]["cpu_overhead_ms_per_task"]
        run["cpu_overhead_fraction_after_startup"] = steady[which]["cpu_overhead_fraction"]
        run["steady"] = steady[which]
    dask_ms = bare["cpu_overhead_ms_per_task_after_startup"] - \
        serial_bare["cpu_overhead_ms_per_task"]
    return {"per_task_costs_us": costs, "serial": serial, "serial_no_cache": serial_bare,
            "local": cluster, "local_no_cache": bare,
            "dask_overhead_ms_per_task": round(dask_ms, 3),
            "dask_overhead_fraction": round(dask_ms / serial_bare["solver_cpu_ms_per_task"], 3),
            "cluster_fixed_cost": {"wall_s": fixed["wall_s"], "cpu_s": round(fixed_cpu, 3)},
            "speedup_wall": round(serial["wall_s"] / cluster["wall_s"], 3),
            "speedup_execute": round(serial["execute_wall_s"] / cluster["execute_wall_s"], 3)}


def bench_meep(options: dict[str, Any], tasks: int) -> dict[str, Any]:
    from qdcavity.registry import default_registry
    from qdcavity.study import Study

    reg = default_registry()
    if "meep" not in reg.backends:
        return {"skipped": "no 'meep' backend registered (plugins/meep not wired yet)"}
    status = reg.backends["meep"].availability()
    if not status.available:
        return {"skipped": f"meep backend unavailable: {status.reason}"}
    if "reflectance" not in reg.backends["meep"].analyses:
        return {"skipped": "meep backend does not answer 'reflectance'"}
    study = Study(name="bench-meep", stack="TE-DIZO", backend="meep", backend_options=options,
                  analyses=[{"kind": "reflectance",
                             "wavelength_nm": {"start": 580, "stop": 680, "num": 21}}],
                  sweep={"axes": {"IZO_top.thickness_nm": [80.0 + 5 * i for i in range(tasks)]}})
    # wall clock only: Meep runs in a subprocess of the worker, so the CPU split is meaningless
    keep = ("executor", "tasks", "workers", "failed", "wall_s", "execute_wall_s", "startup_s",
            "after_startup_s", "solver_ms_per_task", "batches", "max_batch_size", "ok")
    timed_run(tmm_study(20), executor="local", workers=1, use_cache=False)  # one-off imports
    one = timed_run(study, executor="local", workers=1, batch_size=1)
    one = {k: one[k] for k in keep}
    print(f"meep x1     : {json.dumps(one)}", flush=True)
    two = timed_run(study, executor="local", workers=2, batch_size=1)
    two = {k: two[k] for k in keep}
    print(f"meep x2     : {json.dumps(two)}", flush=True)
    return {"one_worker": one, "two_workers": two,
            "speedup_execute": round(one["execute_wall_s"] / two["execute_wall_s"], 3),
            "speedup_after_startup": round(one["after_startup_s"] / two["after_startup_s"], 3),
            "target": 1.7}


def report_tmm(out: dict[str, Any], args: argparse.Namespace) -> None:
    t = out["tmm"]
    loc, bare, ser = t["local"], t["local_no_cache"], t["serial"]
    print(f"\nTMM {args.points} points ({ser['solver_cpu_ms_per_task']} ms solver CPU per task): "
          f"serial {ser['throughput_per_s']}/s, local x{args.workers} "
          f"{loc['throughput_per_s']}/s (no cache {bare['throughput_per_s']}/s): ratio "
          f"{t['speedup_wall']}")
    print(f"cluster start-up and shut-down: {t['cluster_fixed_cost']['wall_s']} s, "
          f"{t['cluster_fixed_cost']['cpu_s']} CPU s")
    ranges = [run["steady"]["range_ms_per_task"] for run in (loc, bare)]
    print(f"CPU overhead per task beyond the solver on a running cluster (median of "
          f"{loc['steady']['runs']} runs, range): "
          f"{loc['cpu_overhead_ms_per_task_after_startup']} ms "
          f"({100 * loc['cpu_overhead_fraction_after_startup']:.1f} %; {ranges[0][0]}-"
          f"{ranges[0][1]}) with the cache, {bare['cpu_overhead_ms_per_task_after_startup']} ms "
          f"({100 * bare['cpu_overhead_fraction_after_startup']:.1f} %; {ranges[1][0]}-"
          f"{ranges[1][1]}) without; serial {ser['cpu_overhead_ms_per_task']} ms "
          f"({100 * ser['cpu_overhead_fraction']:.1f} %)")
    print(f"of which dask (cluster minus serial, both without cache): "
          f"{t['dask_overhead_ms_per_task']} ms per task "
          f"({100 * t['dask_overhead_fraction']:.0f} % of solver CPU); the rest is per-task work "
          f"every executor does (see 'per task (us)')")
    print(f"load average {out['load_before'][0]:.1f} -> {out['load_after'][0]:.1f} on "
          f"{out['cpus']} cores")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-meep", action="store_true")
    parser.add_argument("--skip-tmm", action="store_true")
    parser.add_argument("--meep-tasks", type=int, default=16)
    parser.add_argument("--meep-options", default="{}", help="backend_options for meep (JSON)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--cache-base", help="folder for the caches (default: the temp folder)")
    args = parser.parse_args(argv)
    global CACHE_BASE
    CACHE_BASE = args.cache_base

    out: dict[str, Any] = {"load_before": os.getloadavg(), "cpus": os.cpu_count(),
                           "python": sys.version.split()[0]}
    if not args.skip_tmm:
        out["tmm"] = bench_tmm(args.points, args.workers)
    if not args.skip_meep:
        out["meep"] = bench_meep(json.loads(args.meep_options), args.meep_tasks)
        if "skipped" in out["meep"]:
            print(f"meep        : skipped: {out['meep']['skipped']}")
    out["load_after"] = os.getloadavg()
    if "tmm" in out:
        report_tmm(out, args)
    meep = out.get("meep", {})
    if "speedup_execute" in meep:
        one, two = meep["one_worker"], meep["two_workers"]
        print(f"Meep, {args.meep_tasks} reflectance tasks: 1 worker {one['execute_wall_s']} s, "
              f"2 workers {two['execute_wall_s']} s: {meep['speedup_execute']}x; after the "
              f"cluster start-up ({one['startup_s']} s, {two['startup_s']} s): "
              f"{one['after_startup_s']} s vs {two['after_startup_s']} s, "
              f"{meep['speedup_after_startup']}x (target {meep['target']}x)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
