"""``--weighting none|lift|idf`` (issue 23): weights by hand, scores equal to a brute-force numpy computation,
selections the same on every shard layout and through Ray, and ``none`` bit for bit today's outputs."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from nagindex.errors import NagIndexError
from nagindex.index.sharded import open_index
from nagindex.query.export import score_all
from nagindex.query.profile import count_profile, resolve_layers
from nagindex.query.request import TargetRequest
from nagindex.query.run import query
from nagindex.query.score import score_codes
from nagindex.query.weighting import pool_weigher, weigh_profiles
from tests.query import pools

#: sha256 of (docid, score, rank) of each query form and of (docid, score_alpha, score_beta) of ``nagindex
#: score`` on ``pools``' data, made by the code before ``--weighting`` existed (commit e1162358)
GOLDEN = {
    "1/k": [50, "bae7da1144b31fde9390863d14c8fb0bf54f0038b30ff5394589777e13d5ff27"],
    "1/fraction": [527, "36e548121082aa0f705ae1e4388e17851d5e3787420a16b75e7932a781a91b51"],
    "1/paper": [742, "8677390615148f3404fc55f2b8137cb29eef452a40e1191f12e7b75a7d5bd18c"],
    "1/union": [40, "2e1c87989b7270d52c22c488c7511d40727038c08af73b015a2cfccd233a495b"],
    "1/power": [60, "fc1667ac466947afc9ad24004bc1e5fa423a5627d79bcfb09088ded2f4e2f47d"],
    "1/layers": [30, "aed8aac97a5fc0e24acea4f82349355664f71b25fef8258a4e8ad91ba88753d1"],
    "1/score": [2502, "062d992b09e2ca0e22c1edd6502ba59b17cff62b5a9b7ca2920f23f1e0f22366"],
    "3/k": [50, "bae7da1144b31fde9390863d14c8fb0bf54f0038b30ff5394589777e13d5ff27"],
    "3/fraction": [527, "36e548121082aa0f705ae1e4388e17851d5e3787420a16b75e7932a781a91b51"],
    "3/paper": [742, "8677390615148f3404fc55f2b8137cb29eef452a40e1191f12e7b75a7d5bd18c"],
    "3/union": [40, "2e1c87989b7270d52c22c488c7511d40727038c08af73b015a2cfccd233a495b"],
    "3/power": [60, "fc1667ac466947afc9ad24004bc1e5fa423a5627d79bcfb09088ded2f4e2f47d"],
    "3/layers": [30, "aed8aac97a5fc0e24acea4f82349355664f71b25fef8258a4e8ad91ba88753d1"],
    "3/score": [2502, "202c2f860a05e9875e7e0b462eb5f0862451a19150e52aeba2c674bf59721e68"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weighting")
    files = pools.write_pool(root / "data")
    out = dict(pools.write_targets(root / "data"))
    for shards in (1, 3, 7):
        out[f"idx{shards}"] = pools.build_index(files, root / f"idx{shards}", shards)
    return out


def _t(data: dict[str, Path], name: str, weight: float = 1.0) -> TargetRequest:
    return TargetRequest("features", str(data[name]), weight=weight)


def _digest(table, columns: list[str]) -> str:
    h = hashlib.sha256()
    for c in columns:
        col = table.column(c)
        h.update("\x00".join(col.to_pylist()).encode() if "string" in str(col.type)
                 else np.ascontiguousarray(col.to_numpy()).tobytes())
    return h.hexdigest()


def test_weights_by_hand():
    counts = np.array([[[4, 2, 2, 0]]])  # one layer of width 4: a target of 8 neuron slots
    pool = np.array([[9, 1, 3, 5]])  # over 10 pool documents
    # lift: w = c / 8, s ~ c / (N_n + 1) = 4/10, 2/2, 2/4, 0 -> w s = .2, .25, .125, 0 (sum .575)
    np.testing.assert_allclose(weigh_profiles(counts, 1.0, "lift", pool, 10)[0, 0], [8 / 23, 10 / 23, 5 / 23, 0.0],
                               rtol=1e-15, atol=0)
    idf = [math.log(11 / 10) + 1, math.log(11 / 2) + 1, math.log(11 / 4) + 1]
    raw = [0.5 * idf[0], 0.25 * idf[1], 0.25 * idf[2]]
    want = [x / sum(raw) for x in raw] + [0.0]
    np.testing.assert_allclose(weigh_profiles(counts, 1.0, "idf", pool, 10)[0, 0], want, rtol=1e-15, atol=0)
    # power 2: w = c^2 / 24 before the specificity
    got = weigh_profiles(counts, 2.0, "lift", pool, 10)[0, 0]
    raw = [16 * 0.4, 4 * 1.0, 4 * 0.5]
    np.testing.assert_allclose(got, [x / sum(raw) for x in raw] + [0.0], rtol=1e-15, atol=0)
    # a layer the profile never hits stays zero; each other layer sums to 1
    two = weigh_profiles(np.array([[[4, 2, 2, 0], [0, 0, 0, 0]]]), 1.0, "idf", np.array([[9, 1, 3, 5], [1, 1, 1, 1]]),
                         10)
    assert two[0, 1].tolist() == [0.0] * 4 and math.isclose(two[0, 0].sum(), 1.0, rel_tol=1e-15)
    with pytest.raises(NagIndexError, match="choose one of none, lift, idf"):
        weigh_profiles(counts, 1.0, "tfidf", pool, 10)
    with pytest.raises(NagIndexError, match="do not match"):
        weigh_profiles(counts, 1.0, "lift", pool[:, :3], 10)


def _brute_force(codes: np.ndarray, target: np.ndarray, width: int, layers, power: float, weighting: str):
    """Pool counts, weights and similarities from the definitions alone: numpy, no nagindex scoring code."""
    kept = resolve_layers(layers, codes.shape[1])
    pool = np.zeros((len(kept), width))
    for i, layer in enumerate(kept):
        for doc in codes[:, layer, :]:
            pool[i, doc] += 1
    counts = np.zeros((len(kept), width))
    for i, layer in enumerate(kept):
        np.add.at(counts[i], target[:, layer, :].ravel(), 1)
    w = np.where(counts > 0, counts ** power, 0.0)
    w = w / w.sum(axis=1, keepdims=True)
    n = len(codes)
    spec = (counts / len(target)) / ((pool + 1) / (n + 1)) if weighting == "lift" else np.log((n + 1) / (pool + 1)) + 1
    weights = w * spec / (w * spec).sum(axis=1, keepdims=True)
    gathered = np.stack([weights[i][codes[:, layer, :]] for i, layer in enumerate(kept)], axis=1)  # (N, L', K)
    flat = gathered.reshape(n, -1)
    total = np.zeros(n)
    for q in range(flat.shape[1]):  # each document's terms added in order, as the kernels add them
        total = total + flat[:, q]
    return weights, total / len(kept)


@pytest.mark.parametrize("weighting", ["lift", "idf"])
@pytest.mark.parametrize("layers,power", [(None, 1.0), ("0,-1", 1.0), (None, 0.5)])
def test_scores_equal_a_brute_force_numpy_computation(make_codes, weighting, layers, power):
    from nagindex.index.neuron_file import count_neurons

    rng = np.random.default_rng(11)
    codes, target = make_codes(rng, 700), make_codes(rng, 25)
    kept = resolve_layers(layers, 4)
    want_weights, want = _brute_force(codes, target, 256, layers, power, weighting)
    profile = count_profile(target, 256, layers)
    weights = weigh_profiles(profile[None], power, weighting, count_neurons(codes, 256)[kept], len(codes))
    np.testing.assert_allclose(weights[0], want_weights, rtol=1e-13, atol=0)
    got = score_codes(codes, profile, layers, power, block_rows=128, weights=weights)
    assert got.raw is None
    np.testing.assert_allclose(got.similarity[0], want, rtol=1e-13, atol=0)
    # the kernel adds a document's terms in a fixed order: the same bits whatever the block it is in
    again = score_codes(codes[::-1].copy(), profile, layers, power, block_rows=97, weights=weights)
    assert np.array_equal(again.similarity[0][::-1], got.similarity[0])
    # and not the unweighted score
    assert not np.allclose(got.similarity[0], score_codes(codes, profile, layers, power).similarity[0])


def test_torch_scorer_sums_the_same_weights(make_codes):
    pytest.importorskip("torch")
    from nagindex.index.neuron_file import count_neurons
    from nagindex.query.score_torch import TorchScorer

    rng = np.random.default_rng(3)
    codes, target = make_codes(rng, 300), make_codes(rng, 10)
    profiles = np.stack([count_profile(target[:5], 256), count_profile(target[5:], 256)])
    weights = weigh_profiles(profiles, 1.0, "lift", count_neurons(codes, 256), len(codes))
    scorer = TorchScorer(codes.shape, profiles, None, 1.0, "cpu", weights)
    assert not scorer.exact
    cpu = score_codes(codes, profiles, weights=weights).similarity
    np.testing.assert_allclose(scorer.sums(codes).T / scorer.norm[:, None], cpu, rtol=1e-13, atol=0)


def test_none_gives_todays_outputs_bit_for_bit(data, tmp_path):
    t = lambda name, w=1.0: _t(data, name, w)  # noqa: E731
    forms = {"k": ([t("alpha")], {"k": 50}), "fraction": ([t("beta")], {"fraction": 0.2}),
             "paper": ([t("alpha", 2), t("beta"), t("gamma")], {"fraction": 0.3}),
             "union": ([t("alpha"), t("gamma")], {"k": 40, "mode": "union"}),
             "power": ([t("alpha"), t("gamma")], {"k": 60, "power": 0.5}),
             "layers": ([t("gamma")], {"k": 30, "layers": "0,-1"})}
    for shards in (1, 3):
        idx = data[f"idx{shards}"]
        for name, (targets, options) in forms.items():
            table = query(targets, idx, weighting="none", **options).table
            assert [table.num_rows, _digest(table, ["docid", "score", "rank"])] == GOLDEN[f"{shards}/{name}"], name
        out = score_all([t("alpha"), t("beta")], idx, out=tmp_path / f"s{shards}.parquet", weighting="none").out
        table = pq.read_table(out)
        assert [table.num_rows, _digest(table, ["docid", "score_alpha", "score_beta"])] == GOLDEN[f"{shards}/score"]


def _ranked(data: dict[str, Path], target: str, weighting: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The one-shard pool ranked by brute force: docids by (1 - similarity, docid), similarities, tokens."""
    view = open_index(data["idx1"])
    codes = np.asarray(view.codes)
    target_codes = _feature_codes(data[target])
    _, sim = _brute_force(codes, target_codes, 48, None, 1.0, weighting)
    ids = view.docids.numpy().tolist()
    order = sorted(range(len(ids)), key=lambda i: (1.0 - sim[i], ids[i]))
    return [ids[i] for i in order], sim[order], np.asarray(view.token_counts)[order]


