"""Content-addressed task cache: one file per task key, atomic writes, checksummed reads.

A finished task's dataset is stored under its key (:meth:`qdcavity.tasks.Task.key`: a hash of
the canonical stack, analysis, backend options, backend name and backend version) as
``<cache_dir>/<key[:2]>/<key>.qdc``. The file is::

    QDCACHE1\\n
    {"key": ..., "sha256": ..., "size": ..., "format": "qdr2", ...}\\n
    <payload: "QDR2", the variables' structure (names, dims, dtypes, shapes, attrs) as JSON,
     the dataset's attributes (an index, then the texts raw), raw array bytes>

* Writes go to a unique temporary file in the same folder, then ``os.replace``: a reader (or a
  run killed with SIGKILL) sees either no entry or a complete one, never half a file.
* Reads verify the magic, the key, the size and the SHA-256 of the payload; anything wrong is
  reported as a corrupt entry, which the sweep recomputes and overwrites.
* Two studies (or two processes) sharing one cache are safe: entries are immutable, the same key
  always means the same question asked of the same solver version, a concurrent writer of the
  same key replaces a complete file by another complete file, and no reader ever deletes an entry.
* No pickle anywhere. The payload is a JSON schema plus raw little arrays rather than netCDF
  or .npz because decoding must cost microseconds, not the ~1 ms of building an xarray Dataset
  per file: a 10,000-point TMM sweep (a few ms per task) reads and combines them as plain arrays
  (:class:`Record`). Results files of whole studies are netCDF (:mod:`qdcavity.results`).

Packs: a batch of small tasks finished together (a few hundred TMM tasks of a millisecond
each) is written as one file, ``<cache_dir>/packs/<time>-<random>.qdpack``, because creating a
file costs far more than a millisecond solve on many file systems (about 0.5 ms here, more on
Lustre/GPFS)::

    QDPACK1\n
    {"format": "qdr2", "entries": [{"key": ..., "offset": ..., "size": ..., "sha256": ...}]}\n
    <payloads, one after the other>

Packs are written atomically like entries and never modified. Each entry keeps its own checksum
(a corrupt entry is recomputed alone); a key stored more than once (a recompute after a
corruption) is read from the newest file. :class:`TaskCache` indexes the pack headers on first
use and re-reads the folder on :meth:`TaskCache.refresh`.

Failed tasks are not cached: a rerun tries them again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import xarray as xr
from xarray.indexes import PandasIndex

try:  # xarray's in-memory wrapper of an indexed coordinate's values (see _direct_parts)
    from xarray.core.indexing import PandasIndexingAdapter
except ImportError:  # pragma: no cover - another xarray layout: the public path serves
    PandasIndexingAdapter = None

from .errors import QdcavityError

MAGIC = b"QDCACHE1\n"
PACK_MAGIC = b"QDPACK1\n"
FORMAT = "qdr2"
SUFFIX = ".qdc"
PACK_DIR = "packs"
PACK_SUFFIX = ".qdpack"
CACHE_ENV = "QDCAVITY_CACHE_DIR"
TOKEN_FILE = "qdcavity-cache-id"


_TASK_KEY = re.compile(r"[0-9a-f]{8,}")


class CacheError(QdcavityError):
    """A dataset cannot be stored in the cache (an unsupported value type)."""


class CorruptEntry(Exception):
    """A cache file exists but fails its checks (recompute it)."""


class OtherFormat(CorruptEntry):
    """A sound cache file written in another format version: a miss, not a corruption."""


# ---------------------------------------------------------------- dataset <-> bytes (no pickle)

def _json_value(value: Any) -> Any:
    """An attribute value as JSON (numpy scalars and arrays tagged so they come back typed)."""
    if isinstance(value, str | bool | int | float) or value is None:
        return value
    if isinstance(value, np.generic):
        return {"__np__": value.dtype.str, "v": value.item()}
    if isinstance(value, np.ndarray):
        return {"__np__": value.dtype.str, "v": value.tolist(), "shape": list(value.shape)}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, Mapping):
        if all(type(v) is str for v in value.values()):  # the usual case: fast
            return {"__map__": {str(k): v for k, v in value.items()}}
        return {"__map__": {str(k): _json_value(v) for k, v in value.items()}}
    raise CacheError(f"attribute value of type {type(value).__name__} cannot be cached")


def _from_json(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        mapping = value.get("__map__")
        if mapping is not None:
            if all(type(v) is str for v in mapping.values()):  # the usual case: fast
                return mapping
            return {k: _from_json(v) for k, v in mapping.items()}
        if "__np__" in value:
            dtype = np.dtype(value["__np__"])
            if "shape" in value:
                return np.asarray(value["v"], dtype=dtype).reshape(value["shape"])
            return dtype.type(value["v"])
        return value
    if kind is list:
        return [_from_json(v) for v in value]
    return value


def _plain_array(name: str, data: np.ndarray) -> np.ndarray:
    if data.dtype.kind == "O":
        if all(isinstance(v, str) for v in data.ravel()):
            return data.astype(str)
        raise CacheError(f"variable '{name}' holds Python objects and cannot be cached")
    if data.dtype.kind == "V" or data.dtype.hasobject:
        raise CacheError(f"variable '{name}' has a structured dtype and cannot be cached")
    return data


class _Parts(NamedTuple):
    """A dataset's variables taken apart, in ``ds.variables`` order (what encoding reads)."""

    names: tuple[Any, ...]
    dims: tuple[tuple[Any, ...], ...]
    coords: tuple[bool, ...]
    attrs: tuple[Mapping[Any, Any], ...]  # read these, never change them
    arrays: list[np.ndarray]


