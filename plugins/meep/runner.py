"""Launch the Meep worker in its own interpreter and read its result (host side).

The worker (``worker.py`` next to this file) runs under ``interpreter`` (default
``/usr/bin/python3``, Debian's python with ``python3-meep`` and numpy 1.x), optionally behind a
``launcher`` prefix such as ``mpirun -np 4``. The job goes in as a JSON file, the arrays come
back as an ``.npz`` file; failures come back as ``<result>.error.json`` and become
:class:`~qdcavity.errors.SolverError` (or :class:`~qdcavity.errors.BackendError` when Meep or
the interpreter is missing) with a message naming the cause.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qdcavity.errors import BackendError, SolverError

WORKER = Path(__file__).with_name("worker.py")
PROTOCOL = 1
INSTALL_HINT = (
    "install Debian's Meep for the system python: `sudo apt-get install python3-meep "
    "python3-matplotlib python3-h5py` (the PyPI package 'meep' is an unrelated placeholder); "
    "without root see docs/meep.md (conda-forge 'pymeep' in its own environment, then set "
    "options['interpreter'] or QDCAVITY_MEEP_PYTHON to that environment's python)"
)
DEFAULT_INTERPRETER = "/usr/bin/python3"


def default_interpreter() -> str:
    return os.environ.get("QDCAVITY_MEEP_PYTHON", DEFAULT_INTERPRETER)


def default_launcher() -> list[str]:
    return shlex.split(os.environ.get("QDCAVITY_MEEP_LAUNCHER", ""))


def as_launcher(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return default_launcher()
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


@dataclass(frozen=True)
class WorkerResult:
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    wall_s: float
    stderr_tail: str


def resolve_interpreter(interpreter: str) -> str:
    """Absolute path of the interpreter, or a BackendError naming it."""
    path = shutil.which(interpreter) if os.sep not in interpreter else interpreter
    if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise BackendError(
            f"the Meep interpreter '{interpreter}' does not exist or is not executable; "
            f"{INSTALL_HINT}", field="backend")
    return path


_children: set[subprocess.Popen] = set()
_lock = threading.Lock()


def run_worker(job: Mapping[str, Any], *, interpreter: str, launcher: Sequence[str] = (),
               timeout_s: float = 3600.0, work_dir: str | Path | None = None,
               what: str = "meep task", keep: bool = False, script: Path = WORKER
               ) -> WorkerResult:
    """Run one job in a worker script (default ``worker.py``; any script that speaks the same
    protocol) and return its arrays; raise SolverError/BackendError."""
    exe = resolve_interpreter(interpreter)
    if launcher and shutil.which(launcher[0]) is None:
        raise BackendError(f"the Meep launcher '{launcher[0]}' is not on PATH "
                           f"(options['launcher'] = {' '.join(launcher)!r})", field="backend")
    base = Path(work_dir) if work_dir else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="qdcavity-meep-", dir=base)
    job_path = Path(tmp) / "job.json"
    out_path = Path(tmp) / "result.npz"
    err_path = Path(str(out_path) + ".error.json")
    job = {"protocol": PROTOCOL, "deadline_s": float(timeout_s), **job}
    job_path.write_text(json.dumps(job, allow_nan=False), encoding="utf-8")
    cmd = [*launcher, exe, str(script), str(job_path), str(out_path)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.pop("PYTHONPATH", None)  # the host's numpy 2 must not leak into the worker
    env.pop("PYTHONHOME", None)
    t0 = time.time()
    stderr_path = Path(tmp) / "stderr.txt"
    try:
        with open(stderr_path, "wb") as err_fh:
            proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL,
                                    stderr=err_fh, start_new_session=True,
                                    preexec_fn=_die_with_parent)
            with _lock:
                _children.add(proc)
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill(proc)
                raise SolverError(
                    f"{what}: the Meep worker exceeded its time limit of {timeout_s:g} s and "
                    "was stopped (raise options['timeout_s'], or lower the resolution / "
                    "run time)") from None
            finally:
                with _lock:
                    _children.discard(proc)
        tail = _tail(stderr_path)
        if err_path.exists():
            info = json.loads(err_path.read_text(encoding="utf-8"))
            kind, message = info.get("kind", "internal"), info.get("message", "")
            if kind == "meep-import":
                raise BackendError(f"{what}: Meep is not usable: {message}. {INSTALL_HINT}",
                                   field="backend")
            label = {"diverged": "the simulation diverged",
                     "time-limit": "the simulation exceeded its time limit",
                     "bad-job": "the worker rejected the job",
                     "no-mode": "no mode found"}.get(kind, "the Meep worker failed")
            raise SolverError(f"{what}: {label}: {message.strip()}")
        if rc != 0 or not out_path.exists():
            raise SolverError(
                f"{what}: the Meep worker exited with status {rc} without a result"
                + (f"; stderr: {tail}" if tail else ""))
        with np.load(out_path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays.pop("meta")))
        return WorkerResult(arrays, meta, time.time() - t0, tail)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def run_job(job: Mapping[str, Any], opts: Mapping[str, Any], what: str,
            script: Path = WORKER) -> WorkerResult:
    """:func:`run_worker` with the interpreter, launcher, time limit, work folder and
    keep-files setting taken from resolved backend options (``backend.resolve_options``)."""
    return run_worker(job, interpreter=opts["interpreter"], launcher=opts["launcher"],
                      timeout_s=float(opts["timeout_s"]), work_dir=opts.get("work_dir"),
                      what=what, keep=bool(opts.get("keep_files")), script=script)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGTERM the worker when the host dies (no orphaned simulations)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _kill(proc: subprocess.Popen) -> None:
    """Stop the worker's process group (only the processes this call started)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired, PermissionError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    keep = [ln for ln in text.splitlines() if ln.strip() and "Elapsed run time" not in ln]
    return " | ".join(keep[-lines:])


_probe_cache: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}


def probe(interpreter: str | None = None, launcher: Sequence[str] | None = None,
          timeout_s: float = 120.0) -> dict[str, Any]:
    """Versions from the worker (cached per interpreter); raises BackendError if unusable."""
    interpreter = interpreter or default_interpreter()
    launch = tuple(as_launcher(launcher))
    key = (interpreter, launch)
    if key not in _probe_cache:
        try:
            res = run_worker({"task": "probe"}, interpreter=interpreter, launcher=launch,
                             timeout_s=timeout_s, what="meep probe")
        except SolverError as exc:
            raise BackendError(f"the Meep worker does not run: {exc}", field="backend") from None
        _probe_cache[key] = res.meta
    return _probe_cache[key]
