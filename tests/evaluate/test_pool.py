"""The evaluation's pool read shard by shard: located docids and seeded draws are the same on any layout."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from nagindex.evaluate import pool as pool_module
from nagindex.evaluate.pool import Pool
from nagindex.index.sharded import take_docids
from tests.query import pools


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalpool")
    files = pools.write_pool(root / "data", sizes=(300, 40, 3, 120))
    return {"one": pools.build_index(files, root / "one"), "three": pools.build_index(files, root / "three", 3)}


def _brute_force(pool: Pool, seed: int, k: int | None = None, tokens: int | None = None) -> list[str]:
    """Every document's key at once, sorted by (key, docid), cut by the quota's prefix rule."""
    keys = np.concatenate([pool._keys(p, seed)[0] for p in pool.parts])
    toks = np.concatenate([pool._keys(p, seed)[1] for p in pool.parts])
    ids = take_docids(pool, np.arange(len(pool)))
    order = sorted(range(len(ids)), key=lambda i: (int(keys[i]), ids[i]))
    if k is not None:
        return [ids[i] for i in order[:k]]
    out, used = [], 0
    for i in order:
        if used + toks[i] > tokens:
            break
        out.append(ids[i])
        used += toks[i]
    return out


@pytest.mark.parametrize("bits", [16, 2])  # 2 bits: 4 bins, the budget ends inside a crowded bin
def test_draws_and_lookups_are_the_same_on_one_folder_and_three_shards(layouts, monkeypatch, bits):
    monkeypatch.setattr(pool_module, "KEY_BITS", bits)
    one, three = Pool.open(layouts["one"]), Pool.open(layouts["three"])
    try:
        assert (len(one), one.total_tokens) == (len(three), three.total_tokens)
        assert len(three) == 460 and sum(len(p.hidden) for p in three.parts) == 3
        budget = three.total_tokens // 5
        drawn = {name: take_docids(p, p.draw(budget, 3)) for name, p in (("one", one), ("three", three))}
        assert drawn["one"] == drawn["three"] == _brute_force(three, 3, tokens=budget)
        assert 0 < sum(three.tokens_of(three.draw(budget, 3))) <= budget
        assert take_docids(three, three.sample(50, 0)) == take_docids(one, one.sample(50, 0)) \
            == _brute_force(one, 0, k=50)
        assert take_docids(three, three.draw(budget, 4)) != drawn["three"]  # another seed, another order
        assert sorted(take_docids(three, three.sample(10_000, 0))) == sorted(take_docids(one, np.arange(460)))
        wanted = take_docids(one, np.array([459, 0, 301, 7]))
        rows = three.locate(pa.array(wanted, pa.large_string()), "sel.parquet")
        assert take_docids(three, rows) == wanted
        np.testing.assert_array_equal(three.tokens_of(rows), one.tokens_of(one.locate(pa.array(wanted), "x")))
    finally:
        one.close()
        three.close()
