"""Soft selection (``--sample``): Gumbel-top-k over standardised scores, the same at any number of shards.

Sampling k documents without replacement with probability proportional to
``exp(z / T)`` is taking the k largest ``z / T + g`` where every document draws an
independent standard Gumbel ``g`` (the Gumbel-top-k trick, as in DSIR's importance
resampling). ``z`` is the document's score standardised over the pool, per target:
``(score - mean) / sd``, so T is in units of the pool's spread whatever the backbone or
target: at T = 1 a document one standard deviation above another is e = 2.7 times as
likely to be drawn first; T = 0.1 makes that e^10 (close to the plain ranking, which
T -> 0 gives); T = 10 is close to uniform. A token budget keeps the sampled order's
prefix, as it keeps the ranking's.

Exact at any scale: ``g`` is a hash of (seed, target, docid), not a draw from a stream,
so a document gets the same noise whichever shard holds it; mean and sd come from the
round's exact key histogram (bin centres, 2^18 bins), which is the same for any split of
the pool. Noise differs per target of a mixture.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _gumbel(offsets: np.ndarray, data: np.ndarray, seed: np.uint64) -> np.ndarray:  # pragma: no cover - compiled
    n = len(offsets) - 1
    out = np.empty(n, np.float64)
    prime = np.uint64(0x100000001B3)
    for i in range(n):
        h = np.uint64(0xCBF29CE484222325) ^ seed
        for j in range(offsets[i], offsets[i + 1]):  # FNV-1a over the docid's UTF-8 bytes
            h = (h ^ np.uint64(data[j])) * prime
        h ^= h >> np.uint64(33)  # murmur3's finaliser: every input bit reaches the top 53
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
        u = (np.float64(h >> np.uint64(11)) + 0.5) * 2.0 ** -53  # in (0, 1)
        out[i] = -np.log(-np.log(u))
    return out


def gumbel_noise(docids: object, seed: int, target: int) -> np.ndarray:
    """A standard Gumbel draw per docid of an Arrow string array, a pure function of (seed, target, docid)."""
    import pyarrow as pa

    arr = docids.cast(pa.large_string()) if not pa.types.is_large_string(docids.type) else docids
    _, offsets, data = arr.buffers()
    offs = np.frombuffer(offsets, np.int64)[arr.offset:arr.offset + len(arr) + 1]
    blob = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    mixed = np.uint64((seed * 0x9E3779B97F4A7C15 ^ (target + 1)) & 0xFFFFFFFFFFFFFFFF)
    return _gumbel(offs, blob, mixed)


def histogram_moments(counts: np.ndarray, lo: float, bins: int, width: float) -> tuple[float, float]:
    """Mean and standard deviation of a key histogram, from its bin centres."""
    n = counts.sum()
    if n == 0:
        return 0.0, 0.0
    centres = lo + (np.arange(bins) + 0.5) * width
    mean = float((counts * centres).sum() / n)
    var = float((counts * (centres - mean) ** 2).sum() / n)
    return mean, var ** 0.5
