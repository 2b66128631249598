"""Tidy3D cloud jobs with on-disk bookkeeping, fit for HPC batch use.

Layout under ``options["work_dir"]`` (the orchestrator passes a directory next to the sweep's
cache)::

    <work_dir>/tidy3d/<job key>-<simulation hash>/
        simulation.json   the validated simulation (also written by a dry run)
        task.json         task id, status, cost estimate, error, timestamps (atomic writes)
        data.hdf5         the downloaded results (written atomically once complete)

Flow for every simulation of an analysis (all are submitted before any is waited for, so
they run in parallel in the cloud):

1. build and ``validate_pre_upload()`` offline; write ``simulation.json``;
2. ``data.hdf5`` present: load it, nothing is sent;
3. ``task.json`` holds a task id: resume it (ask its status; start it if still a draft; poll);
   a task recorded as failed is not resubmitted unless ``resubmit_failed``;
4. else upload (``web.upload``), record the task id at once, estimate the cost
   (``web.estimate_cost``), refuse to start beyond ``max_cost_fc``, start (``web.start``);
5. poll every ``poll_interval_s`` (``web.get_status``) until done or ``timeout_s``; download
   (``web.download``) to ``data.hdf5``.

A dry run (``dry_run = True``) stops after step 1, plus, when an API key is configured and
``estimate_cost`` is on, an upload and a cost estimate (free; the draft task id is kept and a
later real run starts that very task). It then raises :class:`Tidy3DDryRun`, whose message
lists the files and the estimates. An interrupted run (Ctrl-C, SLURM walltime) is resumed by
running again: nothing is uploaded or paid twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qdcavity.errors import BackendError, ConfigError, SolverError

from ._runtime import tidy3d, tidy3d_module
from .options import Tidy3DOptions

ERROR_STATES = {"validate_error", "error", "errored", "blocked", "preprocess_error", "run_error",
                "aborted", "deleted", "postprocess_error", "diverge", "diverged"}
SUCCESS_STATES = {"visualize", "success", "completed", "processed", "postprocess_success"}
DRAFT_STATES = {"draft", "created", "validating", "validate", "validate_success",
                "validate_warn", "warning", "uploaded"}


class Tidy3DDryRun(SolverError):
    """A dry run finished: simulations were built, validated and saved; nothing was run."""


@dataclass
class SimJob:
    """One simulation of an analysis; ``key`` is unique within the analysis (``R-0deg-s``)."""

    key: str
    simulation: Any

    @property
    def digest(self) -> str:
        text = self.simulation.model_dump_json()
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


class JobRecord:
    """``task.json`` of one simulation."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "task.json"
        self.data: dict[str, Any] = (json.loads(self.path.read_text(encoding="utf-8"))
                                     if self.path.exists() else {})

    def update(self, **fields: Any) -> None:
        self.data.update(fields, updated=_now())
        _write_json(self.path, self.data)

    @property
    def task_id(self) -> str | None:
        return self.data.get("task_id")

    @property
    def status(self) -> str:
        return self.data.get("status", "")

    @property
    def data_file(self) -> Path:
        return self.folder / "data.hdf5"


def api_key_configured() -> bool:
    """Whether tidy3d finds an API key (``SIMCLOUD_APIKEY`` or its config file)."""
    http_util = tidy3d_module("tidy3d.web.core.http_util")
    try:
        return bool(http_util.api_key())
    except Exception:  # noqa: BLE001  a broken config file counts as no key
        return False


NO_KEY = ("no Tidy3D API key is configured: set the SIMCLOUD_APIKEY environment variable or run "
          "`tidy3d configure --apikey=<key>` (key from your account page at "
          "https://tidy3d.simulation.cloud); to build and validate without a key use "
          "dry_run = true")


def web_exceptions() -> tuple[type[BaseException], ...]:
    """What tidy3d.web raises for refusals and transport failures (not programming errors)."""
    import requests

    exc_mod = tidy3d_module("tidy3d.exceptions")
    core = tidy3d_module("tidy3d.web.core.exceptions")
    return (exc_mod.Tidy3dError, core.WebError, requests.RequestException, ValueError, OSError)


def _web_error(action: str, job: str, exc: Exception) -> SolverError:
    text = str(exc).strip() or type(exc).__name__
    return SolverError(f"tidy3d web API refused to {action} simulation '{job}': {text}")


