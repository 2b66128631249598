"""Pack files: many small results of a sweep in one cache file, stored as columns.

A batch of small tasks finished together (a few hundred TMM tasks of a millisecond each) is
written as one file, ``<cache>/packs/<time>-<random>.qdpack``, because creating a file costs
far more than a millisecond solve on many file systems (about 0.5 ms here, more on
Lustre/GPFS). Inside, the results are grouped into **blocks**, one per dataset structure
(:func:`qdcavity.encoding.encode_result`), and a block holds its results the way workers send
them to the client: each variable as one column, the results along its first axis::

    QDPACK2\\n
    {"format": "qdr2", "created": ..., <pack metadata>, "blocks": [<block header>, ...]}\\n
    <block bodies, one after the other>

A block header lists its ``keys`` (one per result, in row order), per-result metadata as
columns (``meta``: ``{"backend": [...], "seconds": [...]}``), the ``structure`` JSON (once, not
once per result), the attribute ``names`` in order, the attributes every result shares
(``shared``, JSON-tagged as in :mod:`qdcavity.encoding`), the per-result text attributes
(``texts``, their UTF-8 ``sizes`` per result; the bytes are in the body, not escaped into
JSON), any other per-result attributes (``values``), and where its body lies (``offset``
from the end of the header line, ``size``) with the body's ``sha256``. A body is the per-result
texts, result after result, padded to 16 bytes, then each variable's column, padded to 16.

Writing a result costs a share of one JSON header and of one checksum instead of a payload,
a header entry and a checksum of its own: a worker's CPU beyond the solver per TMM result
fell from 65 to 47-51 us (measured alone; 70-75 -> 56-61 us on a running 2-worker cluster),
and a TE-DIZO reflectance result takes 2.0 kB on disk instead of 4.0 (the structure and the
shared attributes are stored once per block).

A block's checksum covers its header entry and its body. A block is checked as a whole: a
corrupt byte makes every result of its block (one worker's flush, about ``cache_flush_s`` of
work) count as corrupt, and they are recomputed; the other blocks and packs are unaffected.
Packs of other versions (``QDPACK1``) are misses, not corruption: their tasks are recomputed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .encoding import (
    Record,
    _from_json,
    _json_value,
    _layout,
    _own_variables,
    _row_record,
    decode_record,
    result_columns,
)

PACK_MAGIC = b"QDPACK2\n"
PACK_FAMILY = b"QDPACK"  # other versions of the pack format start with this
FORMAT = "qdr2"
_ALIGN = 16


class CorruptEntry(Exception):
    """A cache file exists but fails its checks (recompute it)."""


class OtherFormat(CorruptEntry):
    """A sound cache file written in another format version: a miss, not a corruption."""


class Block(NamedTuple):
    """Results of one structure, stored together: their keys, attributes (as decoding gives
    them), arrays as columns (results along the first axis) and per-result metadata as
    columns (``{"backend": [...], "seconds": [...]}``; any JSON values)."""

    structure: bytes
    keys: Sequence[str]
    attrs: Sequence[Mapping[str, Any]]
    arrays: Sequence[np.ndarray]
    meta: Mapping[str, Sequence[Any]]


@dataclass(frozen=True)
class PackSlot:
    """Where one result lies: a pack file, its block and the row in it."""

    path: Path
    block: int
    row: int


# ---------------------------------------------------------------- writing

def pack_blocks(blocks: Sequence[Block], meta: Mapping[str, Any] | None = None
                ) -> tuple[bytes, list[tuple[str, int, int]]]:
    """A pack file's bytes and its entries as (key, block, row).

    CacheError (from :func:`qdcavity.encoding._json_value`) if an attribute cannot be stored.
    """
    if meta and "blocks" in meta:
        raise ValueError("'blocks' is the pack's own header field")
    headers: list[str] = []
    bodies: list[bytes] = []
    entries: list[tuple[str, int, int]] = []
    offset = 0
    for block in _uniform(blocks):
        fields, body = _block_bytes(block)
        sha256 = _checksum(fields, body)
        # the block's header entry: its fields, then where it lies and its checksum, written
        # as json.dumps would write the whole dict
        headers.append(f'{fields[:-1]}, "offset": {offset}, "size": {len(body)}, '
                       f'"sha256": "{sha256}"}}')
        bodies.append(body)
        offset += len(body)
        entries += [(key, len(headers) - 1, row) for row, key in enumerate(block.keys)]
    head = json.dumps({"format": FORMAT, "created": time.time(), **(meta or {})})
    text = f'{head[:-1]}, "blocks": [{", ".join(headers)}]}}'.encode()
    return b"".join((PACK_MAGIC, text, b"\n", *bodies)), entries


def _uniform(blocks: Sequence[Block]) -> list[Block]:
    """The blocks split so that within each, every result has the same attribute names in the
    same order (the usual case: no split)."""
    out = []
    for block in blocks:
        _check_lengths(block)
        orders: dict[tuple[str, ...], list[int]] = {}
        for row, attrs in enumerate(block.attrs):
            orders.setdefault(tuple(attrs), []).append(row)
        if len(orders) == 1:
            out.append(block)
            continue
        for rows in orders.values():
            out.append(Block(block.structure, [block.keys[r] for r in rows],
                             [block.attrs[r] for r in rows], [a[rows] for a in block.arrays],
                             {k: [v[r] for r in rows] for k, v in block.meta.items()}))
    return out


def _check_lengths(block: Block) -> None:
    n = len(block.keys)
    if n == 0 or len(block.attrs) != n or any(len(a) != n for a in block.arrays) or any(
            len(v) != n for v in block.meta.values()):
        raise ValueError("a block's keys, attributes, columns and metadata differ in length")


def _block_bytes(block: Block) -> tuple[str, bytes]:
    """A block's header fields as JSON text (all but where it lies and its checksum) and its
    body."""
    attrs = block.attrs
    names = [str(key) for key in attrs[0]]  # str already as decoding gives them; JSON's anyway
    shared: dict[str, Any] = {}  # as JSON: texts as they are, other values tagged
    texts: list[str] = []
    values: dict[str, list[Any]] = {}
    for key, name in zip(attrs[0], names, strict=True):
        column = [a[key] for a in attrs]
        first = column[0]
        all_text = set(map(type, column)) == {str}  # (C-level loops: a block holds hundreds)
        if all_text and column.count(first) == len(column) and (
                json.loads(json.dumps(first)) == first):  # a text JSON keeps as it is
            shared[name] = first
        elif all_text:
            texts.append(name)  # raw: a surrogate pair stays two code points, as in payloads
        else:
            tagged = [_json_value(v) for v in column]
            if len({json.dumps(v) for v in tagged}) == 1:  # same values in the same order
                shared[name] = tagged[0]
            else:
                values[name] = tagged
    text_keys = [key for key, name in zip(attrs[0], names, strict=True) if name in texts]
    raw = [[a[key].encode("utf-8", "surrogatepass") for key in text_keys] for a in attrs]
    pieces = [b for row in raw for b in row]
    size = sum(map(len, pieces))
    pieces.append(b"\0" * (-size % _ALIGN))
    for column in block.arrays:
        data = column.tobytes()
        pieces += [data, b"\0" * (-len(data) % _ALIGN)]
    body = b"".join(pieces)
    fields = json.dumps({
        "structure": block.structure.decode(), "keys": list(block.keys),
        "meta": {k: list(v) for k, v in block.meta.items()}, "names": names, "shared": shared,
        "texts": texts, "sizes": [[len(b) for b in row] for row in raw], "values": values})
    return fields, body


def _checksum(fields: str, body: bytes | memoryview) -> str:
    """SHA-256 of a block's header fields, as JSON text, and of its body: a changed size or
    name in the header is caught like a changed byte."""
    digest = hashlib.sha256(fields.encode())
    digest.update(body)
    return digest.hexdigest()


def _fields_text(head: Mapping[str, Any]) -> str:
    """A block's header fields as the writer wrote them: ``json.dumps`` of what ``json.loads``
    read gives the same text back (same order, numbers, escapes; a key 9 was "9" already)."""
    return json.dumps({k: v for k, v in head.items() if k not in ("offset", "size", "sha256")})


# ---------------------------------------------------------------- reading

def read_pack_header(path: Path) -> tuple[dict[str, Any], int]:
    """A pack file's header and where its bodies start (CorruptEntry if unreadable,
    OtherFormat if the file is a pack of another version); reads only the header."""
    with open(path, "rb") as fh:
        return parse_pack_header(fh.read(len(PACK_MAGIC)) + fh.readline())


def header_line(blob: bytes, start: int) -> tuple[Any, int]:
    """The JSON on the line of ``blob`` that begins at ``start`` (the header of a cache entry
    or a pack, after its magic) and where the next line begins (CorruptEntry if the line is
    cut short or not JSON)."""
    end = blob.find(b"\n", start)
    if end < 0:
        raise CorruptEntry("truncated header")
    try:
        return json.loads(blob[start:end]), end + 1
    except (ValueError, RecursionError):
        raise CorruptEntry("unreadable header") from None


def parse_pack_header(blob: bytes) -> tuple[dict[str, Any], int]:
    """The header of a pack file's bytes (all of them, or its first line at least)."""
    magic = blob[:len(PACK_MAGIC)]
    if magic != PACK_MAGIC:
        if magic.startswith(PACK_FAMILY):
            raise OtherFormat(f"pack version {magic.strip().decode(errors='replace')}")
        raise CorruptEntry("bad magic")
    header, base = header_line(blob, len(PACK_MAGIC))
    try:
        if header["format"] != FORMAT:
            raise OtherFormat(f"format {header['format']!r}")
        if not isinstance(header["blocks"], list):
            raise TypeError("blocks")
    except (KeyError, TypeError):
        raise CorruptEntry("unreadable header") from None
    return header, base


