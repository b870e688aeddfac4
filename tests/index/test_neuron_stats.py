"""Pool neuron statistics (issue 23 item 1): stored per shard by the derive, kept as shards grow, merged over
shards without cross-shard repeats exactly as a one-shard index of the same documents counts them."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from nagindex.errors import NagIndexError
from nagindex.index.derived import open_shard, sync_derived
from nagindex.index.neuron_file import COUNTS_FILE, count_neurons, prefix_counts, read_counts, write_counts
from nagindex.index.neuron_stats import pool_neuron_counts
from nagindex.index.sharded import open_index, shard_specs
from tests.query import pools


def _loop_counts(codes: np.ndarray, width: int) -> np.ndarray:
    """The definition, one document and layer at a time: documents whose layer-l NAG holds neuron n."""
    out = np.zeros((codes.shape[1], width), np.int64)
    for doc in np.asarray(codes):
        for layer, neurons in enumerate(doc):
            for n in set(neurons.tolist()):
                out[layer, n] += 1
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stats")
    files = pools.write_pool(root / "data")
    return {"files": files, "one": pools.build_index(files, root / "one"),
            "three": pools.build_index(files, root / "three", 3), "seven": pools.build_index(files, root / "seven", 7)}


def test_count_neurons_by_hand_and_against_the_definition(make_codes):
    codes = np.array([[[0, 1], [2, 0]], [[1, 0], [2, 1]]], dtype=np.uint16)  # 2 docs, 2 layers, K 2, width 3
    assert count_neurons(codes, 3).tolist() == [[2, 2, 0], [1, 1, 2]]
    codes = make_codes(np.random.default_rng(5), 300)
    assert np.array_equal(count_neurons(codes, 256), _loop_counts(codes, 256))
    assert count_neurons(codes[:0], 256).shape == (4, 256) and not count_neurons(codes[:0], 256).any()
    codes[7, 2, 3] = 256  # a neuron outside the width: a corrupt index, never counted into the next layer
    with pytest.raises(NagIndexError, match="hold a neuron >= width 256"):
        count_neurons(codes, 256)


def test_the_derive_stores_the_counts_and_appends_to_them(tmp_path, monkeypatch):
    from nagindex.index import derived, neuron_file

    files = pools.write_pool(tmp_path / "data")
    idx = pools.build_index(files[:2], tmp_path / "idx")
    view = open_shard(idx)
    rows, counts = read_counts(idx, view.manifest)
    assert rows == len(view) == 760
    assert np.array_equal(counts, _loop_counts(view.codes, 48))
    counted = []

    def counting(codes, width):
        counted.append(len(codes))
        return count_neurons(codes, width)

    monkeypatch.setattr(derived, "count_neurons", counting)
    monkeypatch.setattr(neuron_file, "count_neurons", counting)
    pools.build_index(files, idx)  # the other files appended to the same index
    view = open_shard(idx)
    rows, counts = read_counts(idx, view.manifest)
    assert rows == len(view) == 2502  # 3 repeated ids kept once
    assert sum(counted) == 2502 - 760  # the new rows only
    assert np.array_equal(counts, _loop_counts(view.codes, 48))
    assert COUNTS_FILE in view.info["files"]


def test_the_counts_of_a_prefix_and_of_an_index_derived_before_the_file(data, tmp_path, caplog):
    view = open_shard(data["one"])
    full = _loop_counts(view.codes, 48)
    assert np.array_equal(prefix_counts(data["one"], view.manifest, 1000), _loop_counts(view.codes[:1000], 48))
    assert np.array_equal(prefix_counts(data["one"], view.manifest, len(view)), full)

    old = pools.build_index(data["files"], tmp_path / "old")
    (old / COUNTS_FILE).unlink()
    with caplog.at_level(logging.INFO, logger="nagindex.index.neuron_file"):
        assert np.array_equal(pool_neuron_counts(old), full)
    assert "derived before it" in caplog.text
    assert not (old / COUNTS_FILE).exists()  # a query only reads; the next derive stores them
    sync_derived(old)
    assert read_counts(old, view.manifest)[0] == len(view)
    assert np.array_equal(read_counts(old, view.manifest)[1], full)

    write_counts(old, 10, full)  # counts that are not 10 NAGs of K neurons a layer: not trusted
    assert read_counts(old, view.manifest) is None
    assert np.array_equal(pool_neuron_counts(old), full)


@pytest.mark.parametrize("layout", ["three", "seven"])
def test_merged_shard_counts_equal_a_one_shard_index(data, layout):
    one = pool_neuron_counts(data["one"])
    assert np.array_equal(one, _loop_counts(open_index(data["one"]).codes, 48))
    assert np.array_equal(pool_neuron_counts(data[layout]), one)
    assert one.sum(axis=1).tolist() == [len(open_index(data["one"])) * 6] * 4
    # the shards hold the repeated ids' later copies too: merging without subtracting them would differ
    specs = shard_specs(data[layout])
    assert sum(len(s["hidden"]) for s in specs) == 3
    naive = sum(read_counts(s["path"], open_shard(s["path"]).manifest)[1] for s in specs)
    assert not np.array_equal(naive, one)
