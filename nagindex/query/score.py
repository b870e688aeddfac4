"""Exact NAG similarity of every indexed document to P target profiles, in one pass.

Spec sec. 3: ``sim(d) = (1/L') sum_l sum_{n in NAG_l(d)} w_l[n]``. The code matrix
is ``(N, L, K)`` uint16, usually a read-only memmap of tens of millions of rows,
so it is read once, in row blocks, and never widened to a full int64 copy.

With power 1 (the reference CLIs' only value) the sum runs over the integer
*counts*: ``raw_p(d) = sum_l sum_j counts_p[l, codes[d, l, j]]`` and
``sim = raw / (|T_p| * K * L')``, which equals the weighted form exactly. Integer
sums make ties exact: two documents with the same overlap get the same score
whatever the summation order, so the docid tie-break in ``select.py`` decides,
as the spec says. Other powers sum float64 weights, and so does a ``--weighting``
(``weighting.py``: a float weight table given as ``weights``, never built from the counts here).

The kernels are numba. Power 1 with counts below 2^16 (any target of fewer
than 65,536 examples) takes the *lane* kernels (``_lane_kernels``): documents in
blocks of ``LANE_BLOCK`` rows, each block checked for bad codes and then summed
one layer at a time (so only one layer's slice of the table is hot: 6-12 KB for
one profile, in L1), the next block prefetched meanwhile. Up to 8 profiles sit
side by side in the table, so a code costs one (vector) load and add whatever the
number of profiles; counts below 256 make a uint8 table (half the cache
footprint); with K % 4 == 0 the codes are read four to a uint64 word. More than 8
profiles run in groups of 8 over the same block. Measured on 2M x 28 x 20 skewed
codes in RAM, 64K-row blocks, one thread, on a shared 2-core Zen 3 VM whose
neighbours move every number by +-30% (so old and new ran interleaved in one
process): one profile 3.7-3.9M documents/s (0.26 s per 1M), 2.2-3x the previous
lane kernels (1.3-1.7M in the same runs); 4 profiles 1.15-1.3x one with a uint8
table, 1.5-1.6x with uint16 (counts past 255); 8 profiles 1.55-1.65x and 1.9-2.2x
(the previous kernels: 0.9-1.2x and 1.3-2.4x of their slower one). On codes already in
cache one profile runs at about 4.6M documents/s, about a cycle per lookup: the
lookups are bound by the core's loads, and streaming 1.1 KB of codes a document
from memory costs the rest. An ``(L'*width, P)`` int32 table kernel, kept below for
other powers and for counts past 2^16, took 3-3.2x and 4-5x of one profile for 4
and 8. A torch ``embedding_bag`` formulation was slower still for up to 16
profiles, sums in float32 and costs a torch import.
"""
from __future__ import annotations

