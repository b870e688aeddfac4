"""``ShardedView``: all shards of an index as one ``IndexView``-like snapshot, read shard by shard.

Rows are the shards' rows in catalog order as of the last ``dedup.reconcile``
(``catalog.dedup.rows``: while shards append, the index serves that state), without
the rows it hid (later copies of an id held by an earlier input), so every query
sees exactly the documents of a one-shard ingest of the same inputs; ties are
broken by docid, so the row order does not change any selection.

Opening the view reads no document column: it keeps each shard's memory-mapped
view and its hidden rows (``ShardPart``), so its memory does not grow with the
index (gathering every shard's codes took about L x K x 2 bytes per document: 1.2 TB
at 10^9). Consumers stream ``parts`` (``nagindex report``, ``info``, ``export``) or
gather a few rows by global row (``take_codes``, ``take_docids``). The whole-column
attributes (``codes``, ``token_counts``, ``docids``...) gather one column on first use,
for small indexes and interactive inspection. Queries never build the view: they scan
each shard where it lies (``shard_specs`` says which rows of which shard take part;
``query/scan.py``, ``query/rank.py``).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.index.catalog import Catalog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardPart:
    """One shard's side of a view: its derived snapshot, the rows hidden in it, the global row of its
    first visible row. The visible rows are computed on demand (``kept``), never stored for the whole
    index: hidden rows are few, visible rows are every document."""

    shard: int  # the catalog's shard number (0 for a one-folder index)
    view: Any  # derived.IndexView, opened at the reconciled rows
    hidden: np.ndarray  # sorted local rows left out (later copies of an id)
    start: int  # global row of the first visible row

    def __len__(self) -> int:
        return len(self.view) - len(self.hidden)

    def kept(self) -> np.ndarray:
        """The visible local rows, in order (one shard's worth of int64)."""
        mask = np.ones(len(self.view), dtype=bool)
        mask[self.hidden] = False
        return np.flatnonzero(mask)

    def tokens(self) -> int:
        """Tokens of the visible rows."""
        counts = np.asarray(self.view.token_counts)
        return int(counts.sum()) - int(counts[self.hidden].sum())

    def local_rows(self, visible: np.ndarray) -> np.ndarray:
        """Local rows of the ``visible``-th visible rows: the v-th visible row is v plus the hidden rows
        at or before it, found on the hidden rows alone."""
        visible = np.asarray(visible, dtype=np.int64)
        shifted = self.hidden - np.arange(len(self.hidden))  # visible rows before each hidden one
        return visible + np.searchsorted(shifted, visible, side="right")


def view_parts(view: Any) -> list[ShardPart]:
    """The parts of any view ``open_index`` returns: a ``ShardedView``'s (or any holder of ``parts``, as the
    evaluation's pool), or a one-folder ``IndexView`` as one part, so a consumer streams both the same way."""
    parts = getattr(view, "parts", None)
    return parts if parts is not None else [ShardPart(0, view, np.zeros(0, np.int64), 0)]


def split_rows(parts: Sequence[ShardPart], rows: np.ndarray) -> list[tuple[ShardPart, np.ndarray, np.ndarray]]:
    """``(part, where, local)`` for each part holding some of the global ``rows``: ``where`` indexes
    ``rows``, ``local`` are those rows in the part's own numbering."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= sum(len(p) for p in parts)):
        raise NagIndexError(f"rows out of range: the view holds {sum(len(p) for p in parts):,} documents")
    starts = np.array([p.start for p in parts], dtype=np.int64)
    owner = np.searchsorted(starts, rows, side="right") - 1
    out = []
    for i, part in enumerate(parts):
        where = np.flatnonzero(owner == i)
        if len(where):
            out.append((part, where, part.local_rows(rows[where] - part.start)))
    return out


def locate(parts: Sequence[ShardPart], docids: Any) -> np.ndarray:
    """The global row of each docid (an Arrow string array) among the parts' visible rows, looked up shard by
    shard; -1 where none holds it (a hidden copy's id is held by an earlier shard)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = docids.cast(pa.large_string())
    rows = np.full(len(wanted), -1, np.int64)
    for part in parts:
        found = pc.index_in(wanted, value_set=part.view.docids.arrow())
        valid = pc.is_valid(found)
        hit = np.flatnonzero(valid.to_numpy(zero_copy_only=False))
        local = found.filter(valid).to_numpy().astype(np.int64)
        visible = ~np.isin(local, part.hidden)
        rows[hit[visible]] = part.start + local[visible] - np.searchsorted(part.hidden, local[visible])
    return rows


def take_codes(view: Any, rows: np.ndarray) -> np.ndarray:
    """The codes ``(len(rows), L, K)`` of a few global ``rows``, read from the shards that hold them."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros((len(rows), view.manifest["num_layers"], view.manifest["top_k"]), dtype=np.uint16)
    for part, where, local in split_rows(view_parts(view), rows):
        out[where] = part.view.codes[local]
    return out


def take_docids(view: Any, rows: np.ndarray) -> list[str]:
    """The docids of a few global ``rows``, in their order."""
    rows = np.asarray(rows, dtype=np.int64)
    out: list[str] = [""] * len(rows)
    for part, where, local in split_rows(view_parts(view), rows):
        for i, docid in zip(where.tolist(), part.view.docids.take(local)):
            out[i] = docid
    return out


class ShardedView:
    """Every shard of ``catalog`` as one view, cross-shard repeats left out; the columns stay in the shards."""

    def __init__(self, catalog: Catalog) -> None:
        from nagindex.index.dedup import hidden_rows

        self.catalog = catalog
        self.directory = catalog.root
        present = reconciled_shards(catalog)
        self.shards = [view for _, _, view in present]
        self.parts: list[ShardPart] = []
        start = 0
        for s, _, view in present:
            part = ShardPart(s, view, hidden_rows(catalog, s), start)
            self.parts.append(part)
            start += len(part)
        self._rows = start
        self.sources: list[str] = sorted({src for v in self.shards for src in v.sources})
        self._tokens = sum(p.tokens() for p in self.parts)
        self.manifest: dict[str, Any] = {**self.shards[0].manifest, "rows": self._rows, "tokens": self._tokens}
        self.info = {"rows": self._rows, "manifest": self.manifest, "shards": len(self.shards)}
        self.pending = sum(v.pending for v in self.shards)

    def __len__(self) -> int:
        return self._rows

    @property
    def total_tokens(self) -> int:
        return self._tokens

    def source_map(self, part: ShardPart) -> np.ndarray:
        """The view's source number of each of ``part``'s own source numbers (``sources`` is the union)."""
        where = {src: i for i, src in enumerate(self.sources)}
        return np.array([where[s] for s in part.view.sources], dtype=np.uint32)

    def _gather(self, column: str) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(p.view, column))[p.kept()] for p in self.parts])

    @cached_property
    def codes(self) -> np.ndarray:
        """Every visible row's codes in memory (L x K x 2 bytes per document): small indexes only."""
        return self._gather("codes")

    @cached_property
    def token_counts(self) -> np.ndarray:
        """Every visible row's token count, gathered on first use."""
        return self._gather("token_counts")

    @cached_property
    def positions(self) -> np.ndarray:
        """Every visible row's position in its source, gathered on first use."""
        return self._gather("positions")

    @cached_property
    def source_ids(self) -> np.ndarray:
        """Every visible row's number in ``sources``, gathered on first use."""
        return np.concatenate([self.source_map(p)[np.asarray(p.view.source_ids)[p.kept()]]
                               if len(p) else np.zeros(0, np.uint32) for p in self.parts])

    @cached_property
    def docids(self) -> Any:
        """Every visible row's docid as one ``DocidColumn``, gathered on first use."""
        import pyarrow as pa

        from nagindex.index.derived import DocidColumn

        ids = pa.concat_arrays([p.view.docids.arrow().take(pa.array(p.kept(), pa.int64())) for p in self.parts])
        _, offsets, blob = ids.buffers()
        return DocidColumn(np.frombuffer(offsets, "<u8", count=len(ids) + 1),
                           np.frombuffer(blob, "u1") if blob is not None else np.zeros(0, "u1"))

    @cached_property
    def _fingerprints(self) -> np.ndarray:
        return np.concatenate([p.view.faiss_index().codes[p.kept()] for p in self.parts])

    def faiss_index(self) -> Any:
        """The shards' stored fingerprints of this view's rows, searched as one ``FingerprintIndex``
        (gathered into memory on first use: 512 bytes per document)."""
        from nagindex.index.derived import FingerprintIndex

        return FingerprintIndex(self._fingerprints)


def open_index(index_dir: str | os.PathLike) -> Any:
    """Open the derived snapshot of an index: one folder (``derived.IndexView``), or a sharded index
    (``ShardedView``, the same interface over all shards, cross-shard repeats left out, the columns read
    shard by shard)."""
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
