"""Per-document side files (``--quality-file``, ``--group-file``) aligned to one shard's rows in one streamed pass.

A shard used to read the whole side file, keep its first row per id, then hash-join it to every 1M-row
scratch block and every candidate table: seconds per block, and the whole file in memory, for files as
large as the pool. Here the shard's docids are hashed once (``DocidLookup``, an open-addressing table
over the Arrow string buffers; a shard's docids never change, so it can live as long as the shard), the
file is read once in record batches (``keyed_batches``: parquet through ``ParquetFile.iter_batches``,
JSONL in line chunks with the checks and messages of ``sources.read_keyed_values``), each batch probes
the table, and one gather at the end gives every row its value. Time is the shard's rows plus the file's
rows, each once; memory is the shard's tables plus one batch, never the file.

The semantics are those of the joins it replaces: the first row of an id repeated in the file wins (also
when its value is null), a document the file does not name gets null, and a docid repeated in the shard
gets its id's value at every row.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from numba import njit

from nagindex.errors import InputError

#: rows per record batch read from the file: one batch is all of the file ever held in memory
BATCH_ROWS = 65536


@njit(cache=True, nogil=True)
def _hash(data: np.ndarray, lo: int, hi: int) -> np.uint64:  # pragma: no cover - compiled
    """FNV-1a over bytes ``data[lo:hi]`` seeded with their length, then murmur3's finaliser (mixes the low bits
    the table's slot is taken from)."""
    h = np.uint64(0xCBF29CE484222325) ^ np.uint64(hi - lo)
    for j in range(lo, hi):
        h = (h ^ np.uint64(data[j])) * np.uint64(0x100000001B3)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


@njit(cache=True, nogil=True)
def _same(a: np.ndarray, a_lo: int, a_hi: int, b: np.ndarray, b_lo: int, b_hi: int) -> bool:  # pragma: no cover
    """Whether bytes ``a[a_lo:a_hi]`` equal ``b[b_lo:b_hi]``."""
    if a_hi - a_lo != b_hi - b_lo:
        return False
    for j in range(a_hi - a_lo):
        if a[a_lo + j] != b[b_lo + j]:
            return False
    return True


