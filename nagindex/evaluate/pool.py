"""The index as an evaluation sees it: documents located by docid, drawn at random, read back with texts.

Built on a query's shard scans (``query/scan.py`` in a ``LocalFleet``), so every kind of index
works the same way (one folder or shards, later copies of an id left out), texts are read back
with the checks of ``--with-text`` (``ShardScan.fetch``: never another document's text), and the
NAG similarity to the held-out examples is the score ``nagindex score`` computes. Rows here are
positions in the pool: the visible rows of every shard, in shard order.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from nagindex.errors import InputError, NagIndexError


class Pool:
    """The visible documents of an index: ``tokens`` (the index's token counts) and ``docids`` per pool row."""

    def __init__(self, fleet: Any) -> None:
        import pyarrow as pa

        from nagindex.arrays import numeric_array

        self.fleet = fleet
        self.manifest: dict[str, Any] = fleet.parts[0].view.manifest
        parts, rows, tokens, ids = [], [], [], []
        for i, part in enumerate(fleet.parts):
            visible = np.setdiff1d(np.arange(len(part.view), dtype=np.int64), part.hidden)
            parts.append(np.full(len(visible), i, np.int64))
            rows.append(visible)
            tokens.append(np.asarray(part.view.token_counts)[visible].astype(np.int64))
            ids.append(pa.array(part.view.docids.arrow().take(numeric_array(visible)), pa.large_string()))
        self.part, self.row = np.concatenate(parts), np.concatenate(rows)
        self.tokens = np.concatenate(tokens)
        self.docids = pa.concat_arrays(ids)
        self._scored = False

    @classmethod
    def open(cls, index_dir: Any) -> Pool:
        from nagindex.index.sharded import shard_specs
        from nagindex.query.fleet import LocalFleet

        specs = shard_specs(index_dir)
        if not specs:
            raise NagIndexError(f"index {index_dir} holds no documents")
        return cls(LocalFleet.open(specs))

    def __len__(self) -> int:
        return len(self.tokens)

    def close(self) -> None:
        self.fleet.close()

    def locate(self, docids: Any, where: Any) -> np.ndarray:
        """Pool rows of ``docids`` (an Arrow string array), in their order; a docid the index does not hold
        is an error naming ``where`` (the selection file) and the first ones missing."""
        import pyarrow.compute as pc

        found = pc.index_in(docids, value_set=self.docids)
        if found.null_count:
            missing = docids.filter(pc.is_null(found))
            raise InputError(f"{where}: {len(missing):,} of {len(docids):,} docids are not in the index (first: "
                             f"{', '.join(repr(d) for d in missing.slice(0, 3).to_pylist())}): a selection must "
                             "name documents of the index it is evaluated on")
        return found.to_numpy().astype(np.int64)

    def draw(self, budget: int, seed: int) -> np.ndarray:
        """A seeded random selection within a token ``budget``: a random order, cut by the query's prefix
        rule (``select.select_budget``: it stops at the first document that would overflow)."""
        from nagindex.query import select as sel

        return self._random(seed, sel.Quota(tokens=int(budget)))

    def sample(self, n: int, seed: int) -> np.ndarray:
        """``n`` documents drawn at random (all of them where the pool is smaller)."""
        from nagindex.query import select as sel

        return self._random(seed, sel.Quota(k=min(int(n), len(self))))

    def _random(self, seed: int, quota: Any) -> np.ndarray:
        from nagindex.index.derived import DocidColumn
        from nagindex.query import select as sel

        key = np.empty(len(self), np.int64)
        key[np.random.default_rng(seed).permutation(len(self))] = np.arange(len(self))
        _, offsets, blob = self.docids.buffers()
        docids = DocidColumn(np.frombuffer(offsets, "<u8", count=len(self) + 1),
                             np.frombuffer(blob, "u1") if blob is not None else np.zeros(0, "u1"))
        return sel.select(key, docids, quota, self.tokens).rows

    def score(self, profile: np.ndarray, weighting: str = "none") -> None:
        """Score every document against one count profile ``(L, width)`` over all layers (then ``fetch``
        returns the similarity, the score of ``nagindex score`` with the same ``weighting``)."""
        from nagindex.query.scan import ScorePlan
        from nagindex.query.weighting import target_weights

        layers = np.arange(len(profile))
        weights = target_weights(self.fleet, weighting, profile[None], layers, 1.0, len(self))
        self.fleet.score(ScorePlan(profile[None], tuple(range(len(profile))), weights=weights))
        self._scored = True

    def fetch(self, rows: np.ndarray) -> tuple[dict[int, str], dict[int, float]]:
        """Text and similarity of each distinct pool row of ``rows``, read back from the sources."""
        if not self._scored:
            raise NagIndexError("Pool.fetch needs a profile: call score() first")
        wanted = np.unique(np.asarray(rows, np.int64))
        by_part = [wanted[self.part[wanted] == i] for i in range(len(self.fleet.parts))]
        answers = self.fleet.fetch([self.row[w] for w in by_part], True)
        texts: dict[int, str] = {}
        sims: dict[int, float] = {}
        for w, got in zip(by_part, answers):
            texts.update(zip(w.tolist(), got["text"]))
            sims.update(zip(w.tolist(), got["similarity"][0].tolist()))
        return texts, sims
