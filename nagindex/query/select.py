"""Scored pool -> selected rows: ranking with exact ties, quotas, quality, mixtures.

Spec sec. 4. Every ranking is by ``(key ascending, docid ascending)``, where the
key is the NAG distance (or the quality-combined score) and docids compare as
Python strings, so numeric-looking ids ("10" < "9") never change the type of the
comparison (the reference's pandas join breaks on them, spec sec. 6).

The functions here take a scored pool held in memory (keys, docids, token
counts) and run the very rounds an index query runs over its shards
(``rank.py``), on one in-memory part (``scan.ArrayPart``): only the part of a
ranking that a quota can reach is ever sorted, by Arrow, docids as UTF-8 bytes.
``docids`` is a sequence of str (numbers are compared as their text) or the
index's ``DocidColumn``.

Quotas (``Quota``, ``k``, ``tokens`` or ``fraction``) are defined in ``quota.py``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.query.quota import Quota, fraction_budget_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    """Selected pool rows in selection order.

    ``target`` says which target chose each row (mixtures; else None).
    ``exhausted`` is True when the quota asked for more than the pool holds (k > N,
    a token budget above the pool's total) and everything available was returned.
    """

    rows: np.ndarray
    target: np.ndarray | None = None
    exhausted: bool = False


def _token_counts(token_counts: np.ndarray | Sequence[float] | None, n: int) -> np.ndarray:
    """Token counts as int64; missing (NaN) counts as 0, like the reference's ``fillna(0)``."""
    if token_counts is None:
        raise NagIndexError("a token budget needs token counts for the pool")
    t = np.asarray(token_counts)
    if t.shape != (n,):
        raise NagIndexError(f"token counts ({t.shape}) do not match the pool ({n} docs)")
    if t.dtype.kind == "f":
        t = np.nan_to_num(t, nan=0.0)
        if (t != np.round(t)).any():
            raise NagIndexError("token counts must be whole numbers")
    t = t.astype(np.int64)
    if (t < 0).any():
        raise NagIndexError("token counts must not be negative")
    return t


def fraction_budget(token_counts: np.ndarray | Sequence[float], fraction: float) -> int:
    """``fraction_budget_of`` the pool's token counts."""
    return fraction_budget_of(int(_token_counts(token_counts, len(token_counts)).sum()), fraction)


def _rank(keys: np.ndarray, docids: Any, token_counts: Any) -> Any:
    """A ``rank.Ranking`` over in-memory keys ``(P, N)`` (one part: the engine an index query runs)."""
    from nagindex.query.fleet import LocalFleet
    from nagindex.query.rank import Ranking, score_pool
    from nagindex.query.scan import ArrayPart

    keys = np.asarray(keys)
    keys = keys[None] if keys.ndim == 1 else keys
    n = keys.shape[1]
    if len(docids) != n:
        raise NagIndexError(f"scores ({keys.shape}) and docids ({len(docids)}) do not match")
    tokens = np.zeros(n, np.int64) if token_counts is None else _token_counts(token_counts, n)
    fleet = LocalFleet([ArrayPart(keys, docids, tokens)], [{"part": 0, "name": None}])
    return Ranking(fleet, score_pool(fleet, None))


def _rows(ids: np.ndarray) -> np.ndarray:
    from nagindex.query.rank import ROW_BITS

    return np.asarray(ids, np.int64) & ((1 << ROW_BITS) - 1)


def _no_nan(key: np.ndarray) -> np.ndarray:
    key = np.asarray(key)
    if key.dtype.kind == "f" and np.isnan(key).any():
        raise NagIndexError("a ranking key is NaN")
    return key


def top_rows(key: np.ndarray, docids: Any, n: int) -> np.ndarray:
    """The first ``n`` rows ranked by ``(key asc, docid asc)``; docids compare as ``str``."""
    from nagindex.query.rank import _ids

    if n <= 0:
        return np.empty(0, dtype=np.int64)
    ranking = _rank(_no_nan(key), docids, None)
    return _rows(_ids(ranking.top(0, rows=n)))[:n]


def rank_order(key: np.ndarray, docids: Any, rows: np.ndarray | None = None) -> np.ndarray:
    """``rows`` (default: all) sorted by ``(key asc, docid asc)``; docids compare as ``str``."""
    key = _no_nan(key)
    if rows is None:
        return top_rows(key, docids, len(key))
    rows = np.asarray(rows, dtype=np.int64)
    ids = np.asarray(docids.arrow().to_pylist() if hasattr(docids, "arrow") else list(docids), dtype=object)
    return rows[top_rows(key[rows], ids[rows], len(rows))]


def select_k(key: np.ndarray, docids: Any, k: int) -> Selection:
    """The ``k`` best rows; all of them, flagged ``exhausted``, when k exceeds the pool."""
    return select(key, docids, Quota(k=k))


def select_budget(key: np.ndarray, docids: Any, token_counts: np.ndarray | Sequence[float], budget: int) -> Selection:
    """The reference's prefix rule (spec sec. 4) for a token ``budget``.

    Keep the ranked prefix whose cumulative token count is <= budget, stopping at
    the first document that would overflow; if not even the first fits, that one
    document; if the pool has no tokens at all, nothing.
    """
    return select(key, docids, Quota(tokens=budget), token_counts)


def select(key: np.ndarray, docids: Any, quota: Quota,
           token_counts: np.ndarray | Sequence[float] | None = None) -> Selection:
    """One target's selection for any quota (``k``, ``tokens`` or ``fraction``)."""
    from nagindex.query.rank import select_one

    if quota.k is None and token_counts is None:
        raise NagIndexError("a token budget needs token counts for the pool")
    ids, exhausted = select_one(_rank(_no_nan(key), docids, token_counts), 0, quota)
    return Selection(rows=_rows(ids), exhausted=exhausted)


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(), x.max()
    return np.zeros_like(x) if hi == lo else (x - lo) / (hi - lo)


def combine_quality(distance: np.ndarray, quality: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Spec sec. 4 combined score: min-max distance + min-max quality (inverted if higher is better).

    Normalised over the docs that have a quality value; docs without one (NaN)
    get NaN and take no part in the selection. A constant column normalises to 0.
    (An index query computes the same per shard from global min/max: ``scan.ShardScan.combine``.)
    """
    distance = np.asarray(distance, dtype=np.float64)
    quality = np.asarray(quality, dtype=np.float64)
    if distance.shape != quality.shape:
        raise NagIndexError(f"distances ({distance.shape}) and quality ({quality.shape}) do not match")
    combined = np.full(distance.shape, np.nan)
    keep = ~np.isnan(quality)
    if keep.any():
        q = _minmax(quality[keep])
        combined[keep] = _minmax(distance[keep]) + (1.0 - q if higher_is_better else q)
    return combined


def select_with_quality(distance: np.ndarray, quality: np.ndarray, docids: Any,
                        quota: Quota, token_counts: np.ndarray | Sequence[float] | None = None,
                        higher_is_better: bool = True) -> tuple[Selection, np.ndarray]:
    """Select by ``combine_quality`` exactly like by distance; returns it with the combined scores.

    As in the reference, docs without quality leave the pool first, so a
    ``fraction`` is of the tokens of the docs that have a quality value.
    """
    from nagindex.query.rank import select_one

    combined = combine_quality(distance, quality, higher_is_better)
    if np.isnan(combined).all():
        raise NagIndexError("no document has a quality value")
    ids, exhausted = select_one(_rank(combined, docids, token_counts), 0, quota)
    return Selection(rows=_rows(ids), exhausted=exhausted), combined


def _mixture(keys: np.ndarray, docids: Any, weights: Sequence[float] | None,
             token_counts: Any) -> tuple[Any, list[float]]:
    keys = np.asarray(keys)
    if keys.ndim != 2 or keys.shape[0] == 0:
        raise NagIndexError(f"mixture keys must be (targets, docs), got shape {keys.shape}")
    w = [1.0] * keys.shape[0] if weights is None else list(weights)
    if len(w) != keys.shape[0]:
        raise NagIndexError(f"{len(w)} weights for {keys.shape[0]} targets")
    return _rank(_no_nan(keys), docids, token_counts), w


def paper_mixture(keys: np.ndarray, docids: Any, quota: Quota, weights: Sequence[float] | None = None,
                  token_counts: np.ndarray | Sequence[float] | None = None, dedup: bool = False) -> Selection:
    """The paper's multi-target mixture (sec. 3.5): each target selects its share on its own.

    ``keys`` is ``(M, N)``, one ranking key per target. Target i selects with
    ``quota.shares(weights)[i]`` exactly as a single-target query would; the
    selections are concatenated in target order, a doc chosen by two targets
    appearing twice, or once (its first occurrence) with ``dedup``.
    """
    from nagindex.query.rank import paper

    ranking, w = _mixture(keys, docids, weights, token_counts)
    ids, target, exhausted = paper(ranking, quota, w, dedup)
    return Selection(rows=_rows(ids), target=target, exhausted=exhausted)


def union_mixture(keys: np.ndarray, docids: Any, quota: Quota, weights: Sequence[float] | None = None,
                  token_counts: np.ndarray | Sequence[float] | None = None) -> Selection:
    """A duplicate-free mixture: targets take turns, each in its own rank order.

    Round robin in listed order; on its turn a target takes its best doc that no
    target has taken yet, until it has its share (``quota.shares(weights)``):
    for ``k``, its integer number of docs; for ``tokens``/``fraction``, its token
    budget, stopping at the first untaken doc that would overflow it (the
    single-target prefix rule, including "if even its first doc overflows, take
    that one"). A target that finds nothing left to take drops out and the
    others go on; as all targets rank the same pool, that happens only once the
    pool is exhausted, so the total (k, or the sum of budgets) is always met
    when the pool allows it.
    """
    from nagindex.query.rank import union

    if quota.k is None and token_counts is None:
        raise NagIndexError("a token budget needs token counts for the pool")
    ranking, w = _mixture(keys, docids, weights, token_counts)
    ids, target, exhausted = union(ranking, quota, w)
    return Selection(rows=_rows(ids), target=target, exhausted=exhausted)
