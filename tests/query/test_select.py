"""Selection: exact (distance, docid) ranking, quotas, quality, mixtures, and golden parity."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nagindex.errors import NagIndexError
from nagindex.query.profile import count_profile
from nagindex.query.quota import Quota, split_integer
from nagindex.query.score import score_codes
from nagindex.query.select import (combine_quality, fraction_budget, paper_mixture, rank_order, select, select_budget,
                                   select_k, select_with_quality, top_rows, union_mixture)


def full_sort(key, docids) -> list[int]:
    return sorted(range(len(key)), key=lambda i: (key[i], str(docids[i])))


def random_pool(seed: int, n: int, distinct_keys: int):
    """Heavily tied integer-valued keys and ids that look numeric, padded, or textual."""
    rng = np.random.default_rng(seed)
    key = rng.integers(0, distinct_keys, n) / 7.0
    kinds = [str(i) for i in range(n // 3)] + [f"doc_{i:05d}" for i in range(n // 3)]
    kinds += [f"{i}x" for i in range(n - len(kinds))]
    docids = np.array(kinds, dtype=object)[rng.permutation(n)]
    return key, docids, rng.integers(0, 50, n)


def test_rank_order_breaks_ties_by_string_docid():
    key = np.array([0.5, 0.5, 0.5, 0.1, 0.5])
    docids = ["9", "10", "100", "z", "09"]
    assert rank_order(key, docids).tolist() == [3, 4, 1, 2, 0]  # "09" < "10" < "100" < "9"
    assert rank_order(key, docids, rows=np.array([0, 1])).tolist() == [1, 0]
    assert rank_order(np.array([2, 1, 1]), np.array(["b", "a", "c"])).tolist() == [1, 2, 0]


@pytest.mark.parametrize("seed, distinct", [(0, 3), (1, 40), (2, 100000)])
def test_top_rows_is_full_sort_prefix(seed, distinct):
    key, docids, _ = random_pool(seed, 600, distinct)
    expected = full_sort(key, docids)
    assert rank_order(key, docids).tolist() == expected
    for n in (0, 1, 2, 7, 50, 299, 599, 600, 1000):
        assert top_rows(key, docids, n).tolist() == expected[:n]


def test_rank_rejects_nan_and_mismatch():
    with pytest.raises(NagIndexError, match="NaN"):
        rank_order(np.array([0.1, np.nan]), ["a", "b"])
    with pytest.raises(NagIndexError, match="match"):
        top_rows(np.array([0.1]), ["a", "b"], 1)


def test_select_k_more_than_pool():
    key, docids, _ = random_pool(3, 20, 5)
    sel = select_k(key, docids, 5)
    assert sel.rows.tolist() == full_sort(key, docids)[:5] and not sel.exhausted
    sel = select_k(key, docids, 50)
    assert sel.rows.tolist() == full_sort(key, docids) and sel.exhausted


def test_budget_prefix_rule():
    key = np.array([0.1, 0.2, 0.3, 0.4])
    ids = ["a", "b", "c", "d"]
    tokens = np.array([5, 5, 20, 1])
    assert select_budget(key, ids, tokens, 10).rows.tolist() == [0, 1]
    assert select_budget(key, ids, tokens, 29).rows.tolist() == [0, 1]  # stops at c; never skips to d
    assert select_budget(key, ids, tokens, 30).rows.tolist() == [0, 1, 2]
    assert select_budget(key, ids, tokens, 3).rows.tolist() == [0]  # not even the first fits: that one
    assert select_budget(key, ids, np.zeros(4), 3).rows.tolist() == []  # no tokens: nothing
    assert select_budget(key, ids, np.array([np.nan, 5, np.nan, 1]), 5).rows.tolist() == [0, 1, 2]
    full = select_budget(key, ids, tokens, 100)
    assert full.rows.tolist() == [0, 1, 2, 3] and full.exhausted
    with pytest.raises(NagIndexError, match="negative"):
        select_budget(key, ids, np.array([1, -1, 1, 1]), 3)


@pytest.mark.parametrize("seed", [4, 5])
def test_budget_matches_full_sort_on_large_pool(seed):
    """The doubling top-n search equals a cumsum over the fully sorted pool."""
    key, docids, tokens = random_pool(seed, 3000, 30)
    order = full_sort(key, docids)
    for fraction in (0.001, 0.05, 0.5, 1.0):
        budget = fraction_budget(tokens, fraction)
        assert budget == int(tokens.sum() * fraction)
        cum = np.cumsum(tokens[order])
        expected = [r for r, c in zip(order, cum) if c <= budget] or order[:1]
        assert select(key, docids, Quota(fraction=fraction), tokens).rows.tolist() == expected
        assert select(key, docids, Quota(tokens=budget), tokens).rows.tolist() == expected


def test_quota_validation_and_shares():
    for bad in ({}, {"k": 1, "tokens": 2}, {"k": 0}, {"tokens": -1}, {"fraction": 0.0}, {"fraction": 1.5}):
        with pytest.raises(NagIndexError):
            Quota(**bad)
    assert [q.k for q in Quota(k=10).shares([1, 1, 1])] == [4, 3, 3]
    assert [q.k for q in Quota(k=10).shares([1, 2, 2])] == [2, 4, 4]
    assert [q.tokens for q in Quota(tokens=1001).shares([3, 1])] == [751, 250]
    assert [q.fraction for q in Quota(fraction=0.6).shares([1, 1])] == [0.3, 0.3]
    assert split_integer(7, [1, 1, 3]).tolist() == [2, 1, 4]  # equal remainders: earlier target first
    for total in range(0, 40):
        assert split_integer(total, [1, 3, 5, 7]).sum() == total
    with pytest.raises(NagIndexError, match="weights"):
        Quota(k=5).shares([1, 0])
    with pytest.raises(NagIndexError, match="too small"):
        Quota(k=1).shares([1, 1])


def test_combine_quality():
    distance = np.array([0.2, 0.4, 0.6, 0.8])
    quality = np.array([1.0, np.nan, 0.0, 0.5])
    combined = combine_quality(distance, quality)
    assert np.isnan(combined[1])
    assert np.allclose(combined[[0, 2, 3]], [0.0 + 0.0, 2 / 3 + 1.0, 1.0 + 0.5])
    lower = combine_quality(distance, quality, higher_is_better=False)
    assert np.allclose(lower[[0, 2, 3]], [1.0, 2 / 3, 1.5])
    constant = combine_quality(np.full(3, 0.5), np.array([0.3, 0.3, 0.3]))
    assert constant.tolist() == [1.0, 1.0, 1.0]  # both columns normalise to 0; quality inverted


def _golden_distance(g, name: str, layers=None) -> np.ndarray:
    counts = count_profile(g["target_codes"][g["target_sets"][name]], 256, layers)
    return score_codes(g["pool_codes"], counts, layers).nag_distance[0]


def _assert_selection(g, rows, filename, distance, combined=None):
    """Same docids in the same order; ``distance``/``combined`` are per selected row."""
    expected = pd.read_parquet(g["ranking"] / filename)
    assert [g["pool_ids"][r] for r in rows] == expected["docid"].tolist()
    assert np.abs(distance - expected["nag_distance"].to_numpy()).max() <= 1e-12
    if combined is not None:
        assert np.abs(combined - expected["combined_score"].to_numpy()).max() <= 1e-12


@pytest.mark.parametrize("name, fraction, filename", [
    ("sci_target", 0.3, "selected_sci.parquet"), ("story_target", 0.3, "selected_story.parquet"),
    ("all", 0.3, "selected_all_targets.parquet"), ("sci_target", 1.0, "selected_sci_full.parquet"),
])
def test_golden_single_target(golden_ranking, name, fraction, filename):
    g = golden_ranking
    distance = _golden_distance(g, name)
    sel = select(distance, g["pool_ids"], Quota(fraction=fraction), g["tokens"])
    _assert_selection(g, sel.rows, filename, distance[sel.rows])


@pytest.mark.parametrize("dedup, filename", [(False, "multi_target.parquet"), (True, "multi_target_dedup.parquet")])
def test_golden_multi_target(golden_ranking, dedup, filename):
    """The fixture concatenates the fraction-0.3 sci and story selections: a total of 0.6 split 1:1.

    (With 0.15 each, story would select 2 docs, not the fixture's 4.)
    """
    g = golden_ranking
    keys = np.stack([_golden_distance(g, "sci_target"), _golden_distance(g, "story_target")])
    sel = paper_mixture(keys, g["pool_ids"], Quota(fraction=0.6), token_counts=g["tokens"], dedup=dedup)
    _assert_selection(g, sel.rows, filename, keys[sel.target, sel.rows])
    assert sel.target.tolist() == ([0, 0, 1, 1, 1, 1] if not dedup else [0, 0, 1, 1, 1])


def test_golden_quality(golden_ranking):
    g = golden_ranking
    distance = _golden_distance(g, "sci_target")
    sel, combined = select_with_quality(distance, g["quality"], g["pool_ids"], Quota(fraction=0.3), g["tokens"])
    _assert_selection(g, sel.rows, "selected_sci_plus_quality.parquet", distance[sel.rows], combined[sel.rows])


def test_golden_last_layer(golden_ranking):
    g = golden_ranking
    sliced = pd.read_parquet(g["ranking"] / "sliced_last" / "pool.parquet").set_index("docid")
    for docid, codes in zip(g["pool_ids"], g["pool_codes"]):
        assert sliced.loc[docid, "fwd_up_feature"]["layer_topk_value_index"].tolist() == codes[3].tolist()
    distance = _golden_distance(g, "sci_target", "last")
    sel = select(distance, g["pool_ids"], Quota(fraction=0.3), g["tokens"])
    _assert_selection(g, sel.rows, "selected_sci_lastlayer.parquet", distance[sel.rows])


def test_quality_fraction_is_of_the_kept_pool():
    distance = np.array([0.1, 0.2, 0.3, 0.4])
    quality = np.array([0.5, np.nan, 0.5, 0.5])
    tokens = np.array([10, 1000, 10, 10])
    sel, _ = select_with_quality(distance, quality, ["a", "b", "c", "d"], Quota(fraction=0.7), tokens)
    assert sel.rows.tolist() == [0, 2]  # budget int(30 * 0.7) = 21, not of the 1030 pool tokens


def test_paper_mixture_is_concatenation():
    key_a, docids, tokens = random_pool(6, 200, 20)
    key_b = np.random.default_rng(7).permutation(key_a)
    keys = np.stack([key_a, key_b])
    for quota in (Quota(k=31), Quota(tokens=900), Quota(fraction=0.2)):
        sel = paper_mixture(keys, docids, quota, weights=[1, 2], token_counts=tokens)
        parts = [select(k, docids, q, tokens).rows for k, q in zip(keys, quota.shares([1, 2]))]
        assert sel.rows.tolist() == np.concatenate(parts).tolist()
        assert sel.target.tolist() == [0] * len(parts[0]) + [1] * len(parts[1])
        dedup = paper_mixture(keys, docids, quota, weights=[1, 2], token_counts=tokens, dedup=True)
        assert dedup.rows.tolist() == list(dict.fromkeys(sel.rows.tolist()))
    assert len(paper_mixture(keys, docids, Quota(k=31), [1, 2]).rows) == 31


def _check_union(sel, keys, docids):
    """No duplicates; each pick is its target's best doc not taken before it."""
    rows = sel.rows.tolist()
    assert len(set(rows)) == len(rows)
    for t, (row, i) in enumerate(zip(rows, sel.target.tolist())):
        ranked = rank_order(keys[i], docids).tolist()
        assert set(ranked[:ranked.index(row)]) <= set(rows[:t])


@pytest.mark.parametrize("weights", [None, [1, 2, 1]])
def test_union_mixture_k(weights):
    rng = np.random.default_rng(8)
    _, docids, _ = random_pool(8, 300, 10)
    keys = rng.integers(0, 10, (3, 300)).astype(float)
    keys[1] = keys[0]  # two targets with one ranking: maximal overlap
    sel = union_mixture(keys, docids, Quota(k=40), weights)
    _check_union(sel, keys, docids)
    shares = [q.k for q in Quota(k=40).shares(weights or [1, 1, 1])]
    assert np.bincount(sel.target, minlength=3).tolist() == shares
    assert len(sel.rows) == 40 and not sel.exhausted
    assert sel.target[:3].tolist() == [0, 1, 2]  # round robin in listed order


def test_union_mixture_exhausts_pool():
    rng = np.random.default_rng(9)
    keys = rng.random((2, 25))
    docids = [f"d{i}" for i in range(25)]
    sel = union_mixture(keys, docids, Quota(k=40), [3, 1])
    _check_union(sel, keys, docids)
    assert sorted(sel.rows.tolist()) == list(range(25)) and sel.exhausted


@pytest.mark.parametrize("quota", [Quota(tokens=2000), Quota(fraction=0.3), Quota(tokens=3)])
def test_union_mixture_tokens(quota):
    key_a, docids, tokens = random_pool(10, 400, 40)
    keys = np.stack([key_a, np.random.default_rng(11).permutation(key_a)])
    sel = union_mixture(keys, docids, quota, [1, 1], tokens)
    _check_union(sel, keys, docids)
    budgets = [q.tokens if q.tokens is not None else fraction_budget(tokens, q.fraction)
               for q in quota.shares([1, 1])]
    for i, budget in enumerate(budgets):
        mine = sel.rows[sel.target == i]
        assert tokens[mine].sum() <= budget or len(mine) == 1
        assert len(mine) >= 1
    none = union_mixture(keys, docids, quota, None, np.zeros(400))
    assert len(none.rows) == 0
