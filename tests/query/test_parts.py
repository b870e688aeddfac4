"""Selections written by the shards (``-o DIR``): sorted by rank, the parts are the one-file selection row for
row, on any number of shards, through a merge of many small batches, and readable as one dataset."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from nagindex.errors import NagIndexError
from nagindex.query import parts
from nagindex.query.run import query
from tests.query.test_scale import _forms, data  # noqa: F401 - the shared pools as a fixture

FORMS = ["k37", "k1", "k_all", "fraction", "fraction_1", "tokens", "tokens_0", "paper", "paper_k", "layers",
         "power", "power_mix", "quality", "quality_mix", "approx", "sample"]


@pytest.mark.parametrize("form", FORMS)
def test_parts_sorted_by_rank_are_the_selection_file(data, form, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(parts, "MERGE_BATCH", 7)  # many rounds of the merge, ties across batches and shards
    forms = {**_forms(data), "sample": _forms(data)["fraction"][:1] + ({"fraction": 0.3, "sample": True,
                                                                          "seed": 2},)}
    targets, options = forms[form]
    one = query(targets, data["idx1"], out=tmp_path / "one.parquet", **options)
    want = pq.read_table(tmp_path / "one.parquet")
    for shards in (1, 2, 7):
        out = tmp_path / f"parts{shards}"
        res = query(targets, data[f"idx{shards}"], out=out, **options)
        got = pq.read_table(out).sort_by("rank")
        assert got.equals(want), (form, shards)
        assert (len(res), res.tokens, res.notes, res.exhausted) == (len(one), one.tokens, one.notes, one.exhausted)
        assert sorted(p.name for p in out.iterdir()) == res.parts  # nothing else: no partial file left
        manifest = json.loads((tmp_path / f"parts{shards}.manifest.json").read_text())
        assert manifest["parts"] == res.parts and manifest["rows"] == len(one) and manifest["notes"] == one.notes


def test_parts_read_as_one_dataset_by_pandas_and_hf_datasets(data, tmp_path):  # noqa: F811
    import datasets
    import pandas as pd

    targets, options = _forms(data)["paper"]
    want = query(targets, data["idx7"], **options).table.to_pandas()
    query(targets, data["idx7"], out=tmp_path / "sel", **options)
    frame = pd.read_parquet(tmp_path / "sel").sort_values("rank", ignore_index=True)
    pd.testing.assert_frame_equal(frame, want)
    hf = datasets.load_dataset("parquet", data_dir=str(tmp_path / "sel"), split="train").sort("rank")
    assert hf["docid"] == want["docid"].tolist() and hf["rank"] == list(range(1, len(want) + 1))


def test_forms_that_walk_the_whole_ranking_write_one_file(data, tmp_path):  # noqa: F811
    forms = _forms(data)
    for form, extra in (("union_k", {}), ("paper_dedup", {}), ("fraction", {"group_by": "source",
                                                                             "max_group_share": 0.5})):
        targets, options = forms[form]
        with pytest.raises(NagIndexError, match="walk the whole ranking in one process: write one file"):
            query(targets, data["idx2"], out=tmp_path / "sel", **options, **extra)
    with pytest.raises(NagIndexError, match="use a .parquet or .jsonl file name, or a folder name"):
        query(forms["k1"][0], data["idx2"], out=tmp_path / "sel.csv", k=1)


def test_a_pool_with_no_eligible_row_chooses_nothing(data):  # noqa: F811
    """Every row excluded (decontamination took them all): the pool has no key range, hence no binning, and a
    shard chooses and sorts nothing instead of failing."""
    import numpy as np

    from nagindex.index.sharded import shard_specs
    from nagindex.query.scan import ScorePlan, ShardScan

    spec = shard_specs(data["idx2"])[0]
    scan = ShardScan(spec["path"], spec["hidden"], spec["part"], spec["rows"])
    try:
        scan.score(ScorePlan(np.ones((1, 4, 48), np.int64), (0, 1, 2, 3)))
        scan.exclude(np.arange(len(scan)))
        scan.choose(0, None, 0, np.zeros(0, np.int64))
        assert scan.sort_chosen(0) == 0 and scan.chosen_keys(0, 0, 10).num_rows == 0
    finally:
        scan.close()


def test_the_merge_takes_fewer_rows_per_shard_the_more_shards_there_are(monkeypatch):
    """The merge holds at most ``MERGE_ROWS`` rows of all shards (one batch each), whatever the shard count."""
    from nagindex.query import parts

    assert [parts.merge_batch(n) for n in (1, 8, 16, 64, 800, 10**6)] == [65536, 65536, 65536, 16384, 1310, 1024]
    monkeypatch.setattr(parts, "MERGE_ROWS", 20)
    assert [parts.merge_batch(n) for n in (1, 3)] == [1024, 1024]
