"""Query at scale: every query form gives the same selection file on 1, 2 and 7 shards (two of them
empty), through Ray actors too, with the threshold bin cut to what can still be selected."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nagindex.errors import NagIndexError
from nagindex.index.sharded import open_index
from nagindex.query import approx
from nagindex.query.request import TargetRequest
from nagindex.query.run import query
from tests.query import pools


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scale")
    files = pools.write_pool(root / "data")
    out = {name: path for name, path in pools.write_targets(root / "data").items()}
    out["quality"] = pools.write_quality(root / "data", files)
    for shards in (1, 2, 7):
        out[f"idx{shards}"] = pools.build_index(files, root / f"idx{shards}", shards)
    return out


def _forms(d: dict[str, Path]) -> dict[str, tuple[list[TargetRequest], dict]]:
    def t(name: str, weight: float = 1.0) -> TargetRequest:
        return TargetRequest("features", str(d[name]), weight=weight)

    quality = {"quality_file": str(d["quality"]), "quality_col": "q"}
    return {
        "k37": ([t("alpha")], {"k": 37}), "k1": ([t("alpha")], {"k": 1}), "k_all": ([t("beta")], {"k": 5000}),
        "fraction": ([t("alpha")], {"fraction": 0.2}), "fraction_1": ([t("gamma")], {"fraction": 1.0}),
        "tokens": ([t("beta")], {"tokens": 5000}), "tokens_0": ([t("beta")], {"tokens": 0}),
        "paper": ([t("alpha", 2), t("beta"), t("gamma")], {"fraction": 0.3}),
        "paper_dedup": ([t("alpha", 2), t("alpha"), t("gamma")], {"fraction": 0.3, "dedup": True}),
        "paper_k": ([t("alpha"), t("beta", 3)], {"k": 50}),
        "union_k": ([t("alpha"), t("beta"), t("gamma")], {"k": 40, "mode": "union"}),
        "union_same": ([t("alpha"), t("alpha")], {"k": 300, "mode": "union"}),  # maximal overlap: ranks deeper
        "union_tokens": ([t("alpha", 2), t("beta")], {"tokens": 30000, "mode": "union"}),
        "union_all": ([t("alpha"), t("beta")], {"fraction": 1.0, "mode": "union"}),
        "layers": ([t("alpha")], {"fraction": 0.2, "layers": "0,-1"}),
        "power": ([t("alpha")], {"fraction": 0.2, "power": 2.0}),
        "power_mix": ([t("alpha"), t("gamma")], {"k": 60, "power": 0.5}),
        "quality": ([t("alpha")], {"fraction": 0.3, **quality}),
        "quality_mix": ([t("alpha"), t("beta")], {"k": 44, "invert_quality": True, **quality}),
        "approx": ([t("alpha"), t("beta")], {"k": 10, "approx": True}),
    }


FORMS = list(_forms({n: Path(n) for n in ("alpha", "beta", "gamma", "quality")}))


@pytest.mark.parametrize("form", FORMS)
def test_every_query_form_is_the_same_on_any_number_of_shards(data, form, tmp_path, monkeypatch):
    monkeypatch.setattr(approx, "MIN_CANDIDATES", 200)  # --approx really cuts (2,502 docs)
    targets, options = _forms(data)[form]
    tables = []
    for shards in (1, 2, 7):
        out = tmp_path / f"{shards}.parquet"
        query(targets, data[f"idx{shards}"], out=out, **options)
        tables.append(pq.read_table(out))
    assert tables[0].num_rows > 0
    assert tables[1].equals(tables[0]) and tables[2].equals(tables[0])


def _full_sort(index: Path, target: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Docids, similarity and tokens of the whole pool in rank order: an independent full sort."""
    from nagindex.query.profile import count_profile
    from nagindex.query.score import score_codes
    from nagindex.sources.features import read_features

    view = open_index(index)
    codes = np.stack([r[1] for r in read_features([target], "fwd_up", **pools.SHAPE)])
    sim = score_codes(view.codes, count_profile(codes, pools.SHAPE["width"])).similarity[0]
    ids = view.docids.take(np.arange(len(view)))
    order = sorted(range(len(ids)), key=lambda r: (-sim[r], ids[r]))
    return [ids[r] for r in order], sim[order], np.asarray(view.token_counts)[order]


