"""Pack files (qdcavity.packs): results stored as columns in blocks, read back exactly as
decoding each result's own payload would give them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from qdcavity.cache import TaskCache
from qdcavity.encoding import Record, decode_record, encode_dataset, encode_result, result_columns
from qdcavity.packs import (
    PACK_MAGIC,
    Block,
    CorruptEntry,
    _checksum,
    _fields_text,
    blocks_of_payloads,
    pack_blocks,
    parse_pack_header,
    read_block,
)


def key_of(i: int) -> str:
    return hashlib.sha256(f"pack-{i}".encode()).hexdigest()


def result(i: int, order: str = "usual") -> xr.Dataset:
    """Attributes of every kind: shared and varying texts, shared and varying non-texts
    (numbers, numpy values, lists, arrays, mappings), a lone surrogate; big-endian data."""
    attrs = {"conventions": "exp(-i omega t)", "stack": f'{{"t":{i}}}\ud800',
             "n": np.int32(3), "i": i, "lst": [1, "two"], "arr": np.arange(3.0) * i,
             "m": {"k": np.float32(1.5)}}
    if order == "reversed":
        attrs = dict(reversed(attrs.items()))
    return xr.Dataset({"R": ("w", np.array([0.1, 0.2]) * i, {"units": "1"}),
                       "big": ("w", np.array([1, 2], dtype=">i4") * i)},
                      coords={"w": [600.0, 630.0]}, attrs=attrs)


def same(a: Record, b: Record) -> bool:
    return (list(a.attrs) == list(b.attrs)
            and all(type(a.attrs[k]) is type(b.attrs[k]) and repr(a.attrs[k]) == repr(b.attrs[k])
                    for k in a.attrs)
            and repr(a.variables) == repr(b.variables)
            and all(x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
                    for x, y in zip(a.arrays, b.arrays, strict=True)))


def test_pack_reads_back_what_each_payload_decodes_to(tmp_path: Path) -> None:
    datasets = [result(i, "reversed" if i == 2 else "usual") for i in range(5)]
    items = [(key_of(i), encode_dataset(ds), {"backend": "tmm", "seconds": 0.001 * i})
             for i, ds in enumerate(datasets)]
    path = TaskCache(tmp_path).put_many(items)
    header, _ = parse_pack_header(path.read_bytes())
    assert len(header["blocks"]) == 2  # another attribute order: a block of its own
    usual = header["blocks"][0]
    assert usual["shared"]["conventions"] == "exp(-i omega t)" and "stack" in usual["texts"]
    assert set(usual["values"]) == {"i", "arr"} and usual["meta"]["seconds"][1] == 0.001
    reader = TaskCache(tmp_path)
    records = [reader.get_record(key_of(i)) for i in range(5)]
    for record, (_, payload, _) in zip(records, items, strict=True):
        assert same(record, decode_record(payload))
        assert not any(a.flags.writeable for a in record.arrays)
    records[0].attrs["lst"].append("x")  # shared non-text values are each record's own
    assert records[1].attrs["lst"] == [1, "two"]
    assert reader.stats.hits == 5 and reader.stats.corrupt == 0


def test_a_text_attribute_that_is_an_array_elsewhere_is_stored(tmp_path: Path) -> None:
    """An attribute that is text in one result and an array in another (of one block) is
    stored tagged, per result, and each reads back as its own type."""
    datasets = [xr.Dataset({"R": ("w", [0.1 * i])}, attrs={"x": np.arange(2) if i == 1 else "a"})
                for i in range(3)]
    items = [(key_of(i), encode_dataset(ds), None) for i, ds in enumerate(datasets)]
    TaskCache(tmp_path).put_many(items)
    reader = TaskCache(tmp_path)
    for i, (_, payload, _) in enumerate(items):
        assert same(reader.get_record(key_of(i)), decode_record(payload))
    assert reader.stats.hits == 3 and reader.stats.corrupt == 0


def test_older_pack_versions_are_misses(tmp_path: Path) -> None:
    folder = tmp_path / "packs"
    folder.mkdir()
    (folder / "0-old.qdpack").write_bytes(b'QDPACK1\n{"format": "qdr2", "entries": []}\n')
    reader = TaskCache(tmp_path)
    assert reader.get_record(key_of(0)) is None
    assert reader.stats.corrupt == 0 and reader.stats.misses == 1


@pytest.mark.parametrize("damage", ["sizes", "columns", "names", "values"])
@pytest.mark.parametrize("resealed", [False, True])
def test_inconsistent_block_headers_are_corrupt(damage: str, resealed: bool) -> None:
    """A block whose header was changed is corrupt (its checksum covers the header); one
    whose header does not match its body even under a valid checksum (a writer's bug) is
    corrupt too, never a crash."""
    items = [(key_of(i), encode_dataset(result(i)), None) for i in range(3)]
    blob, _ = pack_blocks(blocks_of_payloads(items))
    header, base = parse_pack_header(blob)
    block = header["blocks"][0]
    if damage == "sizes":
        block["sizes"][0][0] += 1000
    elif damage == "columns":
        block["structure"] = block["structure"].replace('"shape": [2]', '"shape": [3]', 1)
    elif damage == "names":
        block["names"].append("extra")
    else:
        block["values"]["i"].pop()
    body = blob[base:]
    if resealed:
        block["sha256"] = _checksum(_fields_text(block),
                                    body[block["offset"]:block["offset"] + block["size"]])
    text = json.dumps(header).encode()
    with pytest.raises(CorruptEntry):
        read_block(PACK_MAGIC + text + b"\n" + body, header, len(PACK_MAGIC) + len(text) + 1, 0)


def test_a_lone_result_is_an_entry_file(tmp_path: Path) -> None:
    cache = TaskCache(tmp_path)
    payload = encode_dataset(result(1))
    assert cache.put_many([(key_of(1), payload, {"seconds": 2.0})]) == cache.path(key_of(1))
    assert same(TaskCache(tmp_path).get_record(key_of(1)), decode_record(payload))


def test_pack_attributes_keep_their_exact_form(tmp_path: Path) -> None:
    """Shared values keep their own dict order; a shared text with a surrogate pair written
    as two code points keeps them (JSON would join them); every lookup gets its own objects."""
    datasets = [xr.Dataset({"R": ("w", [0.1 * i])}, attrs={
        "m": {"a": 1, "b": 2} if i else {"b": 2, "a": 1}, "pair": "\ud83d\ude00",
        "d": {"k": "v"}, "own": {"k": f"v{i}"}}) for i in range(3)]
    items = [(key_of(i), encode_dataset(ds), None) for i, ds in enumerate(datasets)]
    TaskCache(tmp_path).put_many(items)
    reader = TaskCache(tmp_path)
    for i, (_, payload, _) in enumerate(items):
        assert same(reader.get_record(key_of(i)), decode_record(payload))
    assert list(reader.get_record(key_of(0)).attrs["m"]) == ["b", "a"]
    assert len(reader.get_record(key_of(1)).attrs["pair"]) == 2
    a, b, again = (reader.get_record(key_of(i)) for i in (1, 2, 1))
    a.attrs["d"]["k"] = "changed"
    a.attrs["own"]["k"] = "changed"
    assert b.attrs["d"] == {"k": "v"} and again.attrs["own"] == {"k": "v1"}
    assert all(arr.flags.aligned and not arr.flags.writeable for arr in a.arrays)


def test_lookups_across_many_packs_read_each_block_once(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume whose lookups jump between packs (axes reordered, another study's points)
    reads and checks each block once, and its records keep only their block's columns."""
    import qdcavity.cache as cache_module

    cache = TaskCache(tmp_path)
    for p in range(8):
        cache.put_many([(key_of(10 * p + i), encode_dataset(result(10 * p + i)), None)
                        for i in range(3)])
    reads: list[int] = []
    real = cache_module.read_block
    monkeypatch.setattr(cache_module, "read_block",
                        lambda *a: (reads.append(a[-1]), real(*a))[1])
    reader = TaskCache(tmp_path)
    for i in range(3):
        for p in range(8):
            record = reader.get_record(key_of(10 * p + i))
            assert float(record.arrays[0][1]) == pytest.approx(0.2 * (10 * p + i))
            assert record.arrays[0].base.nbytes < 200  # its column, not the pack's bytes
    assert len(reads) == 8 and reader.stats.hits == 24


def test_malformed_pack_headers_are_corrupt_not_crashes(tmp_path: Path) -> None:
    cache = TaskCache(tmp_path)
    path = cache.put_many([(key_of(i), encode_dataset(result(i)), None) for i in range(2)])
    blob = path.read_bytes()
    header, base = parse_pack_header(blob)
    header["blocks"][0]["offset"] = float("inf")  # not covered by the checksum
    path.write_bytes(PACK_MAGIC + json.dumps(header).encode() + b"\n" + blob[base:])
    reader = TaskCache(tmp_path)
    assert reader.get_record(key_of(0)) is None and reader.stats.corrupt == 1
    deep = tmp_path / "packs" / "1-deep.qdpack"
    deep.write_bytes(PACK_MAGIC + b"[" * 100_000 + b"\n")
    fresh = TaskCache(tmp_path)
    fresh.refresh()
    assert fresh.stats.corrupt == 1  # the deep one; the other's header still reads


def test_metadata_with_number_keys_and_empty_stores(tmp_path: Path) -> None:
    cache = TaskCache(tmp_path)
    odd = {"m": {10: 1, 9: 2}, "x": [float("nan"), float("inf"), 1e16, -0.0, 0.1 + 0.2,
                                       "é\u2028\ud800\ud83d\ude00", None, True]}
    cache.put_many([(key_of(i), encode_dataset(result(i)), odd) for i in range(2)])
    reader = TaskCache(tmp_path)
    assert reader.get_record(key_of(1)) is not None and reader.stats.corrupt == 0
    with pytest.raises(ValueError, match="nothing"):
        cache.put_many([])
    with pytest.raises(ValueError, match="nothing"):
        cache.put_blocks([])


def test_blocks_given_attributes_with_other_keys_than_text() -> None:
    """Attribute names are stored as text (as in payloads), whatever the block was given."""
    enc = [encode_result(xr.Dataset({"R": ("w", [float(i)])}, attrs={"s": "x"}), False)
           for i in range(3)]
    given = [{7: f"v{i}", "s": "x"} for i in range(3)]
    blob, _ = pack_blocks([Block(enc[0].structure, [key_of(i) for i in range(3)], given,
                                 result_columns(enc), {})])
    header, base = parse_pack_header(blob)
    stored = read_block(blob, header, base, 0)
    assert [stored.record(i).attrs for i in range(3)] == [{"7": f"v{i}", "s": "x"}
                                                          for i in range(3)]
