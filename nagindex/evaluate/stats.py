"""Paired differences over seeds, with a 95% t-interval.

Every seed trains every arm from the same initial weights, so an arm and the random baseline
at one seed form a pair; differencing within pairs removes what the seed does to both. The
interval is Student's t over the per-seed differences (``mean +- t(0.975, n-1) x sd / sqrt(n)``):
with 3 seeds t = 4.30, so only a difference large against its seed-to-seed spread is called
significant. With one seed there is no spread to measure: the interval is undefined (None),
never zero.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95


def paired_interval(values: Sequence[float], baseline: Sequence[float]) -> dict[str, float | None]:
    """``{"mean", "lo", "hi"}`` of ``values - baseline`` per seed (``lo``/``hi`` None for one seed)."""
    from scipy.stats import t

    diff = np.asarray(values, float) - np.asarray(baseline, float)
    mean = float(diff.mean())
    if len(diff) < 2:
        return {"mean": mean, "lo": None, "hi": None}
    half = float(t.ppf(0.5 + LEVEL / 2, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff)))
    return {"mean": mean, "lo": mean - half, "hi": mean + half}
