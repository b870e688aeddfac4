"""Scored pool -> selected rows: ranking with exact ties, quotas, quality, mixtures.

Spec sec. 4. Every ranking is by ``(key ascending, docid ascending)``, where the
key is the NAG distance (or the quality-combined score) and docids compare as
Python strings, so numeric-looking ids ("10" < "9") never change the type of the
comparison (the reference's pandas join breaks on them, spec sec. 6).

Only the part of a ranking that a quota can reach is sorted: ``top_rows`` finds
the n-th key with ``np.partition`` and sorts just the rows at or below it, which
keeps a 10M-document pool to a few linear passes. numpy only.

Docids are read only for rows whose key is tied: ``docids`` is a sequence of
str, or any object with ``__len__`` and ``sort_keys(rows)`` (the index's
``DocidColumn``, which builds the keys from its UTF-8 bytes), so a query on a
large index never turns every docid into a Python string.

Quotas (``Quota``): ``k`` documents; ``tokens``, a token budget; or
``fraction`` of the pool's tokens, budget ``floor(fraction * total tokens)``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quota:
    """How much to select: exactly one of ``k`` docs, ``tokens`` (a budget) or ``fraction`` of pool tokens."""

    k: int | None = None
    tokens: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("k", "tokens", "fraction") if getattr(self, name) is not None]
        if len(given) != 1:
            raise NagIndexError(f"give exactly one of k, tokens, fraction (got {given or 'none'})")
        if self.k is not None and self.k < 1:
            raise NagIndexError(f"k must be >= 1, got {self.k}")
        if self.tokens is not None and self.tokens < 0:
            raise NagIndexError(f"token budget must be >= 0, got {self.tokens}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise NagIndexError(f"fraction must be in (0, 1], got {self.fraction}")

    def shares(self, weights: Sequence[float]) -> list[Quota]:
        """Split this quota between targets in proportion to ``weights`` (all > 0).

        ``fraction``: ``fraction * w_i / sum(w)`` each (so each target's budget is
        ``floor`` of its share of the pool's tokens, as the paper's r_f / M).
        ``k`` and ``tokens``: integers that sum exactly to the total, by largest
        remainder (ties to the earlier target).
        """
        w = _weights(weights)
        if self.fraction is not None:
            return [Quota(fraction=self.fraction * wi / w.sum()) for wi in w]
        total = self.k if self.k is not None else self.tokens
        parts = split_integer(total, w)
        if self.k is not None:
            if (parts == 0).any():
                raise NagIndexError(f"k={self.k} is too small to give each of {len(w)} targets a document")
            return [Quota(k=int(p)) for p in parts]
        return [Quota(tokens=int(p)) for p in parts]


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


def _weights(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or not np.isfinite(w).all() or (w <= 0).any():
        raise NagIndexError(f"mixture weights must be positive numbers, got {list(weights)}")
    return w


def split_integer(total: int, weights: Sequence[float]) -> np.ndarray:
    """Largest-remainder split of ``total`` into integers proportional to ``weights``, summing to ``total``."""
    w = _weights(weights)
    exact = total * w / w.sum()
    parts = np.floor(exact).astype(np.int64)
    left = int(total - parts.sum())
    if left:
        parts[np.argsort(-(exact - parts), kind="stable")[:left]] += 1
    return parts


class _RowsOf:
    """The docids of ``rows`` of a lazy docid column, still lazy (see the module docstring)."""

    def __init__(self, base: Any, rows: np.ndarray) -> None:
        self.base, self.rows = base, rows

    def __len__(self) -> int:
        return len(self.rows)

    def sort_keys(self, rows: np.ndarray) -> list[np.ndarray]:
        return self.base.sort_keys(self.rows[rows])


def _ids(docids: Any) -> Any:
    if isinstance(docids, np.ndarray) or hasattr(docids, "sort_keys"):
        return docids
    return np.asarray(docids, dtype=object)


def take_ids(docids: Any, rows: np.ndarray) -> Any:
    """``docids[rows]`` for an array or sequence, a lazy subset for a lazy column."""
    docids = _ids(docids)
    return _RowsOf(docids, np.asarray(rows, dtype=np.int64)) if hasattr(docids, "sort_keys") else docids[rows]


def _tie_keys(docids: Any, rows: np.ndarray) -> list[np.ndarray]:
    return docids.sort_keys(rows) if hasattr(docids, "sort_keys") else _docid_sort_keys(docids[rows])


def _check_key(key: np.ndarray, docids: np.ndarray) -> np.ndarray:
    key = np.asarray(key)
    if key.ndim != 1 or len(key) != len(docids):
        raise NagIndexError(f"scores ({key.shape}) and docids ({len(docids)}) do not match")
    if key.dtype.kind == "f" and np.isnan(key).any():
        raise NagIndexError("a ranking key is NaN")
    return key


def rank_order(key: np.ndarray, docids: np.ndarray | Sequence[str], rows: np.ndarray | None = None) -> np.ndarray:
    """``rows`` (default: all) sorted by ``(key asc, docid asc)``; docids compare as ``str``.

    Sorts numerically first, then re-sorts only the rows whose key is shared by
    another row, by docid: with integer scores ties are common but the tied
    rows are few, and strings are slow to sort.
    """
    docids = _ids(docids)
    key = _check_key(key, docids)
    rows = np.arange(len(key)) if rows is None else np.asarray(rows, dtype=np.int64)
    order = rows[np.argsort(key[rows], kind="stable")]
    k = key[order]
    tied = np.zeros(len(order), dtype=bool)
    same = k[1:] == k[:-1]
    tied[1:] |= same
    tied[:-1] |= same
    if tied.any():
        pos = np.flatnonzero(tied)
        sub = order[pos]
        order[pos] = sub[np.lexsort((*_tie_keys(docids, sub), k[pos]))]
    return order


def _docid_sort_keys(docids: np.ndarray) -> list[np.ndarray]:
    """lexsort keys (least significant first) that order ``docids`` as Python ``str`` does.

    Latin-1 ids (the usual case) become big-endian uint64 words of 8 characters,
    zero-padded, so that a shorter id sorts before its extensions: integer
    sorts, 1.6x faster than sorting strings. Other ids sort as numpy strings,
    which compare by code point like ``str``.
    """
    names = docids.astype(str)  # numeric-looking or not, ids compare as text
    width = names.dtype.itemsize // 4
    if len(names) == 0 or width == 0:
        return [names]
    points = names.view(np.uint32).reshape(len(names), width)
    if points.max() > 0xFF:
        return [names]
    padded = np.zeros((len(names), -(-width // 8) * 8), dtype=np.uint8)
    padded[:, :width] = points
    words = padded.view(">u8")
    return [words[:, j] for j in range(words.shape[1] - 1, -1, -1)]


def top_rows(key: np.ndarray, docids: np.ndarray | Sequence[str], n: int) -> np.ndarray:
    """The first ``n`` rows of ``rank_order(key, docids)``, without a full sort.

    Every row whose key equals the n-th smallest enters the docid tie-break, so
    the result is exactly the full sort's prefix.
    """
    docids = _ids(docids)
    key = _check_key(key, docids)
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    if n >= len(key):
        return rank_order(key, docids)
    threshold = np.partition(key, n - 1)[n - 1]
    return rank_order(key, docids, np.flatnonzero(key <= threshold))[:n]


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
    """``floor(fraction * total tokens)``, computed as the reference does (``int(total * fraction)``)."""
    tokens = _token_counts(token_counts, len(token_counts))
    return int(int(tokens.sum()) * fraction)


def select_k(key: np.ndarray, docids: np.ndarray | Sequence[str], k: int) -> Selection:
    """The ``k`` best rows; all of them, flagged ``exhausted``, when k exceeds the pool."""
    rows = top_rows(key, docids, k)
    return Selection(rows=rows, exhausted=k > len(rows))


def select_budget(key: np.ndarray, docids: np.ndarray | Sequence[str],
                  token_counts: np.ndarray | Sequence[float], budget: int) -> Selection:
    """The reference's prefix rule (spec sec. 4) for a token ``budget``.

    Keep the ranked prefix whose cumulative token count is <= budget, stopping at
    the first document that would overflow; if not even the first fits, that one
    document; if the pool has no tokens at all, nothing. Ranks only as deep as
    the budget reaches (doubling a top-n guess).
    """
    docids = _ids(docids)
    tokens = _token_counts(token_counts, len(docids))
    total = int(tokens.sum())
    if total <= 0:
        return Selection(rows=np.empty(0, dtype=np.int64))
    n = min(len(tokens), int(budget * len(tokens) / total * 1.25) + 64)
    while True:
        rows = top_rows(key, docids, n)
        stop = int(np.searchsorted(np.cumsum(tokens[rows]), budget, side="right"))
        if stop < len(rows) or len(rows) == len(tokens):
            break
        n = min(len(tokens), 2 * n)
    return Selection(rows=rows[:max(stop, 1)], exhausted=budget > total)


def select(key: np.ndarray, docids: np.ndarray | Sequence[str], quota: Quota,
           token_counts: np.ndarray | Sequence[float] | None = None) -> Selection:
    """One target's selection for any quota (``k``, ``tokens`` or ``fraction``)."""
    if quota.k is not None:
        return select_k(key, docids, quota.k)
    budget = quota.tokens if quota.tokens is not None else fraction_budget(
        _token_counts(token_counts, len(_ids(docids))), quota.fraction)
    return select_budget(key, docids, token_counts, budget)


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(), x.max()
    return np.zeros_like(x) if hi == lo else (x - lo) / (hi - lo)