import logging
import sys
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
#: rows per parallel task of the lane kernels: 256 x 28 x 20 codes (287 KB) stay in L2
#: (512 KB a core on the Zen 3 measured) while each layer of the table is used in turn.
#: 128 to 512 measured alike; 1024 and more slower (the codes spill to L3 between passes).
LANE_BLOCK = 256
_CODE_LIMIT = 2**16  # codes are uint16
_LANE_MAX = 2**16 - 1  # a uint16 lane
_BYTE_MAX = 2**8 - 1  # a uint8 table entry


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
    ``lanes`` 1: ``(L', width)`` counts. ``lanes`` 4 or 8: ``(G, L', width * lanes)``,
    G groups of ``lanes`` profiles (the last one zero-padded), the count of neuron c
    for profile ``lanes * g + p`` at ``[g, l, lanes * c + p]``: one vector load per
    code. Lane tables are uint8 when every count is below 256, else uint16.
    ``flush``: codes summed in 16-bit lanes before widening (lanes > 1).
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
    """``(P, L', width)`` counts < 2^16 -> the lane kernels' table (see ``_Table``).

    uint8 when every count is below 256 (any target of fewer than 256 documents, and
    most larger ones): half the bytes, so twice the table fits each cache level.
    """
    num_profiles, num_layers, width = counts.shape
    dtype = np.uint8 if counts.max() <= _BYTE_MAX else np.uint16
    if lanes == 1:
        return np.ascontiguousarray(counts[0], dtype=dtype)
    groups = -(-num_profiles // lanes)
    packed = np.zeros((groups * lanes, num_layers, width), dtype=dtype)
    packed[:num_profiles] = counts
    packed = packed.reshape(groups, lanes, num_layers, width).transpose(0, 2, 3, 1)  # (G, L', width, lanes)
    return np.ascontiguousarray(packed).reshape(groups, num_layers, width * lanes)


def build_table(profiles: np.ndarray | Sequence[np.ndarray], power: float = 1.0, terms: int = 0,
                top_k: int = 0, weights: np.ndarray | None = None) -> _Table:
    """Count profiles ``(L', width)`` (from ``count_profile``) -> the kernel's lookup table.

    ``terms`` (codes summed per document, L' x K) picks the integer width: int32
    (twice the lanes per vector) when no document's sum can reach 2^31, else int64.
    With ``top_k`` (K) given, power 1 and counts that fit the 16-bit lanes, the
    table is for the lane kernels instead (``_Table.lanes``). ``weights``: float64
    ``(P, L', width)`` per-layer weights to sum instead (``weighting.weigh_profiles``).
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
    exact = float(power) == 1.0 and weights is None
    if exact and flush and max(terms, 1) * max_count < 2**31:
        lanes = 1 if num_profiles == 1 else 4 if num_profiles <= 4 else 8
        return _Table(_lane_table(counts, lanes), norm, width, num_layers, lanes, flush)
    if exact:
        fits32 = max(terms, 1) * max_count < 2**31
        values = counts.astype(np.int32 if fits32 else np.int64)
    else:
        values = profile_weights(counts, power) if weights is None else _checked_weights(weights, counts.shape)
        norm = np.full(num_profiles, float(num_layers))
    # (L' * width, P), plus zero guard rows so that any uint16 code, even one >= width
    # from a corrupt index, reads inside the table before the kernel flags it.
    guard = np.zeros((_CODE_LIMIT - width, num_profiles), dtype=values.dtype)
    values = np.ascontiguousarray(np.concatenate([values.reshape(num_profiles, -1).T, guard]))
    return _Table(values[:, 0].copy() if num_profiles == 1 else values, norm, width, num_layers)


def _checked_weights(weights: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``weights`` as float64 ``shape`` ``(P, L', width)``: finite and non-negative (a negative score marks a
    corrupt row in the kernels)."""
    values = np.asarray(weights, dtype=np.float64)
    if values.shape != shape:
        raise NagIndexError(f"weights of shape {values.shape} do not match profiles of shape {shape}")
    if not np.isfinite(values).all() or values.min(initial=0) < 0:
        raise NagIndexError("weights must be finite and non-negative")
    return values


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


# The lane kernels' LLVM operations, numba intrinsics made by ``_lane_intrinsics``. Module
# globals, not closure cells: a kernel reaches them as globals when it compiles, so they stay
# out of numba's cache key (a captured intrinsic would enter it with a per-process id).
_lanes_add: Any = None
_lanes_widen: Any = None
_prefetch: Any = None


@lru_cache(maxsize=None)
def _lane_intrinsics() -> None:
    """Define ``_lanes_add``, ``_lanes_widen`` and ``_prefetch`` (numba is imported lazily, so at first use).

    ``_lanes_add(acc, table, c)``: ``acc`` a tuple of V uint16 or uint32 lanes, plus
    the V entries ``table[V * c:V * c + V]`` (uint8 or uint16, zero-extended to the
    lane width), as one vector load and one wrapping vector add (``paddw``, or
    ``pmovzx`` + ``paddd``); the V * c scaling folds into the load's address when an
    entry is 4 or 8 bytes. ``_lanes_widen(acc32, row, acc)``: adds the lanes of
    ``acc``, widened to 32 bits, into ``acc32[row, :V]`` (a C-contiguous uint32
    array) as one vector load, add and store. Plain LLVM vector IR, so portable (SSE2
    is enough on x86). Numba cannot express them itself: the SLP vectoriser leaves 8
    scalar accumulators scalar, and the uint64 SWAR form they replace (two words per
    code for 8 profiles) was 1.3-1.5x slower. ``_prefetch(arr, offset)``: a cache hint
    (``llvm.prefetch``: read, L2) for the line holding ``arr.flat[offset]``.
    """
    global _lanes_add, _lanes_widen, _prefetch
    from llvmlite import ir
    from numba import types
    from numba.core.extending import intrinsic

    i32 = ir.IntType(32)

    def as_vector(builder, tup, count, bits):
        vec = ir.Constant(ir.VectorType(ir.IntType(bits), count), ir.Undefined)
        for p in range(count):
            vec = builder.insert_element(vec, builder.extract_value(tup, p), i32(p))
        return vec  # instcombine folds these element moves away between consecutive calls

    @intrinsic
    def lanes_add(typingctx, acc, table, c):
        if not (isinstance(acc, types.UniTuple) and acc.dtype in (types.uint16, types.uint32)
                and isinstance(table, types.Array) and table.layout == "C"
                and table.dtype in (types.uint8, types.uint16) and isinstance(c, types.Integer)):
            return None
        count, bits, acc_bits = acc.count, table.dtype.bitwidth, acc.dtype.bitwidth

        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[1])(context, builder, args[1]).data
            vec = ir.VectorType(ir.IntType(bits), count)
            entry = builder.gep(builder.bitcast(data, vec.as_pointer()), [args[2]])  # scaled in the address
            loaded = builder.load(entry, align=bits // 8)
            if bits < acc_bits:
                loaded = builder.zext(loaded, ir.VectorType(ir.IntType(acc_bits), count))
            total = builder.add(as_vector(builder, args[0], count, acc_bits), loaded)
            out = context.get_constant_undef(sig.return_type)
            for p in range(count):
                out = builder.insert_value(out, builder.extract_element(total, i32(p)), p)
            return out

        return acc(acc, table, c), codegen

    @intrinsic
    def lanes_widen(typingctx, acc32, row, acc):
        if not (isinstance(acc32, types.Array) and acc32.dtype == types.uint32 and acc32.layout == "C"
                and isinstance(row, types.Integer) and isinstance(acc, types.UniTuple)
                and acc.dtype in (types.uint16, types.uint32)):
            return None
        count, acc_bits = acc.count, acc.dtype.bitwidth

        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            index = builder.mul(context.cast(builder, args[1], sig.args[1], types.intp),
                                ir.Constant(ir.IntType(64), count))
            vec32 = ir.VectorType(i32, count)
            ptr = builder.bitcast(builder.gep(data, [index]), vec32.as_pointer())
            lanes = as_vector(builder, args[2], count, acc_bits)
            total = builder.add(builder.load(ptr, align=4), lanes if acc_bits == 32 else builder.zext(lanes, vec32))
            builder.store(total, ptr, align=4)
            return context.get_dummy_value()

        return types.void(acc32, row, acc), codegen

    @intrinsic
    def prefetch(typingctx, arr, offset):
        if not (isinstance(arr, types.Array) and arr.layout == "C" and isinstance(offset, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            ptr = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
            fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
            # mangled by llvmlite for its LLVM (typed "p0i8" names are auto-upgraded where pointers are opaque)
            hint = builder.module.declare_intrinsic("llvm.prefetch", [ptr.type], fnty)
            builder.call(hint, [ptr, i32(0), i32(1), i32(1)])  # read, locality 1 (L2), data
            return context.get_dummy_value()

        return types.void(arr, offset), codegen

    _lanes_add, _lanes_widen, _prefetch = lanes_add, lanes_widen, prefetch


@lru_cache(maxsize=None)
def _lane_kernels(top_k: int, flush: int, lanes: int) -> Callable[..., None]:
    """The lane kernel for K = ``top_k``, ``flush`` and ``lanes`` (compiled per triple, cached on disk).

    Arguments: ``codes`` ``(n, L' * K)`` uint16 C-contiguous; ``words``, the same
    memory as ``(n, L' * K / 4)`` uint64 when K % 4 == 0 (else an unused ``(n, 0)``);
    ``width``; ``block`` (rows per parallel task); ``table`` (see ``_Table``); ``out``
    int64: ``(n,)`` for one profile, else ``(n, lanes * G)``.

    A block goes one layer at a time, so only that layer's slice of the table is hot
    (6-12 KB for one profile: L1). The lookups are bound by loads, so per code there
    is one table load and one add, whatever the lanes: one profile sums its counts
    into an int32; V = 4 or 8 profiles add their V counts with one vector load and
    add (``_lanes_add``). 4 lanes add in 32 bits (a zero-extending load, so no flush;
    10-25% faster than 16-bit lanes from a uint8 table); 8 lanes add in 16 bits (one
    ``paddw`` with a memory operand) and are widened into 32-bit lanes every
    ``flush`` codes (``_lanes_widen``; a divisor of K for which no 16-bit lane can
    overflow). A document's sum is < 2^31 (checked by ``build_table``). With K % 4 ==
    0 the codes come four to a uint64 word, split by shifts: 1.25 loads per lookup
    instead of 2. Indexes are flat and unsigned (no wraparound selects: 7% faster).

    Each block is checked before any of its lookups (a vectorised max over its codes,
    which also brings them into cache); a block holding a neuron >= width (corrupt
    index, or an index and a profile from different models) gets scores -1 (real
    scores are >= 0) and the caller raises. While a block is summed, the next one is
    prefetched, one cache line per (row, layer) step, so its check does not wait on
    memory (5-15% faster for one profile; running the next block's check inside the
    layer passes instead was 5-15% slower than check-then-sum). K, ``flush``, the
    lanes and the shifts are compile-time constants (the loop over a layer's codes
    unrolls); they are plain values in this closure because closure values are part
    of numba's cache key.
    """
    from numba import njit, prange

    _lane_intrinsics()
    k, v = top_k, lanes  # plain values only in this closure: they are part of numba's cache key
    wide = v == 4  # 4 lanes add in 32 bits (one zero-extending load, vpmovzxbd/wd): no flush
    f = k if wide else flush
    zero = (np.uint32(0) if wide else np.uint16(0),) * v
    swar = k % 4 == 0
    per_layer = k // 4 if swar else k  # a layer's codes, in words or codes
    m16 = np.uint64(0xFFFF)
    line = 32  # uint16 codes per 64-byte cache line

    if v == 1:
        @njit(parallel=True, cache=True, nogil=True)
        def lanes1(codes, words, width, block, table, out):  # pragma: no cover - compiled
            n, m = codes.shape
            flat_codes, flat_words = codes.reshape(-1), words.reshape(-1)
            stride = m // 4 if swar else m  # a row, in words or codes
            for b in prange((n + block - 1) // block):
                lo, hi = b * block, min(n, b * block + block)
                top = np.uint16(0)
                for i in range(lo, hi):  # the block's check (vpmaxuw), which also brings it into cache
                    for q in range(m):
                        top = max(top, codes[i, q])
                if top >= width:
                    out[lo:hi] = -1
                    continue
                acc = np.zeros(hi - lo, np.int32)
                ahead, end = hi * m, min(n, hi + block) * m  # the next block, a line per step
                for layer in range(table.shape[0]):
                    row = table[layer]
                    at = np.uint64(lo * stride + layer * per_layer)  # flat and unsigned: no wraparound select
                    for r in range(hi - lo):
                        if ahead < end:
                            _prefetch(codes, ahead)
                            ahead += line
                        s = np.int32(0)
                        for j in range(k):
                            if swar:
                                c = (flat_words[at + np.uint64(j // 4)] >> np.uint64(16 * (j % 4))) & m16
                            else:
                                c = np.uint64(flat_codes[at + np.uint64(j)])
                            s += np.int32(row[c])
                        acc[r] += s
                        at += np.uint64(stride)
                out[lo:hi] = acc

        return lanes1

    @njit(parallel=True, cache=True, nogil=True)
    def lanes_v(codes, words, width, block, table, out):  # pragma: no cover - compiled
        n, m = codes.shape
        flat_codes, flat_words = codes.reshape(-1), words.reshape(-1)
        stride = m // 4 if swar else m  # a row, in words or codes
        for b in prange((n + block - 1) // block):
            lo, hi = b * block, min(n, b * block + block)
            top = np.uint16(0)
            for i in range(lo, hi):
                for q in range(m):
                    top = max(top, codes[i, q])
            if top >= width:
                out[lo:hi] = -1
                continue
            acc = np.empty((hi - lo, v), np.uint32)
            ahead, end = hi * m, min(n, hi + block) * m
            for g in range(table.shape[0]):  # groups of 8 profiles over the same block
                acc[:] = 0
                for layer in range(table.shape[1]):
                    row = table[g, layer]
                    at = np.uint64(lo * stride + layer * per_layer)
                    for r in range(hi - lo):
                        if ahead < end:
                            _prefetch(codes, ahead)
                            ahead += line
                        a = zero
                        for j in range(k):
                            if swar:
                                c = (flat_words[at + np.uint64(j // 4)] >> np.uint64(16 * (j % 4))) & m16
                            else:
                                c = np.uint64(flat_codes[at + np.uint64(j)])
                            a = _lanes_add(a, row, c)
                            if (j + 1) % f == 0:
                                _lanes_widen(acc, r, a)
                                a = zero
                        at += np.uint64(stride)
                out[lo:hi, v * g:v * g + v] = acc

    return lanes_v


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


def _code_words(sub: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, words)`` for a lane kernel: ``sub`` and, when K % 4 == 0, the same memory as uint64 words.

    Four codes to a word, code j in bits 16j..16j+15 (little-endian; a layer's K codes
    are whole words); an unaligned block (a memory map at an odd offset) is copied
    first. Otherwise ``words`` is an empty ``(n, 0)`` placeholder and the kernel
    reads the codes one by one.
    """
    if top_k % 4 == 0 and sub.size and sys.byteorder == "little":
        if sub.ctypes.data % 8:
            sub = sub.copy()
            sub.flags.writeable = False
        return sub, sub.view(np.uint64)
    words = np.empty((len(sub), 0), dtype=np.uint64)
    words.flags.writeable = False  # the same compiled signature as a read-only view
    return sub, words


def _prepare(shape: tuple[int, ...], profiles: np.ndarray | Sequence[np.ndarray], layers: LayerSpec,
             power: float, lanes: bool = True, weights: np.ndarray | None = None) -> tuple[np.ndarray, _Table]:
    """Validate shapes; resolve the kept layers exactly as ``count_profile`` did."""
    if len(shape) != 3:
        raise NagIndexError(f"codes must be (docs, layers, K), got shape {shape}")
    kept = resolve_layers(layers, shape[1])
    table = build_table(profiles, power, terms=len(kept) * shape[2], top_k=shape[2] if lanes else 0,
                        weights=weights)
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
    of counts with power 1 (``exact``), float64 weight sums otherwise (another power,
    or ``weights``: see ``build_table``); divide by ``norm`` for the similarity.
    """

    def __init__(self, shape: tuple[int, int, int], profiles: np.ndarray | Sequence[np.ndarray],
                 layers: LayerSpec = None, power: float = 1.0, weights: np.ndarray | None = None) -> None:
        self.kept, self.table = _prepare(shape, profiles, layers, power, weights=weights)
        self.top_k = shape[2]
        self.norm = self.table.norm
        self.num_profiles = self.table.num_profiles
        self.exact = self.table.exact
        if self.table.lanes:
            self._kernel = _lane_kernels(self.top_k, self.table.flush, self.table.lanes)
            self._columns = 1 if self.table.lanes == 1 else self.table.lanes * len(self.table.values)
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
            self._kernel(*_code_words(sub, self.top_k), table.width, LANE_BLOCK, table.values, out)
        else:
            self._kernel(sub, self._off, table.width, table.values, out)
        if out.min(initial=0) < 0:
            _raise_bad_row(sub, start, table.width)
        return out.reshape(n, self._columns)[:, :self.num_profiles]


def score_codes(codes: np.ndarray, profiles: np.ndarray | Sequence[np.ndarray], layers: LayerSpec = None,
                power: float = 1.0, block_rows: int = BLOCK_ROWS,
                on_block: Callable[[int], Any] | None = None, weights: np.ndarray | None = None) -> Scores:
    """Score every row of ``codes`` ``(N, L, K)`` against P count profiles ``(L', width)``.

    ``layers`` is the layer spec the profiles were counted with (see
    ``resolve_layers``). ``on_block(rows_done)`` is called after each block of
    ``block_rows`` rows (for a progress bar). ``weights``: the profiles' float
    weights ``(P, L', width)`` of a ``--weighting`` (``weighting.weigh_profiles``).
    """
    if np.ndim(codes) != 3:
        raise NagIndexError(f"codes must be (docs, layers, K), got shape {np.shape(codes)}")
    scorer = BlockScorer(codes.shape, profiles, layers, power, weights)
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
                        power: float = 1.0, weights: np.ndarray | None = None) -> np.ndarray:
    """Per-layer share of the similarity for a few ``rows``: float64 ``(P, len(rows), L')``.

    Summed over the last axis it equals ``score_codes(...).similarity[:, rows]``;
    a report uses it to show which layers make a document close to the target.
    """
    kept, table = _prepare(codes.shape, profiles, layers, power, lanes=False,  # the generic layout: (rows, P)
                           weights=weights)
    picked = np.asarray(codes[np.asarray(rows, dtype=np.int64)])[:, kept, :]
    if picked.size and picked.max() >= table.width:
        _raise_bad_row(picked.reshape(len(picked), -1), 0, table.width)
    flat = picked.astype(np.int64) + (np.arange(len(kept)) * table.width)[None, :, None]
    values = table.values.reshape(len(table.values), -1)  # (L' * width, P)
    per_layer = values[flat].sum(axis=2)  # (R, L', P)
    return np.moveaxis(per_layer, 2, 0) / table.norm[:, None, None]
