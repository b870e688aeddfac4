"""Near-duplicate pairs of fingerprints, joined into a union-find as they are found (``clusters.py``).

Pairs are found in compiled code, never an all-pairs Python loop:

- ``multihash`` (default): multi-index hashing with 64 tables of 64 bits: a candidate pair shares one
  whole 64-bit chunk of the fingerprint and is kept when its full distance is within the radius. By
  pigeonhole, every pair within 63 bits shares a chunk, so below 64 it finds every pair; above, a pair is
  missed only when all 64 chunks differ (``tools/bench_clusters.py`` measures the recall against
  ``flat`` at the default radius). These are exactly the pairs of FAISS's ``IndexBinaryMultiHash(4096,
  64, 64)`` with ``nflip`` 0 (a test checks it), found as a sort join instead of hash tables: each chunk
  column of all documents is sorted, runs of equal values are the candidates, and a pair is verified
  only at the first chunk it shares, so it is counted once. The chunk columns are split into tasks
  (columns under ``_KEY_BUDGET`` per task, at least one task per worker) that run in this process, in
  ``workers`` local processes or as Ray tasks; each task keeps its own union-find over the searched
  rows and returns only its forest (one edge per row it joined, never more than the rows), which the
  parent merges, so the clusters are the same however the tasks are spread. Memory per task is 8
  bytes per searched row per chunk column it holds plus 8 for its union-find, and a bounded block of
  candidates; time is 64 sorts plus the candidates.
- ``flat``: FAISS's exhaustive Hamming range search over the memory-mapped fingerprints
  (``hamming_range_search``, what ``IndexBinaryFlat.range_search`` runs): exact at any radius,
  quadratic in the documents; in this process only.

Memory does not grow with the pairs: ``link`` joins identical fingerprints first (a 64-bit hash of each
whole fingerprint, sorted, equal hashes then compared byte for byte) and every verified pair goes straight
into the union-find in compiled code.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numba import njit

logger = logging.getLogger(__name__)

_BASE_BLOCK = 1 << 17  # flat: base rows per range search
_QUERY_BLOCK = 1 << 14
_KEY_BUDGET = 1 << 31  # multihash: bytes of chunk columns sorted per pass over the fingerprints (all workers)
_PAIR_ROWS = 1 << 17  # multihash: rows of short runs gathered at once (512 bytes each)
_SEGMENT = 1 << 14  # multihash: a longer run of equal chunks is verified in tiles of this many rows
_READ_BLOCK = 1 << 16  # fingerprint rows read at once
_SAME_BLOCK = 1 << 14  # identical fingerprints: pairs of rows compared at once


def visible(rows: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """``rows`` without the ``hidden`` ones."""
    return rows[~np.isin(rows, hidden)] if len(hidden) else rows


@dataclass
class PairSearch:
    """One pass's search, as every task needs it: each shard's ``(rows, 512)`` uint8 fingerprints
    (``codes``), ``offsets`` (where each shard's rows start in the dense numbering), ``hidden``/``queries``
    (rows per shard left out / searched as new) and the radius. Pickled for a worker process or a Ray
    task, a memory-mapped shard travels as its file, offset and shape, and is mapped again there."""

    codes: list[np.ndarray]
    offsets: np.ndarray
    hidden: list[np.ndarray]
    queries: list[np.ndarray]
    radius: int

    def __getstate__(self) -> dict[str, Any]:
        codes = [(c.filename, c.offset, c.shape) if isinstance(c, np.memmap) else np.asarray(c) for c in self.codes]
        return {**self.__dict__, "codes": codes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["codes"] = [np.memmap(c[0], dtype="u1", mode="r", offset=c[1], shape=c[2]) if isinstance(c, tuple)
                          else c for c in state["codes"]]
        self.__dict__.update(state)

    def fingerprints(self) -> _Fingerprints:
        """The searched fingerprints (memory-mapped, nothing read yet)."""
        return _Fingerprints(self.codes, self.offsets, self.hidden)


def link(parent: np.ndarray, search: PairSearch, method: str, workers: int, ray_address: str | None,
          show_progress: bool) -> int:
    """Join every near-duplicate pair with a query row on one side into ``parent`` (the union-find over
    the dense rows); the links made (see ``ClusterResult.pairs``). Identical fingerprints first, then
    the pairs of the representatives, streamed: never a list of pairs."""
    if not any(len(q) for q in search.queries):
        return 0
    search, links = _collapse_identical(search, parent)
    if method == "flat":
        for a, b in _flat_blocks(search, show_progress):
            _union(parent, a, b)
            links += len(a)
        return links
    return links + _chunk_links(parent, search, workers, ray_address, show_progress)


def _collapse_identical(search: PairSearch, parent: np.ndarray) -> tuple[PairSearch, int]:
    """Link every visible row whose fingerprint equals an earlier one to the first row of its group
    (in ``parent``), and return the search with those copies hidden and each group's first row a query
    when any copy of it is one; and how many copies were linked. Rows are grouped by a 64-bit hash of
    the whole fingerprint and compared byte for byte, so a hash collision only leaves two rows unjoined
    here (their distance, not 0, is then checked like any pair's)."""
    fps = search.fingerprints()
    new = fps.new_mask(search.queries)
    hashes = fps.hashes()
    order = np.argsort(hashes, kind="stable")
    hashes = hashes[order]
    repeat = np.concatenate([[False], hashes[1:] == hashes[:-1]])
    del hashes
    first = np.maximum.accumulate(np.where(repeat, 0, np.arange(len(order))))
    copy, rep = order[repeat], order[first[repeat]]
    del first, repeat, order
    same = np.zeros(len(copy), np.bool_)
    for lo in range(0, len(copy), _SAME_BLOCK):
        same[lo:lo + _SAME_BLOCK] = (fps.gather(copy[lo:lo + _SAME_BLOCK]) ==
                                     fps.gather(rep[lo:lo + _SAME_BLOCK])).all(axis=1)
    copy, rep = copy[same], rep[same]
    _union(parent, fps.dense[rep], fps.dense[copy])
    new[rep[new[copy]]] = True
    gone = np.zeros(len(fps), np.bool_)
    gone[copy] = True
    hidden, queries = [], []
    for k, rows in enumerate(fps.rows):
        part = slice(fps.starts[k], fps.starts[k + 1])
        hidden.append(np.union1d(search.hidden[k], rows[gone[part]]))
        queries.append(rows[new[part] & ~gone[part]])
    return replace(search, hidden=hidden, queries=queries), len(copy)


def pair_list(shards: list[np.ndarray], offsets: np.ndarray, hidden: list[np.ndarray], queries: list[np.ndarray],
            radius: int, method: str, show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Dense (a, b) pairs, a < b, within ``radius`` with a query row on at least one side, each pair once,
    identical fingerprints included: the pair list the tests and ``tools/bench_clusters.py`` check
    against FAISS (``build_clusters`` never holds it).

    ``shards``: each shard's ``(rows, 512)`` uint8 fingerprints (memory-mapped); ``offsets``: where each
    shard's rows start in the dense numbering; ``hidden``/``queries``: rows per shard left out / searched."""
    search = PairSearch(shards, offsets, hidden, queries, radius)
    if method == "multihash":
        fps = search.fingerprints()
        new = fps.new_mask(queries)
        found = [fps.dense[rows[_segment_pairs(fps.gather(rows), new[rows], segments, chunk, radius)]]
                 for chunk, rows, segments in _candidates(fps, new, range(fps.words))]
        pairs = np.concatenate(found) if found else np.zeros((0, 2), np.int64)
        return pairs[:, 0], pairs[:, 1]
    blocks = list(_flat_blocks(search, show_progress))
    if not blocks:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a, b = np.concatenate([x for x, _ in blocks]), np.concatenate([y for _, y in blocks])
    pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0)  # sorted
    return pairs[:, 0], pairs[:, 1]


def _flat_blocks(search: PairSearch, show_progress: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``flat``'s pairs, dense (a, b), each once, one block of queries against one block of base rows at
    a time (a pair of two queries is kept where it is found from its smaller row)."""
    from nagindex.progress import progress_bar

    shards, offsets, hidden, queries = search.codes, search.offsets, search.hidden, search.queries
    query = np.zeros(int(offsets[-1]), np.bool_)
    for k, q in enumerate(queries):
        query[offsets[k] + q] = True
    bar = progress_bar(int(sum(len(q) for q in queries)) * len(shards), "cluster", "doc",
                       enabled=None if show_progress else False)
    try:
        for j, base in enumerate(shards):
            for lo in range(0, len(base), _BASE_BLOCK):
                searcher = _FlatSearcher(base[lo:lo + _BASE_BLOCK], search.radius)
                for k, codes in enumerate(shards):
                    for q0 in range(0, len(queries[k]), _QUERY_BLOCK):
                        rows = queries[k][q0:q0 + _QUERY_BLOCK]
                        qi, bi = searcher.pairs(np.ascontiguousarray(codes[rows]))
                        b_rows = bi + lo
                        keep = ~np.isin(b_rows, hidden[j]) if len(hidden[j]) else np.ones(len(bi), bool)
                        a, b = offsets[k] + rows[qi[keep]], offsets[j] + b_rows[keep]
                        once = (a < b) | ((a > b) & ~query[b])
                        yield a[once], b[once]
                        if lo + _BASE_BLOCK >= len(base):
                            bar.update(len(rows))
    finally:
        bar.close()


class _FlatSearcher:
    """Exhaustive range search of query fingerprints against one block of base fingerprints."""

    def __init__(self, base: np.ndarray, radius: int) -> None:
        self.radius = radius
        self.base = np.ascontiguousarray(base, dtype=np.uint8)

    def pairs(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query index, base index) of every pair within the radius (FAISS keeps distances < threshold)."""
        import faiss

        n = len(queries)
        if not n or not len(self.base):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        res = faiss.RangeSearchResult(n)
        faiss.hamming_range_search(faiss.swig_ptr(queries), faiss.swig_ptr(self.base), n, len(self.base),
                                   self.radius + 1, queries.shape[1], res)
        lims = faiss.rev_swig_ptr(res.lims, n + 1).copy().astype(np.int64)
        labels = faiss.rev_swig_ptr(res.labels, int(lims[-1])).copy()
        return np.repeat(np.arange(n, dtype=np.int64), np.diff(lims)), labels.astype(np.int64)


class _Fingerprints:
    """The visible rows of all shards as one sequence of fingerprints (memory-mapped, read on demand)."""

    def __init__(self, shards: list[np.ndarray], offsets: np.ndarray, hidden: list[np.ndarray]) -> None:
        self.codes = shards
        self.rows = [visible(np.arange(len(c), dtype=np.int64), h) for c, h in zip(self.codes, hidden)]
        self.starts = np.concatenate([[0], np.cumsum([len(r) for r in self.rows])]).astype(np.int64)
        self.dense = np.concatenate([offsets[k] + r for k, r in enumerate(self.rows)]) if self.rows else \
            np.zeros(0, np.int64)
        self.words = self.codes[0].shape[1] // 8 if self.codes else 0

    def __len__(self) -> int:
        return int(self.starts[-1])

    def new_mask(self, queries: list[np.ndarray]) -> np.ndarray:
        """Which visible positions are queries (each shard's queries are visible rows of it)."""
        new = np.zeros(len(self), np.bool_)
        for k, q in enumerate(queries):
            new[self.starts[k] + np.searchsorted(self.rows[k], q)] = True
        return new

    def _blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first visible position, ``(m, words)`` uint64 fingerprints) of consecutive visible rows."""
        for k, (codes, rows) in enumerate(zip(self.codes, self.rows)):
            for lo in range(0, len(rows), _READ_BLOCK):
                part = rows[lo:lo + _READ_BLOCK]
                block = np.ascontiguousarray(codes[part[0]:part[-1] + 1]).view("<u8")
                yield int(self.starts[k]) + lo, block[part - part[0]]

    def columns(self, chunks: range) -> np.ndarray:
        """``(len(chunks), n)`` uint64: those 64-bit chunks of every visible fingerprint, read in blocks."""
        out = np.empty((len(chunks), len(self)), np.uint64)
        for at, block in self._blocks():
            out[:, at:at + len(block)] = block[:, chunks.start:chunks.stop].T
        return out

    def hashes(self) -> np.ndarray:
        """A 64-bit hash of each visible fingerprint, whole (equal fingerprints, equal hashes)."""
        out = np.empty(len(self), np.uint64)
        for at, block in self._blocks():
            out[at:at + len(block)] = _hash_rows(block)
        return out

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """``(len(positions), words)`` uint64 fingerprints of these visible positions."""
        out = np.empty((len(positions), self.words), np.uint64)
        shard = np.searchsorted(self.starts, positions, side="right") - 1
        for k in np.unique(shard):
            mask = shard == k
            rows = self.rows[k][positions[mask] - self.starts[k]]
            out[mask] = np.asarray(self.codes[k][rows]).view("<u8")
        return out


def _candidates(fps: _Fingerprints, new: np.ndarray, chunks: range) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(chunk, rows, segments) blocks of ``_runs`` over these chunk columns, read in groups that fit
    ``_KEY_BUDGET``."""
    if not new.any():
        return
    per_pass = max(1, min(len(chunks), _KEY_BUDGET // max(1, 8 * len(fps))))
    for c0 in range(chunks.start, chunks.stop, per_pass):
        group = range(c0, min(chunks.stop, c0 + per_pass))
        columns = fps.columns(group)
        for i, chunk in enumerate(group):
            for rows, segments in _runs(columns[i], new):
                yield chunk, rows, segments
        del columns


def _chunk_tasks(words: int, rows: int, workers: int) -> list[range]:
    """The chunk columns split into tasks: each under its share of ``_KEY_BUDGET`` (so one read of the
    fingerprints per task), at least one task per worker."""
    per_task = max(1, min(-(-words // workers), _KEY_BUDGET // max(1, 8 * rows * workers)))
    return [range(c, min(words, c + per_task)) for c in range(0, words, per_task)]


def _chunk_forest(search: PairSearch, chunks: range,
                  fps: _Fingerprints | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """One task: the near-duplicate pairs first shared at these chunk columns, joined in a union-find of
    its own over the searched rows; returned as its forest, (row, root) visible positions of each row
    joined to a smaller one (fewer than the rows, however many pairs), and the pairs verified."""
    fps = search.fingerprints() if fps is None else fps
    new = fps.new_mask(search.queries)
    parent = np.arange(len(fps), dtype=np.int64)
    found = 0
    for chunk, rows, segments in _candidates(fps, new, chunks):
        found += _segment_union(fps.gather(rows), new[rows], segments, chunk, search.radius, rows, parent)
    roots = find_roots(parent)
    joined = np.flatnonzero(roots != np.arange(len(roots)))
    return joined, roots[joined], found


_worker_search: PairSearch | None = None  # a local worker process's search, sent once by _start_worker


def _start_worker(search: PairSearch) -> None:
    global _worker_search
    _worker_search = search


def _worker_forest(chunks: range) -> tuple[np.ndarray, np.ndarray, int]:
    assert _worker_search is not None
    return _chunk_forest(_worker_search, chunks)


def _chunk_links(parent: np.ndarray, search: PairSearch, workers: int, ray_address: str | None,
                 show_progress: bool) -> int:
    """``multihash``: run the chunk tasks here, in ``workers`` processes or on Ray, and merge each task's
    forest into ``parent`` as it comes; the pairs verified."""
    from nagindex.progress import progress_bar

    fps = search.fingerprints()
    tasks = _chunk_tasks(fps.words, len(fps), workers)
    bar = progress_bar(fps.words, "cluster", "chunk", enabled=None if show_progress else False)
    found = 0
    try:
        for chunks, (joined, roots, pairs) in _run_tasks(search, fps, tasks, workers, ray_address):
            _union(parent, fps.dense[roots], fps.dense[joined])
            found += pairs
            bar.update(len(chunks))
    finally:
        bar.close()
    return found


def _run_tasks(search: PairSearch, fps: _Fingerprints, tasks: list[range], workers: int,
               ray_address: str | None) -> Iterator[tuple[range, tuple[np.ndarray, np.ndarray, int]]]:
    """(chunks, forest) of each task, as they finish. Local workers get the search once (spawned, so no
    Ray or tqdm thread is forked); Ray tasks share one copy in the object store."""
    if ray_address is not None:
        from nagindex.cluster import ClusterWatch, connect

        ray = connect(ray_address)
        watch = ClusterWatch(ray, ray_address, "nothing was stored: run `nagindex cluster` again")
        shared = ray.put(search)
        remote = ray.remote(_chunk_forest)
        refs = {remote.remote(shared, chunks): chunks for chunks in tasks}
        for ref, chunks in refs.items():
            yield chunks, watch.get(ref)
    elif workers > 1 and len(tasks) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(min(workers, len(tasks)), multiprocessing.get_context("spawn"),
                                 initializer=_start_worker, initargs=(search,)) as pool:
            futures = {pool.submit(_worker_forest, chunks): chunks for chunks in tasks}
            for future in as_completed(futures):
                yield futures[future], future.result()
    else:
        for chunks in tasks:
            yield chunks, _chunk_forest(search, chunks, fps)


def _runs(column: np.ndarray, new: np.ndarray) -> Any:
    """The runs of equal values in ``column`` (two rows or more, a new one among them) as blocks of
    (rows, segments): ``rows`` are visible positions grouped by run, ``segments`` are (x0, x1, y0, y1)
    ranges of ``rows`` whose pairs are candidates (x == y: the pairs within one range). Short runs are
    packed many to a block; a run longer than ``_SEGMENT`` is cut into tiles, its blocks a tile pair each."""
    order = np.argsort(column, kind="stable")
    values = column[order]
    cut = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate([[0], cut]).astype(np.int64)
    ends = np.concatenate([cut, [len(values)]]).astype(np.int64)
    keep = ends - starts > 1
    if not new.all():
        seen = np.concatenate([[0], np.cumsum(new[order], dtype=np.int64)])
        keep &= seen[ends] > seen[starts]
    starts, ends = starts[keep], ends[keep]
    short = ends - starts <= _SEGMENT
    s, e = starts[short], ends[short]
    first = 0
    while first < len(s):  # blocks of whole short runs, at most _PAIR_ROWS rows (one run at least)
        sizes = np.cumsum(e[first:] - s[first:])
        last = first + max(1, int(np.searchsorted(sizes, _PAIR_ROWS, side="right")))
        size = e[first:last] - s[first:last]
        at = np.concatenate([[0], np.cumsum(size)])
        rows = order[np.repeat(s[first:last] - at[:-1], size) + np.arange(at[-1])]
        yield rows, np.stack([at[:-1], at[1:], at[:-1], at[1:]], axis=1)
        first = last
    for lo, hi in zip(starts[~short], ends[~short]):
        tiles = list(range(lo, hi, _SEGMENT))
        for i, x in enumerate(tiles):
            for y in tiles[i:]:
                xs, ys = order[x:min(hi, x + _SEGMENT)], order[y:min(hi, y + _SEGMENT)]
                if x == y:
                    yield xs, np.array([[0, len(xs), 0, len(xs)]], np.int64)
                else:
                    yield np.concatenate([xs, ys]), np.array([[0, len(xs), len(xs), len(xs) + len(ys)]], np.int64)


@njit(cache=True, nogil=True)
def _popcount(x: np.uint64) -> int:  # pragma: no cover - compiled
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return int((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(cache=True, nogil=True)
def _hash_rows(words: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """A 64-bit hash of each row of uint64 words (each word mixed in, splitmix64-style)."""
    out = np.empty(words.shape[0], np.uint64)
    for i in range(words.shape[0]):
        h = np.uint64(0x9E3779B97F4A7C15)
        for w in range(words.shape[1]):
            h = (h ^ words[i, w]) * np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(31)
        out[i] = h
    return out


@njit(cache=True, nogil=True)
def _near(fp: np.ndarray, i: int, j: int, chunk: int, radius: int) -> bool:  # pragma: no cover - compiled
    """Whether rows i and j share no 64-bit chunk before ``chunk`` (such a pair is verified there) and
    lie within ``radius`` bits."""
    for w in range(chunk):
        if fp[i, w] == fp[j, w]:
            return False
    dist = 0
    for w in range(fp.shape[1]):
        dist += _popcount(fp[i, w] ^ fp[j, w])
        if dist > radius:
            return False
    return True


@njit(cache=True, nogil=True)
def _segment_pairs(fp: np.ndarray, new: np.ndarray, segments: np.ndarray, chunk: int,
                   radius: int) -> np.ndarray:  # pragma: no cover - compiled
    """``(m, 2)`` local indices of the candidate pairs of ``segments`` that are near-duplicates (``_near``)
    with a new row on one side."""
    out = np.empty((64, 2), np.int64)
    m = 0
    for g in range(len(segments)):
        x0, x1, y0, y1 = segments[g, 0], segments[g, 1], segments[g, 2], segments[g, 3]
        for i in range(x0, x1):
            for j in range(max(y0, i + 1) if x0 == y0 else y0, y1):
                if not (new[i] or new[j]) or not _near(fp, i, j, chunk, radius):
                    continue
                if m == len(out):
                    grown = np.empty((2 * len(out), 2), np.int64)
                    grown[:m] = out[:m]
                    out = grown
                out[m, 0] = i
                out[m, 1] = j
                m += 1
    return out[:m]


@njit(cache=True, nogil=True)
def _segment_union(fp: np.ndarray, new: np.ndarray, segments: np.ndarray, chunk: int, radius: int,
                   rows: np.ndarray, parent: np.ndarray) -> int:  # pragma: no cover - compiled
    """``_segment_pairs``'s pairs joined in ``parent`` (over ``rows[i]``) as they are verified; how many."""
    found = 0
    for g in range(len(segments)):
        x0, x1, y0, y1 = segments[g, 0], segments[g, 1], segments[g, 2], segments[g, 3]
        for i in range(x0, x1):
            for j in range(max(y0, i + 1) if x0 == y0 else y0, y1):
                if (new[i] or new[j]) and _near(fp, i, j, chunk, radius):
                    _join(parent, rows[i], rows[j])
                    found += 1
    return found


@njit(cache=True, nogil=True)
def _join(parent: np.ndarray, x: int, y: int) -> None:  # pragma: no cover - compiled
    """Merge the components of x and y; a component's root is its smallest member, so ``parent[i] <= i``
    always holds."""
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    while parent[y] != y:
        parent[y] = parent[parent[y]]
        y = parent[y]
    if x < y:
        parent[y] = x
    elif y < x:
        parent[x] = y


@njit(cache=True, nogil=True)
def _union(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:  # pragma: no cover - compiled
    """Merge the components of each pair (a[i], b[i])."""
    for i in range(len(a)):
        _join(parent, a[i], b[i])


@njit(cache=True, nogil=True)
def find_roots(parent: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Each row's root; one pass in row order suffices since a parent comes before its child."""
    out = parent.copy()
    for i in range(len(out)):
        out[i] = out[out[i]]
    return out
