"""Exact selection over any number of shards, in rounds, at bounded memory (spec sec. 4 rules).

Scores are integer sums (power 1), so the selection threshold is exact: every shard
(``scan.ShardScan``, in-process or a Ray actor) returns, per target, a histogram of
document count and token sum per key bin; the coordinator finds the bin where the
quota (``k`` documents or a token budget) is reached; every shard returns the rows of
earlier bins and, of the threshold bin, only the rows that can still be selected, in
``(key, docid)`` order; the coordinator orders them by ``(key, docid)`` and cuts. The
rows kept are exactly a one-shard full sort's prefix, whatever the number of shards or
how documents are spread over them. Float keys (``--power`` other than 1, a quality
file) use the same rounds with bins over the global key range: equal keys share a bin
and the threshold bin is ordered by the exact key, so those are exact too.

Memory: the coordinator holds the histograms (``scan.MAX_BINS`` bins, 16 bytes each,
per target) and the candidate rows, which are the selected rows plus at most one
threshold bin's worth per shard, cut to what could still be selected; a shard holds one
block and what it returns. Neither grows with the index or its longest docid.

The rules (``Quota`` and its shares, the prefix rule for a token budget, the paper and
union mixtures) are the ones ``select.py`` documents; they run here on ranked
candidates rather than on the whole pool.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.query.quota import Quota, fraction_budget_of
from nagindex.query.scan import Binning, Need, ScorePlan, rank_table

logger = logging.getLogger(__name__)

ROW_BITS = 40  # a selected row's id: part << ROW_BITS | row


@dataclass
class Pool:
    """What round 1 found over all shards: visible and eligible documents, key ranges per target."""

    visible_rows: int
    visible_tokens: int
    rows: int
    tokens: int
    exact: bool
    key_lo: np.ndarray
    key_hi: np.ndarray


@dataclass(frozen=True)
class Caps:
    """Group caps: no group takes more than ``share`` of a target's quota (of its tokens for a token
    budget, of its documents for ``k``); ``quotas`` give named groups their own share.
    ``one_per_cluster``: at most one document of each near-duplicate cluster (``index/clusters.py``)."""

    share: float | None = None
    quotas: Mapping[str, float] = field(default_factory=dict)
    one_per_cluster: bool = False

    def limits(self, groups: Sequence[str], total: int) -> np.ndarray:
        """Each group's cap in tokens (documents for ``k``); a group without one is not capped at all, so
        only the quota's prefix rule stops the walk there."""
        uncapped = np.iinfo(np.int64).max // 2
        return np.array([int(share * total) if share is not None else uncapped
                         for share in (self.quotas.get(g, self.share) for g in groups)], dtype=np.int64)


@dataclass(frozen=True)
class Threshold:
    """Where a quota ends in a target's key histogram: every eligible row in a bin before ``cut`` is taken
    (``rows`` of them, ``tokens`` in all), and of bin ``cut`` the rows ``need`` still reaches (``need`` None:
    the quota reaches past every row, ``cut`` is ``binning.bins``)."""

    binning: Binning
    cut: int
    need: Need | None
    rows: int
    tokens: int


@dataclass
class Picked:
    """Selected rows in selection order: ``part``, ``row`` (within the part), the choosing ``target``."""

    part: np.ndarray
    row: np.ndarray
    target: np.ndarray
    exhausted: bool

    def __len__(self) -> int:
        return len(self.row)


def _merge(stats: list[dict[str, Any]]) -> dict[str, Any]:
    return {"visible_rows": sum(s["visible_rows"] for s in stats), "visible_tokens": sum(s["visible_tokens"] for s in stats),
            "rows": sum(s["rows"] for s in stats), "tokens": sum(s["tokens"] for s in stats),
            "exact": all(s["exact"] for s in stats),
            "key_lo": np.min([s["key_lo"] for s in stats], axis=0), "key_hi": np.max([s["key_hi"] for s in stats], axis=0),
            "dist_lo": np.min([s["dist_lo"] for s in stats], axis=0),
            "dist_hi": np.max([s["dist_hi"] for s in stats], axis=0),
            "q_lo": min(s["q_lo"] for s in stats), "q_hi": max(s["q_hi"] for s in stats)}


