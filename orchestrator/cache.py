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
each) is written as one file, ``<cache_dir>/packs/<time>-<random>.qdpack``, its results stored
as columns in blocks, one checksum per block (:mod:`qdcavity.packs`). Packs are written
atomically like entries and never modified; a key stored more than once (a recompute after a
corruption) is read from the newest file. :class:`TaskCache` indexes the pack headers on first
use and re-reads the folder on :meth:`TaskCache.refresh`.

Failed tasks are not cached: a rerun tries them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xarray as xr

from .encoding import CacheError, Record, _payload, decode_dataset, decode_record, encode_dataset
from .errors import QdcavityError
from .packs import (
    FORMAT,
    Block,
    CorruptEntry,
    OtherFormat,
    PackSlot,
    StoredBlock,
    blocks_of_payloads,
    header_line,
    pack_blocks,
    pack_entries,
    parse_pack_header,
    read_block,
)

__all__ = [  # with the encoding's names that cache users have always imported from here
    "CacheError", "CacheStats", "CorruptEntry", "OtherFormat", "Record", "TaskCache",
    "decode_dataset", "decode_record", "default_cache_dir", "encode_dataset", "pack", "unpack",
    "user_cache_dir",
]

MAGIC = b"QDCACHE1\n"
SUFFIX = ".qdc"
PACK_DIR = "packs"
PACK_SUFFIX = ".qdpack"
CACHE_ENV = "QDCAVITY_CACHE_DIR"
TOKEN_FILE = "qdcavity-cache-id"


_TASK_KEY = re.compile(r"[0-9a-f]{8,}")


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
    header, start = header_line(blob, len(MAGIC))
    payload = blob[start:]
    if not isinstance(header, dict) or header.get("key") != key:
        raise CorruptEntry("key mismatch")
    if header.get("format") != FORMAT:
        raise OtherFormat(f"format {header.get('format')!r}")
    if header.get("size") != len(payload):
        raise CorruptEntry(f"size {len(payload)} != {header.get('size')}")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CorruptEntry("checksum mismatch")
    return header, payload


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
        self._packs: dict[str, list[PackSlot]] | None = None  # key -> slots, newest last
        self._packs_seen: set[str] = set()
        self._pack_bytes: dict[Path, tuple[bytes, dict[str, Any], int]] = {}  # recent packs
        self._blocks: dict[tuple[Path, int], StoredBlock | str] = {}  # recent blocks (or why
        # they are corrupt), least recently used first
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
    def _pack_index(self) -> dict[str, list[PackSlot]]:
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
                entries = pack_entries(self.root / PACK_DIR / name)
            except OtherFormat:
                continue  # another qdcavity version's pack: its tasks are simply missing
            except (OSError, CorruptEntry):
                self.stats.corrupt += 1  # its tasks are simply missing: recomputed
                continue
            for key, slot in entries:
                index.setdefault(key, []).append(slot)

    def _pack_record(self, slot: PackSlot) -> Record:
        """The record in a pack's slot (CorruptEntry or OSError if it cannot be read). Each
        block is read and checked once while it is among the last ``_BLOCKS_KEPT`` used."""
        stored = _recent(self._blocks, (slot.path, slot.block), lambda: self._read_block(slot),
                         _BLOCKS_KEPT)
        if isinstance(stored, str):
            raise CorruptEntry(stored)
        return stored.record(slot.row)

    def _read_block(self, slot: PackSlot) -> StoredBlock | str:
        """A block of a pack file, or why it is corrupt (OSError if the file cannot be read).
        The last two pack files read stay in memory: their other blocks are usually next."""
        try:
            blob, header, base = _recent(self._pack_bytes, slot.path,
                                         lambda: _read_pack(slot.path), 2)
            return read_block(blob, header, base, slot.block)
        except CorruptEntry as exc:
            return str(exc)

    def _candidates(self, key: str, entry_dirs: set[str] | None = None
                    ) -> Iterator[Record | None]:
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
                    yield decode_record(unpack(key, blob)[1])
                except OtherFormat:
                    pass  # from another qdcavity version: recomputed and replaced
                except (CorruptEntry, ValueError):  # ValueError: checksum fine, content not
                    yield None
        for slot in reversed(self._pack_index().get(key, ())):
            try:
                yield self._pack_record(slot)
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
    def get_record(self, key: str, entry_dirs: set[str] | None = None) -> Record | None:
        """The verified record, or None when absent or corrupt (corrupt ones are counted)."""
        seen_corrupt = False
        for record in self._candidates(key, entry_dirs):
            if record is not None:
                self.stats.hits += 1
                return record
            seen_corrupt = True
        if seen_corrupt:
            self._corrupt(key)
        else:
            self.stats.misses += 1
        return None

    def _corrupt(self, key: str) -> None:
        self.stats.corrupt += 1
        self.corrupt_keys.append(key)

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
        """Store several encoded datasets (key, payload, metadata) as one pack file (one entry
        file if just one); ValueError if a payload is not an encoded dataset, or none given."""
        if not items:
            raise ValueError("nothing to store")
        if len(items) == 1:
            return self.put_payload(*items[0])
        return self.put_blocks(blocks_of_payloads(items))

    def put_blocks(self, blocks: Sequence[Block], meta: Mapping[str, Any] | None = None
                   ) -> Path:
        """Store blocks of results as one pack file, or a lone result as an entry file
        (``meta`` and its own metadata in the header); CacheError if an attribute cannot be
        stored."""
        n = sum(len(b.keys) for b in blocks)
        if n == 0:
            raise ValueError("nothing to store")
        if n == 1:
            (block,) = (b for b in blocks if b.keys)
            own = {name: column[0] for name, column in block.meta.items()}
            payload = _payload(block.structure, block.attrs[0], [a[0] for a in block.arrays])
            return self.put_payload(block.keys[0], payload, {**own, **(meta or {})})
        folder = self.root / PACK_DIR
        if folder not in self._dirs:
            folder.mkdir(exist_ok=True)
            self._dirs.add(folder)
        path = folder / f"{time.time_ns():020d}-{os.urandom(6).hex()}{PACK_SUFFIX}"
        blob, entries = pack_blocks(blocks, meta)
        self._write_atomic(path, blob)
        self.stats.writes += len(entries)
        if self._packs is not None:
            self._packs_seen.add(path.name)
            for key, block, row in entries:
                self._packs.setdefault(key, []).append(PackSlot(path, block, row))
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


def _read_pack(path: Path) -> tuple[bytes, dict[str, Any], int]:
    """A pack file's bytes, header, and where its bodies begin."""
    blob = path.read_bytes()
    return (blob, *parse_pack_header(blob))


def _recent(memo: dict[Any, Any], key: Any, make: Callable[[], Any], limit: int) -> Any:
    """``memo[key]``, made by ``make()`` if missing (nothing kept if it raises), now the most
    recently used; the least recently used beyond ``limit`` are dropped."""
    value = memo.pop(key, None)
    if value is None:
        value = make()
    memo[key] = value
    while len(memo) > limit:
        del memo[next(iter(memo))]
    return value


#: pack blocks a TaskCache keeps read and checked (a resume reads each block's rows in turn;
#: lookups in another order, e.g. a study whose axes were reordered, still find most here)
_BLOCKS_KEPT = 64


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