def _feature_codes(path: Path) -> np.ndarray:
    import json

    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    return np.asarray([r["fwd_up_feature"]["layer_topk_value_index"] for r in rows], np.uint16).reshape(
        len(rows), pools.SHAPE["num_layers"], pools.SHAPE["top_k"])


@pytest.mark.parametrize("weighting", ["lift", "idf"])
def test_pool_weigher_weighs_with_the_whole_pool(data, weighting):
    """What explain --doc and the report weigh with: the pool's neuron counts of every shard layout, its
    documents given or counted from those counts; the kept layers' rows; None for ``none``."""
    view = open_index(data["idx1"])
    codes = np.asarray(view.codes)
    pool = count_profile(codes, 48)
    layers = np.array([0, 2])
    profiles = np.stack([count_profile(_feature_codes(data[n]), 48) for n in ("alpha", "beta")])
    want = weigh_profiles(profiles, 2.0, weighting, pool, len(codes))
    for shards in (1, 3, 7):
        index = data[f"idx{shards}"]
        assert np.array_equal(pool_weigher(weighting, index, 2.0, pool_docs=len(codes))(profiles), want)
        assert np.array_equal(pool_weigher(weighting, index, 2.0, top_k=pools.SHAPE["top_k"])(profiles), want)
        kept = pool_weigher(weighting, index, 2.0, layers, pool_docs=len(codes))(profiles[:, layers])
        assert np.array_equal(kept, weigh_profiles(profiles[:, layers], 2.0, weighting, pool[layers], len(codes)))
    assert pool_weigher("none", data["idx1"], 2.0)(profiles) is None
    with pytest.raises(NagIndexError, match="needs pool_docs or the index's top_k"):
        pool_weigher(weighting, data["idx1"], 2.0)


