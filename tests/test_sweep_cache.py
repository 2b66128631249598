"""The content-addressed task cache: round trip, atomicity, corruption, sharing."""

from __future__ import annotations

import enum
import hashlib
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from qdcavity.api import solve
from qdcavity.cache import CorruptEntry, TaskCache, pack, unpack
from qdcavity.encoding import (
    CacheError,
    Record,
    decode_dataset,
    decode_record,
    encode_dataset,
)


def key_of(i: int) -> str:
    return hashlib.sha256(f"task-{i}".encode()).hexdigest()


@pytest.fixture(scope="module")
def refl() -> xr.Dataset:
    return solve("TE-DIZO", "reflectance", wavelength_nm=[600, 630])


def odd_dataset() -> xr.Dataset:
    ds = xr.Dataset(
        {"z": (("x", "p"), np.array([[1 + 2j, 3 - 4j], [0.5j, -1.0]]), {"units": "1"}),
         "n": ("x", np.array([1, 2], dtype=np.int32)),
         "label": ("x", np.array(["a", "bcd"], dtype=object)),
         "flag": ((), np.bool_(True))},
        coords={"x": [1.5, 2.5], "p": ["s", "p"]},
        attrs={"a": "text", "i": np.int64(3), "f": 1.5, "arr": np.array([1.0, 2.0]),
               "lst": [1, "two"], "m": {"k": np.float32(1.5)}},
    )
    return ds


def test_encoding_round_trip(refl: xr.Dataset) -> None:
    for ds in (refl, odd_dataset()):
        back = decode_dataset(encode_dataset(ds))
        xr.testing.assert_identical(back, ds.assign(label=ds["label"].astype(str))
                                    if "label" in ds else ds)
    rec = decode_record(encode_dataset(refl))
    xr.testing.assert_identical(rec.to_dataset(), Record.from_dataset(refl).to_dataset())