def _parts(ds: xr.Dataset) -> _Parts:
    """The variables of a dataset as plain parts: through :func:`_direct_parts` when it can
    read them, else through xarray's public API (the same parts, ~2.5x slower)."""
    try:
        direct = _direct_parts(ds)
        return direct if direct is not None else _public_parts(ds)
    except (TypeError, ValueError) as exc:  # e.g. a time-zone-aware or categorical index
        raise CacheError(f"a variable cannot be stored as a plain array ({exc})") from None


def _public_parts(ds: xr.Dataset) -> _Parts:
    """Through xarray's public API. An indexed coordinate's values come from its pandas
    index: ``var.values`` costs ~10 us per coordinate (a version check on every call)."""
    indexes = ds.xindexes
    coord_names = ds.coords.keys()
    names, dims, coords, attrs, arrays = [], [], [], [], []
    for name, var in ds.variables.items():
        index = indexes.get(name)
        if type(index) is PandasIndex and index.index.shape == var.shape:
            arr = index.index.to_numpy()
            if arr.dtype != index.coord_dtype:
                arr = arr.astype(index.coord_dtype)
        else:
            arr = np.asarray(var.values)
        names.append(name)
        dims.append(var.dims)
        coords.append(name in coord_names)
        attrs.append(var.attrs)
        arrays.append(_plain_array(str(name), arr))
    return _Parts(tuple(names), tuple(dims), tuple(coords), tuple(attrs), arrays)


_NO_ATTRS: Mapping[Any, Any] = MappingProxyType({})


def _direct_parts(ds: xr.Dataset) -> _Parts | None:
    """The same parts read from the slots xarray's public properties read (``_variables``,
    ``_coord_names``, and per variable ``_dims``, ``_attrs``, ``_data``), or None for
    anything else: data that is not in memory as numpy or a pandas index (dask, lazily
    loaded files), or an xarray whose internals differ. Encoding is the largest part of a 1 ms TMM
    task's bookkeeping, and xarray's properties (a mapping proxy per call, a version check
    per ``.values``) were about 40 % of it (41 -> 23 us per TMM result with the rest of this
    change). ``tests/test_sweep_cache.py`` checks that both paths agree."""
    try:
        variables, coord_names = ds._variables, ds._coord_names
        names, dims, coords, attrs, arrays = [], [], [], [], []
        for name, var in variables.items():
            data = var._data
            if type(data) is np.ndarray:
                arr = data
            elif type(data) is PandasIndexingAdapter:
                arr = np.asarray(data.array)
                if arr.dtype != data.dtype:
                    arr = arr.astype(data.dtype)
            else:
                return None
            names.append(name)
            dims.append(var._dims)
            coords.append(name in coord_names)
            attrs.append(var._attrs or _NO_ATTRS)
            arrays.append(_plain_array(str(name), arr) if arr.dtype.kind in "OV" else arr)
    except AttributeError:
        return None
    return _Parts(tuple(names), tuple(dims), tuple(coords), tuple(attrs), arrays)


@dataclass
class Record:
    """A dataset as plain parts: attrs, and per variable its dims, attrs and array.

    Cheap to build from bytes (no xarray objects), so a sweep of thousands of tasks can be
    combined without constructing thousands of datasets.
    """

    attrs: dict[str, Any]
    variables: list[dict[str, Any]]  # name, dims, coord, attrs
    arrays: list[np.ndarray]

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> Record:
        parts = _parts(ds)
        variables = [{"name": name, "dims": list(dims), "coord": coord, "attrs": dict(attrs)}
                     for name, dims, coord, attrs in zip(parts.names, parts.dims, parts.coords,
                                                         parts.attrs, strict=True)]
        return cls(dict(ds.attrs), variables, parts.arrays)

    def to_dataset(self) -> xr.Dataset:
        data_vars, coords = {}, {}
        for v, arr in zip(self.variables, self.arrays, strict=True):
            var = xr.Variable(v["dims"], np.array(arr), attrs=dict(v["attrs"]))
            (coords if v["coord"] else data_vars)[v["name"]] = var
        return xr.Dataset(data_vars, coords=coords, attrs=dict(self.attrs))