@pytest.mark.parametrize("weighting", ["lift", "idf"])
def test_weighted_selections_are_the_brute_force_ranking_on_every_layout(data, weighting, tmp_path):
    ids, sim, tokens = _ranked(data, "alpha", weighting)
    one = query([_t(data, "alpha")], data["idx1"], k=50, weighting=weighting).table
    assert one.column("docid").to_pylist() == ids[:50]
    np.testing.assert_allclose(one.column("score").to_numpy(), sim[:50], rtol=1e-13, atol=0)
    assert one.column("score").to_pylist() != query([_t(data, "alpha")], data["idx1"], k=50).table.column(
        "score").to_pylist()
    budget = int(0.2 * tokens.sum())
    frac = query([_t(data, "alpha")], data["idx1"], fraction=0.2, weighting=weighting).table
    stop = int(np.searchsorted(np.cumsum(tokens), budget, side="right"))
    assert frac.column("docid").to_pylist() == ids[:stop]
    forms = {"k": ([_t(data, "alpha")], {"k": 50}), "fraction": ([_t(data, "alpha")], {"fraction": 0.2}),
             "paper": ([_t(data, "alpha", 2), _t(data, "beta"), _t(data, "gamma")], {"fraction": 0.3}),
             "union": ([_t(data, "beta"), _t(data, "gamma")], {"k": 40, "mode": "union"})}
    for name, (targets, options) in forms.items():
        alone = query(targets, data["idx1"], weighting=weighting, **options).table
        for shards in (3, 7):
            assert query(targets, data[f"idx{shards}"], weighting=weighting, **options).table.equals(alone), \
                (name, shards)
    parts = query([_t(data, "alpha")], data["idx7"], fraction=0.2, weighting=weighting, out=tmp_path / "sel")
    written = pq.read_table(tmp_path / "sel").sort_by("rank")
    assert written.column("docid").to_pylist() == ids[:stop] and parts.rows == stop