def test_direct_and_public_parts_agree(refl: xr.Dataset) -> None:
    """Encoding reads xarray's slots directly when it can; it must read exactly what the
    public API gives, and fall back to it for data that is not plain numpy in memory."""
    from qdcavity.encoding import _direct_parts, _public_parts

    dask_array = pytest.importorskip("dask.array")
    non_index = refl.assign_coords(label=("wavelength_nm", ["a", "bb"]), scalar=3.0)
    no_attrs = xr.Dataset({"R": ("x", [1.0, 2.0])}, coords={"x": np.array([3, 4], np.int16)})
    for ds in (refl, odd_dataset(), non_index, no_attrs, refl.isel(wavelength_nm=[1, 0])):
        direct, public = _direct_parts(ds), _public_parts(ds)
        assert direct is not None
        assert direct.names == public.names and direct.coords == public.coords
        assert direct.dims == public.dims
        assert [dict(a) for a in direct.attrs] == [dict(a) for a in public.attrs]
        for a, b in zip(direct.arrays, public.arrays, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    lazy = refl.assign(R=refl.R.copy(data=dask_array.from_array(refl.R.values)))
    assert _direct_parts(lazy) is None
    xr.testing.assert_identical(decode_dataset(encode_dataset(lazy)), refl)


def test_shared_structures_keep_types_and_check_lengths(refl: xr.Dataset) -> None:
    """Results of one shape share a memoized structure: attribute types must still come back
    as they went in, and a truncated payload must still be refused."""
    as_text = refl.assign(R=refl.R.assign_attrs(scale="1"))
    as_int = refl.assign(R=refl.R.assign_attrs(scale=1))
    as_bool = refl.assign(R=refl.R.assign_attrs(scale=True))
    for ds in (as_text, as_int, as_bool, as_text, as_int):
        back = decode_dataset(encode_dataset(ds))
        assert type(back.R.attrs["scale"]) is type(ds.R.attrs["scale"])
        xr.testing.assert_identical(back, ds)
    twice = [decode_record(encode_dataset(refl.assign(R=refl.R * k))) for k in (1, 2)]
    r = [v["name"] for v in twice[0].variables].index("R")
    np.testing.assert_array_equal(twice[1].arrays[r], 2 * twice[0].arrays[r])
    payload = encode_dataset(refl)
    for bad in (payload[:-1], payload[:len(payload) // 2], payload[:30], payload[:8],
                payload + b"\0" * 16):
        with pytest.raises(ValueError, match="truncated|trailing|not an encoded"):
            decode_record(bad)


def test_memoized_structures_never_mix_up_attribute_types(refl: xr.Dataset) -> None:
    """A text attribute and an array (of one or more items) that compare equal to it must
    each come back as what it was; list attributes are each record's own."""
    text = refl.assign(R=refl.R.assign_attrs(units="m"))
    one = refl.assign(R=refl.R.assign_attrs(units=np.array(["m"])))
    many = refl.assign(R=refl.R.assign_attrs(units=np.array([1.0, 2.0])))
    for ds in (text, one, many, text):
        back = decode_dataset(encode_dataset(ds))
        assert type(back.R.attrs["units"]) is type(ds.R.attrs["units"])
        xr.testing.assert_identical(back, ds)
    listed = encode_dataset(refl.assign(R=refl.R.assign_attrs(flags=[1, 2])))
    first, second = decode_record(listed), decode_record(listed)
    r = [v["name"] for v in first.variables].index("R")
    first.variables[r]["attrs"]["flags"].append(99)
    assert second.variables[r]["attrs"]["flags"] == [1, 2]
    assert decode_record(listed).variables[r]["attrs"]["flags"] == [1, 2]


def test_memoized_structures_keep_attribute_names_and_order() -> None:
    """Equal dicts are not equal attributes: {1: ...} == {True: ...}, and order is ignored
    by dict equality but kept by the JSON."""
    def ds(attrs: dict) -> xr.Dataset:
        return xr.Dataset({"R": ("x", [1.0, 2.0], attrs)})

    class Name(str, enum.Enum):  # noqa: UP042  equal to "units", written as "Name.UNITS"
        UNITS = "units"

    for first, second in (({1: "a"}, {True: "a"}), ({"u": "1", "v": "2"}, {"v": "2", "u": "1"}),
                          ({"units": "nm"}, {Name.UNITS: "nm"})):
        encode_dataset(ds(first))
        back = decode_record(encode_dataset(ds(second))).variables[0]["attrs"]
        assert list(back.items()) == [(str(k), v) for k, v in second.items()]


def test_unstorable_indexes_are_cache_errors() -> None:
    """A time-zone-aware or categorical index is one CacheError (the result then travels
    unencoded), not a TypeError that would fail the whole batch."""
    import pandas as pd

    aware = xr.Dataset({"R": ("t", [1.0, 2.0])},
                       coords={"t": pd.date_range("2026-01-01", periods=2, tz="UTC")})
    categorical = xr.Dataset({"R": ("c", [1.0, 2.0])},
                             coords={"c": pd.CategoricalIndex(["a", "b"])})
    for ds in (aware, categorical):
        with pytest.raises(CacheError):
            encode_dataset(ds)


def test_odd_text_and_malformed_payloads(refl: xr.Dataset) -> None:
    odd = refl.assign_attrs(path="caf\u00e9-\udcff")  # a lone surrogate, as from os.fsdecode
    assert decode_dataset(encode_dataset(odd)).attrs["path"] == odd.attrs["path"]
    payload = encode_dataset(refl)
    n = int.from_bytes(payload[4:12], "little")
    structure = payload[12:12 + n]
    negative = structure.replace(b'"shape": [2, 1, 2]', b'"shape": [2, -1, 2]', 1)
    assert negative != structure
    with pytest.raises(ValueError):
        decode_record(payload[:12] + negative + payload[12 + n:])
    m = int.from_bytes(payload[12 + n:20 + n], "little")
    index_len = int.from_bytes(payload[20 + n:24 + n], "little")
    bad_index = b'[["a"]]'.ljust(index_len)
    with pytest.raises(ValueError, match="malformed"):
        decode_record(payload[:24 + n] + bad_index + payload[24 + n + index_len:])
    assert m > index_len
    odd_map = b'[["a", -1, {"__map__": 5}]]'
    with pytest.raises(ValueError, match="malformed"):  # JSON of the wrong shape, not a crash
        decode_record(payload[:12 + n] + (4 + len(odd_map)).to_bytes(8, "little")
                      + len(odd_map).to_bytes(4, "little") + odd_map)


def test_other_format_versions_are_misses_not_corruption(tmp_path: Path, refl: xr.Dataset
                                                         ) -> None:
    cache = TaskCache(tmp_path)
    path = cache.put(key_of(7), refl)
    path.write_bytes(path.read_bytes().replace(b'"format": "qdr2"', b'"format": "qdr1"'))
    packed = cache.put_many([(key_of(8), encode_dataset(refl), None),
                             (key_of(9), encode_dataset(refl), None)])
    packed.write_bytes(packed.read_bytes().replace(b'"format": "qdr2"', b'"format": "qdr1"'))
    fresh = TaskCache(tmp_path)
    assert all(fresh.get(key_of(i)) is None for i in (7, 8, 9))
    assert fresh.stats.corrupt == 0 and fresh.stats.misses == 3


def test_unencodable_values_raise() -> None:
    with pytest.raises(CacheError):
        encode_dataset(xr.Dataset({"o": ("x", np.array([object(), 1], dtype=object))}))
    with pytest.raises(CacheError):
        encode_dataset(xr.Dataset(attrs={"bad": object()}))


def test_put_get_and_corruption(tmp_path: Path, refl: xr.Dataset) -> None:
    cache = TaskCache(tmp_path / "c")
    key = key_of(1)
    assert cache.get(key) is None and cache.stats.misses == 1
    path = cache.put(key, refl)
    assert path == cache.path(key) and path.parent.name == key[:2]
    xr.testing.assert_identical(cache.get(key), refl)
    assert list(cache.keys()) == [key]
    assert not list(path.parent.glob("*.tmp"))

    blob = path.read_bytes()
    corruptions = {
        "flipped payload byte": blob[:-10] + bytes([blob[-10] ^ 0xFF]) + blob[-9:],
        "truncated": blob[: len(blob) // 2],
        "empty": b"",
        "garbage": b"not a cache file at all",
        "other key": pack(key_of(2), unpack(key, blob)[1]),
    }
    for what, bad in corruptions.items():
        path.write_bytes(bad)
        before = cache.stats.corrupt
        assert cache.get(key) is None, what
        assert cache.stats.corrupt == before + 1, what
    # a checksum-valid entry whose payload is not a dataset is corrupt too
    path.write_bytes(pack(key, b"QDR2 nonsense"))
    assert cache.get(key) is None
    with pytest.raises(CorruptEntry):
        unpack(key, b"QDCACHE1\n{broken\n")
    # a recompute simply overwrites it
    cache.put(key, refl)
    xr.testing.assert_identical(cache.get(key), refl)


def test_temporaries_and_token(tmp_path: Path, refl: xr.Dataset) -> None:
    cache = TaskCache(tmp_path)
    cache.put(key_of(3), refl)
    stale = cache.path(key_of(3)).parent / ".deadbeef.1234.tmp"
    stale.write_bytes(b"half a file")
    assert cache.clean_temporaries(older_than_s=3600) == 0  # young: maybe a live writer
    assert cache.clean_temporaries(older_than_s=-1) == 1
    assert cache.token() == TaskCache(tmp_path).token()
    assert TaskCache.if_shared(str(tmp_path), cache.token()) is not None
    assert TaskCache.if_shared(str(tmp_path / "elsewhere"), cache.token()) is None


def test_unwritable_cache_dir(tmp_path: Path) -> None:
    from qdcavity.errors import QdcavityError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(QdcavityError, match="cache"):
        TaskCache(blocker / "sub")


def _writer(root: str, payloads: list[bytes], seed: int) -> None:
    cache = TaskCache(root)
    order = np.random.default_rng(seed).permutation(len(payloads))
    for _ in range(3):
        for i in order:
            cache.put_payload(key_of(int(i)), payloads[i], {"writer": seed})


def test_two_processes_sharing_one_cache(tmp_path: Path, refl: xr.Dataset) -> None:
    """Two writers hammer the same keys; every entry stays valid, no temporary is left."""
    payloads = [encode_dataset(refl.assign(R=refl.R * (1 + i))) for i in range(60)]
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), payloads, s)) for s in (1, 2)]
    for p in procs:
        p.start()
    reader = TaskCache(tmp_path)
    seen_bad = 0
    while any(p.is_alive() for p in procs):  # read while they write: never a torn entry
        for i in range(0, 60, 7):
            path = reader.path(key_of(i))
            if path.exists() and reader.get(key_of(i)) is None:
                seen_bad += 1
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert seen_bad == 0
    for i in range(60):
        back = reader.get(key_of(i))
        np.testing.assert_allclose(back.R, refl.R * (1 + i))
    assert not list(tmp_path.glob("??/*.tmp"))
    assert reader.stats.corrupt == 0


