"""Honest by construction: random against random shows nothing, an oracle against random shows a clear gain."""
from __future__ import annotations

import numpy as np

from nagindex.evaluate.run import evaluate
from tests.evaluate.conftest import TINY, index_docids, write_selection


def _arm(result, name):
    return next(a for a in result.data["arms"] if a["name"] == name)


def test_a_random_selection_is_not_called_better_or_worse_than_random(prose_index, arith_target, tmp_path):
    """A user's file that is itself a seeded random draw (a quarter of a pool of look-alike documents) against
    the built-in random baseline: the difference's 95% interval contains 0, on every measure."""
    ids = index_docids(prose_index)
    drawn = np.random.default_rng(7).choice(len(ids), size=len(ids) // 4, replace=False)
    sel = write_selection(tmp_path / "mine.parquet", [ids[i] for i in sorted(drawn)])
    res = evaluate([sel], prose_index, target={"file": str(arith_target)}, seeds=3, config=TINY, threads=1,
                   progress=False)
    mine = _arm(res, "mine")
    for key in ("delta_bpb_vs_random", "delta_gold_logprob_vs_random"):
        delta = mine[key]
        assert delta["lo"] < 0 < delta["hi"], (key, delta)
    assert abs(mine["delta_bpb_vs_random"]["mean"]) < 0.1 * np.mean(_arm(res, "random")["bpb"])
    assert abs(mine["kl_reduction"] - _arm(res, "random")["kl_reduction"]) < 0.1


def test_an_oracle_selection_beats_random_clearly(oracle_index, arith_target, tmp_path):
    """Documents drawn from the target's own distribution (other examples of its generator) against random
    draws of the same token count: much lower held-out bpb, a higher gold-answer log-probability, a large KL
    reduction and a higher NAG similarity, every interval clear of 0."""
    ids = [d for d in index_docids(oracle_index) if d.startswith("oracle-")]
    sel = write_selection(tmp_path / "oracle.parquet", ids)
    res = evaluate([sel], oracle_index, target={"file": str(arith_target)}, seeds=3, config=TINY, threads=1,
                   progress=False)
    oracle, rand = _arm(res, "oracle"), _arm(res, "random")
    bpb = oracle["delta_bpb_vs_random"]
    assert bpb["hi"] < 0 and bpb["mean"] < -1.0, bpb
    assert oracle["delta_gold_logprob_vs_random"]["lo"] > 0
    assert oracle["kl_reduction"] > rand["kl_reduction"] + 0.5
    assert oracle["nag_similarity"] > rand["nag_similarity"] + 0.2
    assert abs(oracle["tokens"] - rand["tokens"]) <= 0.1 * oracle["tokens"]  # same size, by the index's count