def score_pool(fleet: Any, plan: ScorePlan | None) -> Pool:
    """Rounds 1 and 2: every shard scans its codes; with a quality file, keys are then combined
    with the global distance and quality ranges (spec sec. 4's min-max over the pool); with
    ``plan.sample``, replaced by Gumbel-perturbed standardised keys (``sample.py``)."""
    merged = _merge(fleet.score(plan))
    if plan is not None and plan.quality is not None:
        if merged["rows"] == 0:
            raise NagIndexError("no index document has a quality value (check --quality-file ids)")
        ranges = np.stack([merged["dist_lo"], merged["dist_hi"]], axis=1)
        merged = _merge(fleet.combine(ranges, (merged["q_lo"], merged["q_hi"])))
    pool = _pool(merged)
    if plan is not None and plan.sample is not None:
        from nagindex.query.sample import histogram_moments

        ranking = Ranking(fleet, pool)
        ranking.histograms(range(len(pool.key_lo)))
        moments = [histogram_moments(h[0], b.lo, b.bins, b.width) if h is not None else (0.0, 0.0)
                   for h, b in zip(ranking._hist, ranking.binnings)]
        temperature, seed = plan.sample
        pool = _pool(_merge(fleet.sample(np.array([m for m, _ in moments]), np.array([s for _, s in moments]),
                                      temperature, seed)))
    return pool


def _pool(merged: dict[str, Any]) -> Pool:
    return Pool(merged["visible_rows"], merged["visible_tokens"], merged["rows"], merged["tokens"], merged["exact"],
                merged["key_lo"], merged["key_hi"])


class Ranking:
    """Targets' rankings over a scored fleet: ``top(t, rows=...)`` / ``top(t, tokens=...)`` return the
    ranked prefix that a quota of that size can reach, as an Arrow table (part, row, key, tokens, docid)."""

    def __init__(self, fleet: Any, pool: Pool, budget_tokens: int | None = None, caps: Caps | None = None) -> None:
        self.fleet, self.pool, self.caps = fleet, pool, caps
        #: the pool tokens a ``fraction`` is of: the pool's, or the pool's before documents were excluded
        self.budget_tokens = pool.tokens if budget_tokens is None else budget_tokens
        p = len(pool.key_lo)
        self.binnings = [Binning.over(pool.key_lo[t], pool.key_hi[t], pool.exact) if pool.rows else None
                         for t in range(p)]
        self._hist: list[tuple[np.ndarray, np.ndarray] | None] = [None] * p

    def histograms(self, targets: Sequence[int]) -> None:
        """Round 3 for ``targets`` (all in one pass over each shard's scratch), summed over shards."""
        want = [b if t in targets and self._hist[t] is None else None for t, b in enumerate(self.binnings)]
        if not any(b is not None for b in want):
            return
        for answer in self.fleet.histogram(want):
            for t, h in enumerate(answer):
                if h is None:
                    continue
                if self._hist[t] is None:
                    self._hist[t] = (h[0].copy(), h[1].copy())
                else:
                    self._hist[t][0][:] += h[0]
                    self._hist[t][1][:] += h[1]

    def threshold(self, t: int, rows: int | None = None, tokens: int | None = None) -> Threshold:
        """Where target ``t``'s first ``rows``, or its budget prefix of ``tokens``, ends in its key histogram."""
        self.histograms([t])
        counts, token_sums = self._hist[t]
        spent = np.cumsum(counts if rows is not None else token_sums)
        limit = rows if rows is not None else tokens
        cut = int(np.searchsorted(spent, limit, side="left" if rows is not None else "right"))
        binning = self.binnings[t]
        if cut >= len(spent):  # the quota reaches past every eligible row
            return Threshold(binning, binning.bins, None, int(counts.sum()), int(token_sums.sum()))
        before_rows, before_tokens = (int(counts[:cut].sum()), int(token_sums[:cut].sum()))
        before = before_rows if rows is not None else before_tokens
        need = Need(rows=limit - before) if rows is not None else Need(tokens=limit - before)
        return Threshold(binning, cut, need, before_rows, before_tokens)

    def top(self, t: int, rows: int | None = None, tokens: int | None = None) -> Any:
        """Target ``t``'s best rows in ranking order: the first ``rows``, or the budget prefix's
        candidates for ``tokens`` (every row the prefix rule can take, and the one that overflows)."""
        import pyarrow as pa

        if self.pool.rows == 0:
            return _empty()
        th = self.threshold(t, rows, tokens)
        return rank_table(pa.concat_tables(self.fleet.candidates(t, th.binning, th.cut, th.need)))


def _empty() -> Any:
    import pyarrow as pa

    return pa.table({"part": pa.array([], pa.int32()), "row": pa.array([], pa.int64()), "key": pa.array([], pa.int64()),
                     "tokens": pa.array([], pa.int64()), "docid": pa.array([], pa.large_string())})


def _ids(table: Any) -> np.ndarray:
    return (table.column("part").to_numpy().astype(np.int64) << ROW_BITS) | table.column("row").to_numpy()


def _budget(quota: Quota, ranking: Ranking) -> int | None:
    if quota.k is not None:
        return None
    return quota.tokens if quota.tokens is not None else fraction_budget_of(ranking.budget_tokens, quota.fraction)


