"""Deduplication across shards: each docid is kept where a one-shard ingest would keep it.

Every shard deduplicates its own documents as it commits them (the first document
of an id that has a NAG wins). Two shards may still hold the same id, since they
never talk to each other while ingesting. ``reconcile`` settles it after each
ingest, the way one writer would have: the copy whose input comes first in the
catalog's input order (then the earlier line or row, then the lower shard) stays,
the others are listed as hidden rows of their shard and left out of every view.

Incremental and bucketed: a reconcile looks at the rows committed since the last one
only, and at one bucket of docid hashes at a time. The 64-bit hash space is cut into
B buckets by its top bits (B a power of two, by default one bucket per ``BUCKET_ROWS``
rows of the pool; B only grows, an old bucket splitting into contiguous slices). Each
bucket keeps its reconciled rows' hashes, sorted (``reconciled-hashes-<b>of<B>.<g>.u64``,
with the rows' global ids ``shard << 40 | row`` in the same order in
``reconciled-rows-<b>of<B>.<g>.u64``; with B = 1 the names are the single-file layout of
earlier versions, ``reconciled-hashes.<g>.u64``, which is read as one bucket and split on
the next reconcile that wants more). A reconcile runs in two steps, each a set of tasks
run here, on ``workers`` local processes or as Ray tasks:

1. per shard with new rows: their docids hashed where they lie, a block at a time, each
   block sorted by hash into a spill folder (``dedup-new.<g>/``) with its bucket offsets;
2. per bucket with new rows: its new hashes gathered from every shard's blocks, looked up
   in the memory-mapped old bucket by binary search and merged into a new bucket file block
   by block; only rows whose hash occurs twice are compared by docid (exact: a collision is
   just two docids), the earlier input winning even over a copy reconciled before.

Memory is a block of hashes per shard task, and about 40 bytes per new row of one bucket
plus a merge block per bucket task; the work is the new rows plus one sequential rewrite of
each bucket that got a new row (a bucket with none keeps its file and its generation, listed
in the catalog's ``buckets``).

Every reconcile writes its files under a new generation ``g`` (``hidden-<shard>.<g>.u64``,
generation 0 being the unnumbered files of indexes reconciled before generations),
then the catalog naming ``g``, each bucket's generation, the shard sizes those files
describe (``rows``) and a stamp of each shard's reconciled prefix (``stamps``: its store's
``created_at`` and its docids' byte length): a query reads the shards' first ``rows`` rows
and the hidden rows of the same generation, so it answers from the last reconciled state
while shards append past it. A reconcile stopped midway leaves the catalog as it was; run
again, it writes the same generation over. Files two generations old that the catalog no
longer names are removed (a query that read the catalog just before the last reconcile
still finds its own).
"""
from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from nagindex.errors import NagIndexError
from nagindex.fsio import atomic_path
from nagindex.index.catalog import Catalog

logger = logging.getLogger(__name__)

ROW_BITS = 40  # a global id is shard << 40 | row, as in clusters.i64
BUCKET_ROWS = 1 << 22  # pool rows per bucket the default bucket count aims at (64 MiB of hashes and ids)
MAX_BUCKETS = 1 << 16
_MERGE_BLOCK = 1 << 22  # reconciled hashes rewritten per step (32 MiB of both files)
_HASH_BLOCK = 1 << 22  # docids hashed and sorted per step of a shard task
_TASKS_PER_WORKER = 4  # bucket tasks per local worker
_RAY_TASK_BUCKETS = 16  # buckets per Ray task
_GENERATION_FILE = re.compile(
    r"^(?:hidden-[^.]+|reconciled-(?:hashes|rows)(?:-\d+of\d+)?)(?:\.(\d+))?\.u64$")


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


def docid_hashes(view: Any, start: int, stop: int | None = None) -> np.ndarray:
    """64-bit hashes of the docids of ``view``'s rows ``start:stop`` (to the end by default), read where they lie."""
    ids = view.docids.arrow()
    ids = ids.slice(start, (len(ids) if stop is None else stop) - start)
    _, offsets, data = ids.buffers()
    offs = np.frombuffer(offsets, np.int64)[ids.offset:ids.offset + len(ids) + 1]
    return _hash_docids(offs, np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8))


