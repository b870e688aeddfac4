"""``ShardedView``: all shards of an index as one ``IndexView``-like snapshot.

Rows are the shards' rows in catalog order as of the last ``dedup.reconcile``
(``catalog.dedup.rows``: while shards append, the index serves that state), without
the rows it hid (later copies of an id held by an earlier input), so every query
sees exactly the documents of a one-shard ingest of the same inputs; ties are
broken by docid, so the row order does not change any selection.

This view gathers the shards' arrays into memory (about L x K x 2 bytes per
document, plus docids): it serves inspection and ``nagindex report`` on indexes
that fit in memory. Queries never build it: they scan each shard where it lies
(``shard_specs`` here says which rows of which shard take part; ``query/scan.py``,
``query/rank.py``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.index.catalog import Catalog

logger = logging.getLogger(__name__)


class ShardedView:
    """The derived snapshot of every shard of ``catalog``, concatenated, cross-shard repeats left out."""

    def __init__(self, catalog: Catalog) -> None:
        import pyarrow as pa

        from nagindex.index.dedup import hidden_rows
        from nagindex.index.derived import DocidColumn

        self.catalog = catalog
        self.directory = catalog.root
        present = reconciled_shards(catalog)
        views = [view for _, _, view in present]
        self.shards = views
        self._keep = keep = []
        for s, _, view in present:
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


def open_index(index_dir: str | os.PathLike) -> Any:
    """Open the derived snapshot of an index: one folder (``derived.IndexView``), or a sharded index
    (``ShardedView``, the same interface over all shards, cross-shard repeats left out)."""
    from nagindex.index.catalog import load_catalog
    from nagindex.index.derived import open_shard

    catalog = load_catalog(index_dir)
    if catalog is None:
        return open_shard(index_dir)
    return ShardedView(catalog)


def reconciled_shards(catalog: Catalog) -> list[tuple[int, Path, Any]]:
    """``(shard, path, view)`` of every shard holding a store, the view opened at the shard's rows of
    the last reconcile: what a query serves while shards append (rows committed since are logged as
    pending). A shard holding fewer rows than that, or other ones (a rebuilt shard), is an error."""
    from nagindex.index.dedup import prefix_stamp
    from nagindex.index.derived import has_shard, open_shard

    root, paths = catalog.root, catalog.shard_paths()
    if not any(has_shard(path) for path in paths):
        raise NagIndexError(f"index {root}: no shard holds a store yet (nothing ingested)")
    rows, stamps = catalog.dedup.get("rows"), catalog.dedup.get("stamps")
    if not isinstance(rows, list) or len(rows) != len(paths):
        raise NagIndexError(f"index {root}: its first ingest has not finished (no ids reconciled across shards "
                            "yet): run the same ingest again")
    again = "run the same ingest again to reconcile it"
    out, pending = [], 0
    for s, path in enumerate(paths):
        name = catalog.shards[s]["name"]
        if not has_shard(path):
            if rows[s]:
                raise NagIndexError(f"index {root}: shard {name} ({path}) is missing, but {rows[s]:,} of its "
                                    "documents were reconciled: restore it, or move the index aside and ingest again")
            continue
        try:
            view = open_shard(path, rows=rows[s])
        except NagIndexError as exc:
            raise NagIndexError(f"index {root}: shard {name} no longer holds the {rows[s]:,} documents its ids "
                                f"were reconciled with ({exc}): {again}") from None
        if rows[s] and stamps is not None and stamps[s] != prefix_stamp(view):
            raise NagIndexError(f"index {root}: the first {rows[s]:,} documents of shard {name} changed since "
                                f"their ids were reconciled (the shard was rebuilt): {again}")
        pending += view.pending
        out.append((s, path, view))
    if pending:
        logger.info("index %s: serving its last reconciled state; %d documents committed since are pending "
                    "reconcile (an ingest is running or was interrupted: it serves them once it finishes)",
                    root, pending)
    return out


def shard_specs(index_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """One spec per shard that holds documents: ``{"part", "name", "path", "rows", "hidden", "node_ip"}``.

    ``rows`` is the shard's rows as of the last reconcile, the only ones a query reads
    (``open_shard(path, rows=spec["rows"])``); ``hidden`` are sorted rows below it. A one-folder
    index has one spec, ``name`` and ``rows`` None (all its derived rows)."""
    from nagindex.index.catalog import load_catalog
    from nagindex.index.dedup import hidden_rows

    catalog = load_catalog(index_dir)
    if catalog is None:
        return [{"part": 0, "name": None, "path": str(index_dir), "rows": None, "hidden": np.zeros(0, np.int64),
                 "node_ip": None}]
    return [{"part": s, "name": catalog.shards[s]["name"], "path": str(path), "rows": len(view),
             "hidden": hidden_rows(catalog, s), "node_ip": catalog.shards[s].get("node_ip")}
            for s, path, view in reconciled_shards(catalog) if len(view)]
