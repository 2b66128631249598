"""Datasets as bytes and as plain parts, without pickle: what the task cache stores and what
workers send back.

* :func:`encode_dataset` / :func:`decode_record`: one dataset as a payload (a JSON structure,
  the attributes, raw arrays), decoded in microseconds rather than the ~1 ms of building an
  xarray Dataset, so that a sweep of thousands of results combines them as plain arrays
  (:class:`Record`).
* :func:`encode_result`, :func:`result_columns`, :func:`records_from_columns`: a worker takes
  each result apart once; results of one structure travel, and are stored in packs
  (:mod:`qdcavity.packs`), as columns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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


class CacheError(QdcavityError):
    """A dataset cannot be stored in the cache (an unsupported value type)."""


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
    combined without constructing thousands of datasets. ``origin``: for a record whose
    arrays are row ``i`` of a batch's columns, ``(columns, i, arrays)``; the combine then
    copies the rows of a whole column at once, as long as the record still holds that very
    ``arrays`` list (a record given other arrays is read one by one).
    """

    attrs: dict[str, Any]
    variables: list[dict[str, Any]]  # name, dims, coord, attrs
    arrays: list[np.ndarray]
    origin: tuple[list[np.ndarray], int, list[np.ndarray]] | None = field(
        default=None, repr=False, compare=False)

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
        """Same variable attributes, in the same order, names and values all text. Only text is
        remembered and matched: other values compare equal across types (1 == 1.0 == True,
        a one-element array == its item) that encode differently. (Loops, not ``all()``:
        1.4 us per TMM result instead of 3.1.)"""
        if len(parts.attrs) != len(self.attrs):
            return False
        for attrs, known in zip(parts.attrs, self.attrs, strict=True):
            if attrs:
                for name, value in attrs.items():
                    if type(name) is not str or type(value) is not str:
                        return False
                if tuple(attrs.items()) != known:
                    return False
            elif known:
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
    itself when asked for (workers never ask: they send, and store in packs, columns).
    Results of one structure travel as columns (:func:`result_columns`) and come back as
    records (:func:`records_from_columns`) that equal the decoded payloads."""

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
    except (KeyError, TypeError, IndexError, AttributeError, OverflowError,
            RecursionError) as exc:  # JSON of the wrong shape or size
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


def result_columns(results: Sequence[Encoded | Record]) -> list[np.ndarray]:
    """The arrays of results of one structure stacked, per variable, along a new first axis:
    a batch of results travels from a worker to the client this way, and with their structure
    and attributes :func:`records_from_columns` gives their records back."""
    return [_stacked(column) for column in zip(*(r.arrays for r in results), strict=True)]


def _stacked(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """One column: a view of a lone array (a batch of one large result is not copied), else
    the arrays stacked in their own dtype and byte order (the rows of a column share both,
    and their shape: the structure says so). ``np.array`` of the list, not ``np.stack``:
    0.12 instead of 0.33 us per row and column."""
    if len(arrays) == 1:
        return arrays[0][np.newaxis]
    return np.array(arrays, dtype=arrays[0].dtype)


def records_from_columns(structure: bytes, attrs: Sequence[dict[str, Any]],
                         arrays: Sequence[np.ndarray]) -> list[Record]:
    """The records of :func:`result_columns`, with their attributes: read-only views
    of the columns, sharing the memoized variables of their structure as decoded records do
    (ValueError if the structure is inconsistent)."""
    variables, _, _, stored = _layout(structure)
    for arr in arrays:
        arr.flags.writeable = False
    columns = list(arrays)
    return [_row_record(own, _own_variables(variables, stored), columns, i)
            for i, own in enumerate(attrs)]


def _row_record(attrs: dict[str, Any], variables: list[dict[str, Any]],
                columns: list[np.ndarray], row: int) -> Record:
    """The record of one row of a batch's columns ([row, ...]: 0-d views, never numpy
    scalars), which knows where it comes from (see ``Record.origin``)."""
    arrays = [column[row, ...] for column in columns]
    return Record(attrs, variables, arrays, (columns, row, arrays))


def decode_dataset(payload: bytes) -> xr.Dataset:
    return decode_record(payload).to_dataset()