# ---------------------------------------------------------------- packs


def _items(refl: xr.Dataset, idx: range) -> list[tuple[str, bytes, dict]]:
    return [(key_of(i), encode_dataset(refl.assign(R=refl.R * (1 + i))), {"n": i}) for i in idx]


def test_pack_round_trip_and_index(tmp_path: Path, refl: xr.Dataset) -> None:
    """Many tasks in one pack file: each read back by key, listed by keys(), located."""
    cache = TaskCache(tmp_path)
    path = cache.put_many(_items(refl, range(10)))
    assert path.parent.name == "packs" and path.suffix == ".qdpack"
    assert len(list(tmp_path.rglob("*.qdpack"))) == 1 and not list(tmp_path.glob("??/*.qdc"))
    fresh = TaskCache(tmp_path)  # another process: finds the pack by indexing the folder
    for i in range(10):
        assert key_of(i) in fresh and fresh.locate(key_of(i)) == path
        np.testing.assert_allclose(fresh.get(key_of(i)).R, refl.R * (1 + i))
    assert sorted(fresh.keys()) == sorted(key_of(i) for i in range(10))
    assert fresh.stats.hits == 10 and fresh.stats.corrupt == 0
    assert cache.put_many(_items(refl, range(10, 11))) == cache.path(key_of(10))  # one: a file


