"""Exact NAG similarity of every indexed document to P target profiles, in one pass.

Spec sec. 3: ``sim(d) = (1/L') sum_l sum_{n in NAG_l(d)} w_l[n]``. The code matrix
is ``(N, L, K)`` uint16, usually a read-only memmap of tens of millions of rows,
so it is read once, in row blocks, and never widened to a full int64 copy.

With power 1 (the reference CLIs' only value) the sum runs over the integer
*counts*: ``raw_p(d) = sum_l sum_j counts_p[l, codes[d, l, j]]`` and
``sim = raw / (|T_p| * K * L')``, which equals the weighted form exactly. Integer
sums make ties exact: two documents with the same overlap get the same score
whatever the summation order, so the docid tie-break in ``select.py`` decides,
as the spec says. Other powers sum float64 weights.

The kernel is numba (``prange`` over documents). A torch ``embedding_bag``
formulation (flat ``(L'*width, P)`` float32 table, per-document offsets) was
measured on 1M x 28 x 20 codes, 2 cores: numba is 4x faster for one profile and
1.8x for 4, even at 8, and behind only from about 16 profiles on; it also sums
in float32 (exact only below 2^24) and costs a torch import, so only numba is kept.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.query.profile import LayerSpec, profile_weights, resolve_layers

logger = logging.getLogger(__name__)

#: rows per kernel call: 64K x 28 x 20 uint16 is 72 MB of codes, so the page cache
#: streams while the output stays small.
BLOCK_ROWS = 65536
_CODE_LIMIT = 2**16  # codes are uint16


@dataclass(frozen=True)
class Scores:
    """Similarity of N documents to P profiles.

    ``raw`` (int64, power 1 only) is the exact integer score; rank by it (or by
    ``nag_distance``, which is a monotone function of it) to get exact ties.
    """

    similarity: np.ndarray  # (P, N) float64
    raw: np.ndarray | None  # (P, N) int64, power == 1 only

    @property
    def nag_distance(self) -> np.ndarray:
        """``1 - similarity``, the reference's ranking key (lower is closer)."""
        return 1.0 - self.similarity


@dataclass(frozen=True)
class _Table:
    """P profiles laid out for the kernel: one row per (kept layer, neuron)."""

    values: np.ndarray  # (L' * width,) for P == 1 else (L' * width, P); int32 counts or float64 weights
    norm: np.ndarray  # (P,) divide a raw sum by this to get the similarity
    width: int
    num_layers: int  # L', the number of kept layers

    @property
    def exact(self) -> bool:
        return self.values.dtype.kind == "i"


