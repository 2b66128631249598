"""The worker side of a sweep (run_batch) and the fast paths that keep large sweeps cheap:
records handed over without decoding, grouped encoding, the garbage-collector setting, shared
resized layers, and the numpy combine of many records."""

from __future__ import annotations

import gc
import hashlib
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import qdcavity.batches as batches
from qdcavity.analyses import make_analysis
from qdcavity.batches import (
    ENCODE_CHUNK,
    pack_batch,
    run_batch,
    run_batch_packed,
    sweep_gc,
    unpack_batch,
    with_records,
)
from qdcavity.cache import TaskCache
from qdcavity.encoding import (
    CacheError,
    Record,
    decode_record,
    encode_dataset,
    encode_result,
    records_from_columns,
    result_columns,
)
from qdcavity.runner import _stack_fast, expand, task_keys
from qdcavity.stack import Stack, load_stack
from qdcavity.study import Study
from qdcavity.tasks import STACK_ATTR, Task, TaskResult, run_task


def sweep_tasks(n_izo: int, n_qd: int) -> list[Task]:
    study = Study(name="t", stack="TE-DIZO",
                  analyses=[{"kind": "reflectance", "wavelength_nm": [600, 630]}],
                  sweep={"axes": {"IZO_top.thickness_nm": [60.0 + i for i in range(n_izo)],
                                  "QD.thickness_nm": [20.0 + i for i in range(n_qd)]}})
    return expand(study)


def odd_dataset() -> xr.Dataset:
    return xr.Dataset({"v": ("x", np.array([1.0, 2.0]), {"arr": np.arange(3), "u": "1"})},
                      coords={"x": [0.5, 1.5]},
                      attrs={"text": "a\ud800b", "n": np.int32(3), "t": (1, 2.5, "z"),
                             "m": {"k": np.float32(1.5)}, 7: "int key"})


def as_sent(ds: xr.Dataset) -> Record:
    """The record of ``ds`` as a worker sends and stores it: without the attributes the task
    fixes (``STACK_ATTR``)."""
    ds = ds.copy()
    ds.attrs.pop(STACK_ATTR, None)
    return decode_record(encode_dataset(ds))


def same_record(a: Record, b: Record) -> bool:
    return (a.attrs.keys() == b.attrs.keys()
            and all(type(a.attrs[k]) is type(b.attrs[k]) and repr(a.attrs[k]) == repr(b.attrs[k])
                    for k in a.attrs)
            and repr(a.variables) == repr(b.variables)
            and all(type(x) is type(y) and x.dtype == y.dtype and x.shape == y.shape
                    and np.array_equal(x, y) for x, y in zip(a.arrays, b.arrays, strict=True)))


def records_of(*datasets: xr.Dataset, with_payload: bool = True) -> list[Record]:
    """The datasets through a worker's path: encoded, stacked as columns, records again."""
    encoded = [encode_result(ds, with_payload) for ds in datasets]
    assert len({e.structure for e in encoded}) == 1
    return records_from_columns(encoded[0].structure, [e.attrs for e in encoded],
                                result_columns(encoded))


def test_encoded_results_give_what_decoding_gives() -> None:
    tasks = sweep_tasks(2, 1)

    results = [run_task(t).dataset for t in tasks]
    for group in (results, [odd_dataset(), odd_dataset()]):
        for ds in group:
            enc = encode_result(ds)
            assert enc.payload == encode_dataset(ds)
            assert encode_result(ds, with_payload=False).payload is None
        for record, ds in zip(records_of(*group), group, strict=True):
            assert same_record(record, decode_record(encode_dataset(ds)))
            assert not any(a.flags.writeable for a in record.arrays)  # as decoded ones
    # lists among the attributes are each record's own (not shared with later records)
    r1, r2 = records_of(odd_dataset(), odd_dataset())
    r1.attrs["t"].append("x")
    r1.variables[0]["attrs"]["arr"][0] = 99
    assert r2.attrs["t"] == [1, 2.5, "z"] and r2.variables[0]["attrs"]["arr"][0] == 0


