"""The index as an evaluation sees it: documents located by docid, drawn at random, read back with texts.

Built on a query's shard scans (``query/scan.py`` in a ``LocalFleet``), so every kind of index
works the same way (one folder or shards, later copies of an id left out), texts are read back
with the checks of ``--with-text`` (``ShardScan.fetch``: never another document's text), and the
NAG similarity (or, ``--method nait``, the NAIT score) to the held-out examples is the score
``nagindex score`` computes. Rows here are positions in the pool: the visible rows of every shard, in
shard order.

Nothing is held per document of the whole pool: docids are looked up shard by shard, and a random
draw orders the documents by a seeded hash of their docid (``dedup.docid_hashes`` mixed with the
seed), so it is the same draw on any shard layout and is found in two passes over the shards (token
sums per key bin, then the documents of the bins the budget reaches) without a permutation of the pool.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from nagindex.errors import InputError, NagIndexError

KEY_BITS = 16  # 2^16 key bins in a draw's first pass: its second pass holds about N / 2^16 extra documents


class Pool:
    """The visible documents of an index, as ``ShardPart``s of the fleet's parts (rows and tokens per shard)."""

    def __init__(self, fleet: Any) -> None:
        from nagindex.index.sharded import ShardPart

        self.fleet = fleet
        self.manifest: dict[str, Any] = fleet.parts[0].view.manifest
        self.parts: list[ShardPart] = []
        start = 0
        for i, part in enumerate(fleet.parts):
            self.parts.append(ShardPart(i, part.view, np.asarray(part.hidden, np.int64), start))
            start += len(self.parts[-1])
        self._rows = start
        self.total_tokens = sum(p.tokens() for p in self.parts)
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
        return self._rows

    def close(self) -> None:
        self.fleet.close()

    def tokens_of(self, rows: np.ndarray) -> np.ndarray:
        """The index's token count of each pool row of ``rows``, read from the shard that holds it."""
        from nagindex.index.sharded import split_rows

        rows = np.asarray(rows, np.int64)
        out = np.zeros(len(rows), np.int64)
        for part, where, local in split_rows(self.parts, rows):
            out[where] = np.asarray(part.view.token_counts)[local]
        return out

    def locate(self, docids: Any, where: Any) -> np.ndarray:
        """Pool rows of ``docids`` (an Arrow string array), in their order; a docid the index does not hold
        is an error naming ``where`` (the selection file) and the first ones missing."""
        import pyarrow as pa

        from nagindex.index.sharded import locate

        rows = locate(self.parts, docids)
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            first = docids.take(pa.array(missing[:3])).to_pylist()
            raise InputError(f"{where}: {len(missing):,} of {len(docids):,} docids are not in the index (first: "
                             f"{', '.join(repr(d) for d in first)}): a selection must "
                             "name documents of the index it is evaluated on")
        return rows

    def draw(self, budget: int, seed: int) -> np.ndarray:
        """A seeded random selection within a token ``budget``: a random order, cut by the query's prefix
        rule (``select.select_budget``: it stops at the first document that would overflow)."""
        return self._random(seed, tokens=int(budget))

    def sample(self, n: int, seed: int) -> np.ndarray:
        """``n`` documents drawn at random (all of them where the pool is smaller)."""
        return self._random(seed, k=min(int(n), len(self)))

    def _random(self, seed: int, *, k: int | None = None, tokens: int | None = None) -> np.ndarray:
        """The pool rows of the prefix of the seeded order under ``k`` documents or ``tokens`` tokens, in that
        order. First pass: documents and tokens per key bin over every shard, to find the bin the quota ends
        in; second pass: the documents up to that bin, sorted by (key, docid), cut."""
        bins, shift = 1 << KEY_BITS, np.uint64(64 - KEY_BITS)
        docs = np.zeros(bins, np.int64)
        sums = np.zeros(bins, np.int64)
        for part in self.parts:
            key, tok = self._keys(part, seed)
            top = (key >> shift).astype(np.int64)
            docs += np.bincount(top, minlength=bins)
            sums += np.bincount(top, weights=tok, minlength=bins).astype(np.int64)
        reach = np.cumsum(docs) if k is not None else np.cumsum(sums)
        limit = k if k is not None else tokens
        last = min(int(np.searchsorted(reach, limit, side="right")), bins - 1)  # the bin the quota ends in
        keys, toks, rows = [], [], []
        ids: list[str] = []
        for part in self.parts:
            key, tok = self._keys(part, seed)
            take = np.flatnonzero(key >> shift <= np.uint64(last))
            keys.append(key[take])
            toks.append(tok[take])
            rows.append(part.start + take)
            ids.extend(part.view.docids.take(part.local_rows(take)))
        key, tok, row = np.concatenate(keys), np.concatenate(toks), np.concatenate(rows)
        order = np.lexsort((np.array(ids, dtype=str), key)) if len(key) else np.zeros(0, np.int64)
        if k is not None:
            return row[order[:k]]
        kept = int(np.searchsorted(np.cumsum(tok[order]), tokens, side="right"))
        return row[order[:kept]]

    @staticmethod
    def _keys(part: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The seeded keys and token counts of a part's visible rows: the docid hash mixed with the seed by
        splitmix64's finaliser (a seed gives an unrelated order, the same on any layout)."""
        from nagindex.index.dedup import docid_hashes

        kept = part.kept()
        with np.errstate(over="ignore"):
            x = docid_hashes(part.view, 0)[kept] ^ (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(1))
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            x ^= x >> np.uint64(31)
        return x, np.asarray(part.view.token_counts)[kept].astype(np.int64)

    def score(self, profile: np.ndarray, weighting: str = "none") -> None:
        """Score every document against one count profile ``(L, width)`` over all layers (then ``fetch``
        returns the similarity, the score of ``nagindex score`` with the same ``weighting``)."""
        from nagindex.query.scan import ScorePlan
        from nagindex.query.weighting import target_weights

        layers = np.arange(len(profile))
        weights = target_weights(self.fleet, weighting, profile[None], layers, 1.0, len(self))
        self.fleet.score(ScorePlan(profile[None], tuple(range(len(profile))), weights=weights))
        self._scored = True

    def score_nait(self, directions: np.ndarray) -> None:
        """Score every document against one target's ``(L, d)`` NAIT directions over all layers (then ``fetch``
        returns the NAIT score, the score of ``nagindex score --method nait``)."""
        from nagindex.query.scan import ScorePlan

        directions = np.asarray(directions, np.float64)[None]
        self.fleet.score(ScorePlan(directions, tuple(range(directions.shape[1])), nait=directions))
        self._scored = True

    def fetch(self, rows: np.ndarray) -> tuple[dict[int, str], dict[int, float]]:
        """Text and similarity of each distinct pool row of ``rows``, read back from the sources."""
        if not self._scored:
            raise NagIndexError("Pool.fetch needs a profile: call score() first")
        from nagindex.index.sharded import split_rows

        wanted = np.unique(np.asarray(rows, np.int64))
        local = [np.zeros(0, np.int64) for _ in self.parts]
        where = [np.zeros(0, np.int64) for _ in self.parts]
        for part, w, rows_of_part in split_rows(self.parts, wanted):
            local[part.shard], where[part.shard] = rows_of_part, w
        answers = self.fleet.fetch(local, True)
        texts: dict[int, str] = {}
        sims: dict[int, float] = {}
        for w, got in zip(where, answers):
            texts.update(zip(wanted[w].tolist(), got["text"]))
            sims.update(zip(wanted[w].tolist(), got["similarity"][0].tolist()))
        return texts, sims
