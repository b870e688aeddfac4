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

The kernels are numba. Power 1 with counts below 2^16 (any target of fewer
than 65,536 examples) takes the *lane* kernels: documents in blocks of
``LANE_BLOCK`` rows, one layer at a time over the block (so only one layer's slice
of the table is hot: 12 KB for one profile, 98 KB for eight, where the whole
table would be 344 KB / 2.75 MB), and the counts of up to 4 profiles packed as
uint16 lanes of one uint64 word, 8 profiles in two words: a code costs one or
two loads and adds whatever the number of profiles, and the 16-bit lanes are
widened into 32-bit lanes every ``flush`` codes (a divisor of K chosen so that no
lane can overflow). More than 8 profiles run in groups of 8 over the same block.
Measured on 1M x 28 x 20 codes (``tools/bench_query.py``, BENCHMARKS.md, a shared
2-core machine, so +-20%): one profile 0.43 s per core, about 10% faster than the
previous per-document kernel; 4 profiles 1.2-1.5x one, 8 profiles 1.5-2.1x one,
where that kernel (an ``(L'*width, P)`` int32 table, kept below for other powers and
for counts past 2^16) took 3-3.2x and 4-5x. A torch ``embedding_bag`` formulation
was slower still for up to 16 profiles, sums in float32 and costs a torch import.
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
#: rows per parallel task of the lane kernels: 1024 x 28 x 20 codes (1.1 MB) stay in L2
#: while each layer of the table is used in turn.
LANE_BLOCK = 1024
_CODE_LIMIT = 2**16  # codes are uint16
_LANE_MAX = 2**16 - 1  # a uint16 lane


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
    """P profiles laid out for the kernel: one row per (kept layer, neuron).

    ``lanes`` 0: the generic kernels, ``values`` ``(L' * width,)`` for P == 1 else
    ``(L' * width, P)``, int32/int64 counts or float64 weights, plus guard rows.
    ``lanes`` 1: ``(L' * width,)`` uint16 counts. ``lanes`` 4: ``(L' * width,)``
    uint64 words of 4 uint16 counts (profile p in bits 16p..16p+15). ``lanes`` 8:
    ``(G, L' * width * 2)`` uint64, G groups of 8 profiles, row r in words 2r and
    2r + 1 (flat: 10% faster than a 2-D index). ``flush``: codes summed in
    16-bit lanes before widening (lane kernels with lanes > 1).
    """

    values: np.ndarray
    norm: np.ndarray  # (P,) divide a raw sum by this to get the similarity
    width: int
    num_layers: int  # L', the number of kept layers
    lanes: int = 0
    flush: int = 0

    @property
    def exact(self) -> bool:
        return self.values.dtype.kind in "iu"

    @property
    def num_profiles(self) -> int:
        return len(self.norm)


def _stack_profiles(profiles: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Accept one ``(L', width)`` profile or P of them; return ``(P, L', width)``."""
    stacked = np.asarray(profiles) if isinstance(profiles, np.ndarray) else np.stack(
        [np.asarray(p) for p in profiles])
    if stacked.ndim == 2:
        stacked = stacked[None]
    if stacked.ndim != 3 or stacked.shape[0] == 0:
        raise NagIndexError(f"profiles must be (L', width) count arrays, got shape {stacked.shape}")
    return stacked


def _flush_every(top_k: int, max_count: int) -> int:
    """The largest divisor f of K with ``f * max_count`` <= 0xFFFF (0 if none): codes per 16-bit lane sum."""
    return next((f for f in range(top_k, 0, -1) if top_k % f == 0 and f * max(max_count, 1) <= _LANE_MAX), 0)


def _lane_table(counts: np.ndarray, lanes: int) -> np.ndarray:
    """``(P, L', width)`` counts < 2^16 -> the lane kernels' table (see ``_Table``)."""
    num_profiles = counts.shape[0]
    flat = counts.reshape(num_profiles, -1)
    if lanes == 1:
        return np.ascontiguousarray(flat[0], dtype=np.uint16)
    groups = -(-num_profiles // lanes)
    packed = np.zeros((groups * lanes, flat.shape[1]), dtype=np.uint16)
    packed[:num_profiles] = flat
    packed = np.ascontiguousarray(packed.reshape(groups, lanes, -1).transpose(0, 2, 1))  # (G, rows, lanes)
    words = packed.view("<u8")  # little-endian: lane j of a word in bits 16j..16j+15
    return words.reshape(-1) if lanes == 4 else words.reshape(groups, -1)  # (rows,) or (G, rows * 2)


def build_table(profiles: np.ndarray | Sequence[np.ndarray], power: float = 1.0, terms: int = 0,
                top_k: int = 0) -> _Table:
    """Count profiles ``(L', width)`` (from ``count_profile``) -> the kernel's lookup table.

    ``terms`` (codes summed per document, L' x K) picks the integer width: int32
    (twice the lanes per vector) when no document's sum can reach 2^31, else int64.
    With ``top_k`` (K) given, power 1 and counts that fit the 16-bit lanes, the
    table is for the lane kernels instead (``_Table.lanes``).
    """
    counts = _stack_profiles(profiles)
    num_profiles, num_layers, width = counts.shape
    if width > _CODE_LIMIT:
        raise NagIndexError(f"profile width {width} exceeds the uint16 code range")
    if np.issubdtype(counts.dtype, np.floating) or counts.min() < 0:
        raise NagIndexError("profiles must be non-negative integer counts (from count_profile)")
    norm = counts.reshape(num_profiles, -1).sum(axis=1).astype(np.float64)
    max_count = int(counts.max())
    flush = _flush_every(top_k, max_count) if top_k > 0 else 0
    if float(power) == 1.0 and flush and max(terms, 1) * max_count < 2**31:
        lanes = 1 if num_profiles == 1 else 4 if num_profiles <= 4 else 8
        return _Table(_lane_table(counts, lanes), norm, width, num_layers, lanes, flush)
    if float(power) == 1.0:
        fits32 = max(terms, 1) * max_count < 2**31
        values = counts.astype(np.int32 if fits32 else np.int64)
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


@lru_cache(maxsize=None)
def _lane_kernels(top_k: int, flush: int) -> tuple[Callable[..., None], Callable[..., None], Callable[..., None]]:
    """The lane kernels for K = ``top_k`` and ``flush`` (compiled per pair, cached on disk).

    K and ``flush`` are compile-time constants, so the loop over a layer's K codes
    is fully unrolled. All three take ``codes`` ``(n, L' * K)`` C-contiguous,
    ``num_layers`` (L'), ``width``, ``block`` (rows per parallel task), ``table``
    (see ``_Table``) and ``out`` int64, zero-initialised: ``(n,)`` for one profile,
    ``(n, 4)``, or ``(n, 8 * G)``. Each block is checked before any lookup: a
    block holding a neuron >= width (corrupt index, or an index and a profile from
    different models) gets scores -1 (real scores are >= 0) and the caller raises.
    Lanes: ``x & MASK`` holds lanes 0 and 2 of a word in 32-bit halves,
    ``(x >> 16) & MASK`` lanes 1 and 3; 32-bit lanes cannot overflow because a
    document's sum is < 2^31 (checked by ``build_table``). The block check is
    written out in each kernel: a jitted helper captured by this closure would
    enter numba's cache key with a per-process id and defeat the disk cache.
    """
    from numba import njit, prange

    k, f = top_k, flush  # plain values only in this closure: they are part of numba's cache key
    mask, low = np.uint64(0x0000FFFF0000FFFF), np.uint64(0xFFFFFFFF)
    s16, s32 = np.uint64(16), np.uint64(32)

    @njit(parallel=True, cache=True, nogil=True)
    def lanes1(codes, num_layers, width, block, table, out):  # pragma: no cover - compiled
        n = codes.shape[0]
        for b in prange((n + block - 1) // block):
            lo, hi = b * block, min(n, b * block + block)
            top = 0
            for i in range(lo, hi):
                for q in range(codes.shape[1]):
                    top = max(top, codes[i, q])
            if top >= width:
                out[lo:hi] = -1
                continue
            for i in range(lo, hi):
                s = np.int32(0)
                for layer in range(num_layers):
                    base = np.int64(layer * width)
                    for j in range(k):
                        s += np.int32(table[base + np.int64(codes[i, layer * k + j])])
                out[i] = s

    @njit(parallel=True, cache=True, nogil=True)
    def lanes4(codes, num_layers, width, block, table, out):  # pragma: no cover - compiled
        n = codes.shape[0]
        for b in prange((n + block - 1) // block):
            lo, hi = b * block, min(n, b * block + block)
            top = 0
            for i in range(lo, hi):
                for q in range(codes.shape[1]):
                    top = max(top, codes[i, q])
            if top >= width:
                out[lo:hi] = -1
                continue
            acc = np.zeros((hi - lo, 2), np.uint64)
            for layer in range(num_layers):  # one layer of the table at a time, over the whole block
                base = np.int64(layer * width)
                for i in range(lo, hi):
                    a0, a1 = acc[i - lo, 0], acc[i - lo, 1]
                    for j0 in range(0, k, f):
                        x = np.uint64(0)
                        for j in range(j0, j0 + f):
                            x += table[base + np.int64(codes[i, layer * k + j])]
                        a0 += x & mask
                        a1 += (x >> s16) & mask
                    acc[i - lo, 0], acc[i - lo, 1] = a0, a1
            for i in range(lo, hi):
                a0, a1 = acc[i - lo, 0], acc[i - lo, 1]
                out[i, 0], out[i, 2] = np.int64(a0 & low), np.int64(a0 >> s32)
                out[i, 1], out[i, 3] = np.int64(a1 & low), np.int64(a1 >> s32)

    @njit(parallel=True, cache=True, nogil=True)
    def lanes8(codes, num_layers, width, block, table, out):  # pragma: no cover - compiled
        n = codes.shape[0]
        for b in prange((n + block - 1) // block):
            lo, hi = b * block, min(n, b * block + block)
            top = 0
            for i in range(lo, hi):
                for q in range(codes.shape[1]):
                    top = max(top, codes[i, q])
            if top >= width:
                out[lo:hi] = -1
                continue
            acc = np.zeros((hi - lo, 4), np.uint64)
            for g in range(table.shape[0]):  # groups of 8 profiles over the same block
                words = table[g]
                acc[:] = 0
                for layer in range(num_layers):
                    base = np.int64(layer * width)
                    for i in range(lo, hi):
                        a = acc[i - lo]
                        for j0 in range(0, k, f):
                            x, y = np.uint64(0), np.uint64(0)
                            for j in range(j0, j0 + f):
                                r = 2 * (base + np.int64(codes[i, layer * k + j]))
                                x += words[r]
                                y += words[r + 1]
                            a[0] += x & mask
                            a[1] += (x >> s16) & mask
                            a[2] += y & mask
                            a[3] += (y >> s16) & mask
                for i in range(lo, hi):
                    for w in range(2):
                        c, e, o = acc[i - lo, 2 * w], acc[i - lo, 2 * w + 1], 8 * g + 4 * w
                        out[i, o], out[i, o + 2] = np.int64(c & low), np.int64(c >> s32)
                        out[i, o + 1], out[i, o + 3] = np.int64(e & low), np.int64(e >> s32)

    return lanes1, lanes4, lanes8


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


def _prepare(shape: tuple[int, ...], profiles: np.ndarray | Sequence[np.ndarray], layers: LayerSpec,
             power: float, lanes: bool = True) -> tuple[np.ndarray, _Table]:
    """Validate shapes; resolve the kept layers exactly as ``count_profile`` did."""
    if len(shape) != 3:
        raise NagIndexError(f"codes must be (docs, layers, K), got shape {shape}")
    kept = resolve_layers(layers, shape[1])
    table = build_table(profiles, power, terms=len(kept) * shape[2], top_k=shape[2] if lanes else 0)
    if table.num_layers != len(kept):
        raise NagIndexError(f"profiles cover {table.num_layers} layers but {len(kept)} layers are kept")
    return kept, table


def _raise_bad_row(block: np.ndarray, start: int, width: int) -> None:
    row = start + int(np.flatnonzero(block.max(axis=1) >= width)[0])
    raise NagIndexError(f"document row {row} holds a neuron index >= width {width}: "
                        "the index and the profile disagree on the MLP width")


class BlockScorer:
    """P count profiles prepared once, then any number of ``(n, L, K)`` row blocks scored against them.

    The unit of every scan: ``score_codes`` runs it over a whole matrix, a shard
    scan (``query/scan.py``) over its memory map block by block, writing each
    block's sums where it likes. ``sums(block)`` is ``(n, P)``: exact int64 sums
    of counts with power 1 (``exact``), float64 weight sums otherwise; divide by
    ``norm`` for the similarity.
    """

    def __init__(self, shape: tuple[int, int, int], profiles: np.ndarray | Sequence[np.ndarray],
                 layers: LayerSpec = None, power: float = 1.0) -> None:
        self.kept, self.table = _prepare(shape, profiles, layers, power)
        self.top_k = shape[2]
        self.norm = self.table.norm
        self.num_profiles = self.table.num_profiles
        self.exact = self.table.exact
        if self.table.lanes:
            self._kernel = dict(zip((1, 4, 8), _lane_kernels(self.top_k, self.table.flush)))[self.table.lanes]
            self._columns = {1: 1, 4: 4, 8: 8 * len(self.table.values)}[self.table.lanes]
        else:
            sum_single, sum_multi = _kernels()
            self._kernel = sum_multi if self.table.values.ndim == 2 else sum_single
            self._columns = self.table.values.shape[1] if self.table.values.ndim == 2 else 1
            self._off = np.repeat(np.arange(len(self.kept), dtype=np.int64) * self.table.width, self.top_k)

    def sums(self, block: np.ndarray, start: int = 0) -> np.ndarray:
        """``(n, P)`` sums of the rows of ``block`` (``start``: its first row, for error messages)."""
        sub = _kept_block(block, self.kept)
        n, table = len(sub), self.table
        out = np.zeros(n if self._columns == 1 else (n, self._columns), dtype=np.int64 if self.exact else np.float64)
        if table.lanes:
            self._kernel(sub, len(self.kept), table.width, LANE_BLOCK, table.values, out)
        else:
            self._kernel(sub, self._off, table.width, table.values, out)
        if out.min(initial=0) < 0:
            _raise_bad_row(sub, start, table.width)
        return out.reshape(n, self._columns)[:, :self.num_profiles]


def score_codes(codes: np.ndarray, profiles: np.ndarray | Sequence[np.ndarray], layers: LayerSpec = None,
                power: float = 1.0, block_rows: int = BLOCK_ROWS,
                on_block: Callable[[int], Any] | None = None) -> Scores:
    """Score every row of ``codes`` ``(N, L, K)`` against P count profiles ``(L', width)``.

    ``layers`` is the layer spec the profiles were counted with (see
    ``resolve_layers``). ``on_block(rows_done)`` is called after each block of
    ``block_rows`` rows (for a progress bar).
    """
    if np.ndim(codes) != 3:
        raise NagIndexError(f"codes must be (docs, layers, K), got shape {np.shape(codes)}")
    scorer = BlockScorer(codes.shape, profiles, layers, power)
    n = len(codes)
    raw = np.zeros((scorer.num_profiles, n), dtype=np.int64 if scorer.exact else np.float64)
    for start in range(0, n, block_rows):
        raw[:, start:start + block_rows] = scorer.sums(codes[start:start + block_rows], start).T
        if on_block is not None:
            on_block(min(n, start + block_rows))
    logger.debug("scored %d docs against %d profiles over %d layers", n, scorer.num_profiles, len(scorer.kept))
    return Scores(similarity=raw / scorer.norm[:, None], raw=raw if scorer.exact else None)


def layer_contributions(codes: np.ndarray, rows: Sequence[int] | np.ndarray,
                        profiles: np.ndarray | Sequence[np.ndarray], layers: LayerSpec = None,
                        power: float = 1.0) -> np.ndarray:
    """Per-layer share of the similarity for a few ``rows``: float64 ``(P, len(rows), L')``.

    Summed over the last axis it equals ``score_codes(...).similarity[:, rows]``;
    a report uses it to show which layers make a document close to the target.
    """
    kept, table = _prepare(codes.shape, profiles, layers, power, lanes=False)  # the generic layout: (rows, P)
    picked = np.asarray(codes[np.asarray(rows, dtype=np.int64)])[:, kept, :]
    if picked.size and picked.max() >= table.width:
        _raise_bad_row(picked.reshape(len(picked), -1), 0, table.width)
    flat = picked.astype(np.int64) + (np.arange(len(kept)) * table.width)[None, :, None]
    values = table.values.reshape(len(table.values), -1)  # (L' * width, P)
    per_layer = values[flat].sum(axis=2)  # (R, L', P)
    return np.moveaxis(per_layer, 2, 0) / table.norm[:, None, None]