def _stack_profiles(profiles: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Accept one ``(L', width)`` profile or P of them; return ``(P, L', width)``."""
    stacked = np.asarray(profiles) if isinstance(profiles, np.ndarray) else np.stack(
        [np.asarray(p) for p in profiles])
    if stacked.ndim == 2:
        stacked = stacked[None]
    if stacked.ndim != 3 or stacked.shape[0] == 0:
        raise NagIndexError(f"profiles must be (L', width) count arrays, got shape {stacked.shape}")
    return stacked


def build_table(profiles: np.ndarray | Sequence[np.ndarray], power: float = 1.0, terms: int = 0) -> _Table:
    """Count profiles ``(L', width)`` (from ``count_profile``) -> the kernel's lookup table.

    ``terms`` (codes summed per document, L' x K) picks the integer width: int32
    (twice the lanes per vector) when no document's sum can reach 2^31, else int64.
    """
    counts = _stack_profiles(profiles)
    num_profiles, num_layers, width = counts.shape
    if width > _CODE_LIMIT:
        raise NagIndexError(f"profile width {width} exceeds the uint16 code range")
    if np.issubdtype(counts.dtype, np.floating) or counts.min() < 0:
        raise NagIndexError("profiles must be non-negative integer counts (from count_profile)")
    if float(power) == 1.0:
        fits32 = max(terms, 1) * int(counts.max()) < 2**31
        values = counts.astype(np.int32 if fits32 else np.int64)
        norm = counts.reshape(num_profiles, -1).sum(axis=1).astype(np.float64)
    else:
        values = profile_weights(counts, power)
        norm = np.full(num_profiles, float(num_layers))
    # (L' * width, P), plus zero guard rows so that any uint16 code, even one >= width
    # from a corrupt index, reads inside the table before the kernel flags it.
    guard = np.zeros((_CODE_LIMIT - width, num_profiles), dtype=values.dtype)
    values = np.ascontiguousarray(np.concatenate([values.reshape(num_profiles, -1).T, guard]))
    return _Table(values[:, 0].copy() if num_profiles == 1 else values, norm, width, num_layers)


@lru_cache(maxsize=None)
def _kernels() -> tuple[Callable[..., None], Callable[..., None]]:
    """Compile (or load from numba's on-disk cache) the two gather-sum kernels.

    ``codes`` is a C-contiguous ``(n, M)`` block of the kept layers' codes,
    ``off[q]`` the table row offset of position ``q`` (its kept layer x width).
    Two kernels because each is fastest for its case (measured): one profile sums
    into a register; several profiles sum into 4 interleaved scratch rows
    (breaking the store-to-load dependency chain), 3x faster at P = 8 than P
    single-profile passes. A document holding a neuron >= width (corrupt index,
    or an index and a profile from different models) gets scores -1 (real
    scores are >= 0) and the caller raises.
    """
    from numba import njit, prange

    @njit(parallel=True, cache=True, nogil=True)
    def sum_single(codes, off, width, table, out):  # pragma: no cover - compiled
        for i in prange(codes.shape[0]):
            s = out[i]  # zero-initialised by the caller, in the accumulator's dtype
            top = 0
            for q in range(off.shape[0]):
                c = codes[i, q]
                top = max(top, c)
                s += table[np.int64(c) + off[q]]
            out[i] = -1 if top >= width else s  # a bad code read a guard row (see build_table)

    @njit(parallel=True, cache=True, nogil=True)
    def sum_multi(codes, off, width, table, out):  # pragma: no cover - compiled
        n, m, p_count = codes.shape[0], off.shape[0], table.shape[1]
        chunks = 256
        step = (n + chunks - 1) // chunks
        for ch in prange(chunks):
            lo = ch * step
            hi = min(n, lo + step)
            top = 0
            for i in range(lo, hi):  # checked up front: a check inside the sum loop costs 30%
                for q in range(m):
                    top = max(top, codes[i, q])
            if top >= width:
                for i in range(lo, hi):
                    for p in range(p_count):
                        out[i, p] = -1
                continue
            acc = np.zeros((4, p_count), table.dtype)
            for i in range(lo, hi):
                acc[:] = 0
                for q in range(0, m - 3, 4):
                    r0 = np.int64(codes[i, q]) + off[q]
                    r1 = np.int64(codes[i, q + 1]) + off[q + 1]
                    r2 = np.int64(codes[i, q + 2]) + off[q + 2]
                    r3 = np.int64(codes[i, q + 3]) + off[q + 3]
                    for p in range(p_count):
                        acc[0, p] += table[r0, p]
                        acc[1, p] += table[r1, p]
                        acc[2, p] += table[r2, p]
                        acc[3, p] += table[r3, p]
                for q in range(m - m % 4, m):
                    r0 = np.int64(codes[i, q]) + off[q]
                    for p in range(p_count):
                        acc[0, p] += table[r0, p]
                for p in range(p_count):
                    out[i, p] = acc[0, p] + acc[1, p] + acc[2, p] + acc[3, p]

    return sum_single, sum_multi


def _kept_block(block: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The kept layers of a row block as a C-contiguous read-only ``(n, L' * K)`` array.

    All layers: a view of the block, no copy. A subset: a copy of just those
    layers (small), because the kernel is 1.7x slower on strided rows.
    """
    n, num_layers, top_k = block.shape
    sub = np.ascontiguousarray(block) if len(kept) == num_layers else np.asarray(block)[:, kept, :]
    sub = sub.reshape(n, len(kept) * top_k)
    sub.flags.writeable = False  # one compiled signature for memmaps and arrays alike
    return sub


def _prepare(codes: np.ndarray, profiles: np.ndarray | Sequence[np.ndarray], layers: LayerSpec,
             power: float) -> tuple[np.ndarray, _Table]:
    """Validate shapes; resolve the kept layers exactly as ``count_profile`` did."""
    if codes.ndim != 3:
        raise NagIndexError(f"codes must be (docs, layers, K), got shape {codes.shape}")
    kept = resolve_layers(layers, codes.shape[1])
    table = build_table(profiles, power, terms=len(kept) * codes.shape[2])
    if table.num_layers != len(kept):
        raise NagIndexError(f"profiles cover {table.num_layers} layers but {len(kept)} layers are kept")
    return kept, table


def _raise_bad_row(block: np.ndarray, start: int, width: int) -> None:
    row = start + int(np.flatnonzero(block.max(axis=1) >= width)[0])
    raise NagIndexError(f"document row {row} holds a neuron index >= width {width}: "
                        "the index and the profile disagree on the MLP width")


def score_codes(codes: np.ndarray, profiles: np.ndarray | Sequence[np.ndarray], layers: LayerSpec = None,
                power: float = 1.0, block_rows: int = BLOCK_ROWS,
                on_block: Callable[[int], Any] | None = None) -> Scores:
    """Score every row of ``codes`` ``(N, L, K)`` against P count profiles ``(L', width)``.

    ``layers`` is the layer spec the profiles were counted with (see
    ``resolve_layers``). ``on_block(rows_done)`` is called after each block of
    ``block_rows`` rows (for a progress bar).
    """
    kept, table = _prepare(codes, profiles, layers, power)
    n, _, top_k = codes.shape
    off = np.repeat(np.arange(len(kept), dtype=np.int64) * table.width, top_k)
    sum_single, sum_multi = _kernels()
    multi = table.values.ndim == 2
    kernel = sum_multi if multi else sum_single
    raw = np.zeros((n, len(table.norm)) if multi else n, dtype=np.int64 if table.exact else np.float64)
    for start in range(0, n, block_rows):
        block = _kept_block(codes[start:start + block_rows], kept)
        out = raw[start:start + block_rows]
        kernel(block, off, table.width, table.values, out)
        if out.min(initial=0) < 0:
            _raise_bad_row(block, start, table.width)
        if on_block is not None:
            on_block(min(n, start + block_rows))
    raw = np.ascontiguousarray(raw.reshape(n, len(table.norm)).T)
    similarity = raw / table.norm[:, None]
    logger.debug("scored %d docs against %d profiles over %d layers", n, len(table.norm), len(kept))
    return Scores(similarity=similarity, raw=raw if table.exact else None)


def layer_contributions(codes: np.ndarray, rows: Sequence[int] | np.ndarray,
                        profiles: np.ndarray | Sequence[np.ndarray], layers: LayerSpec = None,
                        power: float = 1.0) -> np.ndarray:
    """Per-layer share of the similarity for a few ``rows``: float64 ``(P, len(rows), L')``.

    Summed over the last axis it equals ``score_codes(...).similarity[:, rows]``;
    a report uses it to show which layers make a document close to the target.
    """
    kept, table = _prepare(codes, profiles, layers, power)
    picked = np.asarray(codes[np.asarray(rows, dtype=np.int64)])[:, kept, :]
    if picked.size and picked.max() >= table.width:
        _raise_bad_row(picked.reshape(len(picked), -1), 0, table.width)
    flat = picked.astype(np.int64) + (np.arange(len(kept)) * table.width)[None, :, None]
    values = table.values.reshape(len(table.values), -1)  # (L' * width, P)
    per_layer = values[flat].sum(axis=2)  # (R, L', P)
    return np.moveaxis(per_layer, 2, 0) / table.norm[:, None, None]