@pytest.mark.parametrize("shards", [1, 7])
def test_selection_is_the_full_sort_prefix(data, shards):
    ids, sim, tokens = _full_sort(data["idx1"], data["alpha"])
    t = [TargetRequest("features", str(data["alpha"]))]
    for k in (1, 37, 800):
        got = query(t, data[f"idx{shards}"], k=k).table
        assert got.column("docid").to_pylist() == ids[:k]
        assert got.column("score").to_pylist() == sim[:k].tolist()
    budget = int(tokens.sum() * 0.2)
    stop = int(np.searchsorted(np.cumsum(tokens), budget, side="right"))
    assert query(t, data[f"idx{shards}"], fraction=0.2).table.column("docid").to_pylist() == ids[:stop]


def test_ties_straddle_the_threshold(data):
    """Widths of 48 make many equal scores: the cut falls inside a run of ties, ordered by docid."""
    _, sim, _ = _full_sort(data["idx1"], data["alpha"])
    k = next(k for k in range(30, 300) if sim[k - 1] == sim[k])
    assert len(query([TargetRequest("features", str(data["alpha"]))], data["idx7"], k=k)) == k


def test_the_threshold_bin_is_cut_to_what_can_still_be_selected():
    """200,000 tied documents: a shard returns the 5 (by docid) a k=5 query can take, or the rows a token
    budget can reach, not the whole bin."""
    from nagindex.query.scan import ArrayPart, Binning, Need

    n = 200_000
    rng = np.random.default_rng(0)
    ids = [f"d{i:07d}" for i in rng.permutation(n)]
    part = ArrayPart(np.zeros((1, n)), ids, np.full(n, 10))
    got = part.candidates(0, Binning.over(0.0, 0.0, False), 0, Need(rows=5))
    assert got.column("docid").to_pylist() == [f"d{i:07d}" for i in range(5)]
    got = part.candidates(0, Binning.over(0.0, 0.0, False), 0, Need(tokens=25))
    assert got.column("docid").to_pylist() == [f"d{i:07d}" for i in range(3)]  # 10, 20, then the one passing 25


def test_quality_from_parquet_and_bad_values(data, tmp_path):
    recs = [json.loads(line) for line in data["quality"].read_text().splitlines()]
    pq.write_table(pa.table({"docid": [r["docid"] for r in recs], "q": [r["q"] for r in recs]}), tmp_path / "q.parquet")
    t = [TargetRequest("features", str(data["alpha"]))]
    a = query(t, data["idx7"], k=30, quality_file=data["quality"], quality_col="q").table
    b = query(t, data["idx1"], k=30, quality_file=tmp_path / "q.parquet", quality_col="q").table
    assert a.equals(b)
    (tmp_path / "bad.jsonl").write_text('{"docid": "0", "q": 0.5}\n{"docid": "1", "q": "high"}\n')
    with pytest.raises(NagIndexError, match=r"bad.jsonl:2: field 'q' is 'high'"):
        query(t, data["idx7"], k=3, quality_file=tmp_path / "bad.jsonl", quality_col="q")


def test_torch_scorer_selects_like_numba(data, monkeypatch):
    """The GPU path (torch), run on CPU torch: the same selection files, bit for bit."""
    pytest.importorskip("torch")
    from nagindex.query import score_torch

    forms = _forms(data)
    before = {f: query(*forms[f][:1], data["idx2"], **forms[f][1]).table for f in ("paper", "union_k", "power")}
    monkeypatch.setattr(score_torch, "make_scorer",
                        lambda shape, profiles, layers, power, device="cpu", weights=None:
                        score_torch.TorchScorer(shape, profiles, layers, power, "cpu", weights))
    for f, table in before.items():
        got = query(*forms[f][:1], data["idx2"], **forms[f][1]).table
        if f == "power":  # float weights summed in another order: equal to rounding
            assert got.column("docid").equals(table.column("docid"))
            np.testing.assert_allclose(got.column("score").to_numpy(), table.column("score").to_numpy(), rtol=1e-12)
        else:
            assert got.equals(table)