def combine_quality(distance: np.ndarray, quality: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Spec sec. 4 combined score: min-max distance + min-max quality (inverted if higher is better).

    Normalised over the docs that have a quality value; docs without one (NaN)
    get NaN and take no part in the selection. A constant column normalises to 0.
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


def select_with_quality(distance: np.ndarray, quality: np.ndarray, docids: np.ndarray | Sequence[str],
                        quota: Quota, token_counts: np.ndarray | Sequence[float] | None = None,
                        higher_is_better: bool = True) -> tuple[Selection, np.ndarray]:
    """Select by ``combine_quality`` exactly like by distance; returns it with the combined scores.

    As in the reference, docs without quality leave the pool first, so a
    ``fraction`` is of the tokens of the docs that have a quality value.
    """
    docids = _ids(docids)
    combined = combine_quality(distance, quality, higher_is_better)
    kept = np.flatnonzero(~np.isnan(combined))
    if len(kept) < len(combined):
        logger.info("quality: %d of %d docs have no quality value and are left out",
                    len(combined) - len(kept), len(combined))
    tokens = None if token_counts is None else _token_counts(token_counts, len(docids))[kept]
    sel = select(combined[kept], take_ids(docids, kept), quota, tokens)
    return Selection(rows=kept[sel.rows], exhausted=sel.exhausted), combined


def _target_keys(keys: np.ndarray, weights: Sequence[float] | None) -> tuple[np.ndarray, list[float]]:
    keys = np.asarray(keys)
    if keys.ndim != 2 or keys.shape[0] == 0:
        raise NagIndexError(f"mixture keys must be (targets, docs), got shape {keys.shape}")
    w = [1.0] * keys.shape[0] if weights is None else list(weights)
    if len(w) != keys.shape[0]:
        raise NagIndexError(f"{len(w)} weights for {keys.shape[0]} targets")
    return keys, w


def paper_mixture(keys: np.ndarray, docids: np.ndarray | Sequence[str], quota: Quota,
                  weights: Sequence[float] | None = None,
                  token_counts: np.ndarray | Sequence[float] | None = None, dedup: bool = False) -> Selection:
    """The paper's multi-target mixture (sec. 3.5): each target selects its share on its own.

    ``keys`` is ``(M, N)``, one ranking key per target. Target i selects with
    ``quota.shares(weights)[i]`` exactly as a single-target query would; the
    selections are concatenated in target order, a doc chosen by two targets
    appearing twice, or once (its first occurrence) with ``dedup``.
    """
    keys, w = _target_keys(keys, weights)
    picks = [select(key, docids, share, token_counts) for key, share in zip(keys, quota.shares(w))]
    rows = np.concatenate([s.rows for s in picks])
    target = np.concatenate([np.full(len(s.rows), i, dtype=np.int64) for i, s in enumerate(picks)])
    if dedup:
        _, first = np.unique(rows, return_index=True)
        first.sort()
        rows, target = rows[first], target[first]
    return Selection(rows=rows, target=target, exhausted=any(s.exhausted for s in picks))


def union_mixture(keys: np.ndarray, docids: np.ndarray | Sequence[str], quota: Quota,
                  weights: Sequence[float] | None = None,
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
    when the pool allows it. Each target ranks only as deep as it can reach.
    """
    docids = _ids(docids)
    keys, w = _target_keys(keys, weights)
    shares = quota.shares(w)
    n_pool = keys.shape[1]
    if quota.k is not None:
        tokens, limits = None, [s.k for s in shares]
        asked, have = quota.k, n_pool
        depth = min(n_pool, quota.k)  # a pointer passes only taken docs, and at most k are taken
    else:
        tokens = _token_counts(token_counts, n_pool)
        limits = [s.tokens if s.tokens is not None else fraction_budget(tokens, s.fraction) for s in shares]
        asked, have = sum(limits), int(tokens.sum())
        if have <= 0:
            return Selection(rows=np.empty(0, dtype=np.int64), target=np.empty(0, dtype=np.int64))
        depth = min(n_pool, int(asked * n_pool / have * 1.25) + 64)
    while True:
        ranked = [top_rows(key, docids, depth) for key in keys]
        result = _round_robin(ranked, limits, tokens, complete=depth >= n_pool)
        if result is not None:
            break
        depth = min(n_pool, 2 * depth)
    rows, target = (np.asarray(x, dtype=np.int64) for x in result)
    return Selection(rows=rows, target=target, exhausted=asked > have)


def _round_robin(ranked: list[np.ndarray], limits: list[int], tokens: np.ndarray | None,
                 complete: bool) -> tuple[list[int], list[int]] | None:
    """The union's turns over per-target candidate rows (best first).

    ``limits`` are doc counts (``tokens`` None) or token budgets. Returns None
    when a target reaches the end of its candidates while the lists are
    truncated (not ``complete``): the caller ranks deeper and runs again.
    """
    cost = None if tokens is None else tokens.tolist()
    lists = [r.tolist() for r in ranked]
    pointer, used, count = [0] * len(lists), [0] * len(lists), [0] * len(lists)
    active = [True] * len(lists)
    taken: set[int] = set()
    rows: list[int] = []
    target: list[int] = []
    while any(active):
        for i, cand in enumerate(lists):
            if not active[i]:
                continue
            while pointer[i] < len(cand) and cand[pointer[i]] in taken:
                pointer[i] += 1
            if pointer[i] == len(cand):
                if not complete:
                    return None
                active[i] = False  # nothing left in the pool for it
                continue
            row = cand[pointer[i]]
            step = 1 if cost is None else cost[row]
            if used[i] + step > limits[i] and count[i] > 0:
                active[i] = False  # share full, or the next doc would overflow its budget
                continue
            taken.add(row)
            rows.append(row)
            target.append(i)
            used[i] += step
            count[i] += 1
    return rows, target
