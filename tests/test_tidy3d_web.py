"""The tidy3d backend's cloud job flow, tested at the HTTP boundary. NOTHING HERE REACHES THE CLOUD.

tidy3d.web speaks REST to the Tidy3D API through ``requests`` and moves files through S3 with
boto3. Both are faked at the wire, with tidy3d's own code unpatched:

* the REST API is answered by :class:`FakeCloud` through the ``responses`` library (it patches
  ``requests``' transport adapter; every request is matched, nothing leaves the process);
* S3 is a tiny HTTP server on 127.0.0.1 that boto3 reaches through the standard
  ``AWS_ENDPOINT_URL_S3`` environment variable.

A fake API key is configured through ``SIMCLOUD_APIKEY``. The fake cloud keeps tasks in memory,
moves them draft -> queued -> running -> success as they are polled, and on success serves a
SimulationData file built from the very simulation that was uploaded, with flux values the
tests choose, so the whole path (submit, poll, failure, resume after interruption, download,
post-processing into the contract dataset) runs for real.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import tempfile
import threading
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tidy3d", reason="the tidy3d extra is not installed")
responses = pytest.importorskip("responses", reason="the test extra (responses) is missing")

from qdcavity.api import solve  # noqa: E402
from qdcavity.errors import BackendError, SolverError  # noqa: E402
from qdcavity.plugins.tidy3d.jobs import Tidy3DDryRun  # noqa: E402

pytestmark = pytest.mark.tidy3d

API = "https://tidy3d-api.simulation.cloud"
R_TRUE, T_TRUE = 0.3125, 0.25  # what the fake solver "measures"


# ----- fake S3 ---------------------------------------------------------------------------------

class _S3Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store: dict[str, bytes] = {}

    def log_message(self, *args) -> None:  # quiet
        pass

    def _key(self) -> str:
        """Object key (path-style addressing: /<bucket>/<key>)."""
        return self.path.split("?", 1)[0].lstrip("/").split("/", 1)[1]

    def do_PUT(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        if self.headers.get("x-amz-content-sha256", "").startswith("STREAMING"):
            body = _dechunk(body)
        self.store[self._key()] = body
        self.send_response(200)
        self.send_header("ETag", f'"{uuid.uuid4().hex}"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _object(self, head: bool) -> None:
        body = self.store.get(self._key())
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = 0, len(body) - 1
        rng = self.headers.get("Range")
        if rng and not head:
            a, b = rng.split("=", 1)[1].split("-")
            start, end = int(a), min(int(b) if b else end, end)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("ETag", '"etag"')
        self.send_header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
        self.end_headers()
        if not head:
            self.wfile.write(body[start:end + 1])

    def do_HEAD(self) -> None:  # noqa: N802
        self._object(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._object(head=False)


def _dechunk(body: bytes) -> bytes:
    """aws-chunked upload encoding -> payload."""
    out, rest = b"", body
    while rest:
        header, _, rest = rest.partition(b"\r\n")
        size = int(header.split(b";")[0], 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2:]
    return out


@pytest.fixture(scope="module")
def s3_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _S3Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


# ----- fake REST API ---------------------------------------------------------------------------

class FakeCloud:
    """In-memory Tidy3D REST API. ``outcome`` decides how submitted tasks end."""

    def __init__(self, outcome: str = "success", polls_before_done: int = 2, cost: float = 0.1,
                 refuse_create: bool = False) -> None:
        self.tasks: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []
        self.outcome = outcome
        self.polls_before_done = polls_before_done
        self.cost = cost
        self.refuse_create = refuse_create
        # the fake "solver": (simulation, task name) -> SimulationData; None = R/T fluxes
        self.solver = None

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, p in self.calls if m == method and re.search(pattern, p))

    @staticmethod
    def ok(data) -> tuple[int, dict, str]:
        return 200, {"Content-Type": "application/json"}, json.dumps({"data": data})

    def __call__(self, request):
        path = request.url.split(API, 1)[1].split("?", 1)[0].strip("/")
        query = request.url.split("?", 1)[1] if "?" in request.url else ""
        body = json.loads(request.body) if request.body else {}
        self.calls.append((request.method, path))
        assert request.headers.get("simcloud-api-key") == "fake-key-for-tests"
        if path == "tidy3d/project":
            return self.ok({"projectId": "folder-1", "projectName": "qdcavity"})
        if path.startswith("rf/task/"):
            return 404, {}, json.dumps({"error": "not a batch"})
        m = re.fullmatch(r"tidy3d/projects/([^/]+)/tasks", path)
        if m and request.method == "POST":
            if self.refuse_create:
                return 403, {"Content-Type": "application/json"}, json.dumps(
                    {"error": "Insufficient FlexCredits to create a task"})
            task_id = f"fdve-{uuid.uuid4()}"
            self.tasks[task_id] = {"status": "draft", "polls": 0, "name": body.get("taskName")}
            return self.ok({"taskId": task_id, "taskName": body.get("taskName"),
                            "folderId": "folder-1", "status": "draft"})
        m = re.fullmatch(r"tidy3d/py/tasks/([^/]+)/file", path)
        if m:
            filename = re.search(r"filename=([^&]+)", query).group(1)
            return self.ok({
                "cloudpath": f"s3://fake-bucket/{m.group(1)}/{filename}",
                "userCredentials": {
                    "accessKeyId": "AKIAFAKE", "secretAccessKey": "fake", "sessionToken": "fake",
                    "expiration": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}})
        m = re.fullmatch(r"tidy3d/tasks/([^/]+)/(detail|metadata|submit)", path)
        if m:
            task_id, action = m.groups()
            task = self.tasks.get(task_id)
            if task is None:
                return 404, {}, json.dumps({"error": "no such task"})
            if action == "submit":
                assert task["status"] == "draft", "a task was submitted twice"
                task["status"] = "queued"
                return self.ok({})
            if action == "metadata":
                return self.ok({})
            if task["status"] in ("queued", "running"):
                task["polls"] += 1
                if task["polls"] > self.polls_before_done:
                    self._finish(task_id, task)
                else:
                    task["status"] = "running"
            return self.ok({"taskId": task_id, "taskName": task["name"],
                            "status": task["status"], "metadataStatus": "validate_success",
                            "taskType": "FDTD", "estFlexUnit": self.cost,
                            "folderId": "folder-1"})
        if path == "health":
            return 200, {}, "{}"
        return 404, {}, json.dumps({"error": f"unknown path {path}"})

    def _finish(self, task_id: str, task: dict) -> None:
        if self.outcome != "success":
            task["status"] = "error"
            _S3Handler.store[f"{task_id}/output/tidy3d_error.json"] = json.dumps(
                {"msg": "simulation diverged (fake)"}).encode()
            return
        import tidy3d as td

        raw = gzip.decompress(_S3Handler.store[f"{task_id}/simulation.hdf5.gz"])
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "sim.hdf5"
            src.write_bytes(raw)
            sim = td.Simulation.from_file(str(src))
            out = Path(tmp) / "data.hdf5"
            if self.solver is not None:
                self.solver(sim, task["name"]).to_file(str(out))
            else:
                data = []
                for mon in sim.monitors:
                    value = R_TRUE if mon.name == "R" else -T_TRUE
                    arr = td.FluxDataArray(np.full(len(mon.freqs), value),
                                           coords={"f": list(mon.freqs)})
                    data.append(td.FluxData(monitor=mon, flux=arr))
                td.SimulationData(simulation=sim, data=data).to_file(str(out))
            buf = io.BytesIO()
            with gzip.GzipFile(fileobj=buf, mode="wb") as gz:
                gz.write(out.read_bytes())
        _S3Handler.store[f"{task_id}/output/simulation_data.hdf5.gz"] = buf.getvalue()
        task["status"] = "success"


@pytest.fixture
def cloud(monkeypatch, s3_server):
    """A FakeCloud behind ``responses``, a fake API key and the fake S3 endpoint."""
    monkeypatch.setenv("SIMCLOUD_APIKEY", "fake-key-for-tests")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    fake = FakeCloud()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        for method in ("GET", "POST", "PUT", "DELETE"):
            mock.add_callback(method, re.compile(re.escape(API) + r"/.*"), callback=fake)
        yield fake
    _no_key(monkeypatch)


def _no_key(monkeypatch) -> None:
    """No API key from here on: tidy3d's config caches SIMCLOUD_APIKEY when it (re)loads, so
    after the fake key it is reloaded without it. Skips if a real key is configured here."""
    from tidy3d.config import reload_config
    from tidy3d.web.core.http_util import api_key

    monkeypatch.delenv("SIMCLOUD_APIKEY", raising=False)
    reload_config()
    if api_key():
        pytest.skip("a Tidy3D API key is configured on this machine")


def _run(tmp_path: Path, **options):
    opts = {"work_dir": str(tmp_path), "poll_interval_s": 0, **options}
    return solve("BE", "reflectance", backend="tidy3d", options=opts,
                 wavelength_nm=[630.0], angle_deg=[0.0])


def _records(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(tmp_path.glob("tidy3d/*/task.json"))]


# ----- the tests ----------------------------------------------------------------------------------

def test_submit_poll_download(cloud, tmp_path):
    ds = _run(tmp_path)
    assert float(ds.R.values.ravel()[0]) == pytest.approx(R_TRUE)
    assert float(ds.T.values.ravel()[0]) == pytest.approx(T_TRUE)
    assert float(ds.A.values.ravel()[0]) == pytest.approx(1 - R_TRUE - T_TRUE)
    assert cloud.count("POST", r"projects/.+/tasks$") == 1
    assert cloud.count("POST", r"/submit$") == 1
    assert cloud.count("GET", r"/detail$") >= 3  # polled until done
    (record,) = _records(tmp_path)
    assert record["status"] == "success" and record["task_id"] in cloud.tasks
    assert record["cost_estimate_fc"] == pytest.approx(0.1)
    assert (tmp_path / "tidy3d").glob("*/data.hdf5")
    # a rerun loads the results from the work directory without any request
    before = len(cloud.calls)
    ds2 = _run(tmp_path)
    assert len(cloud.calls) == before
    assert float(ds2.R.values.ravel()[0]) == pytest.approx(R_TRUE)


def test_resume_after_interruption_polls_the_same_task(cloud, tmp_path):
    cloud.polls_before_done = 4
    with pytest.raises(SolverError, match="run again to resume polling"):
        _run(tmp_path, timeout_s=1e-9)
    (record,) = _records(tmp_path)
    task_id = record["task_id"]
    assert record["status"] in ("queued", "running")
    ds = _run(tmp_path)
    assert cloud.count("POST", r"projects/.+/tasks$") == 1      # not uploaded again
    assert cloud.count("POST", r"/submit$") == 1               # not paid twice
    assert _records(tmp_path)[0]["task_id"] == task_id
    assert float(ds.R.values.ravel()[0]) == pytest.approx(R_TRUE)


def test_failed_task_is_reported_and_not_resubmitted(cloud, tmp_path):
    cloud.outcome = "error"
    with pytest.raises(SolverError, match="simulation diverged"):
        _run(tmp_path)
    (record,) = _records(tmp_path)
    assert record["status"] == "error"
    calls = len(cloud.calls)
    with pytest.raises(SolverError, match="failed earlier.*resubmit_failed"):
        _run(tmp_path)
    assert len(cloud.calls) == calls
    cloud.outcome = "success"
    ds = _run(tmp_path, resubmit_failed=True)
    assert cloud.count("POST", r"projects/.+/tasks$") == 2
    assert _records(tmp_path)[0]["previous_task_ids"] == [record["task_id"]]
    assert float(ds.T.values.ravel()[0]) == pytest.approx(T_TRUE)


def test_web_api_refusal_is_a_clear_error(cloud, tmp_path):
    cloud.refuse_create = True
    with pytest.raises(SolverError, match="refused to upload.*Insufficient FlexCredits"):
        _run(tmp_path)


def test_cost_cap_stops_before_starting(cloud, tmp_path):
    cloud.cost = 5.0
    with pytest.raises(SolverError, match="exceeds max_cost_fc"):
        _run(tmp_path, max_cost_fc=1.0)
    assert cloud.count("POST", r"/submit$") == 0
    _run(tmp_path, max_cost_fc=10.0)                            # starts the kept draft
    assert cloud.count("POST", r"projects/.+/tasks$") == 1
    assert cloud.count("POST", r"/submit$") == 1


def test_dry_run_online_estimates_and_the_real_run_reuses_the_draft(cloud, tmp_path):
    with pytest.raises(Tidy3DDryRun, match=r"estimated cost 0\.1 FlexCredits"):
        _run(tmp_path, dry_run=True)
    assert cloud.count("POST", r"/submit$") == 0
    assert list(tmp_path.glob("tidy3d/*/simulation.json"))
    _run(tmp_path)
    assert cloud.count("POST", r"projects/.+/tasks$") == 1
    assert cloud.count("POST", r"/submit$") == 1


def test_dry_run_offline_builds_validates_and_saves(monkeypatch, tmp_path):
    _no_key(monkeypatch)
    with responses.RequestsMock() as mock:  # any request would fail the test
        with pytest.raises(Tidy3DDryRun, match="offline: no API key") as info:
            _run(tmp_path, dry_run=True)
        assert not mock.calls
    saved = list(tmp_path.glob("tidy3d/*/simulation.json"))
    assert len(saved) == 1 and str(saved[0]) in str(info.value)
    import tidy3d as td

    sim = td.Simulation.from_file(str(saved[0]))
    sim.validate_pre_upload()
    assert {m.name for m in sim.monitors} == {"R", "T"}


def test_missing_api_key_is_a_clear_error(monkeypatch, tmp_path):
    _no_key(monkeypatch)
    with responses.RequestsMock() as mock:
        with pytest.raises(BackendError, match="no Tidy3D API key.*SIMCLOUD_APIKEY"):
            _run(tmp_path)
        assert not mock.calls


def test_fdtd_needs_a_work_dir(monkeypatch):
    from qdcavity.errors import ConfigError

    monkeypatch.setenv("SIMCLOUD_APIKEY", "fake-key-for-tests")
    with pytest.raises(ConfigError, match="work_dir"):
        solve("BE", "reflectance", backend="tidy3d", wavelength_nm=[630.0], angle_deg=[0.0])
    with pytest.raises(ConfigError, match="work_dir"):
        solve("BE", "reflectance", backend="tidy3d", wavelength_nm=[630.0], angle_deg=[0.0],
              options={"dry_run": True})


def test_outcoupling_batch_submit_interrupt_resume_download(cloud, tmp_path):
    """An outcoupling batch (reference + 2 realizations) through the fake cloud: all three
    are uploaded and started before any is polled, an interruption (timeout) leaves them
    running, the rerun resumes the same tasks (no second upload or start) and the downloaded
    data (synthetic, with a known answer: test_tidy3d_outcoupling.py) are post-processed
    into the contract dataset. Tolerance 1e-9 relative: exact arithmetic on chosen values."""
    from test_tidy3d_outcoupling import (
        PARTICLES,
        SMALL,
        expected_answers,
        synthetic_data,
    )

    from qdcavity.analyses import make_analysis
    from qdcavity.plugins.tidy3d import outcoupling as oc
    from qdcavity.plugins.tidy3d.options import parse_options
    from qdcavity.stack import load_stack

    params = {"wavelength_nm": [630.0], **PARTICLES, "gain_scan_cm": [0.0, 700.0],
              "stripe_length_um": [0.0, 100.0], "angle_points": 31, "positions": 2}
    opts = {"work_dir": str(tmp_path), "poll_interval_s": 0, **SMALL}
    _, (plan,) = oc.outcoupling_jobs(load_stack("TE-DIZO"),
                                     make_analysis("outcoupling", **params),
                                     parse_options(opts), local_modes=False)
    cloud.solver = lambda sim, name: synthetic_data(sim, name.split("-", 1)[1].rsplit("-", 1)[0],
                                                    plan)
    cloud.polls_before_done = 3
    with pytest.raises(SolverError, match="run again to resume polling"):
        solve("TE-DIZO", "outcoupling", backend="tidy3d", options={**opts, "timeout_s": 1e-9},
              **params)
    assert cloud.count("POST", r"projects/.+/tasks$") == 3
    assert cloud.count("POST", r"/submit$") == 3          # all started before any poll
    ids = {r["task_id"] for r in _records(tmp_path)}
    ds = solve("TE-DIZO", "outcoupling", backend="tidy3d", options=opts, **params)
    assert cloud.count("POST", r"projects/.+/tasks$") == 3   # resumed, not uploaded again
    assert cloud.count("POST", r"/submit$") == 3             # not paid twice
    assert {r["task_id"] for r in _records(tmp_path)} == ids
    assert all(r["status"] == "success" for r in _records(tmp_path))
    want = expected_answers(plan)
    assert float(ds.alpha_sca_cm[0]) == pytest.approx(want["alpha_sca_cm"], rel=1e-9)
    assert float(ds.escape_fraction[0]) == pytest.approx(want["escape"], rel=1e-9)
    assert ds.attrs["backend"] == "tidy3d"


@pytest.mark.parametrize("kind, params, options", [
    ("reflectance", {"wavelength_nm": [630.0], "angle_deg": [0.0]}, {}),
    ("dipole_emission", {"wavelength_nm": [630.0]}, {"lateral_size_um": 2.0}),
    ("outcoupling", {"wavelength_nm": [630.0], "particle_radius_nm": 15.0,
                     "volume_fraction": 0.05, "geometry": "2d"},
     {"window_um": 2.0, "realizations": 1}),
])
def test_every_cloud_analysis_without_a_key_is_one_clear_error(monkeypatch, tmp_path, kind,
                                                               params, options):
    _no_key(monkeypatch)
    with responses.RequestsMock() as mock:
        with pytest.raises(BackendError, match="no Tidy3D API key.*SIMCLOUD_APIKEY.*tidy3d "
                                               "configure --apikey.*dry_run = true"):
            solve("TE-DIZO", kind, backend="tidy3d",
                  options={"work_dir": str(tmp_path), **options}, **params)
        assert not mock.calls


def test_availability_says_which_analyses_need_the_cloud(monkeypatch):
    from qdcavity.registry import default_registry

    backend = default_registry().get("tidy3d")
    monkeypatch.delenv("SIMCLOUD_APIKEY", raising=False)
    status = backend.availability()
    assert status.available
    assert "modes: local, no API key" in status.reason
    assert "dipole_emission, outcoupling, reflectance: Tidy3D cloud FDTD" in status.reason
    assert "tidy3d configure --apikey" in status.reason
    assert set(backend.analyses) == {"modes", "reflectance", "dipole_emission", "outcoupling"}
    monkeypatch.setenv("SIMCLOUD_APIKEY", "fake-key-for-tests")
    assert "SIMCLOUD_APIKEY is set" in backend.availability().reason
