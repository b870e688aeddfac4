"""Selections written by the shards: the coordinator decides thresholds and counts, each shard writes its part.

A large selection (20% of 10^9 documents is 2x10^8 rows) does not fit one process, so with ``-o DIR`` (a
name without ``.parquet``/``.jsonl``) no selected row passes through the coordinator as a whole:

1. The rounds of ``rank.py`` find, per target, the threshold bin of its quota (``Ranking.threshold``); only
   that bin's candidate rows come to the coordinator, which orders them and picks the ones the quota takes
   (``k`` rows, or the budget prefix rule). Each shard is told: every eligible row in a bin before the
   threshold, and these rows of it (``ShardScan.choose``).
2. Decontamination runs where the texts are: each shard reads the texts of its chosen rows not read before
   (``check_chosen``), takes out the ones that match, and the rounds run again at the pool's original budget
   until no chosen row matches (the same rows ``rank.select`` removes, since a selection's rows are checked
   once each in both).
3. Global ranks by a k-way merge: each shard orders its chosen rows by (key, docid) (``sort_chosen``) and
   hands them over a batch at a time (``chosen_keys``: keys and docids only); the coordinator ranks every
   row no shard can still undercut and returns each shard its rows' ranks (``write_chosen``), which it
   writes, with every column of the selection file, to ``DIR/part-<shard>.parquet``.

Sorted by rank, the parts are the selection file of ``-o FILE`` row for row (tested). Coordinator memory:
the histograms, the threshold bins' candidates and one batch per shard, whatever the selection's size.
Single targets and paper mixtures (without ``--dedup``); the forms that walk the whole ranking on the
coordinator (union mixtures, group caps, ``--one-per-cluster``) write one file.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.query.rank import Pool, Ranking, _budget, _merge, _pool, rank_table, score_pool

logger = logging.getLogger(__name__)

#: rows of (key, docid) a shard hands the coordinator's merge at a time, at most
MERGE_BATCH = 1 << 16
#: rows of all shards the merge holds at a time, at most (about 32 MiB): with many shards each hands fewer
MERGE_ROWS = 1 << 20


def merge_batch(shards: int) -> int:
    """Rows a shard hands the merge at a time: ``MERGE_BATCH``, fewer when ``MERGE_ROWS`` over the shards is
    less (never under 1,024), so that the coordinator's memory does not grow with the shard count."""
    return min(MERGE_BATCH, max(1024, MERGE_ROWS // max(shards, 1)))


@dataclass
class Written:
    """What the shards wrote: ``parts`` (file names in ``out``, shard order), rows and tokens per target,
    whether a quota asked for more than the pool held, and what decontamination removed."""

    parts: list[str]
    rows: list[int]
    tokens: list[int]
    exhausted: bool
    pool: Pool
    removed: list[tuple[str, int, str]] = field(default_factory=list)


def is_parts_output(out: str | os.PathLike) -> bool:
    """Whether ``-o out`` names a folder of parts (no ``.parquet``/``.jsonl`` suffix) rather than one file."""
    from nagindex.query.write import OUTPUT_SUFFIXES

    return Path(out).suffix not in OUTPUT_SUFFIXES


def check_parts_form(spec: Any) -> None:
    """The query forms whose rows the shards can write themselves (see the module docstring)."""
    refused = [name for name, on in (("--mode union", spec.mode == "union" and len(spec.targets) > 1),
                                     ("--dedup", spec.dedup and len(spec.targets) > 1),
                                     ("--group-by", spec.group_by is not None),
                                     ("--one-per-cluster", spec.one_per_cluster)) if on]
    if refused:
        raise NagIndexError(f"-o {spec.out}: a selection written by the shards (a folder) is for single targets and "
                            f"paper mixtures; {', '.join(refused)} walk the whole ranking in one process: write one "
                            "file instead (-o selection.parquet)")


def write_parts(fleet: Any, plan: Any, spec: Any, names: list[str], benchmarks: Any = None) -> Written:
    """Score, choose, decontaminate and write the selection of ``spec`` as one part per shard in ``spec.out``."""
    pool = score_pool(fleet, plan)
    budget_tokens, removed = pool.tokens, []
    quotas = spec.quota.shares(spec.weights) if len(names) > 1 else [spec.quota]
    while True:
        ranking = Ranking(fleet, pool, budget_tokens=budget_tokens)
        ranking.histograms(range(len(names)))
        exhausted = False
        for t, quota in enumerate(quotas):
            exhausted |= _choose(ranking, t, quota)
        if benchmarks is None:
            break
        found = fleet.check_chosen(benchmarks)
        removed += [(docid, example, words) for shard in found for _, docid, example, words in shard]
        if not any(found):
            break
        pool = _pool(_merge(fleet.stats()))
    out = Path(spec.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rows, offset = [], 0
    for t in range(len(names)):
        counts = fleet.sort_chosen(t)
        _merge_ranks(fleet, t, counts, offset, out, names, spec.with_text, spec.quality_file is not None)
        rows.append(int(sum(counts)))
        offset += rows[-1]
    tokens = fleet.finish_part()
    parts = [_part_name(spec_["part"]) for spec_, got in zip(fleet.specs, tokens) if got is not None]
    per_target = np.sum([got for got in tokens if got is not None], axis=0, dtype=np.int64) if parts else \
        np.zeros(len(names), np.int64)
    return Written(parts, rows, [int(x) for x in per_target], exhausted, pool, removed)


def _choose(ranking: Ranking, t: int, quota: Any) -> bool:
    """Tell every shard which of its rows target ``t`` takes; True when the quota asks for more than the pool."""
    import pyarrow as pa

    pool, fleet = ranking.pool, ranking.fleet
    budget = _budget(quota, ranking)
    none = [np.zeros(0, np.int64)] * len(fleet.specs)
    if pool.rows == 0 or (budget is not None and pool.tokens <= 0):
        binning = ranking.binnings[t]
        fleet.choose(t, binning, 0, none)
        return (quota.k if budget is None else budget) > (pool.rows if budget is None else pool.tokens)
    th = ranking.threshold(t, rows=quota.k) if budget is None else ranking.threshold(t, tokens=budget)
    edge_rows = none
    if th.need is not None:
        edge = rank_table(pa.concat_tables(fleet.candidates(t, th.binning, th.cut, th.need, edge_only=True)))
        if budget is None:
            take = quota.k - th.rows
        else:  # the prefix rule over the whole ranking: before-bin tokens, then the edge rows in order
            spent = th.tokens + np.cumsum(edge.column("tokens").to_numpy())
            take = int(np.searchsorted(spent, budget, side="right"))
            take = max(take, 1) if th.rows == 0 else take
        edge = edge.slice(0, take)
        parts, rows = edge.column("part").to_numpy(), edge.column("row").to_numpy()
        edge_rows = [rows[parts == spec["part"]] for spec in fleet.specs]
    fleet.choose(t, th.binning, th.cut, edge_rows)
    return quota.k > pool.rows if budget is None else budget > pool.tokens


def _merge_ranks(fleet: Any, t: int, counts: list[int], offset: int, out: Path, names: list[str], with_text: bool,
                 quality: bool) -> None:
    """Rank target ``t``'s chosen rows across shards by a k-way merge of their (key, docid) streams, one batch
    per shard at a time, and have each shard write its rows with their ranks (``offset`` + position)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    p = len(counts)
    paths = [str(out / _part_name(spec["part"])) for spec in fleet.specs]
    fetched, written = [0] * p, [0] * p
    pending: list[Any] = [None] * p
    rank, per_shard = offset + 1, merge_batch(p)
    while True:
        want = [per_shard if fetched[s] < counts[s] and (pending[s] is None or pending[s].num_rows < per_shard)
                else 0 for s in range(p)]
        if any(want):
            for s, got in enumerate(fleet.chosen_keys(t, fetched, want)):
                pending[s] = got if pending[s] is None else pa.concat_tables([pending[s], got])
                fetched[s] += got.num_rows
        live = [s for s in range(p) if pending[s] is not None and pending[s].num_rows]
        if not live:
            break
        # every row up to the smallest last-fetched row of a shard that has more to give is safe to rank
        bounded = [pending[s].slice(pending[s].num_rows - 1) for s in range(p) if fetched[s] < counts[s]]
        take = [0] * p
        if bounded:
            last = rank_table(pa.concat_tables(bounded)).slice(0, 1)
            key, docid = last.column("key")[0], last.column("docid")[0]
            for s in live:
                k, d = pending[s].column("key"), pending[s].column("docid")
                safe = pc.or_(pc.less(k, key), pc.and_(pc.equal(k, key), pc.less_equal(d, docid)))
                take[s] = int(pc.sum(safe).as_py() or 0)
        else:
            take = [pending[s].num_rows if pending[s] is not None else 0 for s in range(p)]
        batch = pa.concat_tables([pending[s].slice(0, take[s]).append_column(
            "shard", pa.array(np.full(take[s], s, np.int32))) for s in live])
        order = rank_table(batch).column("shard").to_numpy()
        ranks = [np.flatnonzero(order == s) + rank for s in range(p)]
        fleet.write_chosen(t, written, ranks, paths, names, with_text, quality)
        for s in live:
            written[s] += take[s]
            pending[s] = pending[s].slice(take[s])
        rank += len(order)


def _part_name(part: int) -> str:
    return f"part-{part:05d}.parquet"
