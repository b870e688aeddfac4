"""Deduplication across shards: each docid is kept where a one-shard ingest would keep it.

Every shard deduplicates its own documents as it commits them (the first document
of an id that has a NAG wins). Two shards may still hold the same id, since they
never talk to each other while ingesting. ``reconcile`` settles it after each
ingest, the way one writer would have: the copy whose input comes first in the
catalog's input order (then the earlier line or row, then the lower shard) stays,
the others are listed as hidden rows of their shard and left out of every view.

Incremental: a reconcile looks at the rows committed since the last one only. It
keeps every reconciled row's docid hash, sorted (``reconciled-hashes.<g>.u64``,
with the rows' global ids ``shard << 40 | row`` in the same order in
``reconciled-rows.<g>.u64``). The new rows' hashes are sorted, looked up in the
memory-mapped file by binary search and merged into a new one block by block;
only rows whose hash occurs twice are compared by docid (exact: a collision is
just two docids), the earlier input winning even over a copy reconciled before.
Memory is about 40 bytes per new row plus one block; the work is the new rows plus
one sequential rewrite of the hash files.

Every reconcile writes its files under a new generation ``g`` (``hidden-<shard>.<g>.u64``,
generation 0 being the unnumbered files of indexes reconciled before generations),
then the catalog naming ``g``, the shard sizes those files describe (``rows``) and
a stamp of each shard's reconciled prefix (``stamps``: its store's ``created_at``
and its docids' byte length): a query reads the shards' first ``rows`` rows and
the hidden rows of the same generation, so it answers from the last reconciled
state while shards append past it. Files two generations old are removed (a query
that read the catalog just before the last reconcile still finds its own).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from nagindex.fsio import atomic_path
from nagindex.index.catalog import Catalog

logger = logging.getLogger(__name__)

ROW_BITS = 40  # a global id is shard << 40 | row, as in clusters.i64
_MERGE_BLOCK = 1 << 22  # reconciled hashes rewritten per step (32 MiB of both files)
_GENERATION_FILE = re.compile(r"^(?:hidden-[^.]+|reconciled-hashes|reconciled-rows)(?:\.(\d+))?\.u64$")


@njit(cache=True, nogil=True)
def _hash_docids(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    n = len(offsets) - 1
    out = np.empty(n, np.uint64)
    prime = np.uint64(0x100000001B3)
    for i in range(n):
        h = np.uint64(0xCBF29CE484222325)
        for j in range(offsets[i], offsets[i + 1]):  # FNV-1a over the docid's UTF-8 bytes
            h = (h ^ np.uint64(data[j])) * prime
        h ^= h >> np.uint64(33)  # murmur3's finaliser: similar docids spread over the whole range
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
        out[i] = h
    return out


def docid_hashes(view: Any, start: int) -> np.ndarray:
    """64-bit hashes of the docids of ``view``'s rows from ``start`` on, read where they lie."""
    ids = view.docids.arrow().slice(start)
    _, offsets, data = ids.buffers()
    offs = np.frombuffer(offsets, np.int64)[ids.offset:ids.offset + len(ids) + 1]
    return _hash_docids(offs, np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8))


def prefix_stamp(view: Any) -> list[Any]:
    """What identifies a shard's rows in ``view`` (opened at its reconciled rows): a rebuilt shard differs."""
    ids = view.docids.arrow()
    return [view.manifest.get("created_at"), int(np.frombuffer(ids.buffers()[1], np.int64)[ids.offset + len(ids)])]