def pack_entries(path: Path) -> list[tuple[str, PackSlot]]:
    """The results a pack file holds, as (key, slot)."""
    header, _ = read_pack_header(path)
    try:
        return [(str(key), PackSlot(path, b, row)) for b, block in enumerate(header["blocks"])
                for row, key in enumerate(block["keys"])]
    except (KeyError, TypeError, IndexError):
        raise CorruptEntry("unreadable header") from None


#: what a malformed header or value can raise while a block is read (all mean: corrupt)
_MALFORMED = (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError,
              RecursionError)


class StoredBlock:
    """A block read from a pack and checked: its columns (copied out of the file's bytes, so
    a record keeps only its block's arrays alive) and what each result's attributes are made
    of. :meth:`record` builds a result's record as decoding its payload would: fresh
    attribute objects on every call, read-only views of the columns."""

    def __init__(self, structure: bytes, columns: list[np.ndarray],
                 plan: list[tuple[str, int, Any]], texts: list[list[str]]) -> None:
        self.structure, self.columns, self.plan, self.texts = structure, columns, plan, texts
        self.rows = len(texts)

    def record(self, row: int) -> Record:
        if not 0 <= row < self.rows:
            raise CorruptEntry("no such row")
        variables, _, _, stored = _layout(self.structure)
        own = self.texts[row]
        attrs: dict[str, Any] = {}
        for name, kind, value in self.plan:
            if kind == _SHARED_TEXT:
                attrs[name] = value
            elif kind == _OWN_TEXT:
                attrs[name] = own[value]
            elif kind == _SHARED_VALUE:
                attrs[name] = _from_json(json.loads(value))
            else:
                attrs[name] = _from_json(json.loads(value[row]))
        return _row_record(attrs, _own_variables(variables, stored), self.columns, row)


