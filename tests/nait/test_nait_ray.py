"""NAIT on Ray ingests: the dense spec travels to the encode actors (``--ray-address`` on a one-folder ingest)
and, as its JSON identity, to the shard tasks (``--shards 2 --ray-address``); each writes the dense rows,
NAIT scores and selection a local ingest writes, projected (``--nait-dims``) ones too."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nagindex.encode.dense import DenseSpec
from nagindex.index.dense import take_dense
from nagindex.index.sharded import open_index, shard_specs
from nagindex.ingest.run import ingest
from nagindex.query.run import query
from tests.nait.conftest import SETTINGS, write_corpus, write_targets


def _dense_rows(root: Path) -> dict[str, bytes]:
    """docid -> its stored dense row's bytes, on any number of shards."""
    view = open_index(root)
    rows = take_dense(view, np.arange(len(view)))
    return {d: rows[i].tobytes() for i, d in enumerate(view.docids.take(range(len(view))))}


def _nait(root: Path, target: dict) -> tuple[dict[str, float], object]:
    """Every document's NAIT score, and a top-10 selection's table."""
    full = query(target, root, fraction=1.0, method="nait").table
    scores = dict(zip(full.column("docid").to_pylist(), full.column("score").to_pylist()))
    return scores, query(target, root, k=10, method="nait").table


def test_ray_ingests_store_the_local_nait_rows(golden_dir, tmp_path, ray_cluster):
    write_corpus(golden_dir, tmp_path / "pool.jsonl", copies=2)  # 30 documents
    write_targets(golden_dir, tmp_path / "target.jsonl")
    target = {"file": str(tmp_path / "target.jsonl")}
    kw = dict(backbone=str(golden_dir / "model"), dtype="float32", device="cpu", commit_every=7, **SETTINGS)
    pool = [tmp_path / "pool.jsonl"]
    # batch_size 1: no padding, so every layout (local, Ray actors, Ray shard tasks, whose windows differ)
    # stores the same bits for each document, and the scores and selections are equal, not merely close
    ingest(pool, tmp_path / "local", nait=DenseSpec(), batch_size=1, **kw)
    ingest(pool, tmp_path / "actors", nait=DenseSpec(), batch_size=1, ray_address="local", ray_workers=2, **kw)
    ingest(pool, tmp_path / "shards", nait=DenseSpec(), batch_size=1, shards=2, split_size=2048,
           ray_address="local", **kw)
    assert [s["rows"] > 0 for s in shard_specs(tmp_path / "shards")] == [True, True]
    local = _dense_rows(tmp_path / "local")
    assert len(local) == 30
    scores, selection = _nait(tmp_path / "local", target)
    for root in ("actors", "shards"):
        assert _dense_rows(tmp_path / root) == local, root
        got_scores, got_selection = _nait(tmp_path / root, target)
        assert got_scores == scores, root
        assert got_selection.equals(selection), root
    # projected: the spec's dims and seed travel to the shard tasks in its JSON identity
    spec = DenseSpec(dims=8, seed=5)
    ingest(pool, tmp_path / "p-local", nait=spec, batch_size=1, **kw)
    ingest(pool, tmp_path / "p-shards", nait=spec, batch_size=1, shards=2, split_size=2048, ray_address="local",
           **kw)
    manifest = open_index(tmp_path / "p-shards").manifest
    assert (manifest["nait"], manifest["nait_width"]) == (spec.identity(), 8)
    assert _dense_rows(tmp_path / "p-shards") == _dense_rows(tmp_path / "p-local")
    p_scores, p_selection = _nait(tmp_path / "p-local", target)
    got_scores, got_selection = _nait(tmp_path / "p-shards", target)
    assert got_scores == p_scores and got_selection.equals(p_selection)
    assert p_scores != scores  # the projection was applied