def reconcile(catalog: Catalog) -> int:
    """Hide the later copies of ids repeated across shards among the rows added since the last reconcile
    (all rows the first time, or when a shard was rebuilt), record the new state; return rows hidden."""
    from nagindex.index.derived import has_shard, open_shard

    paths = catalog.shard_paths()
    views = [open_shard(path) if has_shard(path) else None for path in paths]
    sizes = [0 if v is None else len(v) for v in views]
    generation = int(catalog.dedup.get("generation", 0))
    start = _reconciled_rows(catalog, paths, views)
    if start == sizes:
        return int(catalog.dedup["hidden"])
    if start is None:  # the first reconcile, one of an index reconciled before generations, or a rebuilt shard
        start = [0] * len(views)
        old_hashes, old_rows = np.zeros(0, np.uint64), np.zeros(0, np.uint64)
        hidden = [np.zeros(0, np.int64) for _ in views]
    else:
        old_hashes, old_rows = (_mapped(path) for path in _reconciled_files(catalog.root, generation))
        hidden = [hidden_rows(catalog, s) for s in range(len(views))]
    new_hashes = np.concatenate([docid_hashes(v, a) for v, a in zip(views, start) if v is not None] or
                                [np.zeros(0, np.uint64)])
    new_rows = np.concatenate([(np.uint64(s) << np.uint64(ROW_BITS)) | np.arange(a, n, dtype=np.uint64)
                               for s, (a, n) in enumerate(zip(start, sizes))])
    order = np.argsort(new_hashes, kind="stable")
    new_hashes, new_rows = new_hashes[order], new_rows[order]
    losers, winners = _settle(catalog, views, _candidates(old_hashes, old_rows, new_hashes, new_rows))
    for s in range(len(views)):
        hidden[s] = np.union1d(np.setdiff1d(hidden[s], winners[s]), losers[s])
    generation += 1
    _merge(old_hashes, old_rows, new_hashes, new_rows, catalog.root, generation)
    for s, rows in enumerate(hidden):
        with atomic_path(catalog.hidden_file(s, generation)) as tmp:
            rows.astype("<u8").tofile(tmp)
    total = int(sum(len(h) for h in hidden))
    catalog.dedup = {"rows": sizes, "hidden": total, "generation": generation,
                     "stamps": [prefix_stamp(v) if v is not None and len(v) else None for v in views]}
    catalog.save()
    _remove_before(catalog.root, generation - 1)
    if total:
        logger.info("%d documents repeat an id held by an earlier input of another shard: hidden", total)
    return total


def hidden_rows(catalog: Catalog, shard: int) -> np.ndarray:
    """The sorted rows of ``shard`` hidden as later copies of an id at the catalog's generation (empty
    before any reconcile)."""
    path = catalog.hidden_file(shard)
    return np.fromfile(path, dtype="<u8").astype(np.int64) if path.is_file() else np.zeros(0, np.int64)


def _reconciled_rows(catalog: Catalog, paths: list[Path], views: list[Any]) -> list[int] | None:
    """The shard sizes of the last reconcile when its files can be built on: every shard still holds
    those rows unchanged (same stamp) and the hash files are there; else None (start over)."""
    from nagindex.index.derived import open_shard

    dedup, generation = catalog.dedup, int(catalog.dedup.get("generation", 0))
    rows, stamps = dedup.get("rows"), dedup.get("stamps")
    if not generation or not isinstance(rows, list) or len(rows) != len(views) or stamps is None:
        return None
    for view, n, stamp, path in zip(views, rows, stamps, paths):
        if n and (view is None or len(view) < n or prefix_stamp(open_shard(path, rows=n)) != stamp):
            return None
    if not all(f.is_file() and f.stat().st_size == 8 * sum(rows) for f in _reconciled_files(catalog.root, generation)):
        return None
    return list(rows)


def _reconciled_files(root: Path, generation: int) -> tuple[Path, Path]:
    """The sorted docid hashes of the rows reconciled at ``generation``, and their global ids."""
    return root / f"reconciled-hashes.{generation}.u64", root / f"reconciled-rows.{generation}.u64"


def _mapped(path: Path) -> np.ndarray:
    return np.memmap(path, "<u8", mode="r") if path.stat().st_size else np.zeros(0, np.uint64)


