"""The durable record of an index: one LMDB environment, ``DIR/store.lmdb/``.

Everything an ingest produces is committed here, one write transaction per
batch, together with the resume cursor of every input it read and the rejects
it found: a ``kill -9`` at any moment leaves all of a batch or none of it.
Readers use LMDB read transactions, so they see a consistent snapshot while an
ingest is writing. No pickle: JSON for small records, a fixed binary layout for
documents. The LMDB map starts at ``_MAP_SIZE`` and doubles whenever a write
transaction does not fit, so no store is too large for it.

Sub-databases (keys are bytes; ``u64be`` = 8-byte big-endian unsigned):

- ``meta``      ``b"manifest"`` -> JSON manifest (backbone, weights_sha256,
  neuron_type, num_layers, width, top_k, max_length, nagindex_version,
  created_at, and the counters ``rows``, ``tokens``, ``rejects``, updated in
  the same transaction as every append); ``b"rejects_export"`` -> JSON
  ``{"rejects", "bytes"}``, how much of the rejects table ``rejects.jsonl`` holds.
- ``chunks``    u64be first row -> one chunk (format below), one per append.
- ``ids``       docid utf-8 (or ``0xFF + sha256`` when over 500 bytes) -> u64be row.
- ``sources``   u32be source id -> source path utf-8; ``source_ids`` the reverse.
- ``progress``  input key utf-8 (hashed like ids when long) -> JSON
  ``{"key", "next_position", "done", "size", "mtime"}``.
- ``rejects``   u64be sequence number -> JSON ``{"source", "position", "reason", "docid"}``.

Chunks are packed by ``chunk.py`` (format version 1, documented there).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from nagindex.data import Reject
from nagindex.errors import IndexMismatchError, NagIndexError
from nagindex.fsio import DISK_FULL, disk_errors, disk_full_error
from nagindex.index.chunk import ChunkView, decode_chunk, encode_chunk

logger = logging.getLogger(__name__)

STORE_DIR = "store.lmdb"
_ROW = struct.Struct(">Q")
_SRC = struct.Struct(">I")
#: LMDB map size a store opens with. The map is grown on demand (``IndexStore._write``), so this is
#: only where it starts: no store outgrows it, and no process reserves a terabyte of address space.
_MAP_SIZE = 1 << 30
_EXPORT_KEY = b"rejects_export"  # in meta: how much of the rejects table rejects.jsonl holds
_T = TypeVar("_T")
_DBS = ("meta", "chunks", "ids", "sources", "source_ids", "progress", "rejects")
#: settings whose difference makes NAGs incomparable, so an append with another is refused. dtype is one
#: (bfloat16 and float32 rank neurons differently). The manifest's "compute" (cpu/cuda) is provenance only:
#: the same dtype on another device is the same arithmetic up to kernel differences.
COMPARED_SETTINGS = ("backbone", "weights_sha256", "neuron_type", "num_layers", "width", "top_k", "max_length",
                     "dtype")
#: settings that decide which text each record is (``ingest --text-template``): an append with another is refused
#: too. Here None is a value ("no template"), not "unknown": compared whenever the request names them; a store
#: written before they existed has none.
TEXT_SETTINGS = ("text_template",)
#: dense features stored beside the NAGs (``ingest --features nag,nait``: ``{"site", "vector"}``, ``index.dense``);
#: None is a value too ("NAG only"), so appending with other features, or none, to such an index is refused
FEATURE_SETTINGS = ("nait",)
_REQUIRED = ("neuron_type", "num_layers", "width", "top_k")
#: path -> [env, refcount, handles (None until opened), open transactions]; LMDB allows one env per path per process
_ENVS: dict[str, list[Any]] = {}
#: guards ``_ENVS``: two threads opening one path at once would open its environment twice, which deadlocks LMDB
_ENVS_LOCK = threading.RLock()
_DAMAGED = "is damaged and cannot be trusted: move it aside and ingest again into a new --index"
#: what to do about an LMDB error, by exception class name (lmdb is imported lazily)
_ADVICE = {
    "CorruptedError": _DAMAGED, "PageNotFoundError": _DAMAGED, "InvalidError": _DAMAGED,
    "BadChecksumError": _DAMAGED, "VersionMismatchError": "was written by another LMDB version: open it with "
                                                         "the nagindex that made it",
    "ReadonlyError": "is read-only: check the permissions of the folder and its files",
    "LockError": "is locked by another process (or its lock.mdb is not writable): wait for it, or check permissions",
    "PanicError": "stopped after a failed write earlier in this process; committed work is kept: "
                  "run the same command again",
}


class StoreError(NagIndexError):
    """The LMDB store failed (damaged, read-only, locked); the message names it and what to do."""


@contextmanager
def _store_errors(path: Path) -> Iterator[None]:
    """LMDB errors and a full disk as user errors naming the store and what to do: the one place for them.

    Used around everything that touches LMDB (opening, initialising, write and read
    transactions), so no LMDB failure reaches the user as a traceback.
    """
    import lmdb

    with disk_errors(path):  # an OSError of our own file handling around LMDB
        try:
            yield
        except lmdb.Error as exc:
            if isinstance(exc, lmdb.DiskError) or any(os.strerror(e) in str(exc) for e in DISK_FULL):
                raise disk_full_error(path) from exc  # lmdb raises a quota error as a bare Error with its text
            advice = next((_ADVICE[c.__name__] for c in type(exc).__mro__ if c.__name__ in _ADVICE),
                          "failed")
            raise StoreError(f"index store {path} {advice} (LMDB: {exc})") from exc


def _key(text: str) -> bytes:
    raw = text.encode("utf-8")
    return raw if len(raw) <= 500 else b"\xff" + hashlib.sha256(raw).digest()  # 0xFF never starts UTF-8


def _keys(texts: Sequence[str]) -> list[bytes]:
    keys = [t.encode("utf-8") for t in texts]
    if max(map(len, keys), default=0) > 500:
        keys = [k if len(k) <= 500 else b"\xff" + hashlib.sha256(k).digest() for k in keys]
    return keys


def check_index_path(directory: Path) -> None:
    """An index is a folder: refuse a path that is a file (``--index corpus.parquet``) before any work."""
    if directory.exists() and not directory.is_dir():
        raise NagIndexError(f"--index {directory} is a file; an index is a folder (default: idx/)")


def _open_env(path: Path) -> Any:
    import lmdb

    key = str(path.resolve())
    with _ENVS_LOCK:
        if key in _ENVS:
            _ENVS[key][1] += 1
            return _ENVS[key][0]
        writable = os.access(path, os.W_OK)  # read-only media: no writer can exist, so no lock either
        with _store_errors(path):
            env = lmdb.open(key, map_size=_MAP_SIZE, max_dbs=len(_DBS), subdir=True, create=False,
                            readonly=not writable, lock=writable, readahead=False)
        _ENVS[key] = [env, 1, None, 0]
        return env


def _entry(env: Any) -> list[Any]:
    return next(e for e in _ENVS.values() if e[0] is env)


def _handles(env: Any) -> dict[str, Any]:
    """Sub-database handles, opened once per environment (opening may wait for a writer's commit)."""
    with _ENVS_LOCK:
        entry = _entry(env)
        if entry[2] is None:
            with _store_errors(Path(env.path())):
                entry[2] = {name: env.open_db(name.encode(), create=False) for name in _DBS}
        return entry[2]


def _set_map_size(env: Any, size: int) -> None:
    """Remap the environment (``size`` 0: adopt the size another process grew it to).

    LMDB requires that no transaction of this process is open on it (it does not check: a reader's pages
    would move under it), so this refuses while one is (a snapshot kept open across a write, say).
    """
    if _entry(env)[3]:
        raise StoreError(f"index store {env.path()} needs its LMDB map resized, which cannot be done while "
                         "this process has a read of it open: close that snapshot first")
    env.set_mapsize(size)


@contextmanager
def _transaction(env: Any, write: bool = False) -> Iterator[Any]:
    """A transaction (a write one commits on a clean exit), counted as open while it runs.

    A reader whose map another process grew past (``MapResizedError`` at begin) adopts the new size and
    begins again: readers keep working while an ingest grows the store.
    """
    import lmdb

    try:
        txn = env.begin(write=write)
    except lmdb.MapResizedError:
        _set_map_size(env, 0)
        txn = env.begin(write=write)
    with _ENVS_LOCK:
        entry = _entry(env)
        entry[3] += 1
    try:
        with txn as active:
            yield active
    finally:
        with _ENVS_LOCK:
            entry[3] -= 1


def _release_env(env: Any) -> None:
    with _ENVS_LOCK:
        for key, entry in list(_ENVS.items()):
            if entry[0] is env:
                entry[1] -= 1
                if entry[1] == 0:
                    del _ENVS[key]
                    env.close()


def _initialise(path: Path, manifest: dict[str, Any]) -> None:
    """A fresh environment with every sub-database and the manifest (in a side folder, renamed after)."""
    import lmdb

    shutil.rmtree(path, ignore_errors=True)  # left by a create that was killed
    env = lmdb.open(str(path), map_size=_MAP_SIZE, max_dbs=len(_DBS), subdir=True)
    try:
        with env.begin(write=True) as txn:
            for name in _DBS:
                env.open_db(name.encode(), txn=txn)
            txn.put(b"manifest", json.dumps(manifest).encode(), db=env.open_db(b"meta", txn=txn))
    finally:
        env.close()



def feature_diff(key: str, have: Any, want: Any, who: str) -> str:
    """One differing ``FEATURE_SETTINGS`` value, naming the ingest options behind it (``--nait-site``...)."""
    from nagindex.encode.dense import differing_options

    return f"{key}: index has {have!r}, {who} {want!r} ({differing_options(have, want)})"

class IndexStore:
    """An index's LMDB store. Open for reading (default) or as the single writer.

    One process may hold several stores on one directory (they share the LMDB
    environment); only one writer may exist at a time, across processes
    (``DIR/store.lock``).
    """

    def __init__(self, directory: Path, env: Any, readonly: bool, lock_fd: int | None) -> None:
        self.directory, self._env, self.readonly, self._lock_fd = directory, env, readonly, lock_fd
        self._db = _handles(env)

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, directory: str | os.PathLike, manifest: dict[str, Any]) -> IndexStore:
        """Create a new, empty store with this manifest; refuse to overwrite one."""
        from nagindex import __version__

        directory = Path(directory)
        missing = [k for k in _REQUIRED if manifest.get(k) is None]
        if missing:
            raise NagIndexError(f"manifest for {directory} is missing {', '.join(missing)}")
        if not 0 < int(manifest["width"]) <= 65536:
            raise NagIndexError(f"width {manifest['width']} does not fit uint16 neuron codes (max 65536)")
        check_index_path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        lock_fd = cls._lock(directory)
        try:
            if (directory / STORE_DIR).exists():
                raise NagIndexError(f"{directory} already holds an index; open it instead")
            full = {**manifest, "nagindex_version": __version__,
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "rows": 0, "tokens": 0, "rejects": 0}
            with _store_errors(directory / STORE_DIR):
                _initialise(directory / (STORE_DIR + ".partial"), full)
                os.replace(directory / (STORE_DIR + ".partial"), directory / STORE_DIR)  # all or nothing
            return cls(directory, _open_env(directory / STORE_DIR), False, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def open(cls, directory: str | os.PathLike, readonly: bool = True) -> IndexStore:
        """Open an existing store; a writer takes the cross-process writer lock."""
        directory = Path(directory)
        if not (directory / STORE_DIR / "data.mdb").is_file():
            raise NagIndexError(f"no nagindex store in {directory} (expected {STORE_DIR}/)")
        lock_fd = None if readonly else cls._lock(directory)
        return cls(directory, _open_env(directory / STORE_DIR), readonly, lock_fd)

    @classmethod
    def open_or_create(cls, directory: str | os.PathLike, manifest: dict[str, Any]) -> IndexStore:
        """Writer on an existing compatible store, or a new one (what a resumable ingest wants)."""
        if (Path(directory) / STORE_DIR / "data.mdb").is_file():
            store = cls.open(directory, readonly=False)
            try:
                store.check_compatible(manifest)
            except IndexMismatchError:
                store.close()
                raise
            return store
        return cls.create(directory, manifest)

    @staticmethod
    def _lock(directory: Path) -> int:
        fd = os.open(directory / "store.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NagIndexError(f"the index {directory} is already open for writing "
                                "(by another ingest, or elsewhere in this process)") from None
        return fd

    def close(self) -> None:
        if self._env is not None:
            _release_env(self._env)
            self._env = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __del__(self) -> None:  # a store dropped without close() must not pin the environment
        if getattr(self, "_env", None) is not None or getattr(self, "_lock_fd", None) is not None:
            try:
                self.close()
            except Exception:  # interpreter shutdown: module globals may be gone
                pass

    def __enter__(self) -> IndexStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ reading
    @contextmanager
    def snapshot(self) -> Iterator[StoreSnapshot]:
        """A consistent view: all reads through it see the store as of this moment."""
        with _store_errors(self.directory / STORE_DIR), _transaction(self._env) as txn:
            yield StoreSnapshot(self._db, txn)

    def _read(self, method: str, *args: Any) -> Any:
        with self.snapshot() as snap:
            return getattr(snap, method)(*args)

    @property
    def manifest(self) -> dict[str, Any]:
        return self._read("manifest")

    def __len__(self) -> int:
        return self.manifest["rows"]

    @property
    def total_tokens(self) -> int:
        return self.manifest["tokens"]

    def contains(self, docids: Sequence[str]) -> np.ndarray:
        return self._read("contains", docids)

    def progress(self, key: str) -> dict[str, Any] | None:
        return self._read("progress", key)

    def all_progress(self) -> dict[str, dict[str, Any]]:
        return self._read("all_progress")

    def sources(self) -> list[str]:
        return self._read("sources")

    def iter_chunks(self, start_row: int = 0) -> Iterator[tuple[int, ChunkView]]:
        with self.snapshot() as snap:
            yield from snap.iter_chunks(start_row)

    def rejects(self, start: int = 0) -> Iterator[Reject]:
        """The rejects from sequence number ``start`` on, in the order they were committed."""
        with self.snapshot() as snap:
            yield from snap.rejects(start)

    def check_compatible(self, requested: dict[str, Any]) -> None:
        """Raise ``IndexMismatchError`` naming every setting that differs (None = unknown, skipped)."""
        have = self.manifest
        unknown = [k for k in COMPARED_SETTINGS if requested.get(k) is not None and have.get(k) is None]
        if unknown:
            logger.warning("index %s does not record %s; not checked", self.directory, ", ".join(unknown))
        diffs = [f"{k}: index has {have.get(k)!r}, requested {requested[k]!r}" for k in COMPARED_SETTINGS
                 if requested.get(k) is not None and have.get(k) is not None and have[k] != requested[k]]
        diffs += [f"{k}: index has {have.get(k)!r}, requested {requested[k]!r}" for k in TEXT_SETTINGS
                  if k in requested and have.get(k) != requested[k]]
        diffs += [feature_diff(k, have.get(k), requested[k], "requested") for k in FEATURE_SETTINGS
                  if k in requested and have.get(k) != requested[k]]
        if diffs:
            raise IndexMismatchError(f"index {self.directory} was built with other settings: " + "; ".join(diffs))

    # ------------------------------------------------------------ writing
    def append(self, codes: np.ndarray, docids: Sequence[str], token_counts: Sequence[int] | np.ndarray,
               sources: str | Sequence[str], positions: Sequence[int] | np.ndarray, *,
               progress: dict[str, dict[str, Any]] | None = None, rejects: Sequence[Reject] = ()) -> int:
        """Commit a batch, its inputs' progress and its rejects in ONE transaction; return its first row.

        Raises ``NagIndexError`` (and commits nothing) if a docid is already in the index or repeated.
        """
        n = len(docids)
        codes = np.asarray(codes)
        tokens = np.asarray(token_counts, dtype=np.int64).reshape(-1)
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)

        def write(txn: Any) -> int:
            snap = StoreSnapshot(self._db, txn)
            manifest = snap.manifest()
            shape = (n, manifest["num_layers"], manifest["top_k"])
            if n and (codes.shape != shape or len(tokens) != n or len(positions) != n):
                raise NagIndexError(f"append: codes {codes.shape}, {len(tokens)} token counts and "
                                    f"{len(positions)} positions do not match {shape}")
            if n and (codes.min() < 0 or codes.max() >= manifest["width"]):
                raise NagIndexError(f"append: neuron codes outside [0, {manifest['width']})")
            first = manifest["rows"]
            if n:
                source_ids = self._source_ids(txn, [sources] * n if isinstance(sources, str) else sources)
                self._put_ids(txn, docids, first)
                txn.put(_ROW.pack(first), encode_chunk(codes, docids, tokens, positions, source_ids),
                        db=self._db["chunks"], append=True)
            self._put_progress(txn, progress or {})
            self._put_rejects(txn, rejects, manifest["rejects"])
            manifest.update(rows=first + n, tokens=manifest["tokens"] + int(tokens.sum()),
                            rejects=manifest["rejects"] + len(rejects))
            txn.put(b"manifest", json.dumps(manifest).encode(), db=self._db["meta"])
            return first

        return self._write(write)

    def _write(self, body: Callable[[Any], _T]) -> _T:
        """Run ``body(txn)`` in one write transaction and commit it; return what it returns.

        The map starts small (``_MAP_SIZE``) and grows here: LMDB raises ``MapFullError`` and keeps
        nothing of a transaction that does not fit, so the map is doubled and ``body`` runs again.
        Readers in other processes adopt the new size at their next transaction (``_transaction``).
        """
        import lmdb

        if self.readonly:
            raise NagIndexError(f"index {self.directory} is open read-only")
        with _store_errors(self.directory / STORE_DIR):
            while True:
                try:
                    with _transaction(self._env, write=True) as txn:  # commits on a clean exit
                        return body(txn)
                except lmdb.MapFullError:
                    size = 2 * self._env.info()["map_size"]
                    logger.info("index store %s: LMDB map full, growing it to %d bytes", self.directory, size)
                    _set_map_size(self._env, size)

    def move_sources(self, moves: dict[str, tuple[str, dict[str, Any]]]) -> None:
        """Record that sources now lie elsewhere, in one transaction: ``old path -> (new path, its state)``,
        the state being the new file's ``{"size", "mtime"}``. A source keeps its id under the new path, so
        every row keeps its source; its progress record moves to the new key with the new size and stamp,
        which text read-back and ingest's resume then check. The caller has checked the new file's records
        (``ingest.relocate``); ``old == new`` only records a new stamp."""
        def write(txn: Any) -> None:
            for old, (new, state) in moves.items():
                sid = txn.get(_key(old), db=self._db["source_ids"])
                if sid is None:
                    raise NagIndexError(f"{old} is not a source of the index {self.directory}")
                if new != old:
                    if txn.get(_key(new), db=self._db["source_ids"]) is not None:
                        raise NagIndexError(f"{new} is already a source of the index {self.directory}")
                    txn.delete(_key(old), db=self._db["source_ids"])
                    txn.put(_key(new), sid, db=self._db["source_ids"])
                    txn.put(sid, new.encode("utf-8"), db=self._db["sources"])
                raw = txn.get(_key(old), db=self._db["progress"])
                if raw is not None:
                    txn.delete(_key(old), db=self._db["progress"])
                    value = {**json.loads(raw), "size": state["size"], "mtime": state["mtime"], "key": new}
                    txn.put(_key(new), json.dumps(value).encode(), db=self._db["progress"])

        self._write(write)

    def exported_rejects(self) -> tuple[int, int]:
        return self._read("exported_rejects")

    def set_exported_rejects(self, rejects: int, size: int) -> None:
        """Record that ``rejects.jsonl`` holds the first ``rejects`` rejects in its first ``size`` bytes."""
        self._write(lambda txn: txn.put(_EXPORT_KEY, json.dumps({"rejects": rejects, "bytes": size}).encode(),
                                        db=self._db["meta"]))

    def _put_ids(self, txn: Any, docids: Sequence[str], first: int) -> None:
        items = list(zip(_keys(docids), map(_ROW.pack, range(first, first + len(docids)))))
        with txn.cursor(db=self._db["ids"]) as cur:
            consumed, added = cur.putmulti(items, overwrite=False)
        if added != len(items):  # find the culprit; raising aborts the whole transaction
            seen: set[bytes] = set()
            for (key, row), docid in zip(items, docids):
                if key in seen:
                    raise NagIndexError(f"docid {docid!r} is repeated in the batch")
                if txn.get(key, db=self._db["ids"]) != row:
                    raise NagIndexError(f"docid {docid!r} is already in the index {self.directory}")
                seen.add(key)

    def _source_ids(self, txn: Any, sources: Sequence[str]) -> np.ndarray:
        known: dict[str, int] = {}
        out = np.empty(len(sources), dtype=np.uint32)
        for i, src in enumerate(sources):
            sid = known.get(src)
            if sid is None:
                raw = txn.get(_key(src), db=self._db["source_ids"])
                if raw is None:
                    sid = txn.stat(self._db["sources"])["entries"]
                    txn.put(_SRC.pack(sid), src.encode("utf-8"), db=self._db["sources"])
                    txn.put(_key(src), _SRC.pack(sid), db=self._db["source_ids"])
                else:
                    sid = _SRC.unpack(raw)[0]
                known[src] = sid
            out[i] = sid
        return out

    def _put_progress(self, txn: Any, progress: dict[str, dict[str, Any]]) -> None:
        for key, value in progress.items():
            txn.put(_key(key), json.dumps({**value, "key": key}).encode(), db=self._db["progress"])

    def _put_rejects(self, txn: Any, rejects: Sequence[Reject], start: int) -> None:
        for i, r in enumerate(rejects):
            value = {"source": r.source, "position": r.position, "reason": r.reason, "docid": r.docid}
            txn.put(_ROW.pack(start + i), json.dumps(value).encode(), db=self._db["rejects"], append=True)


