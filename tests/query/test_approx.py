"""``--approx``: FAISS candidates (memory-mapped index), re-scored exactly."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nagindex.errors import NagIndexError
from nagindex.index.sharded import open_index
from nagindex.ingest.interop import import_features, write_features
from nagindex.query import approx
from nagindex.query.quota import Quota
from nagindex.query.request import TargetRequest
from nagindex.query.run import query


def fast_profiles(pool):
    from nagindex.query.profile import count_profile
    from nagindex.sources.features import read_features

    codes = np.stack([rec[1] for rec in read_features([pool / "target.jsonl"], "fwd_up", num_layers=4, top_k=8,
                                                      width=64)])
    return count_profile(codes, 64)[None]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """3,000 seeded docs and a target drawn close to the first 50 of them."""
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("approx")
    codes = np.argsort(-rng.random((3000, 4, 64)), axis=2)[:, :, :8].astype(np.uint16)  # K distinct per layer
    ids = [f"d{i:05d}" for i in range(len(codes))]
    write_features(root / "pool.jsonl", ids, codes)
    pq.write_table(pa.table({"docid": ids, "token_num": rng.integers(1, 100, len(ids))}), root / "payload.parquet")
    import_features([root / "pool.jsonl"], root / "idx", num_layers=4, top_k=8, width=64, token_field="token_num",
                    payload_paths=[root / "payload.parquet"])
    target = codes[:50].copy()
    write_features(root / "target.jsonl", [f"t{i}" for i in range(len(target))], target)
    return root


def test_candidates_cover_the_pool_when_it_is_small(pool, tmp_path):
    t = [TargetRequest("features", str(pool / "target.jsonl"))]
    exact = query(t, pool / "idx", k=40)
    fast = query(t, pool / "idx", k=40, approx=True, out=tmp_path / "a.parquet")
    assert exact.table.equals(fast.table)  # 3,000 docs < MIN_CANDIDATES: the exact scan
    assert not np.isnan(fast.table.column("score").to_numpy()).any()


def test_fewer_candidates_are_rescored_exactly(pool, monkeypatch):
    monkeypatch.setattr(approx, "MIN_CANDIDATES", 300)
    t = [TargetRequest("features", str(pool / "target.jsonl"))]
    everything = query(t, pool / "idx", k=3000).table.to_pydict()
    score = dict(zip(everything["docid"], everything["score"]))
    fast = query(t, pool / "idx", k=20, approx=True).table.to_pydict()
    assert len(fast["docid"]) == 20 and len(set(fast["docid"]) & set(everything["docid"][:20])) >= 15
    assert fast["score"] == [score[d] for d in fast["docid"]]  # candidates are scored exactly
    # the candidates: every document within each query's radius, ties at the radius included
    from nagindex.index.derived import fingerprints
    from nagindex.query.fleet import open_fleet

    view = open_index(pool / "idx")
    fleet = open_fleet(pool / "idx")
    queries, radii = approx.approx_radii(fleet, fast_profiles(pool), np.arange(4), Quota(k=20), view.manifest,
                                         len(view))
    dist = np.bitwise_count(fingerprints(view.codes, 64)[:, None, :] ^ queries[None]).sum(axis=2)[:, 0]
    assert (dist <= radii[0]).sum() >= 300 > (dist < radii[0]).sum()


def test_memory_mapped_fingerprints_search_like_a_loaded_faiss_index(pool):
    import faiss

    view = open_index(pool / "idx")
    mapped = view.faiss_index()
    loaded = faiss.IndexBinaryFlat(4096)
    loaded.add(np.asarray(mapped.codes))
    assert mapped.ntotal == len(view) and isinstance(mapped.codes, np.memmap)
    query_fp = np.zeros((1, mapped.code_size), dtype=np.uint8)
    assert all(np.array_equal(a, b) for a, b in zip(mapped.search(query_fp, 10), loaded.search(query_fp, 10)))


def test_approx_needs_k(pool):
    with pytest.raises(NagIndexError, match="--k"):
        query([TargetRequest("features", str(pool / "target.jsonl"))], pool / "idx", fraction=0.1, approx=True)
