"""Appends to an index with NAIT features: the NAIT identity (``--features``, ``--nait-site``, ``--nait-vector``,
``--nait-dims``, ``--nait-seed``) is refused when it differs, naming the option, by a one-folder index's store
and by a sharded index's catalog (also where the append's inputs would start a shard of their own), and the
appended documents' NAIT rows are written: the scores after the append are a one-shot ingest's."""
from __future__ import annotations

import json

import pytest

from nagindex.encode.dense import DenseSpec
from nagindex.errors import IndexMismatchError
from nagindex.ingest.run import ingest
from nagindex.query.run import query
from tests.nait.conftest import SETTINGS, write_corpus, write_targets

SPEC = DenseSpec(dims=16, seed=3)
OTHERS = [(None, "--features"), (DenseSpec(site="mlp", dims=16, seed=3), "--nait-site"),
          (DenseSpec(vector="delta", dims=16, seed=3), "--nait-vector"), (DenseSpec(dims=8, seed=3), "--nait-dims"),
          (DenseSpec(), "--nait-dims"), (DenseSpec(dims=16, seed=4), "--nait-seed")]


@pytest.fixture(scope="module")
def halves(golden_dir, tmp_path_factory):
    """The golden pool in two input files, the target file, and a one-shot ingest of both."""
    root = tmp_path_factory.mktemp("append")
    lines = [json.loads(line) for line in _lines(golden_dir, root)]
    (root / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines[:8]))
    (root / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines[8:]))
    write_targets(golden_dir, root / "target.jsonl")
    ingest([root / "a.jsonl", root / "b.jsonl"], root / "whole", nait=SPEC, **_kw(golden_dir))
    return root


def _lines(golden_dir, root):
    write_corpus(golden_dir, root / "all.jsonl")
    return (root / "all.jsonl").read_text().splitlines()


def _kw(golden_dir):
    # batch_size 1: a document's activations are the same bits in any window, so layouts can be compared exactly
    return dict(backbone=str(golden_dir / "model"), dtype="float32", batch_size=1, **SETTINGS)


def _scores(index) -> dict[str, float]:
    res = query({"file": str(index.parent / "target.jsonl")}, index, fraction=1.0, method="nait")
    return dict(zip(res.table.column("docid").to_pylist(), res.table.column("score").to_pylist()))


@pytest.mark.parametrize("shards", [1, 2])
def test_an_append_must_match_the_nait_identity_and_writes_the_appended_rows(halves, golden_dir, shards):
    idx = halves / f"idx{shards}"
    kw = _kw(golden_dir)
    ingest([halves / "a.jsonl"], idx, nait=SPEC, shards=shards, **kw)
    if shards > 1:  # a.jsonl filled one shard: b.jsonl would start the other one, which has no store yet
        from nagindex.index.catalog import load_catalog

        catalog = load_catalog(idx)
        assert catalog.identity["nait"] == SPEC.identity()
        assert sum(1 for p in catalog.shard_paths() if (p / "index_info.json").is_file()) == 1
    for other, option in OTHERS:
        with pytest.raises(IndexMismatchError, match=f"nait: index has .*\\({option}\\)"):
            ingest([halves / "b.jsonl"], idx, nait=other, **kw)
    ingest([halves / "b.jsonl"], idx, nait=SPEC, **kw)
    whole = _scores(halves / "whole")
    assert len(whole) == 15 and _scores(idx) == whole