def test_bulk_lookup_finds_entries_and_packs(tmp_path: Path, refl: xr.Dataset,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """get_records (a sweep's resume check) finds entry files and packs alike, counts a
    corrupt entry, and opens no file in an entry folder that does not exist."""
    cache = TaskCache(tmp_path)
    cache.put_many(_items(refl, range(6)))
    for key, payload, meta in _items(refl, range(6, 9)):
        cache.put_payload(key, payload, meta)
    bad = cache.path(key_of(8))
    bad.write_bytes(bad.read_bytes()[:-3])
    opened: list[str] = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: (opened.append(str(f)),
                                                              real_open(f, *a, **k))[1])
    reader = TaskCache(tmp_path)
    found = dict(reader.get_records(key_of(i) for i in range(12)))
    assert [found[key_of(i)] is not None for i in range(12)] == [True] * 8 + [False] * 4
    np.testing.assert_allclose(found[key_of(7)].to_dataset().R, refl.R * 8)
    assert reader.stats.hits == 8 and reader.stats.corrupt == 1 and reader.stats.misses == 3
    entry_dirs = {key_of(i)[:2] for i in range(6, 9)}
    assert {Path(f).parent.name for f in opened if f.endswith(".qdc")} <= entry_dirs
    assert all(key_of(i)[:2] in entry_dirs or str(reader.path(key_of(i))) not in opened
               for i in range(12))