class StoreSnapshot:
    """Reads bound to one LMDB read transaction (a consistent point in time)."""

    def __init__(self, dbs: dict[str, Any], txn: Any) -> None:
        self._db, self._txn = dbs, txn

    def manifest(self) -> dict[str, Any]:
        return json.loads(self._txn.get(b"manifest", db=self._db["meta"]))

    def __len__(self) -> int:
        return self.manifest()["rows"]

    def contains(self, docids: Sequence[str]) -> np.ndarray:
        keys = _keys(docids)
        with self._txn.cursor(db=self._db["ids"]) as cur:
            found = {k for k, _ in cur.getmulti(keys)}
        return np.fromiter((k in found for k in keys), dtype=bool, count=len(keys))

    def rows_of(self, docids: Sequence[str]) -> np.ndarray:
        """Row of each docid, -1 where absent."""
        db, get = self._db["ids"], self._txn.get
        raw = (get(_key(d), db=db) for d in docids)
        return np.fromiter((-1 if r is None else _ROW.unpack(r)[0] for r in raw), dtype=np.int64, count=len(docids))

    def progress(self, key: str) -> dict[str, Any] | None:
        raw = self._txn.get(_key(key), db=self._db["progress"])
        return None if raw is None else json.loads(raw)

    def all_progress(self) -> dict[str, dict[str, Any]]:
        with self._txn.cursor(db=self._db["progress"]) as cur:
            values = [json.loads(v) for _, v in cur]
        return {v["key"]: v for v in values}

    def sources(self) -> list[str]:
        with self._txn.cursor(db=self._db["sources"]) as cur:
            return [bytes(v).decode("utf-8") for _, v in cur]

    def iter_chunks(self, start_row: int = 0) -> Iterator[tuple[int, ChunkView]]:
        """``(first_row, chunk)`` from ``start_row`` on; a chunk spanning it is sliced."""
        with self._txn.cursor(db=self._db["chunks"]) as cur:
            if not cur.set_range(_ROW.pack(start_row)):
                if not cur.last():
                    return
            elif _ROW.unpack(cur.key())[0] > start_row and not cur.prev():
                cur.first()
            for key, value in cur:
                first, chunk = _ROW.unpack(key)[0], decode_chunk(bytes(value))
                if first + len(chunk) <= start_row:
                    continue
                if first < start_row:
                    chunk, first = chunk.slice(start_row - first), start_row
                yield first, chunk

    def exported_rejects(self) -> tuple[int, int]:
        """``(rejects, bytes)``: how many rejects ``rejects.jsonl`` holds and its length then (0, 0: none yet)."""
        raw = self._txn.get(_EXPORT_KEY, db=self._db["meta"])
        value = json.loads(raw) if raw is not None else {"rejects": 0, "bytes": 0}
        return value["rejects"], value["bytes"]

    def rejects(self, start: int = 0) -> Iterator[Reject]:
        with self._txn.cursor(db=self._db["rejects"]) as cur:
            if not cur.set_range(_ROW.pack(start)):
                return
            for _, value in cur:
                d = json.loads(value)
                yield Reject(d["source"], d["position"], d["reason"], d.get("docid"))
