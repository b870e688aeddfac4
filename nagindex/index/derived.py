"""Derived scan files and the fingerprints ``--approx`` searches, rebuilt from the store at will.

The LMDB store (``store.py``) is the record; the files here are flat copies of
it laid out for fast scans (memory-mapped numpy), each only ever appended to by
``sync_derived`` (the rows not derived yet), so a derive costs its new rows, not
the index:

- ``codes.u16``      uint16 little-endian ``(N, L, K)``, the NAGs.
- ``tokens.i64``     int64 ``(N,)`` token counts; ``positions.i64`` int64 ``(N,)``.
- ``source_ids.u32`` uint32 ``(N,)``, ids into ``sources.json`` (a JSON list of paths).
- ``docids.off`` uint64 ``(N + 1,)`` offsets into ``docids.bin`` (utf-8); together
  an Arrow ``large_string`` column, opened with zero copies.
- ``fingerprints.u8`` uint8 ``(N, 512)``, the 4096-bit fingerprints, row = FAISS id.
  Raw rather than a FAISS file, so appending is cheap (a FAISS ``IndexBinaryFlat`` file
  would be read and rewritten whole by every derive: 51 GB at 100M documents). ``--approx``
  searches it memory-mapped with FAISS's exhaustive Hamming k-NN, the very search
  ``IndexBinaryFlat`` runs (``FingerprintIndex``). An index derived before it holds
  ``fingerprints.faiss`` instead: read as it is, copied over by the next derive.
- ``neuron_counts.i64`` per layer, how many rows hold each neuron (``neuron_file.py``: the pool
  statistics of ``--weighting``), rewritten from the old counts plus the new rows'.
- ``index_info.json`` written last (``fsio.atomic_path``): its ``rows`` is the
  only count readers trust. Bytes past it (a derive killed or out of disk
  mid-way) are cut off by the next ``sync_derived``.

Readers memory-map these files, so a derive never takes away bytes a reader may
map: it only cuts files back to ``index_info.json``'s rows, which never shrink
while the store is the same, and starting over (a new store, a lost or short
file) unlinks the files instead of truncating them, so a reader keeps the old
ones (a truncated mapping would crash it with SIGBUS), ``index_info.json`` first,
so a reader opening during the rebuild sees no rows rather than the old count over
new files. A reader may therefore map the first rows of a folder that an ingest
is appending to (``open_shard(path, rows)``): they never change.

Fingerprint: each (layer l, neuron n) of a NAG sets bit
``((l * width + n) * 2654435761 mod 2**32) >> 20`` (Knuth's multiplicative hash,
top 12 bits) of a 4096-bit vector, packed little-endian (bit i in byte i // 8,
at 1 << (i % 8)), FAISS's binary-vector layout.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.fsio import DiskFullError, atomic_path, disk_full, disk_full_error, remove_stale_temps
from nagindex.index.neuron_file import COUNTS_FILE, count_neurons, prefix_counts, write_counts
from nagindex.index.store import STORE_DIR, IndexStore, StoreSnapshot

logger = logging.getLogger(__name__)

INFO_FILE = "index_info.json"
FAISS_FILE = "fingerprints.u8"  # the fingerprints FAISS searches, raw (N, 512) uint8
LEGACY_FAISS_FILE = "fingerprints.faiss"  # an IndexBinaryFlat, what indexes derived before FAISS_FILE hold
SOURCES_FILE = "sources.json"
FINGERPRINT_BITS = 4096
HASH_MULTIPLIER = 2654435761
# name -> (file, dtype); each holds ``per_row`` items per row (codes: L*K)
ROW_FILES = {"codes": ("codes.u16", "<u2"), "token_counts": ("tokens.i64", "<i8"),
             "positions": ("positions.i64", "<i8"), "source_ids": ("source_ids.u32", "<u4")}
DOCID_OFFSETS, DOCID_BYTES = "docids.off", "docids.bin"
FINGERPRINT_BYTES = FINGERPRINT_BITS // 8
_FP_BLOCK = 8192


def fingerprint_bits(codes: np.ndarray, width: int) -> np.ndarray:
    """Bit index in [0, 4096) of every (layer, neuron) pair: ``(n, L, K)`` -> ``(n, L, K)`` uint32.

    uint32 arithmetic wraps modulo 2**32, which is exactly the hash's ``mod 2**32``.
    """
    codes = np.asarray(codes)
    if codes.shape[1] * width > 2**32:
        raise NagIndexError(f"{codes.shape[1]} layers x width {width} exceed the 32-bit pair space")
    layer_base = (np.arange(codes.shape[1], dtype=np.uint32) * np.uint32(width))[None, :, None]
    pair = codes.astype(np.uint32)
    pair += layer_base
    pair *= np.uint32(HASH_MULTIPLIER)
    pair >>= np.uint32(32 - 12)
    return pair


def fingerprints(codes: np.ndarray, width: int) -> np.ndarray:
    """Packed 4096-bit fingerprints ``(n, 512)`` uint8, ready for ``IndexBinaryFlat.add``."""
    codes = np.asarray(codes)
    n = len(codes)
    out = np.empty((n, FINGERPRINT_BITS // 8), dtype=np.uint8)
    dense = np.zeros(min(n, _FP_BLOCK) * FINGERPRINT_BITS, dtype=bool)  # reused: no page faults per block
    for start in range(0, n, _FP_BLOCK):
        block = codes[start:start + _FP_BLOCK]
        m = len(block)
        flat = fingerprint_bits(block, width)
        flat += (np.arange(m, dtype=np.uint32) * np.uint32(FINGERPRINT_BITS))[:, None, None]
        bits = dense[:m * FINGERPRINT_BITS]
        bits[:] = False
        bits[flat.reshape(-1)] = True
        out[start:start + m] = np.packbits(bits.reshape(m, FINGERPRINT_BITS), axis=1, bitorder="little")
    return out


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a declared dependency
        raise NagIndexError("FAISS is missing: pip install faiss-cpu") from exc
    return faiss


def _read_info(directory: Path) -> dict[str, Any] | None:
    path = directory / INFO_FILE
    return json.loads(path.read_text("utf-8")) if path.is_file() else None


def _write_json(path: Path, value: Any) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh, indent=1)


def _row_width(name: str, manifest: dict[str, Any]) -> int:
    return manifest["num_layers"] * manifest["top_k"] if name == "codes" else 1


def _repair(directory: Path, rows: int, manifest: dict[str, Any]) -> int:
    """Cut every derived row file back to ``rows``; return the rows kept (0 if a file is short or missing).

    Cut in place: a reader maps at most the rows of an ``index_info.json`` it read, never more than
    ``rows``. Starting over instead unlinks the files: a reader of the old ones keeps them.
    """
    sizes = {f: rows * _row_width(n, manifest) * np.dtype(dt).itemsize for n, (f, dt) in ROW_FILES.items()}
    sizes[FAISS_FILE] = rows * FINGERPRINT_BYTES
    sizes[DOCID_OFFSETS] = (rows + 1) * 8
    ok = rows > 0 and all((directory / f).is_file() and (directory / f).stat().st_size >= n for f, n in sizes.items())
    if ok:
        sizes[DOCID_BYTES] = int(np.fromfile(directory / DOCID_OFFSETS, "<u8", count=1, offset=rows * 8)[0])
        ok = (directory / DOCID_BYTES).is_file() and (directory / DOCID_BYTES).stat().st_size >= sizes[DOCID_BYTES]
    if not ok:
        if rows:
            logger.warning("derived files in %s are incomplete; rebuilding them from the store", directory)
        # the old count first: a reader opening mid-rebuild must see no rows, not it over the new files
        for name in [INFO_FILE, *sizes, DOCID_BYTES, COUNTS_FILE]:
            (directory / name).unlink(missing_ok=True)
        (directory / DOCID_OFFSETS).write_bytes(np.zeros(1, "<u8").tobytes())
        return 0
    for name, size in sizes.items():
        with open(directory / name, "ab") as fh:
            fh.truncate(size)
    return rows


def _legacy_fingerprints(directory: Path) -> np.ndarray | None:
    """The fingerprints in ``fingerprints.faiss`` (an index derived before ``fingerprints.u8``), copied into
    memory; None without that file."""
    path = directory / LEGACY_FAISS_FILE
    if not path.is_file():
        return None
    faiss = _faiss()
    index = faiss.read_index_binary(str(path), getattr(faiss, "IO_FLAG_MMAP_IFC", 0))  # mapped: one copy, not two
    return faiss.vector_to_array(index.xb).reshape(index.ntotal, index.code_size)


def _migrate(directory: Path, rows: int) -> None:
    """An index derived before ``fingerprints.u8``: its first ``rows`` fingerprints copied over from
    ``fingerprints.faiss`` (removed once the derive is complete). Without them ``_repair`` starts over."""
    legacy = None if not rows or (directory / FAISS_FILE).is_file() else _legacy_fingerprints(directory)
    if legacy is not None and len(legacy) >= rows:
        with atomic_path(directory / FAISS_FILE) as tmp, open(tmp, "wb") as fh:
            fh.write(memoryview(legacy[:rows]))  # contiguous: no copy


def sync_derived(index_dir: str | os.PathLike, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Extend the derived files to the store's current rows; return the new ``index_info.json``.

    ``progress(done, total)`` is called after each chunk with rows derived so far. A full disk
    raises ``DiskFullError`` naming the index and roughly the room the derive needs; the rows it
    appended are cut back by the next derive (``index_info.json`` still has the old count).
    """
    from nagindex import __version__

    directory = Path(index_dir)
    started = time.perf_counter()
    with open(directory / "derive.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one derive at a time; readers never take it
        # left by a kill -9
        remove_stale_temps(directory, [FAISS_FILE, LEGACY_FAISS_FILE, SOURCES_FILE, INFO_FILE, COUNTS_FILE])
        with IndexStore.open(directory) as store, store.snapshot() as snap:
            manifest = snap.manifest()
            info = _read_info(directory)
            same = info is not None and all(info["manifest"].get(k) == manifest.get(k)
                                            for k in ("created_at", "num_layers", "top_k", "width"))
            same = same and info["rows"] <= manifest["rows"]  # fewer rows: another store, made the same second
            derived, total = (info["rows"] if same else 0), manifest["rows"]
            with _derive_disk_errors(directory, _space_needed(manifest, total - derived)):
                rows = _extend(directory, snap, manifest, derived, progress)
                files = [f for f, _ in ROW_FILES.values()] + [DOCID_OFFSETS, DOCID_BYTES, FAISS_FILE, SOURCES_FILE,
                                                              COUNTS_FILE]
                info = {"rows": total, "store_rows": total, "derived_new_rows": total - rows,
                        "build_seconds": round(time.perf_counter() - started, 3),
                        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "nagindex_version": __version__, "files": files, "manifest": manifest}
                _write_json(directory / INFO_FILE, info)
            (directory / LEGACY_FAISS_FILE).unlink(missing_ok=True)  # migrated: FAISS_FILE has its rows now
    logger.info("derived %d new rows in %s (%d total)", total - rows, directory, total)
    return info


def derive_index(index_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """``sync_derived`` on every store folder of the index (its shards, or the folder itself): the derived
    files rebuilt from the stores where they are missing, short or behind (``nagindex info --derive``)."""
    from nagindex.index.catalog import shard_dirs

    return [sync_derived(path) for path in shard_dirs(index_dir) if (path / STORE_DIR).exists()]


def _extend(directory: Path, snap: StoreSnapshot, manifest: dict[str, Any], rows: int,
            progress: Callable[[int, int], None] | None) -> int:
    """Append the rows past ``rows`` (once repaired) to every derived file; return the rows kept by the repair."""
    _migrate(directory, rows)
    rows = _repair(directory, rows, manifest)
    counts = prefix_counts(directory, manifest, rows)  # an index derived before neuron_counts.i64: counted once
    total = manifest["rows"]
    with ExitStack() as files:
        handles = {n: files.enter_context(open(directory / f, "ab")) for n, (f, _) in ROW_FILES.items()}
        fp_fh = files.enter_context(open(directory / FAISS_FILE, "ab"))
        off_fh = files.enter_context(open(directory / DOCID_OFFSETS, "ab"))
        blob_fh = files.enter_context(open(directory / DOCID_BYTES, "ab"))
        base = blob_fh.tell()
        for first, chunk in snap.iter_chunks(rows):
            for name, fh in handles.items():
                fh.write(np.ascontiguousarray(getattr(chunk, name)).tobytes())
            fp_fh.write(fingerprints(chunk.codes, manifest["width"]).tobytes())
            counts += count_neurons(chunk.codes, manifest["width"])
            off_fh.write((chunk.docid_offsets[1:].astype("<u8") + np.uint64(base)).tobytes())
            blob_fh.write(chunk.docid_bytes)
            base += len(chunk.docid_bytes)
            if progress is not None:
                progress(first + len(chunk), total)
        for fh in (*handles.values(), fp_fh, off_fh, blob_fh):
            fh.flush()
            os.fsync(fh.fileno())
    _write_json(directory / SOURCES_FILE, snap.sources())
    write_counts(directory, total, counts)
    return rows


def _space_needed(manifest: dict[str, Any], new_rows: int) -> str:
    """Roughly the room a derive needs: its new rows (every derived file is appended to, none rewritten)."""
    # codes, tokens, positions, source, fingerprint, offset
    per_row = 2 * manifest["num_layers"] * manifest["top_k"] + 8 + 8 + 4 + FINGERPRINT_BYTES + 8
    need = new_rows * per_row
    size = f"{need / 1e9:,.1f} GB" if need >= 1e9 else f"{need / 1e6:,.1f} MB" if need >= 1e5 else f"{need:,} bytes"
    return f"the derived files need about {size}: {new_rows} new rows x {per_row} B plus their docids"


@contextmanager
def _derive_disk_errors(directory: Path, need: str) -> Iterator[None]:
    """A full disk anywhere in a derive (row files, FAISS, JSON) becomes one ``DiskFullError`` naming the
    index folder and the room needed, whichever file hit it (``atomic_path`` names only its own file)."""
    try:
        yield
    except (OSError, DiskFullError) as exc:
        cause = exc.__cause__ if isinstance(exc, DiskFullError) else exc
        if not disk_full(cause):
            raise
        raise disk_full_error(directory, cause, need=need) from cause


class DocidColumn:
    """All docids as an Arrow ``large_string`` column over the memory-mapped files (no Python list)."""

    def __init__(self, offsets: np.ndarray, blob: np.ndarray) -> None:
        self._offsets, self._blob = offsets, blob

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def arrow(self) -> Any:
        import pyarrow as pa

        return pa.LargeStringArray.from_buffers(len(self), pa.py_buffer(self._offsets.view("<i8")),
                                                pa.py_buffer(self._blob))

    def numpy(self) -> np.ndarray:
        """Object array of str (materialises every docid; for sorting prefer ``sort_indices``)."""
        return self.arrow().to_numpy(zero_copy_only=False)

    def take(self, rows: Sequence[int] | np.ndarray) -> list[str]:
        from nagindex.arrays import numeric_array

        return self.arrow().take(numeric_array(np.asarray(rows, dtype=np.int64))).to_pylist()

    def sort_indices(self) -> np.ndarray:
        """Rows in ascending docid order (byte-wise UTF-8, same as Python str order)."""
        import pyarrow.compute as pc

        return pc.sort_indices(self.arrow()).to_numpy()


def _memmap(path: Path, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """``path`` mapped read-only as ``shape``; a missing or short file (a copy of the store without its
    derived files, a deleted file) is an error naming it and the command that rebuilds it."""
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    need = int(np.prod(shape)) * np.dtype(dtype).itemsize
    have = path.stat().st_size if path.is_file() else None
    if have is None or have < need:
        state = "is missing" if have is None else f"holds {have:,} bytes, not the {need:,} of its rows"
        raise NagIndexError(f"{path} {state} ({path.parent / INFO_FILE} names {shape[0]:,} rows): rebuild the "
                            f"derived files from the store with `nagindex info --derive --index {path.parent}`")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


class FingerprintIndex:
    """Exhaustive Hamming k-NN over fingerprints where they lie (a memory map: nothing is copied).

    It runs FAISS's ``hammings_knn_hc``, the search ``IndexBinaryFlat.search`` runs, so the results are
    that index's, ties included; ``ntotal`` and ``code_size`` as on a FAISS index.
    """

    def __init__(self, codes: np.ndarray) -> None:
        self.codes = codes
        self.ntotal, self.code_size = codes.shape

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, rows)``, each ``(len(queries), k)``: the nearest rows first, -1 where there are none."""
        return _faiss().knn_hamming(np.ascontiguousarray(queries, dtype=np.uint8), self.codes, k)


class IndexView:
    """A read-only view of the derived snapshot: memory-mapped arrays, fingerprints searched in place."""

    def __init__(self, directory: Path, info: dict[str, Any], pending: int) -> None:
        self.directory, self.info, self.pending = directory, info, pending
        self.manifest: dict[str, Any] = info["manifest"]
        n, shape = info["rows"], (self.manifest["num_layers"], self.manifest["top_k"])
        self.codes = _memmap(directory / ROW_FILES["codes"][0], "<u2", (n, *shape))
        self.token_counts = _memmap(directory / ROW_FILES["token_counts"][0], "<i8", (n,))
        self.positions = _memmap(directory / ROW_FILES["positions"][0], "<i8", (n,))
        self.source_ids = _memmap(directory / ROW_FILES["source_ids"][0], "<u4", (n,))
        offsets = _memmap(directory / DOCID_OFFSETS, "<u8", (n + 1,)) if n else np.zeros(1, "<u8")
        self.docids = DocidColumn(offsets, _memmap(directory / DOCID_BYTES, "u1", (int(offsets[-1]),)))
        self.sources: list[str] = json.loads((directory / SOURCES_FILE).read_text("utf-8")) if n else []
        fp_path = directory / FAISS_FILE
        mapped = not n or (fp_path.is_file() and fp_path.stat().st_size >= n * FINGERPRINT_BYTES)
        self._fingerprints = _memmap(fp_path, "u1", (n, FINGERPRINT_BYTES)) if mapped else None  # None: legacy

    def __len__(self) -> int:
        return len(self.token_counts)

    @property
    def total_tokens(self) -> int:
        return int(self.token_counts.sum())

    def faiss_index(self) -> FingerprintIndex:
        """The fingerprints of exactly the derived rows, to search; an index derived before
        ``fingerprints.u8`` has its ``fingerprints.faiss`` read into memory on first use instead."""
        if self._fingerprints is None:
            legacy = _legacy_fingerprints(self.directory)
            if legacy is None or len(legacy) < len(self):
                raise NagIndexError(f"{self.directory / FAISS_FILE} is missing or short: run sync_derived")
            self._fingerprints = legacy[:len(self)]
        return FingerprintIndex(self._fingerprints)


def has_shard(path: Path) -> bool:
    """Whether a shard folder holds documents to read: its store, or (the store moved away, as for an
    index served read-only) its derived files, which are all a query reads."""
    return (path / STORE_DIR).exists() or (path / INFO_FILE).is_file()


def open_shard(index_dir: str | os.PathLike, rows: int | None = None) -> IndexView:
    """Open the derived snapshot of one store folder; rows committed but not derived yet are only counted.

    ``rows`` limits the view to the folder's first rows (every array, docids, fingerprints, the
    manifest's rows and tokens): a sharded index serves each shard's last reconciled rows while the
    shard appends. That prefix never changes under an append: derived files are only appended to,
    never cut below the rows ``index_info.json`` names. Rows past it are ``pending``, not logged
    (the caller says why they wait); a shard with fewer derived rows than ``rows`` is an error.
    """
    directory = Path(index_dir)
    info = _read_info(directory)
    try:
        with IndexStore.open(directory) as store:
            store_rows, manifest = len(store), store.manifest
    except NagIndexError:
        if info is None:
            raise
        store_rows, manifest = info["rows"], info["manifest"]
    if info is None:
        info = {"rows": 0, "store_rows": store_rows, "manifest": manifest}
    if rows is not None:
        if rows > info["rows"]:
            raise NagIndexError(f"{directory}: {info['rows']:,} documents derived, fewer than the {rows:,} asked "
                                "for (the folder was rebuilt or lost derived files)")
        view = IndexView(directory, {**info, "rows": rows}, max(0, store_rows - rows))
        if rows < info["rows"]:
            view.manifest = view.info["manifest"] = {**view.manifest, "rows": rows, "tokens": view.total_tokens}
        return view
    pending = max(0, store_rows - info["rows"])
    if pending:
        logger.warning("%s: %d rows are in the store but not derived yet (ingest running or "
                       "interrupted); run sync_derived to include them", directory, pending)
    return IndexView(directory, info, pending)