def select_one(ranking: Ranking, t: int, quota: Quota) -> tuple[np.ndarray, bool]:
    """One target's selection (ids in order) and whether the quota asked for more than the pool holds."""
    pool = ranking.pool
    budget = _budget(quota, ranking)
    if ranking.caps is not None:
        return _capped(ranking, t, quota.k if budget is None else budget, budget is not None)
    if budget is None:
        ranked = ranking.top(t, rows=quota.k)
        return _ids(ranked)[:quota.k], quota.k > pool.rows
    if pool.tokens <= 0:
        return np.zeros(0, np.int64), budget > pool.tokens
    ranked = ranking.top(t, tokens=budget)
    spent = np.cumsum(ranked.column("tokens").to_numpy())
    stop = int(np.searchsorted(spent, budget, side="right"))
    return _ids(ranked)[:max(stop, 1)], budget > pool.tokens


def _capped(ranking: Ranking, t: int, total: int, by_budget: bool) -> tuple[np.ndarray, bool]:
    """``select_one`` under group caps (``turns.capped``): ranked as deep as the skipped groups make it
    necessary (doubling); ``exhausted`` when the pool runs out before the quota is met."""
    import pyarrow.compute as pc

    from nagindex.query.turns import capped

    pool = ranking.pool
    if pool.rows == 0 or (by_budget and pool.tokens <= 0):
        return np.zeros(0, np.int64), True
    per_row = max(pool.tokens / pool.rows, 1.0) if by_budget else 1.0
    depth = min(pool.rows, int(total / per_row * 1.25) + 64)
    while True:
        ranked = ranking.top(t, rows=depth)
        cost = ranked.column("tokens").to_numpy() if by_budget else np.ones(ranked.num_rows, np.int64)
        if "group" in ranked.column_names:
            groups = pc.dictionary_encode(ranked.column("group")).combine_chunks()
            group = groups.indices.to_numpy().astype(np.int64)
            limits = ranking.caps.limits(groups.dictionary.to_pylist(), total)
        else:  # --one-per-cluster alone: one group without a cap
            group, limits = np.zeros(ranked.num_rows, np.int64), ranking.caps.limits(["(all)"], total)
        pos, done = capped(cost.astype(np.int64), group, limits, _taken_keys(ranked), total, by_budget)
        if done or depth >= pool.rows:
            return _ids(ranked)[pos], not done
        depth = min(pool.rows, 2 * depth)


def _taken_keys(ranked: Any) -> np.ndarray:
    """What "already taken" is judged by, as dense ints: a row's cluster with ``--one-per-cluster``
    (the ``cluster`` column), else the row itself."""
    if "cluster" not in ranked.column_names:
        return np.arange(ranked.num_rows, dtype=np.int64)
    return np.unique(ranked.column("cluster").to_numpy(), return_inverse=True)[1].astype(np.int64)


def paper(ranking: Ranking, quota: Quota, weights: Sequence[float], dedup: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """The paper's mixture (``select.paper_mixture``): each target its share, concatenated in target order."""
    ranking.histograms(range(len(weights)))
    picks = [select_one(ranking, t, share) for t, share in enumerate(quota.shares(weights))]
    ids = np.concatenate([p for p, _ in picks])
    target = np.concatenate([np.full(len(p), t, dtype=np.int64) for t, (p, _) in enumerate(picks)])
    if dedup:
        _, first = np.unique(ids, return_index=True)
        first.sort()
        ids, target = ids[first], target[first]
    return ids, target, any(e for _, e in picks)


def union(ranking: Ranking, quota: Quota, weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray, bool]:
    """The duplicate-free mixture (``select.union_mixture``): targets take turns, each taking its best
    document no target has taken yet, until its share is full. Each target ranks only as deep as its
    turns reach; a target that runs out of ranked rows before the pool does is ranked deeper (doubling).

    ``exhausted`` when the quota asks for more than the pool holds, or when a target's turns end short of
    its share because its whole ranking was taken (with ``--one-per-cluster``, every cluster left is taken).
    """
    pool = ranking.pool
    shares = quota.shares(weights)
    ranking.histograms(range(len(weights)))
    if quota.k is not None:
        limits = [s.k for s in shares]
        asked, have, by_tokens = quota.k, pool.rows, False
    else:
        limits = [_budget(s, ranking) for s in shares]
        asked, have, by_tokens = sum(limits), pool.tokens, True
        if have <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), asked > have
    per_row = max(pool.tokens / max(pool.rows, 1), 1.0) if by_tokens else 1.0
    depth = [min(pool.rows, int(limit / per_row * 1.25) + 64) for limit in limits]
    lists: list[Any] = [None] * len(limits)
    while True:
        for t in range(len(limits)):
            if lists[t] is None:
                lists[t] = ranking.top(t, rows=depth[t])
        ids = [_ids(r) for r in lists]
        costs = [r.column("tokens").to_numpy() if by_tokens else np.ones(r.num_rows, np.int64) for r in lists]
        complete = [len(i) >= pool.rows for i in ids]
        keys = [r.column("cluster").to_numpy() for r in lists] \
            if ranking.caps is not None and ranking.caps.one_per_cluster else None
        chosen, target, short, unmet = _round_robin(ids, costs, limits, complete, keys)
        if short < 0:
            return chosen, target, asked > have or unmet
        depth[short] = min(pool.rows, 2 * depth[short])
        lists[short] = None


