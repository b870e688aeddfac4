"""How much a selection takes (``Quota``) and how a quota is shared between targets.

``k`` documents; ``tokens``, a token budget; or ``fraction`` of the pool's tokens, budget
``floor(fraction * total tokens)``. A mixture splits its quota between targets by weight
(``Quota.shares``). Used by the rounds over shards (``rank.py``) and the in-memory API (``select.py``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nagindex.errors import NagIndexError


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


def fraction_budget_of(total_tokens: int, fraction: float) -> int:
    """``floor(fraction * total tokens)``, computed as the reference does (``int(total * fraction)``)."""
    return int(int(total_tokens) * fraction)
