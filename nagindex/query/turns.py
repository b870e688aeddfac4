"""The union mixture's turns, compiled: targets take turns over their ranked candidates (``rank.union``)."""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def turns(compact: np.ndarray, cost: np.ndarray, starts: np.ndarray, limits: np.ndarray,
          complete: np.ndarray, n_unique: int) -> tuple[np.ndarray, np.ndarray, int]:  # pragma: no cover - compiled
    """Round robin in target order; on its turn a target takes its best candidate nobody took yet.

    Target ``i``'s candidates are ``compact[starts[i]:starts[i + 1]]`` (ids in 0..n_unique-1,
    best first) with ``cost`` each (1 for a count, tokens for a budget). A target stops when
    its next pick would pass ``limits[i]`` (but always takes one), or when its list ends
    (``complete[i]``: nothing is left in the pool for it). Returns the taken positions in
    ``compact``, the target of each, and -1; or, when a target reaches the end of a list
    that is not complete, what was taken so far and that target (to be ranked deeper).
    """
    m = len(limits)
    taken = np.zeros(n_unique, np.bool_)
    pointer = starts[:-1].copy()
    used = np.zeros(m, np.int64)
    count = np.zeros(m, np.int64)
    active = np.ones(m, np.bool_)
    pos = np.empty(n_unique, np.int64)
    who = np.empty(n_unique, np.int64)
    n, n_active = 0, m
    while n_active > 0:
        for i in range(m):
            if not active[i]:
                continue
            p, end = pointer[i], starts[i + 1]
            while p < end and taken[compact[p]]:
                p += 1
            pointer[i] = p
            if p == end:
                if not complete[i]:
                    return pos[:n], who[:n], i
                active[i] = False
                n_active -= 1
                continue
            if used[i] + cost[p] > limits[i] and count[i] > 0:
                active[i] = False
                n_active -= 1
                continue
            taken[compact[p]] = True
            pos[n], who[n] = p, i
            n += 1
            used[i] += cost[p]
            count[i] += 1
    return pos[:n], who[:n], -1


@njit(cache=True, nogil=True)
def capped(cost: np.ndarray, group: np.ndarray, limit: np.ndarray, key: np.ndarray, total: int,
           by_budget: bool) -> tuple[np.ndarray, bool]:  # pragma: no cover - compiled
    """Group caps over one ranked candidate list: the positions taken, and whether the quota stopped the walk.

    A candidate whose group would pass its ``limit``, or whose ``key`` (dense ints: its cluster with
    ``--one-per-cluster``, else unique per row) an earlier taken candidate had, is skipped (the next ones
    get its place);
    the others are taken in rank order until ``total`` is reached: a count (``by_budget`` False,
    ``cost`` 1 each), or a token budget, stopping at the first taken candidate that would overflow
    it (and taking it if it would be the first: the prefix rule). Returns False as the second value
    when the list ran out first (the caller ranks deeper, unless the list is the whole pool).
    """
    used = np.zeros(len(limit), np.int64)
    taken = np.zeros(key.max() + 1 if len(key) else 0, np.bool_)
    out = np.empty(len(cost), np.int64)
    spent, n = 0, 0
    for i in range(len(cost)):
        if not by_budget and spent >= total:
            return out[:n], True
        g, c = group[i], cost[i]
        if used[g] + c > limit[g] or taken[key[i]]:
            continue
        if by_budget and spent + c > total:
            if n == 0:
                out[0] = i
                n = 1
            return out[:n], True
        out[n] = i
        n += 1
        used[g] += c
        spent += c
        taken[key[i]] = True
    return out[:n], not by_budget and spent >= total