def test_cuda_without_a_gpu_says_so(data):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(NagIndexError, match="no CUDA device"):
        query([TargetRequest("features", str(data["alpha"]))], data["idx1"], k=3, device="cuda")


def test_ray_actors_give_the_same_selection(data, ray_cluster):
    forms = _forms(data)
    for form in ("paper", "quality_mix", "union_k"):
        local = query(*forms[form][:1], data["idx7"], **forms[form][1]).table
        assert query(*forms[form][:1], data["idx7"], ray_address="local", **forms[form][1]).table.equals(local)


def test_ray_shard_that_cannot_be_reached_fails_the_query(data, ray_cluster, monkeypatch):
    """Shard 1's actor is lost after scoring, and so is every actor started in its place."""
    from nagindex.query import fleet
    from tests.query.test_sessions import _kill

    real_run, real_actor, lost = fleet.RayFleet._run, fleet.RayFleet._actor, []

    def run(self, name, args):
        if name == "histogram" and not lost:
            _kill(ray_cluster, self.actors[1])
            lost.append(1)
        return real_run(self, name, args)

    def actor(self, i):
        handle = real_actor(self, i)
        if lost and i == 1:
            _kill(ray_cluster, handle)
        return handle

    monkeypatch.setattr(fleet.RayFleet, "_run", run)
    monkeypatch.setattr(fleet.RayFleet, "_actor", actor)
    with pytest.raises(NagIndexError, match="shard shard-0000.* could not be reached on Ray after 4 attempts"):
        query([TargetRequest("features", str(data["alpha"]))], data["idx7"], k=5, ray_address="local")


def test_sampling_is_seeded_shard_invariant_and_tends_to_the_ranking(data):
    t = [TargetRequest("features", str(data["alpha"]))]
    runs = {s: query(t, data[f"idx{s}"], fraction=0.2, sample=True, temperature=1.0, seed=3).table for s in (1, 7)}
    assert runs[1].equals(runs[7])  # noise hashed from docids: the same draw on any number of shards
    ranked = query(t, data["idx1"], fraction=0.2).table
    other = query(t, data["idx1"], fraction=0.2, sample=True, temperature=1.0, seed=4).table
    a, b, r = (set(x.column("docid").to_pylist()) for x in (runs[1], other, ranked))
    assert a != b and len(a & r) < len(r)  # another seed draws otherwise; a draw is not the ranking
    assert len(a & r) > 0.3 * len(r)  # but leans to it: half the pool's spread is 1 sd
    # budget still met by the prefix rule; T -> 0: the ranking (ties aside: noise orders equal scores)
    budget = int(sum(open_index(data["idx1"]).token_counts) * 0.2)
    assert sum(runs[1].column("token_count").to_pylist()) <= budget
    cold = query(t, data["idx7"], k=300, sample=True, temperature=1e-9, seed=3).table
    assert cold.column("score").to_pylist() == query(t, data["idx1"], k=300).table.column("score").to_pylist()
    hot = query(t, data["idx1"], k=400, sample=True, temperature=1e6, seed=5).table
    assert abs(np.mean(hot.column("score").to_numpy()) - np.mean(_full_sort(data["idx1"], data["alpha"])[1])) < 0.01
    mix = [TargetRequest("features", str(data[n])) for n in ("alpha", "beta")]
    for mode in ("paper", "union"):
        one = query(mix, data["idx1"], k=60, mode=mode, sample=True, seed=1).table
        assert one.equals(query(mix, data["idx7"], k=60, mode=mode, sample=True, seed=1).table)
    with pytest.raises(NagIndexError, match="temperature must be a positive"):
        query(t, data["idx1"], k=5, sample=True, temperature=0)


