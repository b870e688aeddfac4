"""Deduplication across shards: each docid is kept where a one-shard ingest would keep it.

Every shard deduplicates its own documents as it commits them (the first document
of an id that has a NAG wins). Two shards may still hold the same id, since they
never talk to each other while ingesting. ``reconcile`` settles it afterwards, the
way one writer would have: the copy whose input comes first in the catalog's input
order (then the earlier line or row) stays, the others are listed as hidden rows of
their shard and left out of every view. It sorts the docids of all shards with
Arrow (exact, no hashing); memory is about the docid bytes plus 24 bytes per row.
"""
from __future__ import annotations

import logging

import numpy as np

from nagindex.fsio import atomic_path
from nagindex.index.catalog import Catalog

logger = logging.getLogger(__name__)


def reconcile(catalog: Catalog) -> int:
    """Write ``hidden-<shard>.u64`` for every shard and record the shard sizes they describe; return rows hidden."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from nagindex.index.derived import open_shard
    from nagindex.index.sharded import has_shard

    rank = {item["key"]: i for i, item in enumerate(catalog.inputs)}
    views = [open_shard(path) if has_shard(path) else None for path in catalog.shard_paths()]
    tables = []
    for s, view in enumerate(views):
        if view is None:  # a shard that got no input yet
            continue
        n = len(view)
        source_rank = np.array([rank.get(src, len(rank)) for src in view.sources], dtype=np.int64)
        tables.append(pa.table({
            "docid": view.docids.arrow(),
            "rank": source_rank[np.asarray(view.source_ids)] if n else np.zeros(0, np.int64),
            "position": np.asarray(view.positions, dtype=np.int64),
            "shard": np.full(n, s, dtype=np.int32),
            "row": np.arange(n, dtype=np.int64),
        }))
    if not tables:
        return 0
    table = pa.concat_tables(tables).sort_by([("docid", "ascending"), ("rank", "ascending"),
                                              ("position", "ascending"), ("shard", "ascending")])
    docids = table.column("docid").combine_chunks()
    repeat = np.zeros(len(table), dtype=bool)
    if len(table) > 1:  # a row whose docid equals the previous row's is a later copy
        repeat[1:] = pc.equal(docids.slice(1), docids.slice(0, len(table) - 1)).to_numpy(zero_copy_only=False)
    shards = table.column("shard").to_numpy()[repeat]
    rows = table.column("row").to_numpy()[repeat]
    for s in range(len(views)):
        with atomic_path(catalog.hidden_file(s)) as tmp:
            np.sort(rows[shards == s]).astype("<u8").tofile(tmp)
    catalog.dedup = {"rows": [0 if v is None else len(v) for v in views], "hidden": int(repeat.sum())}
    catalog.save()
    if repeat.any():
        logger.info("%d documents repeat an id held by an earlier input of another shard: hidden", repeat.sum())
    return int(repeat.sum())


def hidden_rows(catalog: Catalog, shard: int) -> np.ndarray:
    """The sorted rows of ``shard`` hidden as later copies of an id (empty before any reconcile)."""
    path = catalog.hidden_file(shard)
    return np.fromfile(path, dtype="<u8").astype(np.int64) if path.is_file() else np.zeros(0, np.int64)
