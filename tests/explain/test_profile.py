"""The profile explanation: per-layer top neurons with target and pool shares and lift, concentration,
effective neurons and separation, on hand-counted profiles, then on an index."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nagindex.errors import NagIndexError
from nagindex.explain.profile import explain_counts, explain_profile
from nagindex.index.neuron_stats import count_neurons
from nagindex.index.sharded import open_index
from nagindex.query.request import TargetRequest

# 4 target examples, 2 layers of 6 neurons, K = 2
TARGET = np.array([[[0, 1], [5, 4]], [[0, 2], [5, 4]], [[0, 1], [4, 5]], [[3, 0], [5, 4]]])
# 10 pool documents: layer 0 uses 0 (all), 1 and 2 (half each); layer 1 only 0 and 1
POOL = np.array([[10, 5, 5, 0, 0, 0], [10, 10, 0, 0, 0, 0]])


def test_hand_counted_profile():
    res = explain_counts("t", count_neurons(TARGET, 6), POOL, top_k=2, top=2)
    assert (res.pool_docs, res.examples, res.width) == (10, {"used": 4}, 6)
    first, second = res.layers
    assert [(s.neuron, s.target_count, s.pool_count) for s in first.neurons] == [(0, 4, 10), (1, 2, 5)]
    assert [(s.target_share, s.pool_share) for s in first.neurons] == [(1.0, 1.0), (0.5, 0.5)]
    assert first.neurons[0].lift == pytest.approx(1.0) and first.neurons[1].lift == pytest.approx(0.5 * 11 / 6)
    assert first.concentration == 0.75
    assert first.effective_neurons == pytest.approx(2 ** 1.75)  # shares 1/2, 1/4, 1/8, 1/8
    assert first.separation == pytest.approx(0.125)
    assert [s.neuron for s in second.neurons] == [4, 5] and second.neurons[0].lift == pytest.approx(11.0)
    assert (second.concentration, second.separation) == (1.0, 1.0)
    assert second.effective_neurons == pytest.approx(2.0)
    assert res.separating_layers() == [1, 0]
    data = res.to_dict()
    assert data["separating_layers"] == [1, 0] and data["layers"][1]["neurons"][1]["neuron"] == 5
    lines = res.table(show=1).splitlines()
    assert lines[2].split() == ["0", "0.750", "3.4", "0.125", "0:100/100", "x1.0"]
    assert lines[-1] == "most separating layers: 1, 0"


def test_shapes_must_agree():
    with pytest.raises(NagIndexError, match="must be the same"):
        explain_counts("t", count_neurons(TARGET, 6), POOL[:, :5], top_k=2)


def test_profile_of_an_index(prose_index, arith_target):
    res = explain_profile(TargetRequest("file", str(arith_target)), prose_index, top=3, device="cpu")
    view = open_index(prose_index)
    pool = count_neurons(np.asarray(view.codes), 256)
    assert res.pool_docs == 120 and res.examples["used"] == 60 and len(res.layers) == 4
    for layer in res.layers:
        assert len(layer.neurons) == 3
        for s in layer.neurons:
            assert s.pool_count == pool[layer.layer, s.neuron]
            assert s.lift == pytest.approx(s.target_share / ((s.pool_count + 1) / 121))
        assert 0 <= layer.separation <= 1 and math.isfinite(layer.effective_neurons)
    sampled = explain_profile(TargetRequest("file", str(arith_target)), prose_index, max_examples=20, device="cpu")
    assert sampled.examples["used"] == 20 and sampled.examples["available"] == 60