def test_group_caps_hold_exactly_and_the_budget_is_still_filled(data, tmp_path):
    t = [TargetRequest("features", str(data["alpha"]))]
    plain = query(t, data["idx1"], fraction=0.2).table.to_pydict()
    budget = int(sum(open_index(data["idx1"]).token_counts) * 0.2)

    def shares(table):
        tokens = {}
        for src, n in zip(table["source"], table["token_count"]):
            tokens[src] = tokens.get(src, 0) + n
        return tokens

    assert max(shares(plain).values()) > 0.4 * budget  # uncapped, one input file dominates
    capped = {s: query(t, data[f"idx{s}"], fraction=0.2, group_by="source", max_group_share=0.4).table
              for s in (1, 7)}
    assert capped[1].equals(capped[7])
    got = capped[1].to_pydict()
    assert max(shares(got).values()) <= int(0.4 * budget)
    assert budget - 400 < sum(got["token_count"]) <= budget  # filled from the other groups (docs < 400 tokens)
    # the ranking is kept within what the caps allow: each chosen doc is the best its group could still take
    scores = got["score"]
    assert scores == sorted(scores, reverse=True)
    # explicit quotas and a column of a file; k caps count documents
    quota = tmp_path / "quota.yaml"
    quota.write_text("'0': 0.1\n")
    groups = tmp_path / "groups.jsonl"
    ids = plain["docid"]
    groups.write_text("".join(json.dumps({"docid": d, "lang": str(i % 2)}) + "\n" for i, d in enumerate(ids)))
    by_col = query(t, data["idx7"], k=40, group_by="lang", group_file=groups, group_quota=quota).table.to_pydict()
    lang = {d: str(i % 2) for i, d in enumerate(ids)}
    assert len(by_col["docid"]) == 40 and sum(lang.get(d) == "0" for d in by_col["docid"]) == 4
    with pytest.raises(NagIndexError, match="--group-by needs"):
        query(t, data["idx1"], k=5, group_by="source")
    # a group without a quota is not capped: with no quota binding, the prefix rule alone stops the walk,
    # so the selection is the plain one (not topped up past the first document that overflows the budget);
    # the quota names a group of the file that no indexed document is in (a key naming no group is an error)
    loose, one_group = tmp_path / "loose.yaml", tmp_path / "one_group.jsonl"
    loose.write_text("other: 0.1\n")
    docids = open_index(data["idx1"]).docids.take(np.arange(len(open_index(data["idx1"]))))
    one_group.write_text("".join(json.dumps({"docid": d, "g": "all"}) + "\n" for d in docids)
                         + json.dumps({"docid": "not-indexed", "g": "other"}) + "\n")
    unbound = query(t, data["idx1"], fraction=0.2, group_by="g", group_file=one_group, group_quota=loose).table
    assert unbound.column("docid").to_pylist() == plain["docid"]


def test_shards_served_from_their_derived_files_alone(data, tmp_path):
    """A shard whose store was moved away (an index served read-only) still answers: queries read only
    the derived files."""
    import shutil

    copy = tmp_path / "served"
    shutil.copytree(data["idx7"], copy)
    for store in copy.glob("shard-*/store.lmdb"):
        shutil.rmtree(store)
    t = [TargetRequest("features", str(data["alpha"]))]
    assert query(t, copy, fraction=0.2).table.equals(query(t, data["idx7"], fraction=0.2).table)


def test_caps_that_cannot_be_met_say_so(data):
    t = [TargetRequest("features", str(data["alpha"]))]
    res = query(t, data["idx1"], fraction=0.5, group_by="source", max_group_share=0.1)  # 5 files x 0.1 < 0.5
    assert res.exhausted and any("group caps leave the quota unmet" in n for n in res.notes)
    assert not any("more than the index holds" in n for n in res.notes)
