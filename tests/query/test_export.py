"""``nagindex score``: every document's score, the same on any number of shards, streamed out."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from click.testing import CliRunner

import nagindex
from nagindex.cli import main
from nagindex.index.sharded import open_index
from nagindex.query.profile import count_profile
from nagindex.query.score import score_codes
from nagindex.sources.features import read_features
from tests.query import pools


def test_every_document_scored_on_one_or_three_shards(tmp_path):
    files = pools.write_pool(tmp_path / "data", sizes=(300, 40, 3, 120))
    targets = pools.write_targets(tmp_path / "data")
    one = pools.build_index(files, tmp_path / "one", 1)
    three = pools.build_index(files, tmp_path / "three", 3)
    spec = [{"features": str(targets["alpha"])}, {"features": str(targets["beta"])}]
    res = nagindex.score(spec, one, out=tmp_path / "one.parquet")
    nagindex.score(spec, three, out=tmp_path / "three.jsonl")
    got = pq.read_table(tmp_path / "one.parquet").to_pydict()
    assert res.rows == len(got["docid"]) == 460 and res.targets == ["alpha", "beta"]
    view = open_index(one)
    assert got["docid"] == view.docids.take(np.arange(len(view)))
    assert got["token_count"] == np.asarray(view.token_counts).tolist()
    for name in ("alpha", "beta"):
        codes = np.stack([r[1] for r in read_features([targets[name]], "fwd_up", **pools.SHAPE)])
        expected = score_codes(view.codes, count_profile(codes, pools.SHAPE["width"])).similarity[0]
        assert got[f"score_{name}"] == expected.tolist()
    lines = [json.loads(x) for x in (tmp_path / "three.jsonl").read_text().splitlines()]
    by_id = {d: (t, a, b) for d, t, a, b in zip(got["docid"], got["token_count"], got["score_alpha"], got["score_beta"])}
    # 463 records, 3 ids repeated across files: kept once in both (the sharded index hides the later copies)
    assert len(lines) == 460 and all(by_id[r["docid"]] == (r["token_count"], r["score_alpha"], r["score_beta"])
                                     for r in lines)


def test_cli(tmp_path):
    files = pools.write_pool(tmp_path / "data", sizes=(50, 20))
    targets = pools.write_targets(tmp_path / "data")
    pools.build_index(files, tmp_path / "idx")
    out = CliRunner().invoke(main, ["score", "--index", str(tmp_path / "idx"), "--target-features",
                                    str(targets["gamma"]), "-o", str(tmp_path / "s.parquet")])
    assert out.exit_code == 0, out.output
    assert "scored 70 documents against gamma" in out.output
    assert pq.read_table(tmp_path / "s.parquet").column_names == ["docid", "token_count", "score_gamma"]


def test_export_features_of_a_sharded_index_equals_one_folder(tmp_path, monkeypatch):
    """``nagindex export`` on 3 shards, a block smaller than a shard: the one-folder index's lines, later
    copies of the 3 repeated ids left out."""
    from nagindex.ingest import interop

    files = pools.write_pool(tmp_path / "data", sizes=(300, 40, 3, 120))
    one = pools.build_index(files, tmp_path / "one", 1)
    three = pools.build_index(files, tmp_path / "three", 3)
    assert interop.export_features(one, tmp_path / "one.jsonl") == 460
    monkeypatch.setattr(interop, "EXPORT_BLOCK", 7)
    out = CliRunner().invoke(main, ["export", "--index", str(three), "-o", str(tmp_path / "three.jsonl")])
    assert out.exit_code == 0, out.output
    assert "wrote 460 documents" in out.output
    lines = (tmp_path / "three.jsonl").read_text("utf-8").splitlines()
    assert lines == (tmp_path / "one.jsonl").read_text("utf-8").splitlines()
    view = open_index(one)
    first = json.loads(lines[0])
    assert first["docid"] == view.docids.take([0])[0]
    assert first["fwd_up_feature"]["layer_topk_value_index"] == np.asarray(view.codes[0]).ravel().tolist()
