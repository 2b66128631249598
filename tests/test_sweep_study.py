"""Sweeps in-process with the real TMM backend: axes, combine, cache, failures, bad input."""

from __future__ import annotations

import io
import json
import socket
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import xarray as xr
from rich.console import Console

from qdcavity import runner
from qdcavity.api import solve
from qdcavity.cache import TaskCache
from qdcavity.cli import main
from qdcavity.errors import ConfigError, QdcavityError
from qdcavity.executors import BatchSizer, ExecConfig
from qdcavity.plugins.tmm.backend import TmmBackend
from qdcavity.progress import SweepProgress
from qdcavity.registry import default_registry
from qdcavity.results import analysis_view, read_netcdf
from qdcavity.runner import execute_study, run_study
from qdcavity.stack import load_stack
from qdcavity.study import Study, load_study

WL = [600.0, 630.0]


def make_study(axes: dict, mode: str = "product", stack: str = "TE-DIZO", **extra) -> Study:
    return Study(stack=stack, analyses=[{"kind": "reflectance", "wavelength_nm": WL}],
                 sweep={"mode": mode, "axes": axes}, executor={"kind": "inprocess"}, **extra)


def run(study: Study, tmp_path: Path, **kw):
    return execute_study(study, cache_dir=tmp_path / "cache", **kw)


def test_product_sweep_of_stack_fields(tmp_path: Path) -> None:
    izo, qd = [90.0, 110.0, 130.0], [25.0, 35.0]
    ds, rep = run(make_study({"IZO_top.thickness_nm": izo, "QD.thickness_nm": qd}), tmp_path)
    assert rep.n_tasks == rep.n_computed == 6 and rep.n_failed == 0
    assert ds.sizes["IZO_top.thickness_nm"] == 3 and ds.sizes["QD.thickness_nm"] == 2
    assert list(ds["IZO_top.thickness_nm"].values) == izo
    assert (ds.status == "ok").all() and (ds.error == "").all()
    direct = solve(load_stack("TE-DIZO").with_overrides(
        {"IZO_top.thickness_nm": 110.0, "QD.thickness_nm": 35.0}), "reflectance",
        wavelength_nm=WL)
    picked = ds.R.sel({"IZO_top.thickness_nm": 110.0, "QD.thickness_nm": 35.0})
    np.testing.assert_array_equal(picked.transpose(*direct.R.dims).values, direct.R.values)
    run_info = json.loads(ds.attrs["run"])
    assert run_info["n_computed"] == 6 and run_info["executor"] == "inprocess"


def test_zip_sweep_and_stack_axis(tmp_path: Path) -> None:
    study = make_study({"stack": ["TE-DIZO", "BE"], "QD.thickness_nm": [30.0, 40.0]},
                       mode="zip")
    ds = run_study(study, cache_dir=tmp_path)
    assert ds.sizes["point"] == 2
    assert list(ds["stack"].values) == ["TE-DIZO", "BE"]
    be = solve(load_stack("BE").with_overrides({"QD.thickness_nm": 40.0}), "reflectance",
               wavelength_nm=WL)
    np.testing.assert_array_equal(ds.R.isel(point=1).values, be.R.values)
    # provenance: the stacks the study names, not one hash per point
    assert json.loads(ds.attrs["base_stack_hashes"]) == sorted(
        load_stack(name).content_hash for name in ("TE-DIZO", "BE"))


class TwinBackend(TmmBackend):
    """The TMM solver under another name: a second backend on the same machine."""

    name: ClassVar[str] = "tmm-twin"


@pytest.fixture
def twin(monkeypatch: pytest.MonkeyPatch) -> str:
    reg = default_registry()
    monkeypatch.setitem(reg.backends, TwinBackend.name, TwinBackend())
    monkeypatch.setitem(reg.origins, TwinBackend.name, "test")
    return TwinBackend.name


def test_backend_axis_runs_one_sweep_on_two_backends(tmp_path: Path, twin: str) -> None:
    study = make_study({"backend": ["tmm", twin], "IZO_top.thickness_nm": [100.0, 120.0]})
    ds, rep = run(study, tmp_path)
    assert rep.n_computed == 4 and rep.n_unique == 4  # backend name is part of the key
    assert list(ds["backend"].values) == ["tmm", twin]
    diff = ds.R.sel(backend="tmm") - ds.R.sel(backend=twin)
    assert float(abs(diff).max()) == 0.0
    assert json.loads(ds.attrs["backends"]) == sorted(["tmm", twin])


