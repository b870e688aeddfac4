"""DSIR's training-free proxy: KL reduction of hashed unigram+bigram distributions.

Xie et al. 2023 (DSIR), "KL reduction": featurise text as hashed word unigrams and bigrams,
then ask how much closer to the target's feature distribution a selection is than the raw
pool: ``KL(target || pool) - KL(target || selection)``, in nats. It correlated r = 0.82 with
downstream accuracy across 8 selection methods in that paper. Here:

- words: lowercased, ``\\w+`` runs and runs of punctuation (nltk's WordPunctTokenizer, DSIR's);
- features: every word and every pair of adjacent words of a text, hashed (blake2b, stable
  across runs and machines) into ``BUCKETS`` = 10,000 buckets, DSIR's default;
- distributions: the counts pooled over all texts of a set (so long documents weigh more, as
  their tokens do in training); the target's is the empirical one; the pool's and the
  selection's each get ``BUCKETS`` pseudo-counts, one per bucket, spread as the pool's add-one
  smoothed distribution ("add-one toward the pool"). So no log is infinite, the pool scored as
  a selection reduces nothing (exactly 0), and a random selection of a large pool scores about
  0 (plain add-one flattens a smaller set more than the pool and would put every selection
  below it). Where a set holds few n-grams for 10,000 buckets (tiny pools), the smoothing still
  depends on its size: compare arms with ``random``, which has their size.

The target's own entropy cancels in the difference, so the reduction is the drop in cross
entropy of the target's features under the selection's distribution vs the pool's.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import numpy as np

BUCKETS = 10_000
_WORDS = re.compile(r"\w+|[^\w\s]+")
_PAIR = np.uint64(0x9E3779B97F4A7C15)  # mixes the first word's hash into a pair's


def ngram_counts(texts: Iterable[str], buckets: int = BUCKETS) -> np.ndarray:
    """int64 ``(buckets,)``: how many unigrams and bigrams of ``texts`` fall in each hash bucket."""
    cache: dict[str, int] = {}
    out = np.zeros(buckets, np.int64)
    for text in texts:
        words = _WORDS.findall(text.lower())
        if not words:
            continue
        h = np.fromiter((cache[w] if w in cache else cache.setdefault(w, _hash(w)) for w in words),
                        np.uint64, count=len(words))
        pairs = h[:-1] * _PAIR + (h[1:] ^ np.uint64(1))
        out += np.bincount(np.concatenate([h, pairs]) % np.uint64(buckets), minlength=buckets)
    return out


def _hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def kl(target: np.ndarray, pool: np.ndarray) -> float:
    """``KL(p || q)`` in nats: ``p`` the target's empirical feature distribution, ``q`` the pool's (smoothed)."""
    return _cross_entropy(target, _smoothed(pool, pool)) - _cross_entropy(target, target / max(int(target.sum()), 1))


def kl_reduction(target: np.ndarray, pool: np.ndarray, selection: np.ndarray) -> float:
    """DSIR's KL reduction ``KL(target || pool) - KL(target || selection)``: > 0 where the selection's
    n-grams are closer to the target's than the pool's are."""
    return _cross_entropy(target, _smoothed(pool, pool)) - _cross_entropy(target, _smoothed(selection, pool))


def _smoothed(counts: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """``counts`` as a distribution with one pseudo-count per bucket, spread as the pool's add-one distribution."""
    prior = (pool + 1.0) / (pool.sum() + len(pool))
    return (counts + len(counts) * prior) / (counts.sum() + len(counts))


def _cross_entropy(target: np.ndarray, q: np.ndarray) -> float:
    """``-sum p log q`` over the buckets the target uses (``p``: its empirical distribution)."""
    p = target / max(int(target.sum()), 1)
    seen = p > 0
    return float(-np.sum(p[seen] * np.log(q[seen])))
