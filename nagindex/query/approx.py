"""``--approx``: FAISS binary fingerprints pick the candidates, which are then scored exactly.

Each target profile is turned into one query fingerprint: per layer, its K most
frequent neurons (the target's "modal NAG"), hashed like every document's NAG
(``index/derived.py``). The candidates are the documents nearest to any query
fingerprint in Hamming distance: for each query, every document within the radius
that holds its ``want`` nearest (``CANDIDATE_FACTOR`` x k, never fewer than
``MIN_CANDIDATES``), ties at the radius included. Found as the exact queries are:
each shard returns a histogram of Hamming distances (4097 bins), the coordinator picks
each radius, and the shards score only the documents inside one (``scan.ShardScan``).
So the candidates, and the selection, are the same at any number of shards; and they
contain the ``want`` nearest documents FAISS's ``IndexBinaryFlat`` k-NN returns (which
cuts ties at the radius by row order), so a selection can only be closer.

Hamming distance to one modal NAG only approximates the weighted profile score (spec
sec. 3), so the candidate pool is wide. Measured on 1M synthetic topic-mixture NAGs
(``tools/bench_query.py``, 8 targets): the exact top 10 / 100 / 1,000 all lie within
the 32K nearest fingerprints, and 10 x k suffices from k = 3,000 on. When the pool
would cover the whole index (small indexes, large k), the exact scan runs instead.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError

log = logging.getLogger(__name__)

CANDIDATE_FACTOR = 10
MIN_CANDIDATES = 32768


def query_fingerprints(profiles: np.ndarray, manifest: dict[str, Any]) -> np.ndarray:
    """``(P, 512)`` uint8: each profile's modal NAG, hashed like a document's."""
    from nagindex.index.derived import fingerprints
    from nagindex.query.profile import top_neurons

    top_k, width = manifest["top_k"], manifest["width"]
    queries = np.zeros((len(profiles), manifest["num_layers"], top_k), dtype=np.uint16)
    for p, counts in enumerate(profiles):
        for layer, neurons in enumerate(top_neurons(counts, top_k)):
            queries[p, layer, : len(neurons)] = neurons
            queries[p, layer, len(neurons):] = neurons[0] if len(neurons) else 0
    return fingerprints(queries, width)


def approx_radii(fleet: Any, profiles: np.ndarray, kept: np.ndarray, quota: Any, manifest: dict[str, Any],
                 visible: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(query fingerprints, radius of each)`` for ``ScorePlan.approx``; None when the candidates
    would be the whole index (the exact scan is then cheaper)."""
    if quota.k is None:
        raise NagIndexError("--approx works with --k (a token budget needs the whole ranking)")
    if len(kept) != manifest["num_layers"]:
        raise NagIndexError("--approx uses fingerprints of all layers; drop --layers or --approx")
    want = max(MIN_CANDIDATES, CANDIDATE_FACTOR * quota.k)
    if want >= visible:
        log.info("approx: %d candidates would be the whole index of %d docs; scoring it exactly", want, visible)
        return None
    queries = query_fingerprints(profiles, manifest)
    hist = np.sum(fleet.hamming_histogram(queries), axis=0)  # (P, 4097)
    radii = np.argmax(np.cumsum(hist, axis=1) >= want, axis=1)
    log.info("approx: Hamming radii %s hold the %d nearest fingerprints of each target", radii.tolist(), want)
    return queries, radii
