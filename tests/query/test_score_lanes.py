"""The lane kernels of ``score.py`` (packed uint16 counts, layer-blocked): exact against numpy."""
from __future__ import annotations

import numpy as np
import pytest

from nagindex.errors import NagIndexError
from nagindex.query.profile import count_profile, resolve_layers
from nagindex.query.score import _flush_every, build_table, score_codes


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


@pytest.mark.parametrize("top", [65535 // 6 + 1, 65535 // 2, 65535])
def test_big_counts_flush_lanes_more_often(pool, top):
    """Counts near 2^16: the 16-bit lanes are widened every f codes (f a divisor of K), never overflow."""
    rng, codes = pool
    counts = [rng.integers(0, top + 1, (5, 96)) for _ in range(3)]
    for c in counts:
        c[:, :4] = top
    table = build_table(counts, 1.0, terms=30, top_k=6)
    assert table.lanes == 4 and table.flush == _flush_every(6, top) and table.flush * top <= 65535
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
