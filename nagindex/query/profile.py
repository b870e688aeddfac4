"""Target NAGs -> target profile: per layer, how often each neuron is in a target's top-K.

Spec sections 2 and 5. The profile is kept as integer *counts*, not weights:
with power 1 every score is then an exact integer sum (see ``score.py``), so
two documents tie exactly when they should, whatever the floating-point order.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from nagindex.errors import NagIndexError

logger = logging.getLogger(__name__)

LayerSpec = None | str | int | Sequence[int] | np.ndarray


def resolve_layers(spec: LayerSpec, num_layers: int) -> np.ndarray:
    """Which layers of a ``num_layers``-layer NAG to keep, as sorted int64 indices.

    ``None`` / ``"all"``: every layer; ``"last"`` / ``"first"``; or a list (or
    comma string like ``"0,-1"``) of layer indices, negative counting from the
    end as in Python. Sorted ascending like the reference's ``slice_layers`` (a
    score is a sum over layers, so order never changes it); out-of-range and
    repeated layers are errors, not silently dropped.
    """
    if num_layers < 1:
        raise NagIndexError(f"num_layers must be >= 1, got {num_layers}")
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return np.arange(num_layers, dtype=np.int64)
    if isinstance(spec, str):
        word = spec.strip().lower()
        if word == "last":
            return np.array([num_layers - 1], dtype=np.int64)
        if word == "first":
            return np.array([0], dtype=np.int64)
        try:
            raw = [int(part) for part in word.split(",") if part.strip()]
        except ValueError:
            raise NagIndexError(
                f"invalid layers {spec!r}: expected 'all', 'first', 'last' or comma-separated layer indices"
            ) from None
    else:
        raw = [int(x) for x in np.atleast_1d(np.asarray(spec)).tolist()]
    if not raw:
        raise NagIndexError(f"invalid layers {spec!r}: no layer given")
    bad = [x for x in raw if not -num_layers <= x < num_layers]
    if bad:
        raise NagIndexError(f"layer index {bad[0]} out of range for {num_layers} layers "
                            f"(valid: {-num_layers}..{num_layers - 1})")
    resolved = [x % num_layers for x in raw]
    if len(set(resolved)) != len(resolved):
        raise NagIndexError(f"invalid layers {spec!r}: a layer is listed twice")
    return np.array(sorted(resolved), dtype=np.int64)


def count_profile(codes: np.ndarray, width: int, layers: LayerSpec = None) -> np.ndarray:
    """Count how often each neuron is among a target's K per kept layer: int64 ``(L', width)``.

    ``codes`` is ``(T, L, K)``: target NAGs, row ``l`` = layer ``l``'s K neurons.
    """
    codes = np.asarray(codes)
    if codes.ndim != 3:
        raise NagIndexError(f"target codes must be (docs, layers, K), got shape {codes.shape}")
    if codes.shape[0] == 0:
        raise NagIndexError("empty target set: no target NAG to build a profile from")
    kept = resolve_layers(layers, codes.shape[1])
    sub = codes[:, kept, :]
    if sub.size and (sub.min() < 0 or sub.max() >= width):
        raise NagIndexError(f"target codes hold neuron {int(sub.max())}, outside width {width}")
    flat = sub.astype(np.int64) + (np.arange(len(kept), dtype=np.int64) * width)[None, :, None]
    return np.bincount(flat.ravel(), minlength=len(kept) * width).reshape(len(kept), width)


def profile_weights(counts: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Spec sec. 2 weights, float64 ``(L', width)``: ``c^p / sum c^p`` per layer.

    Only neurons that occur are raised to ``p`` (so ``p = 0`` means "present or
    not", never ``0^0 = 1``); a layer without counts gets all-zero weights.
    """
    power = float(power)
    if not np.isfinite(power) or power < 0:
        raise NagIndexError(f"profile power must be a finite number >= 0, got {power}")
    counts = np.asarray(counts, dtype=np.float64)
    raised = np.zeros_like(counts)
    present = counts > 0
    raised[present] = counts[present] if power == 1.0 else counts[present] ** power
    totals = raised.sum(axis=-1, keepdims=True)
    return np.divide(raised, totals, out=np.zeros_like(raised), where=totals > 0)


def top_neurons(counts: np.ndarray, k: int) -> list[np.ndarray]:
    """Per layer, the (at most) ``k`` most frequent neurons: deactivation keys (spec sec. 5).

    Ordered by count descending, then neuron index ascending, so the keys are
    deterministic. The reference orders ties with numpy's unstable
    ``argsort(-counts)`` over the sorted unique neurons, whose tie order depends
    on the CPU's SIMD sort (AVX2/AVX-512 x86-simd-sort vs. plain introsort): on
    the golden fixture this rule picks the same neurons as the reference on an
    AVX2+ machine, in a different order within equal counts. Deactivation zeroes
    a set of neurons, so only the set matters. Neurons with count 0 are never keys.
    """
    if k < 1:
        raise NagIndexError(f"number of neurons per layer must be >= 1, got {k}")
    counts = np.asarray(counts)
    order = np.argsort(-counts, axis=-1, kind="stable")[:, :k]
    return [row[counts[layer, row] > 0] for layer, row in enumerate(order)]