def _round_robin(ids: list[np.ndarray], costs: list[np.ndarray], limits: Sequence[int], complete: list[bool],
                 clusters: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """The union's turns over each target's ranked ``ids`` (best first) with per-row ``costs``.

    A row is skipped when its id was taken, or with ``clusters`` (each list's ``cluster`` column,
    ``--one-per-cluster``), when a row of its cluster was. Returns ``(ids taken, target of each, -1, unmet)``,
    ``unmet`` True when a target's complete list ran out before its limit was reached (its share cannot be
    met: what is left of the pool is taken); or ``(.., .., t, False)`` when target ``t`` reached the end of a
    list that is not ``complete`` (the caller ranks it deeper and runs again).

    A list running out and a target stopping at its limit look alike in the turns' output, so each complete
    list ends in a sentinel of cost 0 and a key no other row has: a target takes it only when it reached the
    end of its list without its limit stopping it.
    """
    m = len(ids)
    flat = np.concatenate(ids)
    uniq, compact = np.unique(flat if clusters is None else np.concatenate(clusters), return_inverse=True)
    sizes = np.array([len(i) for i in ids], np.int64)
    ends = np.asarray(complete, np.bool_)
    starts = np.zeros(m + 1, np.int64)
    np.cumsum(sizes + ends, out=starts[1:])
    sentinel = np.zeros(starts[-1], np.bool_)
    sentinel[starts[1:][ends] - 1] = True
    keys = np.empty(starts[-1], np.int64)
    keys[~sentinel] = compact
    keys[sentinel] = len(uniq) + np.flatnonzero(ends)
    cost = np.zeros(starts[-1], np.int64)
    cost[~sentinel] = np.concatenate(costs)
    row = np.full(starts[-1], -1, np.int64)
    row[~sentinel] = np.arange(len(flat))
    from nagindex.query.turns import turns

    pos, who, short = turns(keys, cost, starts, np.asarray(limits, np.int64), ends, len(uniq) + m)
    real = ~sentinel[pos]
    used = np.zeros(m, np.int64)
    np.add.at(used, who[real], cost[pos[real]])
    ran_out = np.zeros(m, np.bool_)
    ran_out[who[~real]] = True
    unmet = short < 0 and bool(np.any(ran_out & (used < np.asarray(limits, np.int64))))
    return flat[row[pos[real]]], who[real], short, unmet


def select(fleet: Any, plan: ScorePlan, quota: Quota, weights: Sequence[float], mode: str, dedup: bool,
           check: Any = None, caps: Caps | None = None) -> tuple[Picked, Pool]:
    """Score the fleet and select: one target, or a ``paper``/``union`` mixture of several.

    ``caps``: group caps on each target's selection (``Caps``; single targets and paper mixtures).
    ``check(ids)`` (decontamination) returns the ids among a selection's that must go: they are
    excluded on their shards and the selection is made again, with the budget of the pool as it was
    (a removed document frees its place for the next one), until a selection passes; each document
    is checked once.
    """
    pool = score_pool(fleet, plan)
    tokens, checked = pool.tokens, np.zeros(0, np.int64)
    while True:
        ranking = Ranking(fleet, pool, budget_tokens=tokens, caps=caps)
        if len(weights) == 1:
            ids, exhausted = select_one(ranking, 0, quota)
            target = np.zeros(len(ids), np.int64)
        elif mode == "paper":
            ids, target, exhausted = paper(ranking, quota, weights, dedup)
        else:
            ids, target, exhausted = union(ranking, quota, weights)
        ids = np.asarray(ids, np.int64)
        if check is None:
            break
        new = np.setdiff1d(ids, checked)
        checked = np.union1d(checked, new)
        bad = np.asarray(check(new), np.int64)
        if not len(bad):
            break
        parts = bad >> ROW_BITS
        fleet.exclude([bad[parts == spec["part"]] & ((1 << ROW_BITS) - 1) for spec in fleet.specs])
        pool = _pool(_merge(fleet.stats()))
    return Picked(part=ids >> ROW_BITS, row=ids & ((1 << ROW_BITS) - 1), target=target, exhausted=exhausted), pool