def test_run_batch_writes_every_result_and_hands_records_over(tmp_path: Path) -> None:
    tasks = sweep_tasks(ENCODE_CHUNK + 3, 2)  # more than one encoding group
    keys = task_keys(tasks)
    cache = TaskCache(tmp_path)
    out = with_records(run_batch(tasks, keys, (str(cache.root), cache.token(), 60.0)))
    items = out["results"]
    assert [it["index"] for it in items] == [t.index for t in tasks]
    assert all(it["status"] == "ok" for it in items)
    assert [b["written"] for b in out["blocks"]] == [True]  # one structure, one flush
    assert sorted(out["blocks"][0]["rows"]) == list(range(len(tasks)))
    assert len(list((tmp_path / "packs").iterdir())) == 1  # one pack for the whole batch
    reader = TaskCache(tmp_path)
    alone = [run_task(t).dataset for t in tasks]
    for key, item, ds in zip(keys, items, alone, strict=True):
        assert "stack" in ds.attrs and "stack_hash" in item["record"].attrs
        assert same_record(item["record"], as_sent(ds))
        assert same_record(reader.get_record(key), item["record"])  # the pack holds the same
    plain = with_records(run_batch(tasks[:3]))  # no cache: nothing written
    assert [b["written"] for b in plain["blocks"]] == [False]
    assert all(same_record(it["record"], as_sent(ds))
               for it, ds in zip(plain["results"], alone[:3], strict=True))
    # a cache this process cannot see (the client writes the blocks it gets)
    unseen = with_records(run_batch(tasks[:3], keys[:3], (str(tmp_path / "gone"), "x", 60.0)))
    assert [b["written"] for b in unseen["blocks"]] == [False]


def test_packed_batches_carry_the_same_results(tmp_path: Path) -> None:
    """What dask workers return (one bytes object) unpacks to what run_batch gives: each
    result's record equals the decoded payload, and equals what the cache then holds."""
    tasks = sweep_tasks(3, 2)
    blob = run_batch_packed(pack_batch(tasks))
    assert isinstance(blob, bytes)
    packed, plain = unpack_batch(blob), with_records(run_batch(tasks))
    assert packed["where"] == plain["where"]
    for a, b in zip(packed["results"], plain["results"], strict=True):
        assert a["status"] == b["status"] == "ok"
        assert same_record(a["record"], b["record"])
        assert not any(arr.flags.writeable for arr in a["record"].arrays)
    # records of one structure share its variables list, across batches too (fast combine)
    again = unpack_batch(run_batch_packed(pack_batch(tasks[:2])))
    assert again["results"][0]["record"].variables is packed["results"][0]["record"].variables
    keys = task_keys(tasks)
    cache = TaskCache(tmp_path)
    written = unpack_batch(run_batch_packed(
        pack_batch(tasks, keys, (str(cache.root), cache.token(), 60.0))))
    assert all(block["written"] for block in written["blocks"])
    for key, item in zip(keys, written["results"], strict=True):
        assert same_record(item["record"], TaskCache(tmp_path).get_record(key))


_GC_SEEN: list[int] = []


def _gc_probe() -> str:
    _GC_SEEN.append(gc.get_threshold()[0])
    return "probe"