PAYLOAD_MAGIC = b"QDR2"
_ALIGN = 16
_MEMO_LIMIT = 256  # distinct dataset structures remembered (one per analysis and shape)

#: (variables, array layouts (dtype, shape, offset, count), padded size, stored attributes)
_Layout = tuple[list[dict[str, Any]], list[tuple[np.dtype, tuple[int, ...], int, int]], int,
                tuple[Any, ...] | None]

#: variable names, dims, coordinate flags, dtypes and shapes -> the structure last seen with
#: them (encoding), and structure JSON -> its
#: layout (decoding): thousands of results of one sweep share a handful of structures, each
#: built and parsed once
_STRUCTURES: dict[tuple[Any, ...], _KnownStructure] = {}
_LAYOUTS: dict[bytes, _Layout] = {}
_NAME_JSON: dict[str, str] = {}  # attribute name -> its JSON (see _encode_attrs)
_ATTRIBUTE_INDEXES: dict[bytes, list[list[Any]]] = {}  # see _attribute_index


def _memo_put(memo: dict[Any, Any], key: Any, value: Any) -> None:
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = value


@dataclass(frozen=True)
class _KnownStructure:
    """A structure seen before, with the attributes a new dataset must match to reuse its
    JSON (names, dims, coordinate flags, dtypes and shapes are the memo key)."""

    attrs: tuple[tuple[tuple[str, str], ...], ...]  # per variable, its attributes in order
    text: bytes

    def matches(self, parts: _Parts) -> bool:
        """Same variable attributes, names and values all text, in the same order. Only text
        is remembered and matched: other values compare equal across types (1 == 1.0 == True,
        a one-element array == its item) that encode differently, and dicts compare equal
        in any order."""
        if len(parts.attrs) != len(self.attrs):
            return False
        for attrs, known in zip(parts.attrs, self.attrs, strict=True):  # loops: 2 us, all(): 5
            if len(attrs) != len(known):
                return False
            for (name, value), (known_name, known_value) in zip(attrs.items(), known,
                                                                strict=True):
                if (type(name) is not str or type(value) is not str or name != known_name
                        or value != known_value):
                    return False
        return True


def _all_text(values: Any) -> bool:
    return all(type(v) is str for v in values)


def _text_items(mapping: Mapping[Any, Any]) -> bool:
    return _all_text(mapping) and _all_text(mapping.values())


def _structure(parts: _Parts) -> bytes:
    """JSON of the variables' names, dims, coordinate flags, attrs, dtypes, shapes and
    offsets: everything but the data and the dataset's own attributes."""
    arrays = parts.arrays
    key = (parts.names, parts.dims, parts.coords, *(a.dtype for a in arrays),
           *(a.shape for a in arrays))
    known = _STRUCTURES.get(key)
    if known is not None and known.matches(parts):
        return known.text
    variables, offset = [], 0
    for name, dims, coord, attrs, arr in zip(parts.names, parts.dims, parts.coords,
                                             parts.attrs, arrays, strict=True):
        variables.append({
            "name": name, "dims": list(dims), "coord": coord,
            "attrs": _json_value(dict(attrs)), "dtype": arr.dtype.str,
            "shape": list(arr.shape), "offset": offset, "nbytes": arr.nbytes,
        })
        offset += arr.nbytes + (-arr.nbytes % _ALIGN)
    text = json.dumps(variables).encode()
    if _all_text(parts.names) and all(_all_text(d) and _text_items(a)
                                      for d, a in zip(parts.dims, parts.attrs, strict=True)):
        _memo_put(_STRUCTURES, key, _KnownStructure(
            attrs=tuple(tuple(a.items()) for a in parts.attrs), text=text))
    return text


def _encode_attrs(attrs: Mapping[Any, Any]) -> bytes:
    """The dataset's attributes: u32 n, a JSON list (n bytes) with ``[name, nbytes]`` for a
    text value and ``[name, -1, value]`` for any other, then the texts' raw UTF-8 bytes (long
    texts such as the stack's canonical JSON are not escaped into JSON). The list is written
    piece by piece, as ``json.dumps`` of the whole list would write it, with each name's JSON
    memoized: a sweep's results share their attribute names."""
    entries: list[str] = []
    texts: list[bytes] = []
    for name, value in attrs.items():
        name = str(name)
        if type(value) is str:
            raw = value.encode("utf-8", "surrogatepass")  # as JSON would keep a lone one
            quoted = _NAME_JSON.get(name)
            if quoted is None:
                quoted = json.dumps(name)
                _memo_put(_NAME_JSON, name, quoted)
            entries.append(f"[{quoted}, {len(raw)}]")
            texts.append(raw)
        else:
            entries.append(json.dumps([name, -1, _json_value(value)]))
    index = f"[{', '.join(entries)}]".encode()
    return b"".join((len(index).to_bytes(4, "little"), index, *texts))


