"""``--weighting``: weigh each neuron of a profile by its specificity to the target (issue 23).

The paper's score (``none``) adds a profile's weight ``w_l[n] = c_l[n]^p / sum c^p`` for every
neuron a document shares with it. The most frequent neurons of any profile are a backbone that
every text activates (zeroing the 20 most frequent of a TriviaQA profile hurts ARC-Easy as much
as ARC's own), so they dominate every ranking. A weighting multiplies each weight by the neuron's
specificity ``s_l[n]`` and renormalises each layer, so the weights are again a distribution per
layer and the similarity stays in [0, 1]:

    w'_l[n] = w_l[n] * s_l[n] / sum_m w_l[m] * s_l[m]

- ``lift``: the neuron's frequency among the target's NAGs over its frequency in the pool's,
  smoothed by one document: ``s_l[n] = (c_l[n] / |T|) / ((N_l[n] + 1) / (N + 1))``, ``N_l[n]`` the
  pool documents whose layer-``l`` NAG holds ``n`` (``index/neuron_stats.py``), ``N`` the pool's
  documents. A neuron every pool document uses gets about ``c / |T|``; one the target uses as
  often but a tenth of the pool does, ten times that. The constants ``|T|`` and ``N + 1`` cancel
  in the renormalisation: ``w'`` is proportional to ``w_l[n] * c_l[n] / (N_l[n] + 1)``.
- ``idf``: the pool's inverse document frequency, smoothed as scikit-learn's
  ``s_l[n] = ln((N + 1) / (N_l[n] + 1)) + 1`` (never below 1): it discounts the pool's hubs
  without using the target's frequencies a second time.

Weights are float64, so scores are float sums: ranked with the rule of every float score
(``--power`` other than 1): each document's sum is added in the same order wherever its shard
is, keys are binned over the global range and the threshold bin is ordered by the exact key
(``rank.py``). The table is computed once, by the coordinator, from the merged pool counts and
sent to every shard with the plan, so every shard scores with the same bits.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.query.profile import profile_weights

WEIGHTINGS = ("none", "lift", "idf")


def check_weighting(weighting: str) -> str:
    """``weighting`` if it is one of ``WEIGHTINGS``, else an error naming them."""
    if weighting not in WEIGHTINGS:
        raise NagIndexError(f"weighting {weighting!r}: choose one of {', '.join(WEIGHTINGS)}")
    return weighting


def specificity(weighting: str, counts: np.ndarray, pool: np.ndarray, pool_docs: int) -> np.ndarray:
    """``s`` of the module docstring, float64 like ``counts`` ``(..., L', width)``, up to a constant factor per
    profile and layer (the renormalisation removes it). ``pool`` ``(L', width)`` counts over ``pool_docs``."""
    pool = np.asarray(pool, dtype=np.float64)
    if weighting == "lift":
        return np.asarray(counts, dtype=np.float64) / (pool + 1.0)
    if weighting == "idf":
        return np.broadcast_to(np.log((pool_docs + 1.0) / (pool + 1.0)) + 1.0, np.shape(counts))
    raise NagIndexError(f"weighting {weighting!r} has no specificity (choose lift or idf)")


def weigh_profiles(counts: np.ndarray, power: float, weighting: str, pool: np.ndarray,
                   pool_docs: int) -> np.ndarray:
    """The scoring weights ``w'`` of ``(P, L', width)`` count profiles, float64 ``(P, L', width)``, each
    profile's layer summing to 1 (0 where the profile has no count in that layer)."""
    counts = np.asarray(counts)
    if counts.ndim != 3:
        raise NagIndexError(f"profiles must be (P, L', width) counts, got shape {counts.shape}")
    if np.shape(pool) != counts.shape[1:]:
        raise NagIndexError(f"pool counts of shape {np.shape(pool)} do not match profiles over "
                            f"{counts.shape[1]} layers of width {counts.shape[2]}")
    if np.min(pool, initial=0) < 0 or pool_docs < 1:
        raise NagIndexError("pool neuron counts must be non-negative, over at least one document")
    raised = profile_weights(counts, power) * specificity(check_weighting(weighting), counts, pool, pool_docs)
    totals = raised.sum(axis=-1, keepdims=True)
    return np.divide(raised, totals, out=np.zeros_like(raised), where=totals > 0)


def target_weights(fleet: Any, weighting: str, profiles: np.ndarray, kept: np.ndarray, power: float,
                   pool_docs: int) -> np.ndarray | None:
    """The ``ScorePlan.weights`` of a query: None for ``none`` (the counts themselves, exact integer sums),
    else ``weigh_profiles`` with the pool's neuron counts summed over the fleet's shards (each shard counts
    its rows of the query, cross-shard repeats left out: ``ShardScan.neuron_counts``)."""
    if check_weighting(weighting) == "none":
        return None
    pool = np.sum(fleet.neuron_counts(), axis=0)[np.asarray(kept, np.int64)]
    return weigh_profiles(profiles, power, weighting, pool, pool_docs)


def pool_weigher(weighting: str, index_dir: str | os.PathLike, power: float, layers: Any = None, *,
                 pool_docs: int | None = None, top_k: int | None = None) -> Callable[[np.ndarray], np.ndarray | None]:
    """``profiles -> ScorePlan.weights`` of a query's ``weighting`` on the index at ``index_dir``, outside a
    query (``explain --doc``, ``report``): None for ``none``, else ``weigh_profiles`` of ``(P, L', width)``
    count profiles over the kept ``layers`` (all when None) with the pool's neuron counts, read once
    (``index/neuron_stats.py``). ``pool_docs``: the pool's documents, else counted from those counts as NAGs of
    ``top_k`` neurons a layer."""
    if check_weighting(weighting) == "none":
        return lambda profiles: None
    from nagindex.index.neuron_stats import pool_documents, pool_neuron_counts

    pool = pool_neuron_counts(index_dir)
    if pool_docs is None:
        if top_k is None:
            raise NagIndexError("pool_weigher needs pool_docs or the index's top_k")
        pool_docs = pool_documents(pool, top_k)
    if layers is not None:
        pool = pool[np.asarray(layers, np.int64)]
    return lambda profiles: weigh_profiles(profiles, power, weighting, pool, pool_docs)