class _GcProbe:
    """Records the garbage collector's threshold when it is unpickled."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return _gc_probe, ()


def test_packed_batches_unpickle_their_tasks_under_the_sweep_gc() -> None:
    """Unpickling a batch's tasks makes thousands of objects: with Python's default
    threshold a worker spent 17-20 us per task in collections there."""
    task = sweep_tasks(1, 1)[0]
    probe = Task(stack=task.stack, analysis=task.analysis, analysis_name=task.analysis_name,
                 backend=task.backend, options={"probe": _GcProbe()}, point=task.point)
    _GC_SEEN.clear()
    unpack_batch(run_batch_packed(pack_batch([task, probe])))
    assert _GC_SEEN == [max(gc.get_threshold()[0], batches.SWEEP_GC_THRESHOLD)]


def test_packed_batch_arguments_take_what_dask_would(monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    """Options plain pickle refuses (a lambda) or would send by reference to the user's
    ``__main__`` script, which a worker does not have, go by value, as dask sends them."""
    main = sys.modules["__main__"]

    def hook(x: int) -> int:
        return x + 1

    hook.__module__, hook.__qualname__ = "__main__", "qdc_test_hook"
    monkeypatch.setattr(main, "qdc_test_hook", hook, raising=False)
    task = sweep_tasks(1, 1)[0]
    odd = Task(stack=task.stack, analysis=task.analysis, analysis_name=task.analysis_name,
               backend=task.backend, options={"hook": hook, "inline": lambda x: 2 * x},
               point=task.point)
    blob = pack_batch([odd])
    monkeypatch.delattr(main, "qdc_test_hook")  # as on a worker
    options = pickle.loads(blob)[0][0].options
    assert options["hook"](1) == 2 and options["inline"](2) == 4
    out = unpack_batch(run_batch_packed(blob))
    assert len(out["results"]) == 1  # the backend may refuse the options; the batch runs


def test_packed_batches_keep_mixed_structures_and_own_attributes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch whose results have two structures, one with list attributes (each record's
    own copy), comes back result by result as decoding would give it."""
    tasks = sweep_tasks(4, 1)
    real = batches.run_task

    def run_task(task: Task) -> TaskResult:
        res = real(task)
        if task.index % 2:
            res.dataset = odd_dataset().assign_attrs(index=task.index)
        else:  # 0-d variables, of texts whose width differs between results
            label = np.array(["TE", "TM-x"])[task.index // 2 % 2 : task.index // 2 % 2 + 1]
            res.dataset = res.dataset.assign(mode=((), label.astype("<U4").reshape(())),
                                             peak=((), float(task.index)))
        return res

    monkeypatch.setattr(batches, "run_task", run_task)
    out = unpack_batch(run_batch_packed(pack_batch(tasks)))
    for item, task in zip(out["results"], tasks, strict=True):
        assert same_record(item["record"], as_sent(run_task(task).dataset))
    odd = [it["record"] for it in out["results"][1::2]]
    odd[0].attrs["t"].append("x")
    odd[0].variables[0]["attrs"]["arr"][0] = 99
    assert odd[1].attrs["t"] == [1, 2.5, "z"] and odd[1].variables[0]["attrs"]["arr"][0] == 0


def test_run_batch_sends_an_unencodable_result_as_it_is(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    tasks = sweep_tasks(3, 1)
    real = batches.run_task

    def run_task(task: Task) -> TaskResult:
        res = real(task)
        if task.index == 1:
            res.dataset.attrs["bad"] = {1, 2}  # a set: not storable
        return res

    monkeypatch.setattr(batches, "run_task", run_task)
    keys = task_keys(tasks)
    unseen_cache = ("/nonexistent/qdcavity-cache", "token", 60.0)  # the client writes
    items = with_records(run_batch(tasks, keys, unseen_cache))["results"]
    assert isinstance(items[1]["dataset"], xr.Dataset) and "record" not in items[1]
    assert all(items[j]["dataset"] is None and items[j]["record"] for j in (0, 2))
    plain = with_records(run_batch(tasks))["results"]  # no cache: the same outcome
    assert isinstance(plain[1]["dataset"], xr.Dataset) and "record" not in plain[1]
    assert all(plain[j]["record"] for j in (0, 2))


def _busy(seconds: float) -> None:
    """Spend ``seconds`` of this process's CPU time."""
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass


def test_solver_cpu_time_counts_the_solves_and_not_the_encoding(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The CPU time read around runs of solves holds each solve (10 ms of CPU here) and none
    of the encoding after them (20 ms each here), nor the cache writes; the driver sums it."""
    real_run, real_encode = batches.run_task, batches.encode_result
    tasks = sweep_tasks(ENCODE_CHUNK + 3, 1)  # two runs of solves
    real_run(tasks[0])  # the first solve in a process costs a one-off ~0.4 s (imports)

    def slow_run(task: Task) -> TaskResult:
        _busy(0.01)
        return real_run(task)

    def slow_encode(ds: xr.Dataset, **kw: object) -> object:
        _busy(0.02)
        return real_encode(ds, **kw)

    monkeypatch.setattr(batches, "run_task", slow_run)
    monkeypatch.setattr(batches, "encode_result", slow_encode)
    n = len(tasks)
    cache = TaskCache(tmp_path)
    out = run_batch(tasks, task_keys(tasks), (str(cache.root), cache.token(), 60.0))
    solves = 0.01 * n + sum(item["seconds"] for item in out["results"])  # busy, then solved
    assert 0.01 * n <= out["solver_cpu_s"] <= solves + 0.05  # not the 0.02 s of encoding each
    assert out["solver_cpu_s"] < 0.02 * n


def test_sweep_gc_raises_the_threshold_and_restores_it() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), sweep_gc():
        assert gc.get_threshold()[0] >= batches.SWEEP_GC_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]
        raise RuntimeError
    assert gc.get_threshold() == before


def test_overlapping_sweeps_restore_the_threshold_and_leave_zero_alone() -> None:
    """Two sweeps that do not end in the reverse order of their start (threads of one worker)
    still give the program its own threshold back."""
    before = gc.get_threshold()
    first, second = sweep_gc(), sweep_gc()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_threshold()[0] >= batches.SWEEP_GC_THRESHOLD  # the second still runs
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before
    gc.set_threshold(0)
    try:
        with sweep_gc():
            assert gc.get_threshold()[0] == 0  # switched off by the program: left off
    finally:
        gc.set_threshold(*before)


def test_grid_points_share_resized_layers_with_unchanged_identity() -> None:
    base = load_stack("TE-DIZO")
    a = base.with_overrides({"QD.thickness_nm": 33.0, "IZO_top.thickness_nm": 90.0})
    b = base.with_overrides({"QD.thickness_nm": 33.0, "IZO_top.thickness_nm": 91.0})
    qd = base.layer_names.index("QD")
    assert a.layers[qd] is b.layers[qd]
    # the same stack validated from scratch has the same canonical JSON and hash
    data = base.model_dump()
    for layer in data["layers"]:
        layer["thickness_nm"] = {"QD": 33.0, "IZO_top": 90.0}.get(layer["name"],
                                                                  layer["thickness_nm"])
    fresh = Stack.from_dict(data)
    assert a.canonical_json == fresh.canonical_json and a.content_hash == fresh.content_hash
    assert a == fresh


def record(value: float, coord: list[float], attrs: dict) -> Record:
    ds = xr.Dataset({"R": ("w", np.array([value, value + 1]))}, coords={"w": coord},
                    attrs=attrs)
    return decode_record(encode_dataset(ds))


def test_numpy_combine_of_records() -> None:
    recs = [record(0.1, [1.0, 2.0], {"same": "x", "point": "a", "arr": np.arange(2)}),
            None,  # a failed point
            record(0.2, [1.0, 2.0], {"same": "x", "point": "b", "arr": np.arange(2)}),
            record(0.3, [1.0, 2.0], {"same": "x", "arr": np.arange(2), "late": "y"})]
    ds = _stack_fast(recs)
    assert ds is not None
    np.testing.assert_array_equal(ds.R.values[[0, 2, 3]], [[0.1, 1.1], [0.2, 1.2],
                                                           [0.3, 1.3]])
    assert np.isnan(ds.R.values[1]).all()
    # kept: agreed on by every point that has it; dropped: differs between points
    assert ds.attrs["same"] == "x" and ds.attrs["late"] == "y" and "point" not in ds.attrs
    np.testing.assert_array_equal(ds.attrs["arr"], np.arange(2))
    # a coordinate that differs in value (not only in its bytes) needs xarray's concat
    assert _stack_fast([recs[0], record(0.2, [1.0, 2.5], {})]) is None
    assert _stack_fast([record(0.1, [0.0, 2.0], {}), record(0.2, [-0.0, 2.0], {})]) is not None
    # as xarray's drop_conflicts: NaN equals NaN, also when only one point has it or only one
    # point succeeded
    nan = record(0.1, [1.0, 2.0], {"q": float("nan"), "fit": np.array([1.0, np.nan])})
    assert {"q", "fit"} <= set(_stack_fast([nan, None]).attrs)
    assert {"q", "fit"} <= set(_stack_fast([nan, record(0.2, [1.0, 2.0], {})]).attrs)
    two = [nan, record(0.3, [1.0, 2.0], {"q": float("nan"), "fit": np.array([1.0, np.nan])})]
    assert {"q", "fit"} <= set(_stack_fast(two).attrs)
    # arrays among variable attributes: no crash, xarray's concat decides
    arr = [decode_record(encode_dataset(xr.Dataset({"R": ("w", [v, v], {"a": np.arange(3)})})))
           for v in (0.1, 0.2)]
    assert _stack_fast(arr) is None
    # a record built from a dataset (its own variable list) is checked field by field
    other = Record.from_dataset(xr.Dataset({"R": ("v", [1.0, 2.0])}, coords={"v": [1.0, 2.0]}))
    assert _stack_fast([recs[0], other]) is None


def test_common_attributes_are_what_xarray_keeps_on_conflicts() -> None:
    """The combined result's attributes are xarray's ``drop_conflicts`` of the records' ones,
    whether the records share their attribute names (compared name by name) or not."""
    from qdcavity.runner import _common_attrs

    nan = float("nan")
    cases = [
        [{"a": "x", "h": "1"}, {"a": "x", "h": "2"}, {"a": "x", "h": "1"}],
        [{"a": "x", "n": nan, "v": np.array([1, 2])}, {"a": "x", "n": nan, "v": np.array([1, 2])}],
        [{"v": np.array([1, 2]), "f": 1.0}, {"v": np.array([1, 3]), "f": 1}],
        [{"a": "x", "i": 1}, {"a": "x", "i": "1"}, {"a": "y", "i": 1}],
        [{"a": "x"}, {"a": "x", "b": "only here"}, {"b": "only here", "a": "x"}],
        [{"a": "x", "b": "1"}, {"b": "2"}, {"a": "x", "c": nan}],
        [{"s": "1", "t": [1, 2]}, {"s": "1", "t": [1, 2]}],
        [{"k": "v"}],
    ]
    for attrs in cases:
        got = _common_attrs([Record(a, [], []) for a in attrs])
        want = xr.merge([xr.Dataset(attrs=a) for a in attrs],
                        combine_attrs="drop_conflicts").attrs
        assert list(got) == list(want), (attrs, got, want)
        for name, value in want.items():
            assert type(got[name]) is type(value), name
            if isinstance(value, np.ndarray | float):
                assert np.array_equal(got[name], value, equal_nan=True), name
            else:
                assert got[name] == value, name


def test_combine_copies_batch_columns_as_the_records_would() -> None:
    """Records that are rows of a batch's columns (two batches, interleaved points, a failed
    point, a record of its own, a batch with too few rows for column copies, a record given
    other arrays) combine exactly as the same records one by one; a batch whose coordinate
    differs in value falls back to xarray's concat, one equal only as bytes (NaN) or only as
    values (-0.0) does not."""
    import dataclasses

    from qdcavity import runner

    def batch(values: list[float], coord: list[float]) -> list[Record]:
        return records_of(*(xr.Dataset({"R": ("w", np.array([v, v + 1]))},
                                       coords={"w": coord}, attrs={"p": str(v)})
                            for v in values))

    rows = runner._COLUMN_ROWS
    first = batch([0.01 * i for i in range(rows + 2)], [1.0, np.nan])
    second = batch([1 + 0.01 * i for i in range(rows)], [1.0, np.nan])
    few = batch([5.0, 6.0], [1.0, np.nan])
    assert first[0].origin is not None and first[0].origin[0] is first[2].origin[0]
    moved = dataclasses.replace(first[3], arrays=[np.array([42.0, 43.0]), first[3].arrays[1]])
    lone = record(0.6, [1.0, np.nan], {"p": "0.6"})
    recs = [*second[::-1], None, *first[:3], few[0], lone, *first[4:], moved, few[1]]
    fast = _stack_fast(recs)
    one_by_one = _stack_fast([r and dataclasses.replace(r, origin=None) for r in recs])
    assert fast is not None and one_by_one is not None
    xr.testing.assert_identical(fast, one_by_one)
    np.testing.assert_array_equal(fast.R.values[:rows, 0], [1 + 0.01 * i
                                                           for i in range(rows)][::-1])
    assert np.isnan(fast.R.values[rows]).all() and fast.R.values[-2, 0] == 42.0
    assert _stack_fast([*first, *batch([0.7] * rows, [1.0, 2.0])]) is None
    assert _stack_fast([*batch([0.1] * rows, [0.0, 2.0]),
                        *batch([0.2] * rows, [-0.0, 2.0])]) is not None


def test_task_keys_unchanged_by_shared_layers() -> None:
    """A key assembled from shared, memoized layers equals the documented formula applied to
    the same stack validated from scratch."""
    import json

    task = sweep_tasks(2, 2)[3]
    data = load_stack("TE-DIZO").model_dump()
    for layer in data["layers"]:
        if layer["name"] in ("IZO_top", "QD"):
            layer["thickness_nm"] = task.point[f"{layer['name']}.thickness_nm"]
    fresh = Stack.from_dict(data)
    text = json.dumps({"analysis": make_analysis("reflectance", wavelength_nm=[600, 630]
                                                 ).canonical(),
                       "backend": "tmm", "backend_version": "9", "options": {},
                       "stack": fresh.canonical()}, sort_keys=True, separators=(",", ":"))
    assert task.key("9") == hashlib.sha256(text.encode()).hexdigest()


def test_task_keys_built_from_shared_prefixes_equal_each_tasks_key() -> None:
    """task_keys builds the key text before the stack once per analysis, backend and options
    object; every key must still be the task's own, across analyses and backends."""
    from qdcavity.runner import get_backend

    modes = Study(name="t", stack="TE-DIZO", backend_options={"x": 1, "work_dir": "/w"},
                  analyses=[{"kind": "modes", "wavelength_nm": [630]}],
                  sweep={"axes": {"QD.thickness_nm": [20.0, 30.0],
                                  "backend": ["tmm", "fdmodes"]}, "mode": "product"})
    tasks = expand(modes) + sweep_tasks(2, 2)
    assert len({(t.analysis.kind, t.backend) for t in tasks}) == 3
    expected = [t.key(get_backend(t.backend).version) for t in tasks]
    assert task_keys(tasks) == expected and len(set(expected)) == len(tasks)
    loose = [Task(stack=t.stack, analysis=t.analysis, analysis_name=t.analysis_name,
                  backend=t.backend, options={"x": 2}, point=t.point) for t in tasks]
    assert set(task_keys(loose)).isdisjoint(expected)  # other options, other keys


def test_task_keys_do_not_keep_the_canonical_json_of_a_points_own_stack() -> None:
    """A stack axis point's stack is held by one task: its key is made from the canonical
    JSON without keeping it (client memory per point). A stack several tasks share keeps it,
    and the keys are the tasks' own either way."""
    from qdcavity.runner import get_backend

    own = sweep_tasks(2, 2)  # every point its own stack
    keys = task_keys(own)
    assert not any("canonical_json" in t.stack.__dict__ for t in own)
    version = get_backend("tmm").version
    assert keys == [t.key(version) for t in own] and len(set(keys)) == len(own)
    shared = expand(Study(name="t", stack="TE-DIZO",
                          analyses=[{"kind": "reflectance", "wavelength_nm": [600]}],
                          sweep={"axes": {"reflectance.incidence": ["superstrate", "substrate"]}}))
    assert len({id(t.stack) for t in shared}) == 1
    task_keys(shared)
    assert "canonical_json" in shared[0].stack.__dict__
    kept = sweep_tasks(2, 1)  # solved in this process: kept (it would be built again)
    assert task_keys(iter(kept), keep_json=True) == [t.key(version) for t in kept]
    assert all("canonical_json" in t.stack.__dict__ for t in kept)


def test_resized_layers_keep_the_spelling_of_their_own_material() -> None:
    """Two stacks whose layer materials are spelled differently but mean the same thing do not
    share resized layers: each keeps its own spelling."""
    base = load_stack("TE-DIZO").model_dump()
    specs = ({"n": 1.8}, {"n": 1.8, "k": 0.0})
    stacks = []
    for spec in specs:
        data = {**base, "layers": [dict(la) for la in base["layers"]]}
        data["layers"][-1]["material"] = spec
        stacks.append(Stack.from_dict(data))
    top = stacks[0].layers[-1].name
    for stack, spec in zip(stacks, specs, strict=True):
        assert stack.with_overrides({f"{top}.thickness_nm": 40.0}).layers[-1].material == spec


def test_records_keep_byte_order_and_a_lone_result_is_not_copied() -> None:
    """A result in big-endian order comes back in that order (as decoding gives it), and a
    block of one result is a view of its arrays (a large field array is not copied)."""
    big = xr.Dataset({"a": ("x", np.arange(3, dtype=">f8")), "s": ("x", np.array(["a", "bc", ""],
                                                                                  dtype=">U2"))})
    for record in records_of(big, big.copy(deep=True)):
        assert same_record(record, decode_record(encode_dataset(big)))
        assert record.arrays[0].dtype == np.dtype(">f8")
    large = xr.Dataset({"field": (("y", "x"), np.ones((300, 400)))})
    enc = encode_result(large, with_payload=False)
    (column,) = result_columns([enc])
    assert column.shape == (1, 300, 400) and np.shares_memory(column, enc.arrays[0])


def test_an_attribute_json_cannot_hold_fails_that_result_only() -> None:
    """A datetime among the attributes (numpy's becomes a datetime.datetime in JSON's hands) is
    a CacheError, so the result travels as a dataset instead of failing the batch; encoding it
    for the cache directly says the same."""
    ds = xr.Dataset({"a": ("x", np.arange(2.0))},
                    attrs={"when": np.datetime64("2020-01-01T00:00:00")})
    for with_payload in (True, False):
        with pytest.raises(CacheError, match="cannot be stored"):
            encode_result(ds, with_payload)
    with pytest.raises(CacheError, match="cannot be stored"):  # TaskCache.put's way too
        encode_dataset(ds)


def _freeze_count_after_a_batch() -> tuple[int, int, int]:
    """Frozen objects before and after a batch, and how often the batch called gc.freeze."""
    calls = []
    real = gc.freeze
    gc.freeze = lambda: (calls.append(1), real())[1]
    try:
        before = gc.get_freeze_count()
        run_batch_packed(pack_batch(sweep_tasks(1, 1)))
        return before, gc.get_freeze_count(), len(calls)
    finally:
        gc.freeze = real


def test_dask_workers_freeze_their_imports_once() -> None:
    """A dask worker freezes what it holds before its first batch (full collections skip its
    imports from then on); a process that is not a dask worker is left as it is."""
    from distributed import Client, LocalCluster

    before = gc.get_freeze_count()
    run_batch_packed(pack_batch(sweep_tasks(1, 1)))  # here: not a dask worker
    assert gc.get_freeze_count() == before
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        first = client.submit(_freeze_count_after_a_batch, pure=False).result()
        second = client.submit(_freeze_count_after_a_batch, pure=False).result()
    assert first[0] == 0 and first[1] > 10_000 and first[2] == 1
    assert second[2] == 0  # not again (the count itself may drop: frozen objects are freed)
