"""``ShardedView``: all shards of an index as one ``IndexView``-like snapshot.

Rows are the shards' derived rows in catalog order, without the rows that
``dedup.reconcile`` hid (later copies of an id held by an earlier input), so every
query sees exactly the documents of a one-shard ingest of the same inputs; ties
are broken by docid, so the row order does not change any selection.

This view gathers the shards' arrays into memory (about L x K x 2 bytes per
document, plus docids): it serves inspection and ``nagindex report`` on indexes
that fit in memory. Queries never build it: they scan each shard where it lies
(``shard_specs`` here says which rows of which shard take part; ``query/scan.py``,
``query/rank.py``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.index.catalog import Catalog


class ShardedView:
    """The derived snapshot of every shard of ``catalog``, concatenated, cross-shard repeats left out."""

    def __init__(self, catalog: Catalog) -> None:
        import pyarrow as pa

        from nagindex.index.dedup import hidden_rows
        from nagindex.index.derived import DocidColumn, open_shard

        self.catalog = catalog
        self.directory = catalog.root
        present = [(s, path) for s, path in enumerate(catalog.shard_paths()) if has_shard(path)]
        if not present:
            raise NagIndexError(f"index {catalog.root}: no shard holds a store yet (nothing ingested)")
        views = [open_shard(path) for _, path in present]
        sizes = [0] * len(catalog.shards)
        for (s, _), view in zip(present, views):
            sizes[s] = len(view)
        if catalog.dedup.get("rows") != sizes:
            raise NagIndexError(f"index {catalog.root}: its shards changed since their ids were reconciled "
                                "(an ingest is running or was interrupted): run the same ingest again")
        self.shards = views
        self._keep = keep = []
        for (s, _), view in zip(present, views):
            mask = np.ones(len(view), dtype=bool)
            mask[hidden_rows(catalog, s)] = False
            keep.append(np.flatnonzero(mask))
        self.sources: list[str] = sorted({src for v in views for src in v.sources})
        where = {src: i for i, src in enumerate(self.sources)}
        self.codes = np.concatenate([np.asarray(v.codes)[k] for v, k in zip(views, keep)])
        self.token_counts = np.concatenate([np.asarray(v.token_counts)[k] for v, k in zip(views, keep)])
        self.positions = np.concatenate([np.asarray(v.positions)[k] for v, k in zip(views, keep)])
        self.source_ids = np.concatenate([
            np.array([where[s] for s in v.sources], dtype=np.uint32)[np.asarray(v.source_ids)[k]]
            if len(k) else np.zeros(0, np.uint32) for v, k in zip(views, keep)])
        ids = pa.concat_arrays([v.docids.arrow().take(pa.array(k, pa.int64())) for v, k in zip(views, keep)])
        _, offsets, blob = ids.buffers()
        self.docids = DocidColumn(np.frombuffer(offsets, "<u8", count=len(ids) + 1),
                                  np.frombuffer(blob, "u1") if blob is not None else np.zeros(0, "u1"))
        self.manifest: dict[str, Any] = {**views[0].manifest, "rows": len(self.token_counts),
                                         "tokens": int(self.token_counts.sum())}
        self.info = {"rows": len(self.token_counts), "manifest": self.manifest, "shards": len(views)}
        self.pending = sum(v.pending for v in views)
        self._fingerprints: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.token_counts)

    @property
    def total_tokens(self) -> int:
        return int(self.token_counts.sum())

    def faiss_index(self) -> Any:
        """The shards' stored fingerprints of this view's rows, searched as one ``FingerprintIndex``."""
        if self._fingerprints is None:
            self._fingerprints = np.concatenate([v.faiss_index().codes[k] for v, k in zip(self.shards, self._keep)])
        from nagindex.index.derived import FingerprintIndex

        return FingerprintIndex(self._fingerprints)


def has_shard(path: Path) -> bool:
    """Whether a shard folder holds documents to read: its store, or (the store moved away, as for an
    index served read-only) its derived files, which are all a query reads."""
    from nagindex.index.derived import INFO_FILE
    from nagindex.index.store import STORE_DIR

    return (path / STORE_DIR).exists() or (path / INFO_FILE).is_file()


def shard_specs(index_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """One spec per shard that holds documents: ``{"part", "name", "path", "hidden", "node_ip"}``
    (``name`` None for a one-folder index)."""
    from nagindex.index.catalog import load_catalog
    from nagindex.index.dedup import hidden_rows
    from nagindex.index.derived import open_shard

    catalog = load_catalog(index_dir)
    if catalog is None:
        return [{"part": 0, "name": None, "path": str(index_dir), "hidden": np.zeros(0, np.int64),
                 "node_ip": None}]
    present = [(s, path) for s, path in enumerate(catalog.shard_paths()) if has_shard(path)]
    if not present:
        raise NagIndexError(f"index {catalog.root}: no shard holds a store yet (nothing ingested)")
    sizes = [0] * len(catalog.shards)
    for s, path in present:
        sizes[s] = len(open_shard(path))
    if catalog.dedup.get("rows") != sizes:
        raise NagIndexError(f"index {catalog.root}: its shards changed since their ids were reconciled "
                            "(an ingest is running or was interrupted): run the same ingest again")
    return [{"part": s, "name": catalog.shards[s]["name"], "path": str(path), "hidden": hidden_rows(catalog, s),
             "node_ip": catalog.shards[s].get("node_ip")} for s, path in present if sizes[s]]
