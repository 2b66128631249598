"""A real one-node SLURM cluster: a study through dask-jobqueue, a rejected submission, and the
example batch script. The fixture starts munged/slurmctld/slurmd with cluster/slurm-up.sh (root
only) on free ports and stops exactly what it started with cluster/slurm-down.sh."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xarray as xr

from qdcavity.cache import TaskCache
from qdcavity.errors import QdcavityError
from qdcavity.results import read_netcdf
from qdcavity.runner import execute_study
from qdcavity.study import load_study

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("starting slurmd needs root")
    missing = [e for e in ("munged", "slurmctld", "slurmd", "sbatch", "squeue")
               if shutil.which(e) is None]
    if missing:
        pytest.skip(f"SLURM not installed ({', '.join(missing)} missing)")
    # not under pytest's 0700 tmp folder: munged (user munge) must be able to enter it
    state = Path(tempfile.mkdtemp(prefix="qdcavity-slurm-"))
    env = {**os.environ, "SLURMCTLD_PORT": str(free_port()), "SLURMD_PORT": str(free_port())}
    mp = pytest.MonkeyPatch()
    try:
        up = subprocess.run([str(CLUSTER / "slurm-up.sh"), str(state)], env=env,
                            capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        mp.setenv("SLURM_CONF", str(state / "slurm.conf"))
        yield state
    finally:
        mp.undo()
        down = subprocess.run([str(CLUSTER / "slurm-down.sh"), str(state)],
                              capture_output=True, text=True, timeout=120)
        pids = [p for p in ("slurmctld.pid", "slurmd.pid", "started-munged.pid")
                if (state / p).exists()]
        shutil.rmtree(state, ignore_errors=True)
        assert down.returncode == 0 and not pids, down.stdout + down.stderr


STUDY = """
name = "slurm-sweep"
stack = "TE-DIZO"
[[analyses]]
kind = "reflectance"
wavelength_nm = [600, 630, 660]
[sweep]
mode = "product"
[sweep.axes]
"IZO_top.thickness_nm" = [90, 100, 110, 120]
"QD.thickness_nm" = [25, 30, 35, 40]
[executor]
kind = "slurm"
jobs = 2
batch_size = 1
[executor.slurm]
config = "{config}"
memory = "1GB"
walltime = "00:10:00"
{extra}
[output]
path = "slurm.nc"
"""


def write(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(config=CLUSTER / "dask-jobqueue.yaml", extra=extra))
    return path


def test_study_runs_inside_slurm_jobs(slurm: Path, tmp_path: Path) -> None:
    study = load_study(write(tmp_path))
    ds, rep = execute_study(study, cache_dir=tmp_path / "cache")
    assert rep.executor == "slurm"
    assert rep.slurm_job_ids, "no task ran inside a SLURM job (SLURM_JOB_ID unset in workers)"
    assert rep.n_computed == 16 and rep.n_failed == 0
    assert json.loads(ds.attrs["run"])["slurm_job_ids"] == sorted(rep.slurm_job_ids)
    ref = execute_study(study, executor="inprocess", use_cache=False)[0]
    xr.testing.assert_identical(ds.drop_attrs(), ref.drop_attrs())
    logs = list((tmp_path / "slurm-logs").glob("*.err"))
    assert logs, "dask-jobqueue job logs missing"
    # the jobs are cancelled when the run ends: none is pending or running any more at once
    # (a cancelled job may show as completing, CG, while slurmd cleans up), and they leave
    # the queue soon after
    assert not (_queued_jobs(live_only=True) & rep.slurm_job_ids)
    deadline = time.monotonic() + 30
    while _queued_jobs() & rep.slurm_job_ids and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not (_queued_jobs() & rep.slurm_job_ids)


def _queued_jobs(live_only: bool = False) -> set[str]:
    """Job ids in the queue; ``live_only``: those pending, running or otherwise able to bring
    a worker (qdcavity's own definition), not those completing."""
    from qdcavity.executors import _LIVE_JOB_STATES

    out = subprocess.run(["squeue", "-h", "-o", "%i %t"], capture_output=True, text=True,
                         check=True).stdout
    return {job for job, state in (line.split() for line in out.splitlines())
            if not live_only or state in _LIVE_JOB_STATES}


def test_rejected_submission_is_one_error_and_keeps_the_cache(slurm: Path, tmp_path: Path
                                                              ) -> None:
    good = load_study(write(tmp_path))
    execute_study(good, executor="inprocess", cache_dir=tmp_path / "cache")  # all 16 cached
    partial = good.model_copy(update={"sweep": good.sweep.model_copy(update={"axes": {
        **good.sweep.axes, "QD.thickness_nm": [25, 30, 35, 40, 45]}})})
    bad = load_study(write(tmp_path, 'queue = "nosuch"'))
    bad = bad.model_copy(update={"sweep": partial.sweep})
    with pytest.raises(QdcavityError, match="invalid partition"):
        execute_study(bad, cache_dir=tmp_path / "cache")
    assert len(list(TaskCache(tmp_path / "cache").keys())) == 16


def test_cancelled_jobs_end_the_run_with_one_error_then_resume(slurm: Path, tmp_path: Path
                                                               ) -> None:
    """scancel every worker job mid-sweep: `qdcavity run` stops with one clear error and a
    non-zero exit instead of waiting forever, finished tasks stay cached, and a resumed run
    completes the sweep. The run is a separate process (as a user's is): if it ever hangs,
    faulthandler's dump of its threads is in the failure message."""
    text = write(tmp_path).read_text().replace(
        'wavelength_nm = [600, 630, 660]',
        'wavelength_nm = {start = 450, stop = 750, num = 800}\nangle_deg = [0, 20, 40, 60]')
    text = text.replace('"QD.thickness_nm" = [25, 30, 35, 40]',
                        '"QD.thickness_nm" = [' + ", ".join(str(20 + i) for i in range(40)) + "]")
    text = text.replace("jobs = 2", "jobs = 1")
    (tmp_path / "study.toml").write_text(text)
    cache_dir = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-m", "qdcavity.cli", "run",
         str(tmp_path / "study.toml"), "--cache-dir", str(cache_dir), "-o", "out.nc"],
        cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline \
                and len(list(TaskCache(cache_dir).keys())) < 5:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0]
        subprocess.run("squeue -h -o %i | xargs -r scancel", shell=True, check=True)
        try:
            output = proc.communicate(timeout=180)[0]
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGABRT)  # faulthandler prints every thread's stack
            output = proc.communicate(timeout=30)[0]
            queue = subprocess.run(["squeue", "-o", "%i %t %M %R"], capture_output=True,
                                   text=True).stdout
            pytest.fail(f"the run did not stop after scancel; squeue:\n{queue}\n{output}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode not in (0, None), output
    assert "none of the SLURM jobs" in output, output
    assert "Traceback" not in output, output
    done = len(list(TaskCache(cache_dir).keys()))
    assert 5 <= done < 160
    ds, rep = execute_study(load_study(tmp_path / "study.toml"), executor="inprocess",
                            cache_dir=cache_dir)
    assert rep.n_cached == done and rep.n_computed == 160 - done
    assert (ds.status == "ok").all()


def test_example_sbatch_script(slurm: Path, tmp_path: Path) -> None:
    study = write(tmp_path)
    env = {**os.environ, "STUDY": str(study), "OUT": str(tmp_path / "batch.nc"),
           "QDCAVITY": f"{sys.executable} -m qdcavity.cli"}
    # not `sbatch --wait`: it polls with growing intervals (up to 30 s late)
    out = subprocess.run(["sbatch", "--parsable", "--cpus-per-task=2", "--mem=1G",
                          f"--output={tmp_path}/job-%j.out", "--export=ALL",
                          str(CLUSTER / "run-study.sbatch")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    job = out.stdout.strip().split(";")[0]
    state, deadline = "", time.monotonic() + 300
    while time.monotonic() < deadline:
        info = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True,
                              text=True).stdout
        state = info.split("JobState=", 1)[1].split()[0] if "JobState=" in info else ""
        if state and state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            break
        time.sleep(0.5)
    log = "".join(p.read_text() for p in tmp_path.glob("job-*.out"))
    assert state == "COMPLETED", state + "\n" + log
    ds = read_netcdf(tmp_path / "batch.nc")
    assert (ds.status == "ok").all() and ds.sizes["QD.thickness_nm"] == 4
    assert "2 worker(s)" in log and "16 computed" in " ".join(log.split())