@njit(cache=True, nogil=True)
def _hash_all(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """``_hash`` of every string, in a pass over the bytes in order (so the probes after it only wait on the table)."""
    n = len(offsets) - 1
    out = np.empty(n, np.uint64)
    for i in range(n):
        out[i] = _hash(data, offsets[i], offsets[i + 1])
    return out


@njit(cache=True, nogil=True)
def _find(slots: np.ndarray, bounds: np.ndarray, data: np.ndarray, h: np.uint64,
          q_data: np.ndarray, lo: int, hi: int) -> tuple:  # pragma: no cover - compiled
    """``(distinct id or -1, slot)`` of bytes ``q_data[lo:hi]`` with hash ``h``: linear probing from ``h``'s low
    bits; a slot packs the hash's high 32 bits over ``id + 1`` (0: empty), so a slot of another id is passed
    over without reading its bytes, and the one whose tag matches is compared byte for byte."""
    mask = np.uint64(len(slots) - 1)
    tag = h >> np.uint64(32)
    slot = h & mask
    while True:
        packed = slots[slot]
        if packed == 0:
            return -1, slot
        if packed >> np.uint64(32) == tag:
            k = np.int64(packed & np.uint64(0xFFFFFFFF)) - 1
            if _same(data, bounds[k, 0], bounds[k, 1], q_data, lo, hi):
                return k, slot
        slot = (slot + np.uint64(1)) & mask


@njit(cache=True, nogil=True)
def _build(offsets: np.ndarray, data: np.ndarray, valid: np.ndarray, bits: int) -> tuple:  # pragma: no cover
    """The table of distinct docids: ``(slots, byte bounds per distinct id)``, and each row's distinct id
    (-1 for a null docid). ``2**bits`` slots, at least twice the rows."""
    n = len(offsets) - 1
    slots = np.zeros(1 << bits, np.uint64)
    bounds = np.empty((n, 2), np.int64)
    unique_of_row = np.full(n, -1, np.int32)
    u = 0
    for i in range(n):
        if not valid[i]:
            continue
        lo, hi = offsets[i], offsets[i + 1]
        h = _hash(data, lo, hi)
        k, slot = _find(slots, bounds, data, h, data, lo, hi)
        if k < 0:
            slots[slot] = ((h >> np.uint64(32)) << np.uint64(32)) | np.uint64(u + 1)
            bounds[u, 0], bounds[u, 1] = lo, hi
            k = u
            u += 1
        unique_of_row[i] = k
    return slots, bounds if u == n else bounds[:u].copy(), unique_of_row  # no second copy for distinct docids


@njit(cache=True, nogil=True)
def _claim(slots: np.ndarray, bounds: np.ndarray, data: np.ndarray, b_offsets: np.ndarray, b_data: np.ndarray,
           b_valid: np.ndarray, claimed: np.ndarray) -> tuple:  # pragma: no cover - compiled
    """``(batch rows, distinct ids)`` of the batch rows, in order, whose id the shard holds and no earlier file
    row has claimed; marks those ids in ``claimed``. In-order claiming is what makes the first row win.

    In three passes (slot tags, then bytes, then claims) rather than one: each pass's rows are independent,
    so the CPU overlaps their cache misses in the tables, twice as fast at 10M docids."""
    n = len(b_offsets) - 1
    hashes = _hash_all(b_offsets, b_data)
    mask = np.uint64(len(slots) - 1)
    found = np.full(n, -1, np.int64)
    for i in range(n):  # the first slot with the hash's tag: almost always the id, when the shard has it
        if not b_valid[i]:
            continue
        tag = hashes[i] >> np.uint64(32)
        slot = hashes[i] & mask
        while slots[slot] != 0:
            if slots[slot] >> np.uint64(32) == tag:
                found[i] = np.int64(slots[slot] & np.uint64(0xFFFFFFFF)) - 1
                break
            slot = (slot + np.uint64(1)) & mask
    for i in range(n):  # the bytes confirm it; a 32-bit tag shared by another id sends the row to a full probe
        k = found[i]
        if k >= 0 and not _same(data, bounds[k, 0], bounds[k, 1], b_data, b_offsets[i], b_offsets[i + 1]):
            found[i], _ = _find(slots, bounds, data, hashes[i], b_data, b_offsets[i], b_offsets[i + 1])
    rows = np.empty(n, np.int64)
    ids = np.empty(n, np.int32)
    m = 0
    for i in range(n):
        k = found[i]
        if k >= 0 and not claimed[k]:
            claimed[k] = True
            rows[m], ids[m] = i, k
            m += 1
    return rows[:m], ids[:m]


def _string_buffers(values: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """``(large_string array, offsets, bytes, valid)`` of an Arrow string array or chunked array, offsets
    already shifted by a slice's offset (no copy of the bytes)."""
    import pyarrow as pa

    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_string())
    _, offsets, data = arr.buffers()
    offs = np.frombuffer(offsets, np.int64)[arr.offset:arr.offset + len(arr) + 1] if offsets is not None else \
        np.zeros(1, np.int64)
    blob = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return arr, offs, blob, arr.is_valid().to_numpy(zero_copy_only=False)


class DocidLookup:
    """One shard's docids hashed once, to align any number of side files to its rows.

    Holds 4 bytes per row (its distinct id) and 32-48 per distinct docid (2-4 slots of 8 bytes, its bytes'
    bounds) beside the docids themselves, which it keeps a reference to: about 0.47 GB for 10M distinct docids.
    """

    def __init__(self, docids: Any) -> None:
        """``docids``: the shard's docids in row order (Arrow string or large_string, array or chunked)."""
        self._docids, self._offsets, self._data, valid = _string_buffers(docids)
        bits = max(1, (2 * len(self._docids) - 1).bit_length())
        self._slots, self._bounds, self._unique_of_row = _build(self._offsets, self._data, valid, bits)

    def __len__(self) -> int:
        return len(self._docids)

    def align(self, batches: Iterable[tuple[Any, Any]], numeric: bool) -> Any:
        """Each row's value from ``(ids, values)`` batches in file order (``keyed_batches``), first row of an id
        winning, null where no batch names the row's docid: float64 if ``numeric`` (the data buffer holds NaN
        under each null, so ``np.frombuffer(result.buffers()[1], np.float64)`` is the NaN-filled column
        without a copy), else string."""
        import pyarrow as pa

        from nagindex.arrays import numeric_array, string_array

        n_unique = len(self._bounds)  # plus one sentinel slot, never claimed, that a null docid's -1 picks
        claimed = np.zeros(n_unique + 1, bool)
        by_unique = np.full(n_unique + 1, np.nan) if numeric else np.full(n_unique + 1, -1, np.int64)
        won: list[Any] = []  # strings: the claimed values, batch by batch, indexed by ``by_unique``
        kept = 0
        for ids, values in batches:
            _, b_offsets, b_data, b_valid = _string_buffers(ids)
            rows, unique = _claim(self._slots, self._bounds, self._data, b_offsets, b_data, b_valid, claimed)
            if numeric:
                by_unique[unique] = values.to_numpy(zero_copy_only=False)[rows]
            elif len(rows):
                won.append(values.take(numeric_array(rows)))
                by_unique[unique] = np.arange(kept, kept + len(rows))
                kept += len(rows)
        of_row = self._unique_of_row
        valid = claimed[of_row]
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
        nulls = len(valid) - int(np.count_nonzero(valid))
        if numeric:
            column = by_unique[of_row]
            return pa.Array.from_buffers(pa.float64(), len(column), [bitmap, pa.py_buffer(column)], null_count=nulls)
        where = by_unique[of_row]  # -1 only under nulls, which take() never reads
        indices = pa.Array.from_buffers(pa.int64(), len(where), [bitmap, pa.py_buffer(where)], null_count=nulls)
        return (pa.concat_arrays(won) if won else string_array([])).take(indices)


def keyed_batches(path: Path, id_field: str, column: str, numeric: bool) -> Iterator[tuple[Any, Any]]:
    """``(ids, values)`` Arrow batches of a side file in file order, at most ``BATCH_ROWS`` rows each, typed as
    ``sources.read_keyed_values`` types the whole file (large_string ids; float64 values, null -> NaN, or
    string values) and with its errors. Parquet and JSONL stream; a ``.json`` list comes as one batch."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        yield from _parquet_batches(path, id_field, column, numeric)
    elif name.endswith((".jsonl", ".jsonl.gz")):
        yield from _jsonl_batches(path, id_field, column, numeric)
    else:
        from nagindex.sources.records import read_keyed_values

        yield read_keyed_values(path, id_field, column, numeric)


def align(path: Path, id_field: str, column: str, numeric: bool, docids: Any) -> Any:
    """Each of ``docids``' value in the side file ``path`` (``DocidLookup.align``); one streamed read of the file.

    A shard aligning several files, or one file per query, keeps one ``DocidLookup`` instead."""
    return DocidLookup(docids).align(keyed_batches(Path(path), id_field, column, numeric), numeric)


def _jsonl_batches(path: Path, id_field: str, column: str, numeric: bool) -> Iterator[tuple[Any, Any]]:
    """JSONL lines to batches through ``sources``' line reader and value checks (file:line in every error)."""
    import pyarrow as pa

    from nagindex.arrays import numeric_array, string_array
    from nagindex.sources.records import _float, _jsonl_objects, _text

    def batch() -> tuple[Any, Any]:
        arrow_values = numeric_array(np.array(values, np.float64)) if numeric else string_array(values)
        return string_array(ids).cast(pa.large_string()), arrow_values.cast(pa.float64() if numeric else pa.string())

    ids: list[str] = []
    values: list[Any] = []
    for lineno, row in _jsonl_objects(path):
        if id_field not in row or column not in row:
            raise InputError(f"{path}:{lineno}: needs fields {id_field!r} and {column!r}")
        ids.append(str(row[id_field]))
        values.append(_float(row[column], path, lineno, column) if numeric else _text(row[column]))
        if len(ids) == BATCH_ROWS:
            yield batch()
            ids, values = [], []
    if ids:
        yield batch()


def _parquet_batches(path: Path, id_field: str, column: str, numeric: bool) -> Iterator[tuple[Any, Any]]:
    """The two columns of a parquet file, ``BATCH_ROWS`` rows at a time; a value that is not a number is an
    error naming the file, its row (1-based) and the column."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from nagindex.sources.records import _float

    try:
        reader = pq.ParquetFile(path)
        names = reader.schema_arrow.names
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a broken file
        raise InputError(f"{path}: cannot read parquet: {exc}") from exc
    if id_field not in names or column not in names:
        raise InputError(f"{path}: needs columns {id_field!r} and {column!r} (has {', '.join(names)})")
    batches = reader.iter_batches(batch_size=BATCH_ROWS, columns=[id_field, column])
    start = 0
    while True:
        try:
            batch = next(batches, None)
        except Exception as exc:  # noqa: BLE001 - as above, for a page broken halfway through the file
            raise InputError(f"{path}: cannot read parquet: {exc}") from exc
        if batch is None:
            return
        raw = batch.column(column)
        try:
            ids = pc.cast(batch.column(id_field), pa.large_string())
            values = pc.fill_null(pc.cast(raw, pa.float64()), float("nan")) if numeric else pc.cast(raw, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            if numeric:  # error path only: name the first value that is not a number, as JSONL errors do
                for i, value in enumerate(raw.to_pylist()):
                    _float(value, path, start + i + 1, column)
            raise InputError(f"{path}: columns {id_field!r}, {column!r}: {exc}") from exc
        yield ids, values
        start += batch.num_rows