def prefix_stamp(view: Any) -> list[Any]:
    """What identifies a shard's rows in ``view`` (opened at its reconciled rows): a rebuilt shard differs."""
    ids = view.docids.arrow()
    return [view.manifest.get("created_at"), int(np.frombuffer(ids.buffers()[1], np.int64)[ids.offset + len(ids)])]


def reconcile(catalog: Catalog, buckets: int | None = None, workers: int = 1, ray_address: str | None = None) -> int:
    """Hide the later copies of ids repeated across shards among the rows added since the last reconcile
    (all rows the first time, or when a shard was rebuilt), record the new state; return rows hidden.

    ``buckets``: hash buckets (a power of two; default one per ``BUCKET_ROWS`` rows of the pool, never
    fewer than the index has). The shard and bucket tasks run here, on ``workers`` local processes, or
    as Ray tasks on the cluster at ``ray_address`` (its nodes must see the index folder)."""
    from nagindex.index.derived import has_shard, open_shard

    if workers < 1:
        raise NagIndexError(f"--workers must be >= 1, got {workers}")
    paths = catalog.shard_paths()
    views = [open_shard(path) if has_shard(path) else None for path in paths]
    sizes = [0 if v is None else len(v) for v in views]
    generation = int(catalog.dedup.get("generation", 0))
    start = _reconciled_rows(catalog, paths, views)
    if start == sizes:
        return int(catalog.dedup["hidden"])
    if start is None:  # the first reconcile, one of an index reconciled before generations, or a rebuilt shard
        start, old = [0] * len(views), [0]
        hidden = [np.zeros(0, np.int64) for _ in views]
    else:
        old = _bucket_generations(catalog.dedup)
        hidden = [hidden_rows(catalog, s) for s in range(len(views))]
    count = _bucket_count(buckets, sum(sizes), len(old))
    generation += 1
    spill = catalog.root / f"dedup-new.{generation}"
    shutil.rmtree(spill, ignore_errors=True)  # left by a reconcile stopped midway
    spill.mkdir()
    try:
        new = [s for s in range(len(views)) if sizes[s] > start[s]]
        offsets = dict(zip(new, run_tasks(_partition_shard, [
            (str(paths[s]), s, start[s], sizes[s], count, str(spill)) for s in new], workers, ray_address)))
        filled = np.zeros(count, bool)
        for blocks in offsets.values():
            filled |= (np.diff(blocks, axis=1) > 0).any(axis=0)
        split = count != len(old)
        todo = [b for b in range(count) if filled[b] or (split and old[b * len(old) // count])]
        rank = {item["key"]: i for i, item in enumerate(catalog.inputs)}
        shards = [(str(path), n) for path, n in zip(paths, sizes)]
        groups = np.array_split(np.array(todo, np.int64), _task_count(len(todo), workers, ray_address))
        settled = [pair for pairs in run_tasks(_settle_buckets, [(
            str(catalog.root), [(int(b), old[b * len(old) // count]) for b in group], count, len(old), generation,
            str(spill), rank, shards, {s: blocks[:, group[0]:group[-1] + 2] for s, blocks in offsets.items()})
            for group in groups if len(group)], workers, ray_address) for pair in pairs]
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    gens = [0] * count if split else list(old)
    for b in todo:
        gens[b] = generation
    for s in range(len(views)):  # buckets hold disjoint rows: their changes apply together
        winners = np.concatenate([np.zeros(0, np.int64), *(w[s] for _, w in settled)])
        losers = np.concatenate([np.zeros(0, np.int64), *(lo[s] for lo, _ in settled)])
        hidden[s] = np.union1d(np.setdiff1d(hidden[s], winners), losers)
    for s, rows in enumerate(hidden):
        with atomic_path(catalog.hidden_file(s, generation)) as tmp:
            rows.astype("<u8").tofile(tmp)
    total = int(sum(len(h) for h in hidden))
    catalog.dedup = {"rows": sizes, "hidden": total, "generation": generation, "buckets": gens,
                     "stamps": [prefix_stamp(v) if v is not None and len(v) else None for v in views]}
    catalog.save()
    _remove_before(catalog.root, generation - 1, {p.name for b, g in enumerate(gens) if g
                                                   for p in bucket_files(catalog.root, b, count, g)})
    if total:
        logger.info("%d documents repeat an id held by an earlier input of another shard: hidden", total)
    return total


def hidden_rows(catalog: Catalog, shard: int) -> np.ndarray:
    """The sorted rows of ``shard`` hidden as later copies of an id at the catalog's generation (empty
    before any reconcile)."""
    path = catalog.hidden_file(shard)
    return np.fromfile(path, dtype="<u8").astype(np.int64) if path.is_file() else np.zeros(0, np.int64)


def bucket_files(root: Path, bucket: int, count: int, generation: int) -> tuple[Path, Path]:
    """The sorted docid hashes of ``bucket`` (of ``count``) written at ``generation``, and their global ids;
    one bucket keeps the names of the single-file layout."""
    tag = "" if count == 1 else f"-{bucket}of{count}"
    return root / f"reconciled-hashes{tag}.{generation}.u64", root / f"reconciled-rows{tag}.{generation}.u64"


def run_tasks(fn: Callable[..., Any], tasks: Sequence[tuple[Any, ...]], workers: int,
              ray_address: str | None) -> list[Any]:
    """``fn(*task)`` of every task, in task order: as Ray tasks at ``ray_address``, on ``workers`` local
    processes (spawned, so no Ray or tqdm thread is forked), or here."""
    if ray_address is not None:
        from nagindex.cluster import ClusterWatch, connect

        ray = connect(ray_address)
        watch = ClusterWatch(ray, ray_address, "the index is as before this reconcile: ingest again to finish it")
        remote = ray.remote(fn)
        return [watch.get(ref) for ref in [remote.remote(*task) for task in tasks]]
    if workers > 1 and len(tasks) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(tasks)), multiprocessing.get_context("spawn")) as pool:
            return list(pool.map(fn, *zip(*tasks)))
    return [fn(*task) for task in tasks]


def _bucket_generations(dedup: dict[str, Any]) -> list[int]:
    """Each bucket's generation (0: empty, no file); a record from before buckets is one bucket."""
    return [int(g) for g in dedup.get("buckets", [dedup.get("generation", 0)])]


def _bucket_count(requested: int | None, pool_rows: int, current: int) -> int:
    """The bucket count for a pool of ``pool_rows``: ``requested`` or one per ``BUCKET_ROWS`` rows, a power of
    two, at least ``current`` (a bucket splits into contiguous slices; merging them back is never needed)."""
    if requested is not None and (requested < 1 or requested > MAX_BUCKETS or requested & (requested - 1)):
        raise NagIndexError(f"dedup buckets must be a power of two from 1 to {MAX_BUCKETS}, got {requested}")
    wanted = requested or min(MAX_BUCKETS, 1 << max(0, (pool_rows - 1) // BUCKET_ROWS).bit_length())
    return max(wanted, current)


def _bucket_bounds(count: int) -> np.ndarray:
    """The first hash of each of ``count`` buckets (top bits of the hash)."""
    shift = 64 - (count.bit_length() - 1)
    return np.array([b << shift if shift < 64 else 0 for b in range(count)], np.uint64)


def _partition_shard(path: str, shard: int, start: int, stop: int, count: int, spill: str) -> np.ndarray:
    """A shard task: hash rows ``start:stop`` of ``shard`` a block at a time, write each block sorted by
    hash (hashes, then global ids) to the spill folder; return each block's bucket offsets in those files
    (blocks x count + 1)."""
    from nagindex.index.derived import open_shard

    view, bounds, offsets, done = open_shard(path, rows=stop), _bucket_bounds(count), [], 0
    hashes_path, rows_path = _spill_files(Path(spill), shard)
    with open(hashes_path, "wb") as hashes_fh, open(rows_path, "wb") as rows_fh:
        for lo in range(start, stop, _HASH_BLOCK):
            hashes = docid_hashes(view, lo, min(lo + _HASH_BLOCK, stop))
            order = np.argsort(hashes, kind="stable")
            hashes = hashes[order]
            rows = (np.uint64(shard) << np.uint64(ROW_BITS)) | (np.uint64(lo) + order.astype(np.uint64))
            hashes_fh.write(hashes.astype("<u8").tobytes())
            rows_fh.write(rows.astype("<u8").tobytes())
            offsets.append(done + np.append(np.searchsorted(hashes, bounds, "left"), len(hashes)))
            done += len(hashes)
    return np.array(offsets, np.int64).reshape(-1, count + 1)


def _spill_files(spill: Path, shard: int) -> tuple[Path, Path]:
    return spill / f"{shard}.hashes.u64", spill / f"{shard}.rows.u64"


def _task_count(buckets: int, workers: int, ray_address: str | None) -> int:
    """Bucket tasks to run: a few per worker (so a slow bucket does not hold the others back), each settling
    a run of buckets one at a time and opening the shards it reads once."""
    wanted = -(-buckets // _RAY_TASK_BUCKETS) if ray_address is not None else _TASKS_PER_WORKER * workers
    return max(1, min(buckets, wanted))


def _settle_buckets(root: str, buckets: list[tuple[int, int]], count: int, old_count: int, generation: int,
                    spill: str, rank: dict[str, int], shards: list[tuple[str, int]], blocks: dict[int, np.ndarray],
                    ) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
    """A bucket task: for each (bucket, its old generation) of a run of buckets, its new rows (from the
    spilled blocks of each shard in ``blocks``, offsets per block from the run's first bucket on) against its
    old rows (a slice of the old bucket it lies in), the candidates settled by docid (``shards``: each shard's
    folder and rows, opened once), the merged bucket written at ``generation``; return, per bucket, the rows
    that became later copies (losers) and the rows that keep their id (winners) per shard."""
    from nagindex.index.derived import open_shard

    views: dict[int, Any] = {}

    def view(shard: int) -> Any:
        if shard not in views:
            views[shard] = open_shard(shards[shard][0], rows=shards[shard][1])
        return views[shard]

    first, out = buckets[0][0], []
    for bucket, old_generation in buckets:
        new_hashes, new_rows = [np.zeros(0, np.uint64)], [np.zeros(0, np.uint64)]
        for shard, offsets in sorted(blocks.items()):
            at = offsets[:, bucket - first:bucket - first + 2]
            for path, parts in zip(_spill_files(Path(spill), shard), (new_hashes, new_rows)):
                mapped = _mapped(path)
                parts.extend(np.asarray(mapped[lo:hi]) for lo, hi in at)
        new_h, new_r = np.concatenate(new_hashes), np.concatenate(new_rows)
        order = np.argsort(new_h, kind="stable")  # equal hashes stay in shard, then row order
        new_h, new_r = new_h[order], new_r[order]
        old_h, old_r = _old_bucket(Path(root), bucket, count, old_count, old_generation)
        out.append(_settle(rank, view, len(shards), _candidates(old_h, old_r, new_h, new_r)))
        _merge(old_h, old_r, new_h, new_r, bucket_files(Path(root), bucket, count, generation))
    return out


def _old_bucket(root: Path, bucket: int, count: int, old_count: int, old_generation: int,
                ) -> tuple[np.ndarray, np.ndarray]:
    """The reconciled hashes and ids of ``bucket`` of ``count``: the slice of the old bucket (of
    ``old_count``) that holds its hashes, memory-mapped."""
    if not old_generation:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    hashes, rows = (_mapped(p) for p in bucket_files(root, bucket * old_count // count, old_count, old_generation))
    if count == old_count:
        return hashes, rows
    bounds = _bucket_bounds(count)
    lo = int(np.searchsorted(hashes, bounds[bucket], "left"))
    hi = len(hashes) if bucket + 1 == count else int(np.searchsorted(hashes, bounds[bucket + 1], "left"))
    return hashes[lo:hi], rows[lo:hi]


def _reconciled_rows(catalog: Catalog, paths: list[Path], views: list[Any]) -> list[int] | None:
    """The shard sizes of the last reconcile when its files can be built on: every shard still holds
    those rows unchanged (same stamp) and the bucket files are there; else None (start over)."""
    from nagindex.index.derived import open_shard

    dedup, generation = catalog.dedup, int(catalog.dedup.get("generation", 0))
    rows, stamps = dedup.get("rows"), dedup.get("stamps")
    if not generation or not isinstance(rows, list) or len(rows) != len(views) or stamps is None:
        return None
    for view, n, stamp, path in zip(views, rows, stamps, paths):
        if n and (view is None or len(view) < n or prefix_stamp(open_shard(path, rows=n)) != stamp):
            return None
    gens = _bucket_generations(dedup)
    files = [f for b, g in enumerate(gens) if g for f in bucket_files(catalog.root, b, len(gens), g)]
    if not all(f.is_file() for f in files) or sum(f.stat().st_size for f in files) != 16 * sum(rows):
        return None
    return list(rows)


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


def _settle(rank: dict[str, int], view_of: Callable[[int], Any], n_shards: int,
            members: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per shard, the rows of ``members`` that are later copies of an id (losers) and the rows that keep
    their id (winners): sorted by (docid, input rank, position, shard), the first of each docid wins.
    ``rank``: each input's place in the catalog; ``view_of``: a shard's view at its reconciled rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    shard_of = (members >> np.uint64(ROW_BITS)).astype(np.int64)
    row_of = (members & np.uint64((1 << ROW_BITS) - 1)).astype(np.int64)
    tables = []
    for s in np.unique(shard_of):
        view, rows = view_of(int(s)), row_of[shard_of == s]
        source_rank = np.array([rank.get(src, len(rank)) for src in view.sources], dtype=np.int64)
        tables.append(pa.table({
            "docid": view.docids.arrow().take(pa.array(rows, pa.int64())),
            "rank": source_rank[np.asarray(view.source_ids)[rows]],
            "position": np.asarray(view.positions)[rows].astype(np.int64),
            "shard": np.full(len(rows), s, dtype=np.int32),
            "row": rows,
        }))
    none = [np.zeros(0, np.int64) for _ in range(n_shards)]
    if not tables:
        return none, list(none)
    table = pa.concat_tables(tables).sort_by([("docid", "ascending"), ("rank", "ascending"),
                                              ("position", "ascending"), ("shard", "ascending")])
    docids = table.column("docid").combine_chunks()
    repeat = np.zeros(len(table), dtype=bool)
    if len(table) > 1:  # a row whose docid equals the previous row's is a later copy
        repeat[1:] = pc.equal(docids.slice(1), docids.slice(0, len(table) - 1)).to_numpy(zero_copy_only=False)
    of, rows = table.column("shard").to_numpy(), table.column("row").to_numpy()
    losers = [np.sort(rows[repeat & (of == s)]) for s in range(n_shards)]
    winners = [np.sort(rows[~repeat & (of == s)]) for s in range(n_shards)]
    return losers, winners


def _merge(old_hashes: np.ndarray, old_rows: np.ndarray, new_hashes: np.ndarray, new_rows: np.ndarray,
           paths: tuple[Path, Path]) -> None:
    """Write a bucket's reconciled hashes (and global ids) to ``paths``: the old ones with the new ones,
    sorted by hash, merged one block of old ones at a time."""
    at = np.searchsorted(old_hashes, new_hashes, "right")  # where each new hash goes among the old ones
    with atomic_path(paths[0]) as hashes_tmp, atomic_path(paths[1]) as rows_tmp, \
            open(hashes_tmp, "wb") as hashes_fh, open(rows_tmp, "wb") as rows_fh:
        done = 0
        for lo in range(0, max(len(old_hashes), 1), _MERGE_BLOCK):
            hi = min(lo + _MERGE_BLOCK, len(old_hashes))
            upto = len(new_hashes) if hi == len(old_hashes) else int(np.searchsorted(at, hi, "right"))
            where = at[done:upto] - lo
            for fh, old, new in ((hashes_fh, old_hashes, new_hashes), (rows_fh, old_rows, new_rows)):
                fh.write(np.insert(np.asarray(old[lo:hi]), where, new[done:upto]).astype("<u8").tobytes())
            done = upto


def _remove_before(root: Path, generation: int, keep: set[str]) -> None:
    """Remove the reconcile files of generations older than ``generation``, but those in ``keep`` (buckets
    no reconcile since has rewritten)."""
    for path in root.iterdir():
        match = _GENERATION_FILE.match(path.name)
        if match and int(match.group(1) or 0) < generation and path.name not in keep:
            path.unlink(missing_ok=True)