def test_failing_points_are_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    # plane-wave incidence from the absorbing Si substrate is refused by the solver at run time
    study = make_study({"reflectance.incidence": ["superstrate", "substrate"],
                        "IZO_top.thickness_nm": [100.0, 120.0]})
    ds, rep = run(study, tmp_path)
    assert rep.n_failed == 2 and rep.n_computed == 2
    bad = ds.sel({"reflectance.incidence": "substrate"})
    assert (bad.status == "failed").all()
    assert all("absorbs" in str(e) for e in bad.error.values)
    assert bool(bad.R.isnull().all())
    good = ds.sel({"reflectance.incidence": "superstrate"})
    assert (good.status == "ok").all() and bool(good.R.notnull().all())
    assert ds.attrs["n_failed"] == 2
    # a rerun retries the failed points (failures are not cached) and reuses the others
    _, rep2 = run(study, tmp_path)
    assert rep2.n_cached == 2 and rep2.n_failed == 2


STUDY_TOML = """
name = "cli-sweep"
stack = "TE-DIZO"
[[analyses]]
kind = "reflectance"
wavelength_nm = [600, 630]
[sweep]
mode = "product"
[sweep.axes]
"reflectance.incidence" = {incidence}
"IZO_top.thickness_nm" = [100, 120]
[executor]
kind = "inprocess"
[output]
path = "out.nc"
"""