def _decode_attrs(blob: bytes) -> dict[str, Any]:
    n = int.from_bytes(blob[:4], "little")
    if 4 + n > len(blob):
        raise ValueError("truncated attributes")
    out: dict[str, Any] = {}
    at = 4 + n
    for name, size, value in _attribute_index(blob[4:4 + n]):
        if size < 0:
            out[name] = _from_json(value)
        else:
            end = at + size
            if end > len(blob):
                raise ValueError("truncated attributes")
            out[name] = blob[at:end].decode("utf-8", "surrogatepass")
            at = end
    if at != len(blob):
        raise ValueError("inconsistent attributes")
    return out


def _attribute_index(raw: bytes) -> list[list[Any]]:
    """The parsed index of ``_encode_attrs``, checked. An index of text values only (names
    and lengths: a sweep's results have a handful of distinct ones) is parsed once and
    memoized; one with other values is parsed each time, so each record gets its own."""
    cached = _ATTRIBUTE_INDEXES.get(raw)
    if cached is not None:
        return cached
    entries = json.loads(raw)
    if not isinstance(entries, list):
        raise ValueError("malformed attribute index")
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) in (2, 3) and type(entry[1]) is int
                and (len(entry) == 3) == (entry[1] < 0)):
            raise ValueError("malformed attribute entry")
        entry[0] = str(entry[0])
        if len(entry) == 2:
            entry.append(None)
    if all(entry[1] >= 0 for entry in entries):
        _memo_put(_ATTRIBUTE_INDEXES, bytes(raw), entries)
    return entries


def encode_dataset(ds: xr.Dataset) -> bytes:
    """Serialize a dataset to bytes (no pickle)::

        "QDR2" | u64 n | structure JSON (n bytes) | u64 m | attributes (m bytes) | padding
        | each variable's raw array bytes, padded to 16 bytes

    (attributes: see ``_encode_attrs``).

    The structure (variables, dims, dtypes, shapes, offsets, variable attrs) is separate from
    the dataset's attributes, so the thousands of results of a sweep, which differ only in
    data and attributes, share one structure text, built and parsed once per process.
    CacheError if ``ds`` cannot be stored (see :func:`encode_result`).
    """
    payload = encode_result(ds).payload
    assert payload is not None  # asked for
    return payload


class Encoded(NamedTuple):
    """A result taken apart on a worker: its structure (the JSON :func:`encode_dataset`
    writes), its attributes as decoding the payload gives them, its arrays, and the payload
    itself when asked for (the bytes for the cache). Results of one structure travel as
    columns (:func:`result_columns`) and come back as records (:func:`records_from_columns`)
    that equal the decoded payloads, without a payload being decoded or, when nothing is
    cached, built."""

    structure: bytes
    attrs: dict[str, Any]
    arrays: list[np.ndarray]
    payload: bytes | None


def encode_result(ds: xr.Dataset, with_payload: bool = True) -> Encoded:
    """``ds`` taken apart (CacheError if it cannot be stored)."""
    parts = _parts(ds)
    try:
        structure = _structure(parts)
        payload = _payload(structure, ds.attrs, parts.arrays) if with_payload else None
        attrs = {str(k): v if type(v) is str
                 else _from_json(json.loads(json.dumps(_json_value(v))))
                 for k, v in ds.attrs.items()}  # the JSON round trip of decoding
    except (TypeError, ValueError) as exc:  # e.g. a datetime among the attributes
        raise CacheError(f"an attribute cannot be stored ({exc})") from None
    return Encoded(structure, attrs, parts.arrays, payload)


def _payload(structure: bytes, attrs: Mapping[Any, Any], arrays: Sequence[np.ndarray]) -> bytes:
    encoded_attrs = _encode_attrs(attrs)
    head = b"".join((PAYLOAD_MAGIC, len(structure).to_bytes(8, "little"), structure,
                     len(encoded_attrs).to_bytes(8, "little"), encoded_attrs))
    pieces = [head, b"\0" * (-len(head) % _ALIGN)]
    for arr in arrays:
        pieces += [arr.tobytes(), b"\0" * (-arr.nbytes % _ALIGN)]
    return b"".join(pieces)


