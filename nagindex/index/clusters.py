"""Near-duplicate clusters from the fingerprints (``nagindex cluster``), stored beside the index.

Two documents are near-duplicates when their 4096-bit fingerprints (``derived.fingerprints``) differ
in at most ``radius`` bits; clusters are the connected components of that relation, so a cluster
does not depend on the order documents were ingested or on how they are sharded. Queries with
``--one-per-cluster`` keep the best-ranked document of each cluster.

Pairs are found with FAISS, never an all-pairs Python loop:

- ``multihash`` (default): ``IndexBinaryMultiHash`` with 64 tables of 64 bits; a candidate shares one
  whole 64-bit chunk of its fingerprint with the query and is kept when its full distance is within the
  radius. By pigeonhole, every pair within 63 bits shares a chunk, so below 64 it finds every pair; above,
  a pair is missed only when all 64 chunks differ (``tools/bench_clusters.py`` measures the recall
  against ``flat`` at the default radius). Its cost grows with the candidates, not with all pairs.
- ``flat``: FAISS's exhaustive Hamming range search over the memory-mapped fingerprints
  (``hamming_range_search``, what ``IndexBinaryFlat.range_search`` runs): exact at any radius,
  quadratic in the documents.

Both are functions of each pair alone, so a sharded index clusters exactly as one folder of the same
documents. Rows hidden as cross-shard repeats of an id take no part.

Storage: ``clusters.i64`` in each shard folder, one int64 per row: -1 for a document without a
near-duplicate, else the cluster's label, the global id (``part << 40 | row``) of its first member;
``clusters.json`` at the index root (``radius``, ``method``, rows covered per shard, counts), written
last, so a pass killed midway leaves no ``clusters.json`` and runs again from scratch. A later pass
after more documents were ingested searches only the new rows (against all rows) and merges them into
the stored clusters.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from nagindex.errors import NagIndexError
from nagindex.fsio import atomic_path

logger = logging.getLogger(__name__)

CLUSTER_FILE = "clusters.i64"
CLUSTER_INFO = "clusters.json"
METHODS = ("multihash", "flat")
DEFAULT_RADIUS = 100
ROW_BITS = 40  # as query/rank.py: a global id is part << 40 | row
_CHUNKS = _CHUNK_BITS = 64
_BASE_BLOCK = 1 << 17  # base rows per search: a multi-hash table set holds about 6 KB per row (800 MB)
_QUERY_BLOCK = 1 << 14


@dataclass
class ClusterResult:
    """What a pass did: the radius and method, the index's documents (``rows``, cross-shard repeats left
    out) and those searched this time, the pairs found, and the clusters."""

    radius: int
    method: str
    rows: int
    searched: int
    pairs: int
    clusters: int
    clustered_rows: int
    seconds: float


def read_cluster_info(index_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``clusters.json`` of an index, or None before the first complete ``cluster`` pass."""
    path = Path(index_dir) / CLUSTER_INFO
    return json.loads(path.read_text("utf-8")) if path.is_file() else None


def describe_clusters(index_dir: str | os.PathLike) -> str:
    """One line for ``nagindex info``: the stored clusters, and whether documents were added since."""
    from nagindex.index.derived import open_shard
    from nagindex.index.sharded import shard_specs

    info = read_cluster_info(index_dir)
    if info is None:
        return "none (`nagindex cluster` makes them for --one-per-cluster)"
    behind = sum(max(0, len(open_shard(s["path"])) - info["rows"].get(str(s["part"]), 0))
                 for s in shard_specs(index_dir))
    line = (f"{info['clusters']:,} holding {info['clustered_rows']:,} documents "
            f"(radius {info['radius']}, {info['method']})")
    return line + (f"; {behind:,} documents added since: run `nagindex cluster` again" if behind else "")


def require_clusters(index_dir: str | os.PathLike) -> dict[str, Any]:
    """``clusters.json``, or an error saying how to make it."""
    info = read_cluster_info(index_dir)
    if info is None:
        raise NagIndexError(f"index {index_dir} has no near-duplicate clusters: run "
                            f"`nagindex cluster --index {index_dir}` once (--one-per-cluster reads them)")
    return info


