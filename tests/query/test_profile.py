"""Target profiles: counts per layer, power weights, layer specs, deactivation keys."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nagindex.errors import NagIndexError
from nagindex.query.profile import count_profile, profile_weights, resolve_layers, top_neurons


@pytest.mark.parametrize("spec, expected", [
    (None, [0, 1, 2, 3]), ("all", [0, 1, 2, 3]), ("", [0, 1, 2, 3]), ("last", [3]), ("first", [0]), ("LAST", [3]),
    ([2, 0], [0, 2]), ("0,-1", [0, 3]), ("-2", [2]), (1, [1]), (np.array([3, 1]), [1, 3]),
])
def test_resolve_layers(spec, expected):
    assert resolve_layers(spec, 4).tolist() == expected


@pytest.mark.parametrize("spec", ["4", [-5], "0,0", [1, -3], "x", [], "1;2"])
def test_resolve_layers_rejects(spec):
    with pytest.raises(NagIndexError):
        resolve_layers(spec, 4)


def test_count_profile_counts_per_layer():
    codes = np.array([[[0, 1], [2, 3]], [[1, 2], [3, 3]]], dtype=np.uint16)  # T=2, L=2, K=2
    counts = count_profile(codes, width=4)
    assert counts.dtype == np.int64
    assert counts.tolist() == [[1, 2, 1, 0], [0, 0, 1, 3]]
    assert count_profile(codes, 4, "last").tolist() == [[0, 0, 1, 3]]


def test_count_profile_matches_loop(make_codes):
    rng = np.random.default_rng(3)
    codes = make_codes(rng, 50)
    counts = count_profile(codes, 256, [1, 3])
    for row, layer in enumerate([1, 3]):
        expected = np.zeros(256, dtype=np.int64)
        for t in range(len(codes)):
            for n in codes[t, layer]:
                expected[n] += 1
        assert (counts[row] == expected).all()
    assert (counts.sum(axis=1) == 50 * 8).all()


def test_count_profile_rejects():
    with pytest.raises(NagIndexError, match="empty target"):
        count_profile(np.zeros((0, 4, 8), np.uint16), 256)
    with pytest.raises(NagIndexError, match="width"):
        count_profile(np.full((1, 4, 8), 300, np.uint16), 256)
    with pytest.raises(NagIndexError, match="shape"):
        count_profile(np.zeros((4, 8), np.uint16), 256)


def test_profile_weights():
    counts = np.array([[2, 0, 1, 1], [0, 0, 0, 0]])
    w1 = profile_weights(counts)
    assert w1[0].tolist() == [0.5, 0.0, 0.25, 0.25] and w1[1].tolist() == [0.0] * 4
    w2 = profile_weights(counts, 2.0)
    assert np.allclose(w2[0], [4 / 6, 0, 1 / 6, 1 / 6])
    w0 = profile_weights(counts, 0.0)  # presence only, never 0^0
    assert np.allclose(w0[0], [1 / 3, 0, 1 / 3, 1 / 3])
    with pytest.raises(NagIndexError):
        profile_weights(counts, -1.0)


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("name", ["sci_target", "story_target", "all"])
def test_golden_profiles(golden_ranking, name, power):
    golden = json.loads((golden_ranking["ranking"] / "kernel_golden.json").read_text())[f"{name}/power={power}"]
    mask = golden_ranking["target_sets"][name]
    assert golden["target_docids"] == [d for d, m in zip(golden_ranking["target_ids"], mask) if m]
    weights = profile_weights(count_profile(golden_ranking["target_codes"][mask], 256), power)
    for layer, expected in enumerate(golden["profile"]):
        assert set(np.flatnonzero(weights[layer]).tolist()) == {int(n) for n in expected}
        got = np.array([weights[layer][int(n)] for n in expected])
        assert np.abs(got - np.array(list(expected.values()))).max() <= 1e-15


def test_top_neurons_order():
    counts = np.array([[0, 3, 1, 3, 0, 2], [0, 0, 0, 0, 0, 1]])
    keys = top_neurons(counts, 4)
    assert keys[0].tolist() == [1, 3, 5, 2]  # count desc, neuron asc
    assert keys[1].tolist() == [5]  # count-0 neurons are never keys


def test_golden_deactivation_keys(golden_ranking):
    """Same neurons per layer as the reference; within equal counts we order by neuron id.

    The reference's order within equal counts comes from numpy's unstable argsort
    (CPU-dependent), e.g. layer 0 [51, 45, 249, 2, 37, 35, 43, 26] where ours is
    [45, 51, 249, 2, 26, 35, 37, 43]: same set, same count sequence.
    """
    expected = json.loads((golden_ranking["ranking"] / "deact_keys_sci_k8.json").read_text())
    counts = count_profile(golden_ranking["target_codes"][golden_ranking["target_sets"]["sci_target"]], 256)
    keys = top_neurons(counts, 8)
    for layer, neurons in expected.items():
        got = keys[int(layer)]
        assert set(got.tolist()) == set(neurons)
        assert counts[int(layer), got].tolist() == counts[int(layer), neurons].tolist()
        ties = counts[int(layer), got]
        assert all(got[i] < got[i + 1] for i in range(len(got) - 1) if ties[i] == ties[i + 1])
