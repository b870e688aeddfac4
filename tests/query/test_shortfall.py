"""No silent shortfall: every query form that cannot meet its quota says why, in ``QueryResult.notes`` and in
the manifest; the union mixture's turns report a target whose ranking ran out (``rank._round_robin``)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nagindex.index import clusters as cl
from nagindex.index.sharded import open_index
from nagindex.query.rank import _round_robin
from nagindex.query.request import TargetRequest
from nagindex.query.run import query
from tests.query import pools


@pytest.fixture(scope="module")
def one_cluster(tmp_path_factory):
    """50 documents that are all one near-duplicate cluster (every pair within the radius)."""
    root = tmp_path_factory.mktemp("shortfall")
    files = pools.write_pool(root / "data", sizes=(30, 20))
    targets = pools.write_targets(root / "data")
    index = pools.build_index(files, root / "idx")
    cl.build_clusters(index, radius=200, method="flat")
    return index, [TargetRequest("features", str(targets["alpha"])), TargetRequest("features", str(targets["beta"]))]


def test_a_union_with_one_per_cluster_that_falls_short_says_so(one_cluster, tmp_path):
    index, targets = one_cluster
    out = tmp_path / "mix.parquet"
    res = query(targets, index, k=10, mode="union", one_per_cluster=True, out=out)
    tokens = int(res.table.column("token_count").to_numpy().sum())
    note = (f"one document per cluster leaves the quota unmet (the pool holds too few clusters): 1 document(s) "
            f"({tokens:,} tokens) are selected, of the 10 documents asked")
    assert len(res) == 1 and res.exhausted and res.notes == [note]
    assert json.loads((tmp_path / "mix.parquet.manifest.json").read_text())["notes"] == [note]


@pytest.mark.parametrize("mode", ["paper", "union"])
def test_a_token_budget_cut_by_clusters_says_so_in_every_form(one_cluster, mode):
    index, targets = one_cluster
    res = query(targets[:1] if mode == "paper" else targets, index, tokens=2000, mode=mode, one_per_cluster=True)
    tokens = int(res.table.column("token_count").to_numpy().sum())
    assert res.exhausted and res.notes == [
        f"one document per cluster leaves the quota unmet (the pool holds too few clusters): {len(res)} document(s) "
        f"({tokens:,} tokens) are selected, of the 2,000 tokens asked"]


def test_a_quota_past_the_pool_names_the_pool_and_the_clusters(one_cluster):
    index, targets = one_cluster
    view = open_index(index)
    held = f"the quota asks for more than the index holds (50 documents, {view.total_tokens:,} tokens)"
    plain = query(targets, index, k=80, mode="union")
    assert len(plain) == 50 and plain.notes == [f"{held}: all of it is selected"]
    capped = query(targets, index, k=80, mode="union", one_per_cluster=True)
    tokens = int(capped.table.column("token_count").to_numpy().sum())
    assert capped.notes == [f"{held}, and one document per cluster leave less of it: 1 document(s) ({tokens:,} "
                            "tokens) are selected"]


def test_round_robin_tells_a_ranking_that_ran_out_from_a_target_stopped_by_its_limit():
    # clusters make rows 0 and 1 one key: target 0 (limit 3 documents) runs out after one
    ids = [np.array([0, 1, 2]), np.array([2, 1, 0])]
    ones = [np.ones(3, np.int64)] * 2
    clusters = [np.array([7, 7, 9]), np.array([9, 7, 7])]
    chosen, who, short, unmet = _round_robin(ids, ones, [3, 1], [True, True], clusters)
    assert chosen.tolist() == [0, 2] and who.tolist() == [0, 1] and short == -1 and unmet
    # token budgets: target 0 stops at its limit (its next row would overflow), target 1 takes that row later
    # and stops at its own limit; nobody ran out, though every row ends up taken
    tokens = [np.array([5, 20, 20]), np.array([20, 20, 5])]
    chosen, who, short, unmet = _round_robin([np.array([0, 1, 2]), np.array([2, 1, 0])], tokens, [10, 40],
                                             [True, True])
    assert chosen.tolist() == [0, 2, 1] and who.tolist() == [0, 1, 1] and short == -1 and not unmet
    # a list that is not complete ends: that target is to be ranked deeper, no verdict yet
    assert _round_robin([np.array([0]), np.array([1, 0])], [np.ones(1, np.int64), np.ones(2, np.int64)], [2, 1],
                        [False, True])[2:] == (0, False)
