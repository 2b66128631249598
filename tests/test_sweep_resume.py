"""Kill a whole `qdcavity run` (client and dask workers) with SIGKILL mid-sweep, then resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr

from qdcavity.cache import TaskCache
from qdcavity.results import read_netcdf
from qdcavity.runner import execute_study
from qdcavity.study import load_study

STUDY = """
name = "resume"
stack = "TE-DIZO"
[[analyses]]
kind = "reflectance"
wavelength_nm = {start = 450, stop = 750, num = 800}
angle_deg = [0, 20, 40, 60]
[sweep]
mode = "product"
[sweep.axes]
"IZO_top.thickness_nm" = [80, 85, 90, 95, 100, 105, 110, 115, 120, 125]
"QD.thickness_nm" = [20, 22, 24, 26, 28, 30, 32, 34, 36, 38]
[executor]
kind = "local"
workers = 2
[output]
path = "resume.nc"
"""
N_TASKS = 100


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "qdcavity.cli", "run", *args]


def entries(cache: TaskCache) -> dict[str, tuple[int, int]]:
    out = {}
    for key in cache.keys():
        path = cache.locate(key)
        st = path.stat()
        out[key] = (str(path), st.st_ino, st.st_mtime_ns)
    return out


@pytest.mark.slow
def test_sigkill_mid_sweep_then_resume(tmp_path: Path) -> None:
    study_path = tmp_path / "study.toml"
    study_path.write_text(STUDY)
    cache_dir = tmp_path / "cache"
    cache = TaskCache(cache_dir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    # 1. start the run in its own process group (client + nannies + worker processes)
    proc = subprocess.Popen(cli(str(study_path), "--cache-dir", str(cache_dir)),
                            cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if sum(1 for _ in TaskCache(cache_dir).keys()) >= 10:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stdout.read().decode()
        os.killpg(proc.pid, signal.SIGKILL)  # the whole run, workers included
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.2)
    done = entries(cache)
    assert 10 <= len(done) < N_TASKS, len(done)
    assert all(cache.get(k) is not None for k in done)  # what was written is complete
    assert not (tmp_path / "resume.nc").exists()

    # 2. resume: only the missing tasks are computed; finished entries are not touched
    out = subprocess.run(cli(str(study_path), "--cache-dir", str(cache_dir), "--resume"),
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(done)} of {N_TASKS} tasks found in the cache" in out.stderr
    ds = read_netcdf(tmp_path / "resume.nc")
    run = json.loads(ds.attrs["run"])
    assert run["n_cached"] == len(done)
    assert run["n_computed"] == N_TASKS - len(done)
    after = entries(cache)
    assert {k: after[k] for k in done} == done  # same inode, same mtime: not rewritten
    assert len(after) == N_TASKS

    # 3. the result equals an uninterrupted run
    ref = execute_study(load_study(study_path), executor="inprocess", use_cache=False)[0]
    xr.testing.assert_identical(ds.drop_attrs(), ref.drop_attrs())
