"""Ranking with the index's lazy docid column gives exactly the ranking with Python strings."""
from __future__ import annotations

import numpy as np

from nagindex.index.derived import DocidColumn
from nagindex.query.quota import Quota
from nagindex.query.select import rank_order, select, select_with_quality, top_rows


def column(ids: list[str]) -> DocidColumn:
    raw = [d.encode("utf-8") for d in ids]
    offsets = np.zeros(len(raw) + 1, dtype="<u8")
    np.cumsum([len(r) for r in raw], out=offsets[1:])
    return DocidColumn(offsets, np.frombuffer(b"".join(raw), dtype=np.uint8))


IDS = ["b", "a", "ab", "a\x00", "10", "9", "é", "e\u0301", "z" * 19, "日本", "aa", "", "a" * 17, "a" * 16,
       "€", "ÿ"]


def test_rank_order_and_top_rows_with_the_lazy_column():
    rng = np.random.default_rng(3)
    ids = [f"{rng.integers(0, 10**6)}-{i}" for i in range(3000)] + IDS
    key = rng.integers(0, 40, len(ids)).astype(np.float64)  # many ties
    col = column(ids)
    assert np.array_equal(rank_order(key, col), rank_order(key, ids))
    for n in (1, 100, 2999, len(ids)):
        assert np.array_equal(top_rows(key, col, n), top_rows(key, ids, n))
    tokens = rng.integers(1, 50, len(ids))
    quota = Quota(fraction=0.3)
    assert np.array_equal(select(key, col, quota, tokens).rows, select(key, ids, quota, tokens).rows)
    quality = rng.random(len(ids))
    quality[::7] = np.nan
    lazy, _ = select_with_quality(key, quality, col, quota, tokens)
    eager, _ = select_with_quality(key, quality, ids, quota, tokens)
    assert np.array_equal(lazy.rows, eager.rows)
