"""Ingest on Ray actors writes exactly the index a local ingest writes."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from nagindex.index.sharded import open_index
from nagindex.ingest.run import ingest

ray = pytest.importorskip("ray")


def test_ray_ingest_equals_local(golden_dir, tmp_path, tiny_backbone):
    from nagindex.encode.extract import NagExtractor

    rows = pq.read_table(golden_dir / "data/pool/pool.parquet").to_pylist()
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"docid": r["docid"], "doc": r["doc"]}) + "\n" for r in rows)
                      + json.dumps({"docid": "pool_00", "doc": "duplicate id in another window"}) + "\n")
    model = str(golden_dir / "model")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = ingest([corpus], tmp_path / "ray", backbone=model, top_k=8, max_length=64, commit_every=4,
                     device="cpu", ray_address="local", ray_workers=2)
    finally:
        ray.shutdown()
    ex = NagExtractor(tiny_backbone, top_k=8, max_length=64)
    ingest([corpus], tmp_path / "local", backbone=model, top_k=8, max_length=64, commit_every=4, extractor=ex)
    assert (res.added, res.rejects) == (15, 1)
    a, b = open_index(tmp_path / "ray"), open_index(tmp_path / "local")
    assert a.docids.take(range(15)) == b.docids.take(range(15))
    assert np.array_equal(np.asarray(a.codes), np.asarray(b.codes))
    assert np.array_equal(np.asarray(a.token_counts), np.asarray(b.token_counts))