def _candidates(old_hashes: np.ndarray, old_rows: np.ndarray, new_hashes: np.ndarray,
                new_rows: np.ndarray) -> np.ndarray:
    """Global ids of every row whose docid hash occurs twice or more, old and new rows together, for
    the hashes of new rows (the only groups a reconcile can change)."""
    keys, counts = np.unique(new_hashes, return_counts=True)
    lo, hi = np.searchsorted(old_hashes, keys, "left"), np.searchsorted(old_hashes, keys, "right")
    shared = (counts > 1) | (hi > lo)
    new = new_rows[np.repeat(shared, counts)]
    lens, starts = (hi - lo)[shared], lo[shared]
    at = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
    return np.concatenate([new, np.asarray(old_rows[at], np.uint64)])


def _settle(catalog: Catalog, views: list[Any], members: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per shard, the rows of ``members`` that are later copies of an id (losers) and the rows that keep
    their id (winners): sorted by (docid, input rank, position, shard), the first of each docid wins."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rank = {item["key"]: i for i, item in enumerate(catalog.inputs)}
    shard_of = (members >> np.uint64(ROW_BITS)).astype(np.int64)
    row_of = (members & np.uint64((1 << ROW_BITS) - 1)).astype(np.int64)
    tables = []
    for s in np.unique(shard_of):
        view, rows = views[s], row_of[shard_of == s]
        source_rank = np.array([rank.get(src, len(rank)) for src in view.sources], dtype=np.int64)
        tables.append(pa.table({
            "docid": view.docids.arrow().take(pa.array(rows, pa.int64())),
            "rank": source_rank[np.asarray(view.source_ids)[rows]],
            "position": np.asarray(view.positions)[rows].astype(np.int64),
            "shard": np.full(len(rows), s, dtype=np.int32),
            "row": rows,
        }))
    none = [np.zeros(0, np.int64) for _ in views]
    if not tables:
        return none, list(none)
    table = pa.concat_tables(tables).sort_by([("docid", "ascending"), ("rank", "ascending"),
                                              ("position", "ascending"), ("shard", "ascending")])
    docids = table.column("docid").combine_chunks()
    repeat = np.zeros(len(table), dtype=bool)
    if len(table) > 1:  # a row whose docid equals the previous row's is a later copy
        repeat[1:] = pc.equal(docids.slice(1), docids.slice(0, len(table) - 1)).to_numpy(zero_copy_only=False)
    shards, rows = table.column("shard").to_numpy(), table.column("row").to_numpy()
    losers = [np.sort(rows[repeat & (shards == s)]) for s in range(len(views))]
    winners = [np.sort(rows[~repeat & (shards == s)]) for s in range(len(views))]
    return losers, winners


def _merge(old_hashes: np.ndarray, old_rows: np.ndarray, new_hashes: np.ndarray, new_rows: np.ndarray,
           root: Path, generation: int) -> None:
    """Write the reconciled hashes (and global ids) of ``generation``: the old ones with the new ones,
    sorted by hash, merged one block of old ones at a time."""
    at = np.searchsorted(old_hashes, new_hashes, "right")  # where each new hash goes among the old ones
    hashes_path, rows_path = _reconciled_files(root, generation)
    with atomic_path(hashes_path) as hashes_tmp, atomic_path(rows_path) as rows_tmp, \
            open(hashes_tmp, "wb") as hashes_fh, open(rows_tmp, "wb") as rows_fh:
        done = 0
        for lo in range(0, max(len(old_hashes), 1), _MERGE_BLOCK):
            hi = min(lo + _MERGE_BLOCK, len(old_hashes))
            upto = len(new_hashes) if hi == len(old_hashes) else int(np.searchsorted(at, hi, "right"))
            where = at[done:upto] - lo
            for fh, old, new in ((hashes_fh, old_hashes, new_hashes), (rows_fh, old_rows, new_rows)):
                fh.write(np.insert(np.asarray(old[lo:hi]), where, new[done:upto]).astype("<u8").tobytes())
            done = upto


def _remove_before(root: Path, generation: int) -> None:
    """Remove the reconcile files of generations older than ``generation``."""
    for path in root.iterdir():
        match = _GENERATION_FILE.match(path.name)
        if match and int(match.group(1) or 0) < generation:
            path.unlink(missing_ok=True)