def _layout(structure: bytes) -> _Layout:
    """From a structure JSON: the variables (name, dims, coord, attrs), the array layouts
    (dtype, shape, offset, count), the padded bytes they take, and, if some variable's
    attributes are not all text, every variable's attributes as stored JSON (else None).
    ValueError if inconsistent. Memoized: the variable dicts are shared by every record
    decoded from the same structure (treat them as read-only; mutable attribute values are
    rebuilt per record by :func:`decode_record`)."""
    cached = _LAYOUTS.get(structure)
    if cached is not None:
        return cached
    variables, layout, stored, end = [], [], [], 0
    for v in json.loads(structure):
        dtype, shape = np.dtype(v["dtype"]), tuple(v["shape"])
        sizes = (*shape, v["offset"], v["nbytes"])
        if not all(type(x) is int and x >= 0 for x in sizes) or len(shape) != len(v["dims"]):
            raise ValueError("inconsistent array layout")
        count = math.prod(shape)
        if count * dtype.itemsize != v["nbytes"]:
            raise ValueError("inconsistent array size")
        attrs = _from_json(v["attrs"])
        if not isinstance(attrs, dict):
            raise ValueError("variable attributes are not a table")
        variables.append({"name": v["name"], "dims": v["dims"], "coord": v["coord"],
                          "attrs": attrs})
        stored.append(v["attrs"])
        layout.append((dtype, shape, v["offset"], count))
        end = max(end, v["offset"] + v["nbytes"] + (-v["nbytes"] % _ALIGN))
    plain = all(type(x) is str for var in variables for x in var["attrs"].values())
    out = (variables, layout, end, None if plain else tuple(stored))
    _memo_put(_LAYOUTS, bytes(structure), out)
    return out


def _own_variables(variables: list[dict[str, Any]], stored: tuple[Any, ...] | None
                   ) -> list[dict[str, Any]]:
    """The memoized variables of a layout, or, if lists or arrays are among their attributes
    (``stored``), a record's own copies of them."""
    if stored is None:
        return variables
    return [{**v, "attrs": _from_json(raw)} for v, raw in zip(variables, stored, strict=True)]


def decode_record(payload: bytes) -> Record:
    """The parts of an encoded dataset (ValueError if the bytes are not one)."""
    try:
        return _decode_record(payload)
    except (KeyError, TypeError, IndexError, AttributeError) as exc:  # JSON of the wrong shape
        raise ValueError(f"malformed payload ({type(exc).__name__}: {exc})") from None


def _decode_record(payload: bytes) -> Record:
    if payload[:4] != PAYLOAD_MAGIC:
        raise ValueError("not an encoded dataset")
    n = int.from_bytes(payload[4:12], "little")
    structure = payload[12:12 + n]
    m = int.from_bytes(payload[12 + n:20 + n], "little")
    if len(structure) != n or 20 + n + m > len(payload):
        raise ValueError("truncated payload")
    attrs = _decode_attrs(payload[20 + n:20 + n + m])
    base = 20 + n + m + (-(20 + n + m) % _ALIGN)
    variables, layout, end, stored = _layout(structure)
    if base + end != len(payload):
        raise ValueError("truncated payload" if base + end > len(payload) else "trailing bytes")
    variables = _own_variables(variables, stored)
    arrays = [np.frombuffer(payload, dtype=dtype, count=count, offset=base + offset
                            ).reshape(shape) for dtype, shape, offset, count in layout]
    return Record(attrs, variables, arrays)


def result_columns(results: Sequence[Encoded]) -> list[np.ndarray]:
    """The arrays of results of one structure stacked, per variable, along a new first axis:
    a batch of results travels from a worker to the client this way, and with their structure
    and attributes :func:`records_from_columns` gives their records back."""
    return [_stacked(column) for column in zip(*(r.arrays for r in results), strict=True)]


