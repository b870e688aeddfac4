"""The torch scorer (the ``--device cuda`` path) run on CPU torch: the numba kernels' exact integers."""
from __future__ import annotations

import numpy as np
import pytest

from nagindex.errors import NagIndexError
from nagindex.query.profile import count_profile
from nagindex.query.score import BlockScorer

torch = pytest.importorskip("torch")
from nagindex.query.score_torch import TorchScorer  # noqa: E402


@pytest.mark.parametrize("num_profiles, layers", [(1, None), (3, [0, 3]), (9, None)])
def test_exact_sums_equal_the_numba_kernels(make_codes, num_profiles, layers):
    rng = np.random.default_rng(num_profiles)
    codes = make_codes(rng, 1000)
    profiles = np.stack([count_profile(make_codes(rng, 30), 256, layers) for _ in range(num_profiles)])
    scorer = TorchScorer(codes.shape, profiles, layers, 1.0, "cpu")
    scorer.rows_per_slice = 77  # several slices, the last one short
    cpu = BlockScorer(codes.shape, profiles, layers, 1.0)
    got = scorer.sums(codes, 0)
    assert got.dtype == np.int64 and np.array_equal(got, cpu.sums(codes, 0))
    assert np.array_equal(scorer.norm, cpu.norm)


def test_float_powers_and_bad_codes(make_codes):
    rng = np.random.default_rng(5)
    codes = make_codes(rng, 300)
    profiles = count_profile(make_codes(rng, 20), 256)[None]
    got = TorchScorer(codes.shape, profiles, None, 2.0, "cpu").sums(codes)
    np.testing.assert_allclose(got, BlockScorer(codes.shape, profiles, None, 2.0).sums(codes), rtol=1e-12)
    bad = codes.copy()
    bad[123, 2, 0] = 300
    with pytest.raises(NagIndexError, match="row 1123 holds a neuron index >= width 256"):
        TorchScorer(codes.shape, profiles, None, 1.0, "cpu").sums(bad, 1000)