_SHARED_TEXT, _OWN_TEXT, _SHARED_VALUE, _OWN_VALUE = range(4)


def read_block(blob: bytes, header: Mapping[str, Any], base: int, block: int) -> StoredBlock:
    """One block of a pack file's bytes, checked against its checksum and header
    (CorruptEntry if anything is wrong)."""
    try:
        return _read_block(blob, header["blocks"][block], base)
    except CorruptEntry:
        raise
    except _MALFORMED as exc:
        raise CorruptEntry(f"inconsistent block ({type(exc).__name__}: {exc})") from None


def _read_block(blob: bytes, head: Mapping[str, Any], base: int) -> StoredBlock:
    start, size = base + int(head["offset"]), int(head["size"])
    if start < base or size < 0:
        raise ValueError("negative offset or size")
    body = memoryview(blob)[start:start + size]
    if len(body) != size:
        raise CorruptEntry("truncated pack")
    if _checksum(_fields_text(head), body) != head["sha256"]:
        raise CorruptEntry("checksum mismatch")
    n = len(head["keys"])
    names, shared, texts, values = head["names"], head["shared"], head["texts"], head["values"]
    if (sorted(names) != sorted([*shared, *texts, *values]) or len(head["sizes"]) != n
            or any(len(v) != n for v in values.values())):
        raise ValueError("attribute lists do not add up")
    plan = [(name, _SHARED_TEXT, shared[name]) if name in shared and type(shared[name]) is str
            else (name, _SHARED_VALUE, json.dumps(shared[name])) if name in shared
            else (name, _OWN_TEXT, texts.index(name)) if name in texts
            else (name, _OWN_VALUE, [json.dumps(v) for v in values[name]])
            for name in names]
    rows, at = [], 0
    for sizes in head["sizes"]:
        if len(sizes) != len(texts) or not all(type(s) is int and s >= 0 for s in sizes):
            raise ValueError("text sizes do not match the text attributes")
        row = []
        for s in sizes:
            row.append(bytes(body[at:at + s]).decode("utf-8", "surrogatepass"))
            at += s
        rows.append(row)
    if at > size:
        raise ValueError("texts beyond the block")
    at += -at % _ALIGN
    structure = head["structure"].encode()
    columns = []
    for dtype, shape, _, count in _layout(structure)[1]:
        nbytes = n * count * dtype.itemsize
        if at + nbytes > size:
            raise ValueError("columns beyond the block")
        column = np.frombuffer(body, dtype=dtype, count=n * count, offset=at).reshape((n, *shape))
        column = column.copy()  # aligned, and independent of the file's bytes
        column.flags.writeable = False
        columns.append(column)
        at += nbytes + (-nbytes % _ALIGN)
    if at != size:
        raise ValueError("block size does not match its columns")
    return StoredBlock(structure, columns, plan, rows)


def blocks_of_payloads(items: Sequence[tuple[str, bytes, Mapping[str, Any] | None]]
                       ) -> list[Block]:
    """Encoded datasets (key, payload, metadata) grouped into blocks by structure (ValueError
    if a payload is not one); a metadata name that some lack is None for them."""
    groups: dict[bytes, list[tuple[str, Record, Mapping[str, Any]]]] = {}
    for key, payload, meta in items:
        record = decode_record(payload)
        n = int.from_bytes(payload[4:12], "little")
        groups.setdefault(bytes(payload[12:12 + n]), []).append((key, record, meta or {}))
    blocks = []
    for structure, rows in groups.items():
        names = list(dict.fromkeys(name for _, _, meta in rows for name in meta))
        blocks.append(Block(structure, [key for key, _, _ in rows],
                            [record.attrs for _, record, _ in rows],
                            result_columns([record for _, record, _ in rows]),
                            {name: [meta.get(name) for _, _, meta in rows] for name in names}))
    return blocks

