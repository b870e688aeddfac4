"""Scoring: the numba kernels against a plain numpy reference, and the golden similarities."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nagindex.errors import NagIndexError
from nagindex.query.profile import count_profile, profile_weights, resolve_layers
from nagindex.query.score import build_table, layer_contributions, score_codes


def numpy_raw(codes: np.ndarray, counts: np.ndarray, layers) -> np.ndarray:
    """The definition, spelled out: sum over kept layers and K of the neuron's count."""
    kept = resolve_layers(layers, codes.shape[1])
    sub = codes[:, kept, :].astype(np.int64)
    return sum(counts[i][sub[:, i, :]].sum(axis=1) for i in range(len(kept)))


def numpy_similarity(codes: np.ndarray, counts: np.ndarray, layers, power: float) -> np.ndarray:
    kept = resolve_layers(layers, codes.shape[1])
    weights = profile_weights(counts, power)
    sub = codes[:, kept, :].astype(np.int64)
    return sum(weights[i][sub[:, i, :]].sum(axis=1) for i in range(len(kept))) / len(kept)


@pytest.fixture
def data(make_codes):
    rng = np.random.default_rng(1338)
    codes = make_codes(rng, 3001, 4, 5, 64)  # K=5: code counts per row not a multiple of 4
    targets = [make_codes(rng, t, 4, 5, 64) for t in (1, 4, 9)]
    return codes, targets


@pytest.mark.parametrize("layers", [None, "last", [0, 2], "1,2,3"])
@pytest.mark.parametrize("num_profiles", [1, 3])
def test_kernel_equals_numpy_exactly(data, layers, num_profiles):
    codes, targets = data
    counts = [count_profile(t, 64, layers) for t in targets[:num_profiles]]
    scores = score_codes(codes, counts, layers, block_rows=1000)  # several blocks, a short tail
    assert scores.raw.shape == scores.similarity.shape == (num_profiles, len(codes))
    for p, c in enumerate(counts):
        raw = numpy_raw(codes, c, layers)
        assert (scores.raw[p] == raw).all()
        assert np.array_equal(scores.similarity[p], raw / c.sum())
        assert np.abs(scores.similarity[p] - numpy_similarity(codes, c, layers, 1.0)).max() <= 1e-15


@pytest.mark.parametrize("power", [2.0, 0.5])
@pytest.mark.parametrize("num_profiles", [1, 3])
def test_kernel_float_power(data, power, num_profiles):
    codes, targets = data
    counts = [count_profile(t, 64) for t in targets[:num_profiles]]
    scores = score_codes(codes, counts, None, power, block_rows=1000)
    assert scores.raw is None
    for p, c in enumerate(counts):
        assert np.abs(scores.similarity[p] - numpy_similarity(codes, c, None, power)).max() <= 1e-12
    assert np.array_equal(scores.nag_distance, 1.0 - scores.similarity)


def test_equal_overlap_ties_exactly(data):
    """Two docs with the same NAG multiset per layer score bit-identically, whatever the order."""
    codes, targets = data
    twin = codes[:1, :, ::-1].copy()  # same neurons, reversed order
    scores = score_codes(np.concatenate([codes[:1], twin]), count_profile(targets[2], 64))
    assert scores.raw[0, 0] == scores.raw[0, 1]
    assert scores.similarity[0, 0] == scores.similarity[0, 1]


def test_int64_accumulation_when_counts_are_huge(data):
    codes, _ = data
    counts = np.full((4, 64), 2**28, dtype=np.int64)
    counts[:, 0] = 2**30
    assert build_table(counts, 1.0, terms=20).values.dtype == np.int64
    scores = score_codes(codes, [counts, counts // 2], None)
    assert (scores.raw[0] == numpy_raw(codes, counts, None)).all()
    assert (scores.raw[1] == numpy_raw(codes, counts // 2, None)).all()


def test_memmap_input(tmp_path, data):
    codes, targets = data
    path = tmp_path / "codes.u16"
    codes.tofile(path)
    mm = np.memmap(path, dtype=np.uint16, mode="r", shape=codes.shape)
    counts = count_profile(targets[1], 64)
    assert (score_codes(mm, counts, block_rows=512).raw == score_codes(codes, counts).raw).all()


@pytest.mark.parametrize("num_profiles", [1, 2])
def test_bad_code_is_an_error(data, num_profiles):
    codes, targets = data
    bad = codes.copy()
    bad[1234, 2, 3] = 64
    with pytest.raises(NagIndexError, match="row 1234"):
        score_codes(bad, [count_profile(targets[0], 64)] * num_profiles, block_rows=1000)


def test_shape_errors(data):
    codes, targets = data
    with pytest.raises(NagIndexError, match="layers"):
        score_codes(codes, count_profile(targets[0], 64, "last"), None)
    with pytest.raises(NagIndexError, match="shape"):
        score_codes(codes[0], count_profile(targets[0], 64))
    empty = score_codes(codes[:0], count_profile(targets[0], 64))
    assert empty.similarity.shape == (1, 0)


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_layer_contributions_sum_to_similarity(data, power):
    codes, targets = data
    counts = [count_profile(t, 64, [0, 3]) for t in targets]
    rows = [0, 17, 2999]
    per_layer = layer_contributions(codes, rows, counts, [0, 3], power)
    assert per_layer.shape == (3, 3, 2)
    similarity = score_codes(codes, counts, [0, 3], power).similarity[:, rows]
    assert np.abs(per_layer.sum(axis=2) - similarity).max() <= 1e-15


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("name", ["sci_target", "story_target", "all"])
def test_golden_similarity(golden_ranking, name, power):
    golden = json.loads((golden_ranking["ranking"] / "kernel_golden.json").read_text())
    assert golden["pool_docids"] == golden_ranking["pool_ids"]
    expected = golden[f"{name}/power={power}"]
    counts = count_profile(golden_ranking["target_codes"][golden_ranking["target_sets"][name]], 256)
    scores = score_codes(golden_ranking["pool_codes"], counts, None, power)
    assert np.abs(scores.similarity[0] - expected["similarity"]).max() <= 1e-12
    assert np.abs(scores.nag_distance[0] - expected["distance"]).max() <= 1e-12