def cluster_keys(shard_dir: str | os.PathLike, part: int, rows: np.ndarray, total: int) -> np.ndarray:
    """Each row's cluster key: its cluster's label, or its own global id when it has no near-duplicate
    (so every row has a key, and two rows share one exactly when they are near-duplicates)."""
    path = Path(shard_dir) / CLUSTER_FILE
    covered = path.stat().st_size // 8 if path.is_file() else 0
    if covered < total:
        raise NagIndexError(f"{path}: clusters cover {covered:,} of the shard's {total:,} documents "
                            "(documents were added since): run `nagindex cluster` again (it searches only new rows)")
    rows = np.asarray(rows, np.int64)
    labels = np.memmap(path, dtype="<i8", mode="r", shape=(covered,))[rows] if len(rows) else np.zeros(0, np.int64)
    own = (np.int64(part) << ROW_BITS) | rows
    return np.where(labels >= 0, labels, own).astype(np.int64)


def build_clusters(index_dir: str | os.PathLike, radius: int = DEFAULT_RADIUS, method: str = "multihash",
                   show_progress: bool = False) -> ClusterResult:
    """Cluster the index's near-duplicates (or bring its clusters up to date); see the module docstring."""
    from nagindex.index.derived import open_shard
    from nagindex.index.sharded import shard_specs

    if method not in METHODS:
        raise NagIndexError(f"cluster method {method!r}: choose one of {', '.join(METHODS)}")
    if not 0 <= radius < 4096:
        raise NagIndexError(f"--radius must be in [0, 4096), got {radius}")
    start = time.perf_counter()
    root = Path(index_dir)
    specs = shard_specs(root)
    views = [open_shard(s["path"]) for s in specs]
    sizes = np.array([len(v) for v in views], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    hidden = [np.asarray(s["hidden"], np.int64) for s in specs]
    old = _reusable(read_cluster_info(root), radius, method, specs, hidden)
    parent = np.arange(offsets[-1], dtype=np.int64)
    covered = [0] * len(specs)
    if old is not None:
        covered = [old["rows"].get(str(s["part"]), 0) for s in specs]
        for k, spec in enumerate(specs):
            labels = np.fromfile(Path(spec["path"]) / CLUSTER_FILE, dtype="<i8", count=covered[k])
            member = np.flatnonzero(labels >= 0)
            parent[offsets[k] + member] = _dense(labels[member], specs, offsets)
    queries = [_visible(np.arange(covered[k], sizes[k]), hidden[k]) for k in range(len(specs))]
    searched = int(sum(len(q) for q in queries))
    (root / CLUSTER_INFO).unlink(missing_ok=True)  # from here until the end, a kill means "start over"
    pairs = _search(views, offsets, hidden, queries, radius, method, show_progress)
    _union(parent, pairs[0], pairs[1])
    roots = _roots(parent)
    size = np.bincount(roots, minlength=len(roots))
    clustered = size[roots] > 1
    label = np.full(len(roots), -1, np.int64)
    part_of = np.searchsorted(offsets, roots[clustered], side="right") - 1
    parts = np.array([s["part"] for s in specs], np.int64)
    label[clustered] = (parts[part_of] << ROW_BITS) | (roots[clustered] - offsets[part_of])
    for k, spec in enumerate(specs):
        with atomic_path(Path(spec["path"]) / CLUSTER_FILE) as tmp:
            label[offsets[k]:offsets[k + 1]].astype("<i8").tofile(tmp)
    visible = int(offsets[-1]) - sum(len(h) for h in hidden)
    result = ClusterResult(radius=radius, method=method, rows=visible, searched=searched,
                           pairs=len(pairs[0]), clusters=int(np.count_nonzero(size > 1)),
                           clustered_rows=int(clustered.sum()), seconds=time.perf_counter() - start)
    info = {"radius": radius, "method": method, "rows": {str(s["part"]): int(n) for s, n in zip(specs, sizes)},
            "hidden": {str(s["part"]): len(h) for s, h in zip(specs, hidden)},
            "clusters": result.clusters, "clustered_rows": result.clustered_rows}
    with atomic_path(root / CLUSTER_INFO) as tmp:
        tmp.write_text(json.dumps(info, indent=1), "utf-8")
    return result


def _reusable(info: dict[str, Any] | None, radius: int, method: str, specs: list[dict[str, Any]],
              hidden: list[np.ndarray]) -> dict[str, Any] | None:
    """The stored pass, when the new rows can be merged into it: same radius and method, every
    shard's stored labels still there, and no row it covered hidden since (else start over)."""
    if info is None or info.get("radius") != radius or info.get("method") != method:
        return None
    for spec, h in zip(specs, hidden):
        key = str(spec["part"])
        covered = info["rows"].get(key, 0)
        path = Path(spec["path"]) / CLUSTER_FILE
        if (path.stat().st_size // 8 if path.is_file() else 0) < covered:
            return None
        if int(np.count_nonzero(h < covered)) != info["hidden"].get(key, 0):
            return None
    return info


def _visible(rows: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    return rows[~np.isin(rows, hidden)] if len(hidden) else rows


def _dense(ids: np.ndarray, specs: list[dict[str, Any]], offsets: np.ndarray) -> np.ndarray:
    """Global ids (``part << 40 | row``) -> positions in the concatenation of the shards."""
    k = {s["part"]: i for i, s in enumerate(specs)}
    index = np.array([k[p] for p in (ids >> ROW_BITS).tolist()], np.int64) if len(ids) else np.zeros(0, np.int64)
    return offsets[index] + (ids & ((1 << ROW_BITS) - 1))


def _search(views: list[Any], offsets: np.ndarray, hidden: list[np.ndarray], queries: list[np.ndarray],
            radius: int, method: str, show_progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Dense (a, b) pairs within ``radius``: every query row of every shard against every shard's rows."""
    from nagindex.progress import progress_bar

    total = int(sum(len(q) for q in queries)) * len(views)
    found_a, found_b = [], []
    bar = progress_bar(total, "cluster", "doc", enabled=None if show_progress else False)
    try:
        for j, base_view in enumerate(views):
            base = base_view.faiss_index().codes
            for lo in range(0, len(base), _BASE_BLOCK):
                block = base[lo:lo + _BASE_BLOCK]
                searcher = _Searcher(block, radius, method)
                for k, view in enumerate(views):
                    codes = view.faiss_index().codes
                    for q0 in range(0, len(queries[k]), _QUERY_BLOCK):
                        rows = queries[k][q0:q0 + _QUERY_BLOCK]
                        qi, bi = searcher.pairs(np.ascontiguousarray(codes[rows]))
                        b_rows = bi + lo
                        keep = ~np.isin(b_rows, hidden[j]) if len(hidden[j]) else np.ones(len(bi), bool)
                        a, b = offsets[k] + rows[qi[keep]], offsets[j] + b_rows[keep]
                        found_a.append(a[a != b])
                        found_b.append(b[a != b])
                        if lo + _BASE_BLOCK >= len(base):
                            bar.update(len(rows))
    finally:
        bar.close()
    if not found_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(found_a), np.concatenate(found_b)


class _Searcher:
    """Range search of query fingerprints against one block of base fingerprints (``METHODS``)."""

    def __init__(self, base: np.ndarray, radius: int, method: str) -> None:
        import faiss

        self.faiss, self.radius, self.method = faiss, radius, method
        self.base = np.ascontiguousarray(base, dtype=np.uint8)
        if method == "multihash":
            self.index = faiss.IndexBinaryMultiHash(self.base.shape[1] * 8, _CHUNKS, _CHUNK_BITS)
            self.index.nflip = 0
            self.index.add(self.base)

    def pairs(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query index, base index) of every pair within the radius (FAISS keeps distances < threshold)."""
        faiss, n = self.faiss, len(queries)
        if not n or not len(self.base):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if self.method == "multihash":
            lims, _, labels = self.index.range_search(queries, self.radius + 1)
        else:
            res = faiss.RangeSearchResult(n)
            faiss.hamming_range_search(faiss.swig_ptr(queries), faiss.swig_ptr(self.base), n, len(self.base),
                                       self.radius + 1, queries.shape[1], res)
            lims = faiss.rev_swig_ptr(res.lims, n + 1).copy()
            labels = faiss.rev_swig_ptr(res.labels, int(lims[-1])).copy()
        qi = np.repeat(np.arange(n, dtype=np.int64), np.diff(lims.astype(np.int64)))
        return qi, labels.astype(np.int64)


@njit(cache=True, nogil=True)
def _union(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:  # pragma: no cover - compiled
    """Merge the components of each pair (a[i], b[i]); a component's root is its smallest member,
    so ``parent[i] <= i`` always holds."""
    for i in range(len(a)):
        x, y = a[i], b[i]
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
def _roots(parent: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Each row's root; one pass in row order suffices since a parent comes before its child."""
    out = parent.copy()
    for i in range(len(out)):
        out[i] = out[out[i]]
    return out