class JobRunner:
    """Submit, resume, poll and download the simulations of one analysis."""

    def __init__(self, opts: Tidy3DOptions, what: str,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not opts.work_dir:
            if not opts.dry_run and not api_key_configured():
                raise BackendError(f"{what}: {NO_KEY}", field="backend")
            raise ConfigError(
                f"{what} on the tidy3d backend runs on Tidy3D's cloud and needs a work "
                "directory for its simulations, task ids and results: set the backend option "
                "work_dir (the study runner sets it next to the sweep's cache)",
                field="work_dir")
        self.opts = opts
        self.what = what
        self.root = Path(opts.work_dir).expanduser() / "tidy3d"
        self.sleep = sleep

    # ---- step 1: build, validate, save -------------------------------------------------
    def prepare(self, jobs: Sequence[SimJob]) -> list[tuple[SimJob, JobRecord]]:
        keys = [j.key for j in jobs]
        if len(set(keys)) != len(keys):
            raise SolverError(f"duplicate simulation keys {keys}")
        out = []
        for job in jobs:
            try:
                job.simulation.validate_pre_upload()
            except Exception as exc:  # noqa: BLE001  tidy3d raises its own SetupError types
                raise ConfigError(f"Tidy3D cannot run simulation '{job.key}' of {self.what}: "
                                  f"{exc}", field="stack") from exc
            folder = self.root / f"{job.key}-{job.digest}"
            folder.mkdir(parents=True, exist_ok=True)
            sim_file = folder / "simulation.json"
            if not sim_file.exists():
                tmp = folder / "simulation.tmp.json"
                job.simulation.to_file(str(tmp))
                os.replace(tmp, sim_file)
            record = JobRecord(folder)
            if not record.data:
                tidy3d()
                record.update(key=job.key, simulation_hash=job.digest, status="built",
                              created=_now(), tidy3d_version=tidy3d().__version__)
            out.append((job, record))
        return out

    # ---- web actions ----------------------------------------------------------------------
    @property
    def web(self):
        return tidy3d_module("tidy3d.web.api.webapi")

    def _upload(self, job: SimJob, record: JobRecord) -> None:
        try:
            task_id = self.web.upload(job.simulation, task_name=f"qdcavity-{job.key}-"
                                      f"{job.digest}", folder_name=self.opts.folder_name,
                                      verbose=self.opts.verbose)
        except web_exceptions() as exc:
            raise _web_error("upload", job.key, exc) from exc
        record.update(task_id=task_id, status="draft", uploaded=_now())

    def _estimate(self, job: SimJob, record: JobRecord) -> float | None:
        if "cost_estimate_fc" in record.data:
            return record.data["cost_estimate_fc"]
        try:
            cost = self.web.estimate_cost(record.task_id, verbose=self.opts.verbose)
        except web_exceptions() as exc:
            raise _web_error("estimate the cost of", job.key, exc) from exc
        cost = None if cost is None else float(cost)
        record.update(cost_estimate_fc=cost)
        return cost

    def _remote_status(self, job: SimJob, record: JobRecord) -> str:
        try:
            info = self.web.get_info(record.task_id, verbose=False)
        except web_exceptions() as exc:
            raise _web_error("report the status of", job.key, exc) from exc
        status = str(getattr(info, "status", "") or "").lower()
        record.update(status=status)
        return status

    def _start(self, job: SimJob, record: JobRecord) -> None:
        try:
            self.web.start(record.task_id)
        except web_exceptions() as exc:
            raise _web_error("start", job.key, exc) from exc
        record.update(status="queued", started=_now())

    def _download(self, job: SimJob, record: JobRecord) -> None:
        tmp = record.folder / "data.part.hdf5"
        try:
            self.web.download(record.task_id, path=str(tmp), verbose=self.opts.verbose)
        except web_exceptions() as exc:
            tmp.unlink(missing_ok=True)
            raise _web_error("download the results of", job.key, exc) from exc
        os.replace(tmp, record.data_file)
        record.update(status="success", downloaded=_now())

    # ---- the whole flow ---------------------------------------------------------------------
    def run(self, jobs: Sequence[SimJob]) -> dict[str, Any]:
        """SimulationData by job key (raises Tidy3DDryRun for a dry run)."""
        prepared = self.prepare(jobs)
        pending = [(j, r) for j, r in prepared if not r.data_file.exists()]
        online = api_key_configured() if pending else False
        if self.opts.dry_run:
            self._dry_run(prepared, online)
        if pending and not online:
            raise BackendError(f"{self.what}: {NO_KEY}", field="backend")
        failed = [(j, r) for j, r in pending if r.status in ERROR_STATES]
        if failed and not self.opts.resubmit_failed:
            job, rec = failed[0]
            raise SolverError(f"Tidy3D task {rec.task_id} of simulation '{job.key}' failed "
                              f"earlier ({rec.status}: {rec.data.get('error', 'no message')}); "
                              "set resubmit_failed = true to pay for a new run")
        for _job, rec in failed:
            rec.update(previous_task_ids=[*rec.data.get("previous_task_ids", []), rec.task_id],
                       task_id=None, status="built", error=None)
            rec.data.pop("cost_estimate_fc", None)

        # upload what has no task yet, then estimate every draft
        for job, rec in pending:
            if not rec.task_id:
                self._upload(job, rec)
        drafts = []
        for job, rec in pending:
            status = self._remote_status(job, rec)
            if status in DRAFT_STATES:
                drafts.append((job, rec))
        if drafts and (self.opts.estimate_cost or self.opts.max_cost_fc):
            total = sum(self._estimate(j, r) or 0.0 for j, r in drafts)
            if self.opts.max_cost_fc is not None and total > self.opts.max_cost_fc:
                raise SolverError(
                    f"{self.what}: estimated cost {total:.3g} FlexCredits exceeds max_cost_fc = "
                    f"{self.opts.max_cost_fc:g}; nothing was started (the uploaded drafts are "
                    f"kept in {self.root} and start on the next run)")
        for job, rec in drafts:
            self._start(job, rec)
        self._poll(pending)
        return {job.key: self._load(job, rec) for job, rec in prepared}

    def _poll(self, pending: list[tuple[SimJob, JobRecord]]) -> None:
        waiting = list(pending)
        start = time.monotonic()
        while waiting:
            still = []
            for job, rec in waiting:
                try:
                    status = str(self.web.get_status(rec.task_id)).lower()
                except web_exceptions() as exc:  # get_status raises on error states
                    rec.update(status="error", error=str(exc).strip())
                    raise SolverError(f"Tidy3D task {rec.task_id} of simulation '{job.key}' "
                                      f"failed: {str(exc).strip()}") from exc
                if status in ERROR_STATES:
                    rec.update(status=status, error=f"task ended in state '{status}'")
                    raise SolverError(f"Tidy3D task {rec.task_id} of simulation '{job.key}' "
                                      f"ended in state '{status}'")
                if status in SUCCESS_STATES:
                    self._download(job, rec)
                else:
                    if status != rec.status:
                        rec.update(status=status)
                    still.append((job, rec))
            waiting = still
            if not waiting:
                return
            if self.opts.timeout_s is not None and time.monotonic() - start > self.opts.timeout_s:
                ids = ", ".join(r.task_id for _, r in waiting)
                raise SolverError(
                    f"{self.what}: Tidy3D tasks still running after {self.opts.timeout_s:g} s "
                    f"({ids}); run again to resume polling (task ids are kept in {self.root})")
            self.sleep(self.opts.poll_interval_s)

    def _load(self, job: SimJob, rec: JobRecord) -> Any:
        td = tidy3d()
        try:
            return td.SimulationData.from_file(str(rec.data_file))
        except Exception as exc:  # noqa: BLE001  a corrupt file is removed and fetched again
            bad = rec.data_file.with_name("data.corrupt.hdf5")
            os.replace(rec.data_file, bad)
            raise SolverError(f"results of simulation '{job.key}' cannot be read ({exc}); "
                              f"moved to {bad}, run again to download them anew") from exc

    def _dry_run(self, prepared: list[tuple[SimJob, JobRecord]], online: bool) -> None:
        lines, total = [], 0.0
        estimated = online and self.opts.estimate_cost
        for job, rec in prepared:
            cost = None
            if estimated and not rec.data_file.exists():
                if not rec.task_id:
                    self._upload(job, rec)
                cost = self._estimate(job, rec)
                total += cost or 0.0
            shown = "done" if rec.data_file.exists() else (
                f"~{cost:.3g} FlexCredits" if cost is not None else "not estimated")
            lines.append(f"  {rec.folder / 'simulation.json'} ({shown})")
        head = (f"dry run of {self.what}: {len(prepared)} Tidy3D simulation(s) built, validated "
                f"and saved, nothing started")
        if estimated:
            head += f"; estimated cost {total:.3g} FlexCredits (draft tasks kept for the real run)"
        else:
            head += "; cost not estimated (" + ("estimate_cost is off" if online
                                               else "offline: no API key") + ")"
        raise Tidy3DDryRun(head + "\n" + "\n".join(lines))
