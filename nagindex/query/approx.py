"""``--approx``: FAISS binary candidates, re-scored exactly from the codes.

Each target profile is turned into one query fingerprint: per layer, its K most
frequent neurons (the target's "modal NAG"), hashed like every document's NAG
(``ingest/index.py``). The ``IndexBinaryFlat`` returns the documents nearest in
Hamming distance, a superset of the wanted top k; only those are scored exactly.
Hamming distance to one modal NAG only approximates the weighted profile score
(spec sec. 3), so the candidate pool is wide (``CANDIDATE_FACTOR`` x k).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError

log = logging.getLogger(__name__)

CANDIDATE_FACTOR = 10
MIN_CANDIDATES = 2048


def faiss_candidates(view: Any, profiles: np.ndarray, kept: np.ndarray, quota: Any, n_targets: int) -> np.ndarray:
    """Sorted unique rows that any target's query fingerprint finds near (``--k`` queries only)."""
    from nagindex.ingest.index import fingerprints
    from nagindex.query.profile import top_neurons

    manifest = view.manifest
    if quota.k is None:
        raise NagIndexError("--approx works with --k (a token budget needs the whole ranking)")
    if len(kept) != manifest["num_layers"]:
        raise NagIndexError("--approx uses fingerprints of all layers; drop --layers or --approx")
    top_k, width = manifest["top_k"], manifest["width"]
    queries = np.zeros((len(profiles), manifest["num_layers"], top_k), dtype=np.uint16)
    for p, counts in enumerate(profiles):
        for layer, neurons in enumerate(top_neurons(counts, top_k)):
            queries[p, layer, : len(neurons)] = neurons
            queries[p, layer, len(neurons):] = neurons[0] if len(neurons) else 0
    want = min(len(view), max(MIN_CANDIDATES, CANDIDATE_FACTOR * quota.k))
    index = view.faiss_index()
    _, found = index.search(fingerprints(queries, width), want)
    rows = np.unique(found[found >= 0])
    log.info("approx: %d candidates for k=%d from %d query fingerprints", len(rows), quota.k, len(profiles))
    return rows.astype(np.int64)