def test_bulk_lookup_of_an_unlistable_folder_opens_every_entry(
        tmp_path: Path, refl: xr.Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = TaskCache(tmp_path)
    for key, payload, meta in _items(refl, range(2)):
        cache.put_payload(key, payload, meta)

    def refuse(path: object) -> None:
        raise PermissionError(13, "denied")

    monkeypatch.setattr("qdcavity.cache.os.scandir", refuse)
    found = dict(TaskCache(tmp_path).get_records([key_of(0), key_of(1)]))
    assert all(record is not None for record in found.values())


def test_corrupt_pack_block_is_recomputed_alone(tmp_path: Path, refl: xr.Dataset) -> None:
    """A pack checks each block (results of one structure) as a whole: a corrupt byte makes
    its block's results corrupt (recomputed); the pack's other block is read as usual."""
    cache = TaskCache(tmp_path)
    narrow = refl.isel(wavelength_nm=[0])  # another structure: a block of its own
    items = _items(refl, range(2)) + [(key_of(i), encode_dataset(narrow.assign(R=narrow.R * i)),
                                       None) for i in (2, 3)]
    path = cache.put_many(items)
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF  # inside the last block's columns (keys 2 and 3)
    path.write_bytes(bytes(blob))
    reader = TaskCache(tmp_path)
    assert [reader.get(key_of(i)) is None for i in range(4)] == [False, False, True, True]
    assert reader.stats.corrupt == 2 and reader.corrupt_keys == [key_of(2), key_of(3)]
    # the recompute lands in a newer pack, which wins from then on (for every reader)
    cache.put_many(_items(refl, range(2, 5)))
    for r in (reader, TaskCache(tmp_path)):
        r.refresh()
        np.testing.assert_allclose(r.get(key_of(3)).R, refl.R * 4)


def test_pack_with_broken_header_counts_as_missing(tmp_path: Path, refl: xr.Dataset) -> None:
    cache = TaskCache(tmp_path)
    path = cache.put_many(_items(refl, range(3)))
    path.write_bytes(b"QDPACK2\n{not json")
    reader = TaskCache(tmp_path)
    assert reader.get(key_of(0)) is None and reader.stats.corrupt == 1
    assert list(reader.keys()) == []


def _pack_writer(root: str, payloads: list[bytes], seed: int) -> None:
    cache = TaskCache(root)
    order = np.random.default_rng(seed).permutation(len(payloads))
    for chunk in np.array_split(order, 6):
        cache.put_many([(key_of(int(i)), payloads[i], {"writer": seed}) for i in chunk])


def test_two_processes_writing_packs(tmp_path: Path, refl: xr.Dataset) -> None:
    """Two writers pack the same keys concurrently; a reader refreshing meanwhile never sees a
    torn pack, and every key ends up readable."""
    payloads = [encode_dataset(refl.assign(R=refl.R * (1 + i))) for i in range(60)]
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_pack_writer, args=(str(tmp_path), payloads, s))
             for s in (1, 2)]
    for p in procs:
        p.start()
    reader = TaskCache(tmp_path)
    while any(p.is_alive() for p in procs):
        reader.refresh()
        for key in list(reader.keys()):
            assert reader.get(key) is not None
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    reader.refresh()
    for i in range(60):
        np.testing.assert_allclose(reader.get(key_of(i)).R, refl.R * (1 + i))
    assert reader.stats.corrupt == 0 and not list(tmp_path.glob("packs/*.tmp"))