def test_cli_exit_status_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = tmp_path / "good.toml"
    good.write_text(STUDY_TOML.format(incidence='["superstrate"]'))
    assert main(["run", str(good), "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "2 computed, 0 cached, 0 failed" in out
    assert main(["run", str(good), "--cache-dir", str(tmp_path / "c"), "--resume"]) == 0
    captured = capsys.readouterr()
    assert "0 computed, 2 cached" in captured.out
    assert "2 of 2 tasks found in the cache" in captured.err
    ds = read_netcdf(tmp_path / "out.nc")
    assert (ds.status == "ok").all()

    bad = tmp_path / "bad.toml"
    bad.write_text(STUDY_TOML.format(incidence='["superstrate", "substrate"]'))
    assert main(["run", str(bad), "--cache-dir", str(tmp_path / "c")]) == 1
    assert "2 cached, 2 failed" in capsys.readouterr().out
    assert main(["run", str(good), "--resume", "--no-cache"]) == 2
    assert "--resume needs the cache" in capsys.readouterr().err


def test_rerun_reuses_cache_and_recomputes_a_corrupt_entry(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    study = make_study({"IZO_top.thickness_nm": [90.0, 100.0, 110.0]})
    first, rep1 = run(study, tmp_path)
    assert rep1.n_computed == 3
    again, rep2 = run(study, tmp_path)
    assert rep2.n_cached == 3 and rep2.n_computed == 0 and rep2.n_batches == 0
    xr.testing.assert_identical(first.drop_attrs(), again.drop_attrs())

    cache = TaskCache(tmp_path / "cache")
    victim = next(iter(cache.keys()))
    path = cache.path(victim)
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0x01  # one flipped bit in the payload
    path.write_bytes(bytes(blob))
    fixed, rep3 = run(study, tmp_path)
    assert rep3.n_corrupt_cache == 1 and rep3.n_computed == 1 and rep3.n_cached == 2
    xr.testing.assert_identical(first.drop_attrs(), fixed.drop_attrs())
    assert cache.get(victim) is not None  # rewritten

    # a new backend version is a new question: nothing is reused
    monkeypatch.setattr(TmmBackend, "version", "999.0")
    _, rep4 = run(study, tmp_path)
    assert rep4.n_cached == 0 and rep4.n_computed == 3


def test_fast_combine_equals_xarray_concat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    studies = [make_study({"reflectance.incidence": ["superstrate", "substrate"],
                           "QD.thickness_nm": [25.0, 35.0, 45.0]}),
               make_study({"reflectance.angle_deg": [0.0, 30.0]})]  # records changed first
    fast = [run_study(study, use_cache=False) for study in studies]
    monkeypatch.setattr(runner, "_stack_fast", lambda records: None)
    for study, quick in zip(studies, fast, strict=True):
        slow = run_study(study, use_cache=False)
        xr.testing.assert_identical(quick.drop_attrs(), slow.drop_attrs())
        for name in quick.data_vars:
            assert quick[name].attrs == slow[name].attrs
            assert quick[name].dims == slow[name].dims
        drop = {"run"}
        assert {k: v for k, v in quick.attrs.items() if k not in drop} == \
            {k: v for k, v in slow.attrs.items() if k not in drop}



def test_stack_attribute_kept_when_every_point_shares_the_stack(tmp_path: Path) -> None:
    """Workers neither send nor store a result's ``stack`` (its task fixes it, the key hashes
    it); the combined dataset has it exactly when all points agree, as xarray keeps attributes,
    fresh and from the cache alike."""
    stack = load_stack("TE-DIZO")
    shared = make_study({"reflectance.angle_deg": [0.0, 30.0]})
    varied = make_study({"IZO_top.thickness_nm": [90.0, 100.0]})
    for study, kept in ((shared, True), (varied, False)):
        fresh, rep = run(study, tmp_path)
        again, rep2 = run(study, tmp_path)
        assert rep.n_computed == 2 and rep2.n_cached == 2
        for ds in (fresh, again):
            assert ("stack" in ds.attrs) is kept and ("stack_hash" in ds.attrs) is kept
            if kept:
                assert ds.attrs["stack"] == stack.canonical_json
                assert ds.attrs["stack_hash"] == stack.content_hash
        one = run(make_study({}), tmp_path)[0]  # a single point
        assert one.attrs["stack"] == stack.canonical_json
    packs = list((tmp_path / "cache").rglob("*.qdp*")) + list((tmp_path / "cache").rglob("*.qdc"))
    assert packs and not any(b'"emitter_layer"' in p.read_bytes() for p in packs)
    # attributes in the order solve() gives them
    assert list(fresh.attrs)[:3] == list(solve(stack, "reflectance", wavelength_nm=WL).attrs)[:3]


def test_stack_attribute_from_points_with_a_result_and_old_cache_entries(tmp_path: Path
                                                                         ) -> None:
    """A failed point does not count (its stack differs: the one with a result is kept); an
    entry cached with its ``stack`` (as before workers stopped storing it) does not make a
    varied sweep keep the stack of that one point."""
    study = make_study({"IZO_top.thickness_nm": [100.0, 120.0],
                        "reflectance.incidence": ["substrate", "superstrate"]}, mode="zip")
    ds, rep = run(study, tmp_path)
    assert rep.n_failed == 1 and list(ds.status.values) == ["failed", "ok"]
    kept = load_stack("TE-DIZO").with_overrides({"IZO_top.thickness_nm": 120.0})
    assert ds.attrs["stack"] == kept.canonical_json
    assert ds.attrs["stack_hash"] == kept.content_hash

    varied = make_study({"IZO_top.thickness_nm": [90.0, 100.0, 110.0]})
    tasks = runner.expand(varied)
    old = solve(tasks[0].stack, "reflectance", wavelength_nm=WL)
    assert "stack" in old.attrs
    cache = TaskCache(tmp_path / "old")
    cache.put(runner.task_keys(tasks[:1])[0], old)  # an entry as the earlier code wrote it
    assert cache.get_record(runner.task_keys(tasks[:1])[0]).attrs["stack"]
    mixed, rep2 = execute_study(varied, cache_dir=tmp_path / "old")
    assert rep2.n_cached == 1 and rep2.n_computed == 2
    assert "stack" not in mixed.attrs and "stack_hash" not in mixed.attrs


def test_swept_analysis_parameter_that_is_a_result_dimension(tmp_path: Path) -> None:
    """Sweeping ``reflectance.angle_deg``: each point's values at its own angle, the result's
    ``angle_deg`` dimension dropped (the axis holds it), alone, next to another analysis (whose
    prefixed dimension would collide with the axis) and when every point at one angle failed."""
    angles = [0.0, 30.0]
    alone = run(make_study({"reflectance.angle_deg": angles}), tmp_path)[0]
    assert alone.R.dims == ("reflectance.angle_deg", "wavelength_nm", "polarization")
    numpy_values = run(make_study({"reflectance.angle_deg": list(np.arange(0, 60, 30))}),
                       tmp_path)[0]  # numpy integers, as the Python API may pass them
    assert numpy_values.R.dims == alone.R.dims
    for angle in angles:
        direct = solve("TE-DIZO", "reflectance", wavelength_nm=WL, angle_deg=angle)
        np.testing.assert_array_equal(alone.R.sel({"reflectance.angle_deg": angle}).values,
                                      direct.R.isel(angle_deg=0).values)
    both = Study(stack="TE-DIZO", analyses=[
        {"kind": "reflectance", "wavelength_nm": WL}, {"kind": "modes", "wavelength_nm": 630}],
        sweep={"axes": {"reflectance.angle_deg": angles, "QD.thickness_nm": [25.0, 35.0]}},
        executor={"kind": "inprocess"})
    ds, rep = run(both, tmp_path)
    assert rep.n_failed == 0 and "reflectance.angle_deg" in ds.dims
    assert set(ds["reflectance.R"].dims) == {"reflectance.angle_deg", "QD.thickness_nm",
                                             "reflectance.wavelength_nm",
                                             "reflectance.polarization"}
    thin = load_stack("TE-DIZO").with_overrides({"QD.thickness_nm": 25.0})
    for angle in angles:
        direct = solve(thin, "reflectance", wavelength_nm=WL, angle_deg=angle)
        picked = ds["reflectance.R"].sel({"reflectance.angle_deg": angle,
                                          "QD.thickness_nm": 25.0})
        np.testing.assert_array_equal(
            picked.transpose("reflectance.wavelength_nm", "reflectance.polarization").values,
            direct.R.isel(angle_deg=0).values)
    neff = ds["modes.neff"]  # the modes do not depend on the angle
    np.testing.assert_array_equal(neff.isel({"reflectance.angle_deg": 0}).values,
                                  neff.isel({"reflectance.angle_deg": 1}).values)
    # every point at 30 degrees failed (incidence from the absorbing substrate)
    failed = run(make_study({"reflectance.angle_deg": angles,
                             "reflectance.incidence": ["superstrate", "substrate"]},
                            mode="zip"), tmp_path)[0]
    assert list(failed.status.values) == ["ok", "failed"]
    assert failed.R.dims == ("point", "wavelength_nm", "polarization")
    assert np.isnan(failed.R.isel(point=1)).all() and not np.isnan(failed.R.isel(point=0)).any()
    modes = run(Study(stack="TE-DIZO", analyses=[{"kind": "modes", "wavelength_nm": 630}],
                      sweep={"axes": {"modes.wavelength_nm": [620.0, 640.0]}},
                      executor={"kind": "inprocess"}), tmp_path)[0]
    assert modes.neff.dims == ("modes.wavelength_nm", "polarization", "mode")
    assert modes.n_modes.dtype.kind == "i" and modes.label.dtype.kind == "U"  # as solved


def test_swept_parameter_that_is_not_the_dimension_of_its_name(tmp_path: Path) -> None:
    """Outcoupling's ``material_gain_cm`` parameter is the nominal gain; its results'
    ``material_gain_cm`` dimension is the gain scan: swept, the scan stays whole."""
    scan = [0.0, 700.0, 1400.0]
    outcoupling = {"kind": "outcoupling", "wavelength_nm": 630, "alpha_sca_cm": 10.0,
                   "gain_scan_cm": scan, "stripe_length_um": [0, 100, 1000],
                   "angle_points": 5, "positions": 1}
    def study(*analyses: dict) -> Study:
        return Study(stack="TE-DIZO", analyses=list(analyses), executor={"kind": "inprocess"},
                     sweep={"axes": {"outcoupling.material_gain_cm": [690.0, 700.0]}})

    ds, rep = run(study(outcoupling), tmp_path)
    assert rep.n_failed == 0
    assert list(ds.material_gain_cm.values) == scan
    assert "material_gain_cm" in ds.lateral_output.dims
    assert not np.isnan(ds.lateral_output).any()
    single = run(study({**outcoupling, "gain_scan_cm": [0.0]}), tmp_path)[0]
    assert list(single.material_gain_cm.values) == [0.0]  # one scan value, not the point's
    # next to another analysis: the prefixed result dimension must not take the axis' name
    multi, rep = run(study(outcoupling, {"kind": "reflectance", "wavelength_nm": WL}), tmp_path)
    assert rep.n_failed == 0
    assert list(multi["outcoupling.material_gain_cm_result"].values) == scan
    assert list(multi["outcoupling.material_gain_cm"].values) == [690.0, 700.0]
    view = analysis_view(multi, "outcoupling")  # the axis is material_gain_cm there
    view = view.rename({"material_gain_cm": "outcoupling.material_gain_cm"}).rename(
        {"material_gain_cm_result": "material_gain_cm"})
    np.testing.assert_array_equal(
        view.lateral_output.transpose(*ds.lateral_output.dims).values, ds.lateral_output.values)

# ------------------------------------------------------------------------- bad input

def write_study(tmp_path: Path, sweep: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text('stack = "TE-DIZO"\n[[analyses]]\nkind = "reflectance"\n'
                    'wavelength_nm = 630\n[executor]\nkind = "inprocess"\n' + sweep)
    return path


@pytest.mark.parametrize(("sweep", "message"), [
    ('[sweep.axes]\n"IZO_top.thicknes_nm" = [1, 2]\n', "unknown sweep axis 'IZO_top.thicknes_nm'"),
    ('[sweep.axes]\n"reflectance.bogus" = [1, 2]\n', "reflectance.bogus = 1"),
    ('[sweep.axes]\n"IZO_top.thickness_nm" = []\n', "axis 'IZO_top.thickness_nm' is empty"),
    ('[sweep]\nmode = "zip"\n[sweep.axes]\n"IZO_top.thickness_nm" = [1, 2]\n'
     '"QD.thickness_nm" = [1, 2, 3]\n', "zipped axes must have equal lengths"),
    ('[sweep.axes]\n"backend" = ["tmm", "nosuch"]\n', "unknown backend 'nosuch'"),
])
def test_bad_sweeps_fail_before_any_work(tmp_path: Path, sweep: str, message: str) -> None:
    with pytest.raises(QdcavityError, match=message.replace(".", r"\.").replace("[", r"\[")):
        run_study(load_study(write_study(tmp_path, sweep)), cache_dir=tmp_path / "c")
    assert not list((tmp_path / "c").glob("??/*")) if (tmp_path / "c").exists() else True


def test_unreachable_scheduler_is_one_error_and_keeps_the_cache(tmp_path: Path) -> None:
    study = make_study({"IZO_top.thickness_nm": [90.0, 100.0, 110.0]})
    run(make_study({"IZO_top.thickness_nm": [90.0, 100.0]}), tmp_path)  # 2 of 3 done
    cache = TaskCache(tmp_path / "cache")
    before = {k: cache.path(k).stat().st_mtime_ns for k in cache.keys()}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    t0 = time.monotonic()
    with pytest.raises(QdcavityError, match=f"cannot reach the dask scheduler at tcp://127.0.0.1:{port}"):
        run(study, tmp_path, executor="address", address=f"tcp://127.0.0.1:{port}",
            connect_timeout_s=2)
    assert time.monotonic() - t0 < 20
    assert {k: cache.path(k).stat().st_mtime_ns for k in cache.keys()} == before
    with pytest.raises(ConfigError, match="needs a scheduler address"):
        run(study, tmp_path, executor="address")


def test_exec_config_from_study_and_overrides() -> None:
    study = make_study({"QD.thickness_nm": [30.0]})
    cfg = ExecConfig.from_study(study, address="tcp://h:1")
    assert cfg.kind == "address" and cfg.address == "tcp://h:1"
    cfg = ExecConfig.from_study(study, workers=3, retries=0)
    assert (cfg.kind, cfg.workers, cfg.retries) == ("inprocess", 3, 0)
    with pytest.raises(ConfigError, match="unknown executor"):
        ExecConfig(kind="cloud")


def test_batch_sizer(monkeypatch: pytest.MonkeyPatch) -> None:
    import qdcavity.executors as ex

    auto = BatchSizer(None, target_s=0.25)
    assert not auto.measured and auto.size(10_000, 2) == 1  # nothing measured yet
    for _ in range(10):
        auto.observe(0.002)
    assert auto.measured and auto.size(10_000, 2) == 125  # 0.25 s of 2 ms tasks
    assert BatchSizer(None, 0.25).measured is False and BatchSizer(7, 0.25).measured
    floor = BatchSizer(None, target_s=0.25)
    floor.observe(0.002)
    assert floor.size(40, 2) == 50  # no batch cut below MIN_BATCH_S (0.1 s) of work
    monkeypatch.setattr(ex, "MIN_BATCH_S", 0.0)
    tail = BatchSizer(None, target_s=0.25)
    tail.observe(0.002)
    # factoring: each round of one batch per worker shares out two thirds of what is left
    assert [tail.size(left, 2) for left in (200, 133)] == [67, 67]
    assert [tail.size(left, 2) for left in (66, 44)] == [22, 22]
    assert tail.size(22, 2) == 8
    # a round starts afresh when the number of workers changes
    assert tail.size(37, 1) == 25 and tail.size(1000, 8) == 84 and tail.size(916, 1) == 125
    slow = BatchSizer(None, target_s=0.25)
    slow.observe(5.0)  # a Meep-sized task runs alone
    assert slow.size(10_000, 2) == 1
    assert BatchSizer(7, 0.25).size(3, 2) == 7


def test_progress_bar_when_interactive_and_silent_otherwise() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=140)
    with SweepProgress(console=console, label="demo") as bar:
        bar.start(4, cached=3)
        bar.update(ok=2)
        bar.update(failed=1, retried=1)
        bar.note("dask dashboard: http://host:1/status")
    text = buf.getvalue()
    for piece in ("demo", "2 done", "1 failed", "3 cached", "1 retried", "ETA",
                  "dashboard: http://host:1/status"):
        assert piece in text, piece

    quiet = io.StringIO()
    with SweepProgress(console=Console(file=quiet, force_terminal=False)) as bar:
        assert not bar.enabled
        bar.start(4)
        bar.update(ok=4)
    assert quiet.getvalue() == ""
    assert bar.summary() == "4 computed, 0 cached, 0 failed"


@pytest.mark.parametrize("points", [[90.0, 110.0, 130.0], [90.0]])
def test_client_writes_what_workers_cannot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           points: list[float]) -> None:
    """Workers that do not see the cache folder (another host, no shared file system) send
    their blocks; the client writes them (one pack per batch, an entry file for a lone
    result), and a rerun takes every result from the cache, equal to the first run's."""
    monkeypatch.setattr(TaskCache, "if_shared", classmethod(lambda cls, root, token: None))
    study = make_study({"IZO_top.thickness_nm": points, "QD.thickness_nm": [25.0]})
    first, rep = run(study, tmp_path, batch_size=8)
    assert rep.n_computed == len(points) and rep.n_written_by_workers == 0
    stored = list((tmp_path / "cache").rglob("*.qdpack")) + list(
        (tmp_path / "cache").glob("??/*.qdc"))
    assert [p.suffix for p in stored] == [".qdpack" if len(points) > 1 else ".qdc"]
    again, rep2 = run(study, tmp_path)
    assert rep2.n_cached == len(points) and rep2.n_computed == 0
    xr.testing.assert_identical(again.drop_attrs(), first.drop_attrs())


def test_a_pack_that_cannot_be_written_loses_no_result(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A failure other than the file system's while a pack is made (on the worker, then on
    the client) leaves the results unstored, with a warning, and the sweep complete."""
    from qdcavity.encoding import CacheError

    def refuse(self: TaskCache, blocks: object, meta: object = None) -> None:
        raise CacheError("an attribute the pack cannot hold")

    monkeypatch.setattr(TaskCache, "put_blocks", refuse)
    ds, rep = run(make_study({"IZO_top.thickness_nm": [90.0, 110.0]}), tmp_path,
                  progress=SweepProgress(enabled=False))
    assert rep.n_computed == 2 and rep.n_failed == 0 and (ds.status == "ok").all()
    assert "1 result not cached (CacheError: an attribute" in capfd.readouterr().err
    monkeypatch.undo()
    _, again = run(make_study({"IZO_top.thickness_nm": [90.0, 110.0]}), tmp_path)
    assert again.n_cached == 0 and again.n_computed == 2
