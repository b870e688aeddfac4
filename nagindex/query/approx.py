"""``--approx``: FAISS binary candidates, re-scored exactly from the codes.

Each target profile is turned into one query fingerprint: per layer, its K most
frequent neurons (the target's "modal NAG"), hashed like every document's NAG
(``index/derived.py``). The ``IndexBinaryFlat`` returns the documents nearest in
Hamming distance, a superset of the wanted top k; only those are scored exactly.
Hamming distance to one modal NAG only approximates the weighted profile score
(spec sec. 3), so the candidate pool is wide: ``CANDIDATE_FACTOR`` x k, and never
fewer than ``MIN_CANDIDATES``. Measured on 1M synthetic topic-mixture NAGs
(``tools/bench_query.py``, 8 targets): the exact top 10 / 100 / 1,000 all lie
within the 32K nearest fingerprints (with 10K candidates recall@100 was 0.97 and
recall@1000 0.91), and 10 x k suffices from k = 3,000 on. Re-measure on real NAGs.
When the pool would cover the whole index (small indexes, large k), the exact scan
runs instead: it is cheaper than a FAISS search for every row.

The fingerprints (``fingerprints.u8``) are memory-mapped and searched where they
lie, by the exhaustive Hamming k-NN ``faiss.IndexBinaryFlat`` runs
(``derived.FingerprintIndex``): nothing to load or copy. The search is still a
scan of every fingerprint, so on two cores ``--approx`` is only modestly faster
than the exact query (0.66x at k = 1K, 0.9x at 10K on 1M docs); it pays off when
the code matrix is not in the page cache.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError

log = logging.getLogger(__name__)

CANDIDATE_FACTOR = 10
MIN_CANDIDATES = 32768


def faiss_candidates(view: Any, profiles: np.ndarray, kept: np.ndarray, quota: Any,
                     n_targets: int) -> np.ndarray | None:
    """Sorted unique rows that any target's query fingerprint finds near (``--k`` queries only).

    None when the candidate pool would be the whole index: the exact scan is then cheaper.
    """
    from nagindex.index.derived import fingerprints
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
    want = max(MIN_CANDIDATES, CANDIDATE_FACTOR * quota.k)
    if want >= len(view):
        log.info("approx: %d candidates would be the whole index of %d docs; scoring it exactly", want, len(view))
        return None
    _, found = view.faiss_index().search(fingerprints(queries, width), want)  # exactly the view's rows, want < them
    rows = np.unique(found)
    log.info("approx: %d candidates for k=%d from %d query fingerprints", len(rows), quota.k, len(profiles))
    return rows.astype(np.int64)
