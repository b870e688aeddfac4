"""The lane kernels of ``score.py`` (profiles side by side in uint8/uint16 tables, layer-blocked): exact against numpy."""
from __future__ import annotations

import numpy as np
import pytest

from nagindex.errors import NagIndexError
from nagindex.query.profile import count_profile, resolve_layers
from nagindex.query.score import LANE_BLOCK, _flush_every, build_table, score_codes


def numpy_raw(codes: np.ndarray, counts: np.ndarray, layers) -> np.ndarray:
    kept = resolve_layers(layers, codes.shape[1])
    sub = codes[:, kept, :].astype(np.int64)
    return sum(counts[i][sub[:, i, :]].sum(axis=1) for i in range(len(kept)))


@pytest.fixture
def pool(make_codes):
    rng = np.random.default_rng(7)
    return rng, make_codes(rng, 2500, 5, 6, 96)  # 2500 rows: two full lane blocks and a short one


@pytest.mark.parametrize("num_profiles", [1, 2, 4, 5, 8, 9, 17])
@pytest.mark.parametrize("layers", [None, [0, 3, 4]])
def test_lane_kernels_equal_numpy(pool, make_codes, num_profiles, layers):
    rng, codes = pool
    counts = [count_profile(make_codes(rng, int(rng.integers(1, 40)), 5, 6, 96), 96, layers)
              for _ in range(num_profiles)]
    assert build_table(counts, 1.0, terms=30, top_k=6).lanes == (1 if num_profiles == 1 else
                                                                 4 if num_profiles <= 4 else 8)
    scores = score_codes(codes, counts, layers, block_rows=1100)
    assert scores.raw.shape == (num_profiles, len(codes))
    for p, c in enumerate(counts):
        assert (scores.raw[p] == numpy_raw(codes, c, layers)).all()
        assert np.array_equal(scores.similarity[p], scores.raw[p] / c.sum())


@pytest.mark.parametrize("num_profiles", [1, 3])
@pytest.mark.parametrize("top", [65535 // 6 + 1, 65535 // 2, 65535])
def test_big_counts_flush_lanes_more_often(pool, num_profiles, top):
    """Counts near 2^16: the 16-bit lanes are widened every f codes (f a divisor of K), never overflow."""
    rng, codes = pool
    counts = [rng.integers(0, top + 1, (5, 96)) for _ in range(num_profiles)]
    for c in counts:
        c[:, :4] = top
    table = build_table(counts, 1.0, terms=30, top_k=6)
    assert table.lanes == (1 if num_profiles == 1 else 4) and table.values.dtype == np.uint16
    assert table.flush == _flush_every(6, top) and table.flush * top <= 65535
    scores = score_codes(codes, counts)
    for p, c in enumerate(counts):
        assert (scores.raw[p] == numpy_raw(codes, c, None)).all()


def test_counts_past_uint16_use_the_generic_kernels(pool):
    rng, codes = pool
    counts = [rng.integers(0, 70000, (5, 96)) for _ in range(5)]
    assert build_table(counts, 1.0, terms=30, top_k=6).lanes == 0
    scores = score_codes(codes, counts)
    for p, c in enumerate(counts):
        assert (scores.raw[p] == numpy_raw(codes, c, None)).all()


@pytest.mark.parametrize("num_profiles", [1, 3, 8])
def test_bad_code_is_an_error_naming_the_row(pool, make_codes, num_profiles):
    rng, codes = pool
    counts = [count_profile(make_codes(rng, 10, 5, 6, 96), 96) for _ in range(num_profiles)]
    bad = codes.copy()
    bad[1777, 4, 2] = 96  # one neuron outside the profiles' width
    with pytest.raises(NagIndexError, match="row 1777 "):
        score_codes(bad, counts)


@pytest.fixture
def pool8(make_codes):
    """K = 8: the kernels read the codes four to a uint64 word. 2500 rows: not a multiple of LANE_BLOCK."""
    rng = np.random.default_rng(11)
    codes = make_codes(rng, 2500, 5, 8, 96)
    assert len(codes) % LANE_BLOCK
    return rng, codes


@pytest.mark.parametrize("num_profiles", [1, 4, 8, 12])
@pytest.mark.parametrize("top", [200, 20000])  # uint8 table, flush = K; uint16 table, flush = 2 < K
def test_word_codes_equal_numpy(pool8, num_profiles, top):
    rng, codes = pool8
    counts = [rng.integers(0, top + 1, (5, 96)) for _ in range(num_profiles)]
    counts[0][:, :3] = top
    table = build_table(counts, 1.0, terms=40, top_k=8)
    assert table.values.dtype == (np.uint8 if top < 256 else np.uint16)
    assert table.flush == (8 if top < 256 else 2)
    scores = score_codes(codes, counts, block_rows=1100)
    for p, c in enumerate(counts):
        assert (scores.raw[p] == numpy_raw(codes, c, None)).all()
    bad = codes.copy()
    bad[2400, 1, 5] = 96  # in the short last block of a kernel call
    bad[1090, 3, 0] = 65535  # the first one is named
    with pytest.raises(NagIndexError, match="row 1090 "):
        score_codes(bad, counts, block_rows=1100)


def test_unaligned_block_is_copied_for_word_reads(pool8, make_codes):
    """A block at an odd 2-byte offset (a memory map, say) cannot be read as uint64 words: copied first."""
    rng, codes = pool8
    raw = np.zeros(codes.size + 1, dtype=np.uint16)
    unaligned = raw[1:].reshape(codes.shape)
    unaligned[:] = codes
    assert unaligned.ctypes.data % 8
    counts = [count_profile(make_codes(rng, 30, 5, 8, 96), 96) for _ in range(2)]
    scores = score_codes(unaligned, counts)
    for p, c in enumerate(counts):
        assert (scores.raw[p] == numpy_raw(codes, c, None)).all()