def test_score_and_the_manifest_say_the_weighting(data, tmp_path):
    ids, sim, _ = _ranked(data, "beta", "idf")
    by_id = dict(zip(ids, sim))
    for shards in (1, 7):
        out = score_all([_t(data, "beta")], data[f"idx{shards}"], out=tmp_path / f"s{shards}.parquet",
                        weighting="idf").out
        table = pq.read_table(out)
        np.testing.assert_allclose(table.column("score_beta").to_numpy(),
                                   [by_id[d] for d in table.column("docid").to_pylist()], rtol=1e-13, atol=0)
    import json

    res = query([_t(data, "beta")], data["idx1"], k=5, weighting="lift", out=tmp_path / "b.parquet")
    assert json.loads(Path(f"{res.out}.manifest.json").read_text())["weighting"] == "lift"
    with pytest.raises(NagIndexError, match="weighting 'tf': choose one of none, lift, idf"):
        query([_t(data, "beta")], data["idx1"], k=5, weighting="tf")


def test_ray_actors_give_the_same_weighted_selection(data, ray_cluster):
    targets = [_t(data, "alpha", 2), _t(data, "beta")]
    for weighting in ("lift", "idf"):
        local = query(targets, data["idx7"], fraction=0.3, weighting=weighting).table
        assert query(targets, data["idx7"], fraction=0.3, weighting=weighting, ray_address="local").table.equals(local)
        assert local.equals(query(targets, data["idx1"], fraction=0.3, weighting=weighting).table)


def test_the_report_rescores_a_weighted_selection_as_the_query_did(data, tmp_path):
    pytest.importorskip("matplotlib")
    from nagindex.query.report import collect

    sel = tmp_path / "lift.parquet"
    res = query([_t(data, "gamma")], data["idx3"], k=40, weighting="lift", out=sel)
    got = collect(sel, data["idx3"])
    assert got.targets[0].matches and not got.notes
    ids, sim, _ = _ranked(data, "gamma", "lift")
    by_id = dict(zip(ids, sim))
    np.testing.assert_allclose(got.pool.sel_similarity[0], [by_id[d] for d in res.table.column("docid").to_pylist()],
                               rtol=1e-13, atol=0)
    np.testing.assert_allclose(got.pool.sel_similarity[0], res.table.column("score").to_numpy(), rtol=1e-13, atol=0)
    # the whole pool's histogram: every document's weighted score, binned over the pool's range
    assert got.pool.hist_counts[0].tolist() == np.histogram(sim, bins=got.pool.hist_edges[0])[0].tolist()
    np.testing.assert_allclose(got.pool.score_range[0], [sim.min(), sim.max()], rtol=1e-13, atol=0)