def _stacked(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """One column: a view of a lone array (a batch of one large result is not copied), else
    the arrays stacked in their own byte order (``np.stack`` would make it native)."""
    if len(arrays) == 1:
        return arrays[0][np.newaxis]
    return np.stack(arrays).astype(arrays[0].dtype, copy=False)


def records_from_columns(structure: bytes, attrs: Sequence[dict[str, Any]],
                         arrays: Sequence[np.ndarray]) -> list[Record]:
    """The records of :func:`result_columns`, with their attributes: read-only views
    of the columns, sharing the memoized variables of their structure as decoded records do
    (ValueError if the structure is inconsistent)."""
    variables, _, _, stored = _layout(structure)
    for arr in arrays:
        arr.flags.writeable = False
    return [Record(own, _own_variables(variables, stored), [arr[i, ...] for arr in arrays])
            for i, own in enumerate(attrs)]  # [i, ...]: a 0-d view, never a numpy scalar


def decode_dataset(payload: bytes) -> xr.Dataset:
    return decode_record(payload).to_dataset()


# ---------------------------------------------------------------- entries

def pack(key: str, payload: bytes, meta: Mapping[str, Any] | None = None) -> bytes:
    """The bytes of one cache file (header with checksum, then the payload)."""
    header = {
        "key": key, "format": FORMAT, "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(), "created": time.time(), **(meta or {}),
    }
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload


def unpack(key: str, blob: bytes) -> tuple[dict[str, Any], bytes]:
    """Check a cache file's bytes; return (header, payload) or raise CorruptEntry."""
    if not blob.startswith(MAGIC):
        raise CorruptEntry("bad magic")
    end = blob.find(b"\n", len(MAGIC))
    if end < 0:
        raise CorruptEntry("truncated header")
    try:
        header = json.loads(blob[len(MAGIC):end])
    except ValueError:
        raise CorruptEntry("unreadable header") from None
    payload = blob[end + 1:]
    if not isinstance(header, dict) or header.get("key") != key:
        raise CorruptEntry("key mismatch")
    if header.get("format") != FORMAT:
        raise OtherFormat(f"format {header.get('format')!r}")
    if header.get("size") != len(payload):
        raise CorruptEntry(f"size {len(payload)} != {header.get('size')}")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CorruptEntry("checksum mismatch")
    return header, payload


def pack_many(items: Sequence[tuple[str, bytes, Mapping[str, Any] | None]]) -> bytes:
    """The bytes of one pack file: a header listing every entry, then the payloads."""
    return _pack_many(items)[0]


def _pack_many(items: Sequence[tuple[str, bytes, Mapping[str, Any] | None]]
               ) -> tuple[bytes, list[tuple[str, int, int, str]]]:
    """A pack file's bytes and its entries (key, offset from the start of the file, size,
    SHA-256), as :func:`read_pack_header` would read them back."""
    entries, offset = [], 0
    for key, payload, meta in items:
        entries.append({**(meta or {}), "key": key, "offset": offset, "size": len(payload),
                        "sha256": hashlib.sha256(payload).hexdigest()})
        offset += len(payload)
    header = json.dumps({"format": FORMAT, "created": time.time(), "entries": entries}).encode()
    base = len(PACK_MAGIC) + len(header) + 1
    index = [(e["key"], base + e["offset"], e["size"], e["sha256"]) for e in entries]
    blob = PACK_MAGIC + header + b"\n" + b"".join(payload for _, payload, _ in items)
    return blob, index


@dataclass(frozen=True)
class PackEntry:
    """Where one task's payload lies inside a pack file."""

    path: Path
    offset: int  # from the start of the file
    size: int
    sha256: str


def read_pack_header(path: Path) -> list[tuple[str, PackEntry]]:
    """The entries of a pack file (CorruptEntry if its header is unreadable)."""
    with open(path, "rb") as fh:
        if fh.read(len(PACK_MAGIC)) != PACK_MAGIC:
            raise CorruptEntry("bad magic")
        line = fh.readline()
    if not line.endswith(b"\n"):
        raise CorruptEntry("truncated header")
    try:
        header = json.loads(line)
        if header["format"] != FORMAT:
            raise OtherFormat(f"format {header['format']!r}")
        base = len(PACK_MAGIC) + len(line)
        return [(str(e["key"]), PackEntry(path, base + int(e["offset"]), int(e["size"]),
                                          str(e["sha256"]))) for e in header["entries"]]
    except (ValueError, KeyError, TypeError):
        raise CorruptEntry("unreadable header") from None


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    writes: int = 0


class TaskCache:
    """The cache folder: ``get(key)``, ``put(key, dataset)``, ``put_payload(key, bytes)``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self._root_str = str(self.root)
        self.stats = CacheStats()
        self.corrupt_keys: list[str] = []
        self._dirs: set[Path] = set()
        self._packs: dict[str, list[PackEntry]] | None = None  # key -> entries, newest last
        self._packs_seen: set[str] = set()
        self._pack_blobs: dict[Path, bytes] = {}  # the last packs read (lookups go in order)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QdcavityError(f"cannot create cache folder {self.root}: {exc.strerror}",
                                field="cache_dir") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise QdcavityError(f"cache folder {self.root} is not writable", field="cache_dir")

    def path(self, key: str) -> Path:
        return Path(self._entry_file(key))

    def _entry_file(self, key: str) -> str:
        """``<root>/<key[:2]>/<key>.qdc`` as a string (a lookup costs a few microseconds)."""
        if not _TASK_KEY.fullmatch(key):
            raise ValueError(f"not a task key: {key!r}")
        return f"{self._root_str}/{key[:2]}/{key}{SUFFIX}"

    def __contains__(self, key: str) -> bool:
        return self.path(key).exists() or key in self._pack_index()

    # ------------------------------------------------------------ packs
    def _pack_index(self) -> dict[str, list[PackEntry]]:
        if self._packs is None:
            self._packs = {}
            self.refresh()
        return self._packs

    def refresh(self) -> None:
        """Index the pack files written since the last look (by other processes too)."""
        index = self._pack_index()
        try:
            names = sorted(p.name for p in os.scandir(self.root / PACK_DIR)
                           if p.name.endswith(PACK_SUFFIX) and p.name not in self._packs_seen)
        except FileNotFoundError:
            return
        for name in names:  # names start with the write time: newest last
            self._packs_seen.add(name)
            try:
                entries = read_pack_header(self.root / PACK_DIR / name)
            except OtherFormat:
                continue  # another qdcavity version's pack: its tasks are simply missing
            except (OSError, CorruptEntry):
                self.stats.corrupt += 1  # its tasks are simply missing: recomputed
                continue
            for key, entry in entries:
                index.setdefault(key, []).append(entry)

    def _pack_payload(self, key: str, entry: PackEntry) -> bytes:
        blob = self._pack_blobs.get(entry.path)
        if blob is None:
            blob = entry.path.read_bytes()
            if len(self._pack_blobs) >= 2:
                self._pack_blobs.pop(next(iter(self._pack_blobs)))
            self._pack_blobs[entry.path] = blob
        payload = blob[entry.offset:entry.offset + entry.size]
        if len(payload) != entry.size:
            raise CorruptEntry("truncated pack")
        if hashlib.sha256(payload).hexdigest() != entry.sha256:
            raise CorruptEntry("checksum mismatch")
        return payload

    def _candidates(self, key: str, entry_dirs: set[str] | None = None
                    ) -> Iterator[bytes | None]:
        """Every stored copy of ``key`` (the entry file, then packs newest first); None for
        a copy that fails its checks. With ``entry_dirs`` (the entry folders that exist),
        no file is opened in a folder that does not."""
        path = self._entry_file(key)
        if entry_dirs is None or key[:2] in entry_dirs:
            try:
                with open(path, "rb") as fh:
                    blob = fh.read()
            except FileNotFoundError:
                pass
            except OSError:
                yield None
            else:
                try:
                    yield unpack(key, blob)[1]
                except OtherFormat:
                    pass  # from another qdcavity version: recomputed and replaced
                except CorruptEntry:
                    yield None
        for entry in reversed(self._pack_index().get(key, ())):
            try:
                yield self._pack_payload(key, entry)
            except (OSError, CorruptEntry):
                yield None

    def _entry_dirs(self) -> set[str] | None:
        """The names of the entry folders (``<key[:2]>``) that exist now; None if the cache
        folder cannot be listed (then every entry file is looked for)."""
        try:
            return {e.name for e in os.scandir(self.root) if len(e.name) == 2 and e.is_dir()}
        except OSError:
            return None

    def locate(self, key: str) -> Path | None:
        """The file that holds ``key`` (an entry file or a pack), if any."""
        if self.path(key).exists():
            return self.path(key)
        entries = self._pack_index().get(key)
        return entries[-1].path if entries else None

    # ------------------------------------------------------------ reading
    def get_payload(self, key: str, entry_dirs: set[str] | None = None) -> bytes | None:
        """The verified payload, or None when absent or corrupt (corrupt ones are counted)."""
        seen_corrupt = False
        for payload in self._candidates(key, entry_dirs):
            if payload is not None:
                self.stats.hits += 1
                return payload
            seen_corrupt = True
        if seen_corrupt:
            self._corrupt(key)
        else:
            self.stats.misses += 1
        return None

    def _corrupt(self, key: str) -> None:
        self.stats.corrupt += 1
        self.corrupt_keys.append(key)

    def get_record(self, key: str, entry_dirs: set[str] | None = None) -> Record | None:
        payload = self.get_payload(key, entry_dirs)
        if payload is None:
            return None
        try:
            return decode_record(payload)
        except ValueError:  # checksum fine, content unusable
            self.stats.hits -= 1
            self._corrupt(key)
            return None

    def get_records(self, keys: Iterable[str]) -> list[tuple[str, Record | None]]:
        """:meth:`get_record` of many keys, with the entry folders listed once, when the call
        begins: the misses of a sweep that wrote only packs open no file (4 us each).
        Entries that others write meanwhile in new folders may be missed: recomputed."""
        entry_dirs = self._entry_dirs()
        return [(key, self.get_record(key, entry_dirs)) for key in keys]

    def get(self, key: str) -> xr.Dataset | None:
        """The cached dataset of a task, or None (absent or corrupt: recompute it)."""
        record = self.get_record(key)
        return None if record is None else record.to_dataset()

    def put_payload(self, key: str, payload: bytes, meta: Mapping[str, Any] | None = None
                    ) -> Path:
        """Store an encoded dataset atomically (unique temporary file, then ``os.replace``)."""
        path = self.path(key)
        if path.parent not in self._dirs:
            path.parent.mkdir(exist_ok=True)
            self._dirs.add(path.parent)
        self._write_atomic(path, pack(key, payload, meta))
        self.stats.writes += 1
        return path

    def put_many(self, items: Sequence[tuple[str, bytes, Mapping[str, Any] | None]]) -> Path:
        """Store several encoded datasets as one pack file (one entry file if just one)."""
        if len(items) == 1:
            return self.put_payload(*items[0])
        folder = self.root / PACK_DIR
        if folder not in self._dirs:
            folder.mkdir(exist_ok=True)
            self._dirs.add(folder)
        path = folder / f"{time.time_ns():020d}-{os.urandom(6).hex()}{PACK_SUFFIX}"
        blob, index = _pack_many(items)
        self._write_atomic(path, blob)
        self.stats.writes += len(items)
        if self._packs is not None:
            self._packs_seen.add(path.name)
            for key, offset, size, sha256 in index:
                self._packs.setdefault(key, []).append(PackEntry(path, offset, size, sha256))
        return path

    @staticmethod
    def _write_atomic(path: Path, blob: bytes) -> None:
        """Write to a unique temporary file in the same folder, then ``os.replace``."""
        tmp = path.parent / f".{path.name[:16]}.{os.urandom(8).hex()}.tmp"  # unique across hosts
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:  # the folder was removed under us: make it again
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put(self, key: str, ds: xr.Dataset, meta: Mapping[str, Any] | None = None) -> Path:
        return self.put_payload(key, encode_dataset(ds), meta)

    def token(self) -> str:
        """This folder's identity (created once): lets a worker check it sees the same folder."""
        path = self.root / TOKEN_FILE
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        tmp = self.root / f".{TOKEN_FILE}.{os.urandom(8).hex()}.tmp"
        tmp.write_text(os.urandom(16).hex())
        try:
            os.link(tmp, path)  # atomic create-if-absent: the first writer wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return path.read_text().strip()

    def keys(self) -> Iterator[str]:
        """Every stored key, once (entry files and packs, as found now)."""
        seen = set()
        for path in self.root.glob(f"??/*{SUFFIX}"):
            seen.add(path.name.removesuffix(SUFFIX))
            yield path.name.removesuffix(SUFFIX)
        self.refresh()
        yield from (key for key in self._pack_index() if key not in seen)

    @classmethod
    def if_shared(cls, root: str, token: str) -> TaskCache | None:
        """Open ``root`` on a worker if it is the client's folder (same token), else None."""
        found = _SHARED.get((root, token))
        if found is None:
            try:
                ok = (Path(root) / TOKEN_FILE).read_text().strip() == token
                found = cls(root) if ok else False
            except (OSError, QdcavityError):
                found = False
            _SHARED[(root, token)] = found
        return found or None

    def clean_temporaries(self, older_than_s: float = 3600.0) -> int:
        """Remove temporary files left by killed writers (only old ones: others may be live)."""
        now, removed = time.time(), 0
        for path in [*self.root.glob("??/.*.tmp"), *self.root.glob(f"{PACK_DIR}/.*.tmp")]:
            try:
                if now - path.stat().st_mtime > older_than_s:
                    path.unlink()
                    removed += 1
            except OSError:
                pass
        return removed


_SHARED: dict[tuple[str, str], TaskCache | bool] = {}


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/qdcavity`` (``~/.cache/qdcavity``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qdcavity"


def _inside_package(path: Path) -> bool:
    """Whether ``path`` is in the shipped geometries (studies such as ``paper.toml``)."""
    import qdcavity.geometries as geometries

    shipped = Path(geometries.__file__).resolve().parent
    try:
        resolved = path.resolve()
    except OSError:
        return False
    return resolved == shipped or shipped in resolved.parents


def default_cache_dir(study_dir: str | Path | None = None) -> Path:
    """``$QDCAVITY_CACHE_DIR``; else ``.qdcavity-cache`` next to the study file; else, for the
    studies shipped inside the package or a folder that is not writable, the user cache
    (``~/.cache/qdcavity``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    folder = Path(study_dir or ".")
    if _inside_package(folder) or not os.access(folder, os.W_OK | os.X_OK):
        return user_cache_dir()
    return folder / ".qdcavity-cache"
