"""Near-duplicate clusters from the fingerprints (``nagindex cluster``), stored beside the index.

Two documents are near-duplicates when their 4096-bit fingerprints (``derived.fingerprints``) differ
in at most ``radius`` bits; clusters are the connected components of that relation, so a cluster
does not depend on the order documents were ingested or on how they are sharded. Queries with
``--one-per-cluster`` keep the best-ranked document of each cluster.

Memory does not grow with the pairs: identical fingerprints are joined first (a 64-bit hash of each
whole fingerprint, sorted, equal hashes then compared byte for byte; every copy is linked to its group's
first row and only that representative is searched), so a boilerplate text copied 10^5 times costs
10^5 links, not 5x10^9 pairs; and every verified pair goes straight into the union-find in compiled
code, so no pair list is ever held. A representative is searched as new when any copy of it is.

Pairs are found in compiled code (``pairs.py``): ``multihash`` (default), a sort join over the 64
chunk columns of the fingerprints, run in this process, on ``workers`` local processes or as Ray
tasks, exact below 64 bits; or ``flat``, FAISS's exhaustive range search, exact at any radius.

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

from nagindex.errors import NagIndexError
from nagindex.fsio import atomic_path
from nagindex.index.pairs import PairSearch, find_roots, link, visible

logger = logging.getLogger(__name__)

CLUSTER_FILE = "clusters.i64"
CLUSTER_INFO = "clusters.json"
METHODS = ("multihash", "flat")
DEFAULT_RADIUS = 100
ROW_BITS = 40  # as query/rank.py: a global id is part << 40 | row


@dataclass
class ClusterResult:
    """What a pass did: the radius and method, the index's documents (``rows``, cross-shard repeats left
    out) and those searched this time, the links found (``pairs``: each copy of an identical fingerprint
    linked to its representative, plus the near-duplicate pairs of distinct fingerprints), and the
    clusters."""

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
    behind = sum(max(0, len(open_shard(s["path"], rows=s["rows"])) - info["rows"].get(str(s["part"]), 0))
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
                   show_progress: bool = False, workers: int = 1, ray_address: str | None = None) -> ClusterResult:
    """Cluster the index's near-duplicates (or bring its clusters up to date); see the module docstring.

    ``workers`` local processes, or Ray tasks on the cluster at ``ray_address`` (its nodes must see the
    index folder), share ``multihash``'s chunk columns; the clusters do not depend on either."""
    from nagindex.index.derived import open_shard
    from nagindex.index.sharded import shard_specs

    if method not in METHODS:
        raise NagIndexError(f"cluster method {method!r}: choose one of {', '.join(METHODS)}")
    if not 0 <= radius < 4096:
        raise NagIndexError(f"--radius must be in [0, 4096), got {radius}")
    if workers < 1:
        raise NagIndexError(f"--workers must be >= 1, got {workers}")
    start = time.perf_counter()
    root = Path(index_dir)
    specs = shard_specs(root)
    views = [open_shard(s["path"], rows=s["rows"]) for s in specs]
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
    queries = [visible(np.arange(covered[k], sizes[k]), hidden[k]) for k in range(len(specs))]
    searched = int(sum(len(q) for q in queries))
    (root / CLUSTER_INFO).unlink(missing_ok=True)  # from here until the end, a kill means "start over"
    search = PairSearch([v.faiss_index().codes for v in views], offsets, hidden, queries, radius)
    links = link(parent, search, method, workers, ray_address, show_progress)
    roots = find_roots(parent)
    size = np.bincount(roots, minlength=len(roots))
    clustered = size[roots] > 1
    label = np.full(len(roots), -1, np.int64)
    part_of = np.searchsorted(offsets, roots[clustered], side="right") - 1
    parts = np.array([s["part"] for s in specs], np.int64)
    label[clustered] = (parts[part_of] << ROW_BITS) | (roots[clustered] - offsets[part_of])
    for k, spec in enumerate(specs):
        with atomic_path(Path(spec["path"]) / CLUSTER_FILE) as tmp:
            label[offsets[k]:offsets[k + 1]].astype("<i8").tofile(tmp)
    shown = int(offsets[-1]) - sum(len(h) for h in hidden)
    result = ClusterResult(radius=radius, method=method, rows=shown, searched=searched,
                           pairs=links, clusters=int(np.count_nonzero(size > 1)),
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


def _dense(ids: np.ndarray, specs: list[dict[str, Any]], offsets: np.ndarray) -> np.ndarray:
    """Global ids (``part << 40 | row``) -> positions in the concatenation of the shards."""
    k = {s["part"]: i for i, s in enumerate(specs)}
    index = np.array([k[p] for p in (ids >> ROW_BITS).tolist()], np.int64) if len(ids) else np.zeros(0, np.int64)
    return offsets[index] + (ids & ((1 << ROW_BITS) - 1))
