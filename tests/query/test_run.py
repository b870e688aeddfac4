"""query() / mix() end to end against the reference's selections, plus CLI behaviour."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from nagindex.cli import main
from nagindex.errors import NagIndexError
from nagindex.query.request import TargetRequest, parse_target
from nagindex.query.run import query


def _expect(golden_dir: Path, name: str) -> tuple[list[str], np.ndarray, dict]:
    t = pq.read_table(golden_dir / "ranking" / f"{name}.parquet").to_pydict()
    return t["docid"], np.asarray(t["nag_distance"]), t


def _read(path: Path) -> dict:
    return pq.read_table(path).to_pydict()


@pytest.mark.parametrize("target,fraction,golden", [
    ("sci_target", 0.3, "selected_sci"), ("story_target", 0.3, "selected_story"),
    ("all", 0.3, "selected_all_targets"), ("sci_target", 1.0, "selected_sci_full"),
])
def test_single_target_selections_match_reference(golden_index, target_features, golden_dir, tmp_path,
                                                   target, fraction, golden):
    out = tmp_path / "sel.parquet"
    res = query([TargetRequest("features", str(target_features[target]))], golden_index, fraction=fraction, out=out)
    docids, distance, _ = _expect(golden_dir, golden)
    got = _read(out)
    assert got["docid"] == docids
    np.testing.assert_allclose(got["nag_distance"], distance, rtol=0, atol=1e-12)
    assert got["rank"] == list(range(1, len(docids) + 1))
    assert res.tokens == sum(got["token_count"])


@pytest.mark.parametrize("dedup,golden", [(False, "multi_target"), (True, "multi_target_dedup")])
def test_paper_mixture_matches_reference(golden_index, target_features, golden_dir, tmp_path, dedup, golden):
    """The fixture concatenates two fraction-0.3 selections: a 0.6 total split 1:1."""
    out = tmp_path / "mix.parquet"
    targets = [TargetRequest("features", str(target_features[t])) for t in ("sci_target", "story_target")]
    query(targets, golden_index, fraction=0.6, mode="paper", dedup=dedup, out=out)
    docids, distance, _ = _expect(golden_dir, golden)
    got = _read(out)
    assert got["docid"] == docids
    np.testing.assert_allclose(got["nag_distance"], distance, rtol=0, atol=1e-12)
    assert set(got["target"]) == {"sci_target", "story_target"}
    assert {"score_sci_target", "score_story_target"} <= set(got)


def test_quality_selection_matches_reference(golden_index, target_features, golden_dir, tmp_path):
    out = tmp_path / "q.parquet"
    query([TargetRequest("features", str(target_features["sci_target"]))], golden_index, fraction=0.3,
          quality_file=golden_dir / "data/pool/pool.parquet", quality_col="quality", invert_quality=True, out=out)
    docids, distance, table = _expect(golden_dir, "selected_sci_plus_quality")
    got = _read(out)
    assert got["docid"] == docids
    np.testing.assert_allclose(got["nag_distance"], distance, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["combined_score"], table["combined_score"], rtol=0, atol=1e-12)


def test_last_layer_selection_matches_reference(golden_index, target_features, golden_dir, tmp_path):
    out = tmp_path / "last.parquet"
    query([TargetRequest("features", str(target_features["sci_target"]))], golden_index, fraction=0.3,
          layers="last", out=out)
    docids, distance, _ = _expect(golden_dir, "selected_sci_lastlayer")
    got = _read(out)
    assert got["docid"] == docids
    np.testing.assert_allclose(got["nag_distance"], distance, rtol=0, atol=1e-12)


def test_union_mixture_has_no_duplicates_and_meets_k(golden_index, target_features, tmp_path):
    targets = [TargetRequest("features", str(target_features[t])) for t in ("sci_target", "story_target")]
    res = query(targets, golden_index, k=9, mode="union")
    docids = res.table.column("docid").to_pylist()
    assert len(res) == 9 and len(set(docids)) == 9
    assert sorted(Counter(res.table.column("target").to_pylist()).values()) == [4, 5]


def test_k_larger_than_index_selects_all_with_a_note(golden_index, target_features, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["query", "--index", str(golden_index), "--target-features",
                                       str(target_features["all"]), "--k", "1M"])
    assert result.exit_code == 0, result.output
    assert "selected 15 of 15 documents" in result.output
    assert "more than the index holds" in result.output
    assert len(_read(tmp_path / "all.parquet")["docid"]) == 15  # default -o: <target>.parquet


@pytest.fixture(scope="module")
def model_index(tiny_backbone, golden_dir, tmp_path_factory):
    """The golden pool ingested with the fixture model (its NAGs equal the reference's), and that extractor."""
    from nagindex.ingest import run as ingest_run
    from nagindex.encode.extract import NagExtractor

    ex = NagExtractor(tiny_backbone, top_k=8, max_length=64)
    idx = tmp_path_factory.mktemp("mi") / "idx"
    ingest_run.ingest([golden_dir / "data/pool/pool.parquet"], idx, backbone=str(golden_dir / "model"),
                      top_k=8, max_length=64, token_field="token_num", extractor=ex)
    return idx, ex


def _no_model(*a, **k):
    raise AssertionError("a cached target must not load a model")


def test_target_from_file_is_encoded_once_then_cached(model_index, golden_dir, tmp_path, monkeypatch):
    """A model-built index: a target file is encoded with the index's backbone, then served from the cache."""
    from nagindex.encode import encoder

    idx, ex = model_index
    monkeypatch.setattr(encoder, "build_extractor", lambda *a, **k: ex)
    target = parse_target(str(golden_dir / "data/target/target.parquet"), "file", ["dataset=sci_target"])
    first = query([target], idx, fraction=0.3, out=tmp_path / "a.parquet")
    monkeypatch.setattr(encoder, "build_extractor", _no_model)
    second = query([target], idx, fraction=0.3, out=tmp_path / "b.parquet", with_text=True)
    assert first.table.column("docid").equals(second.table.column("docid"))
    docids, distance, _ = _expect(golden_dir, "selected_sci")
    got = _read(tmp_path / "b.parquet")
    assert got["docid"] == docids
    np.testing.assert_allclose(got["nag_distance"], distance, rtol=0, atol=1e-12)
    pool = pq.read_table(golden_dir / "data/pool/pool.parquet").to_pydict()
    assert got["text"] == [pool["doc"][pool["docid"].index(d)] for d in docids]
    manifest = json.loads((tmp_path / "b.parquet.manifest.json").read_text())
    assert manifest["quota"] == {"fraction": 0.3} and manifest["rows"] == len(docids)
    assert (manifest["max_examples"], manifest["targets"][0]["examples"]["used"]) == (None, 4)


def test_max_examples_sample_is_recorded_and_reported(model_index, golden_dir, golden_ranking, tmp_path,
                                                      monkeypatch):
    """--max-examples profiles a seeded random sample; the manifest records it, so the report finds its NAGs."""
    from nagindex.encode import encoder
    from nagindex.ingest.interop import write_features
    from nagindex.query.report import collect
    from nagindex.query.target import load_target_file

    idx, ex = model_index
    monkeypatch.setattr(encoder, "build_extractor", lambda *a, **k: ex)
    path = golden_dir / "data/target/target.parquet"
    target = parse_target(str(path), "file")  # 6 examples: sci and story
    res = query([target], idx, k=5, max_examples=3, example_seed=7, out=tmp_path / "s.parquet")
    sample = load_target_file(path, limit=3, seed=7)
    assert len(sample) == 3 and sample.n_available == 6
    # the same selection as the reference NAGs of exactly those 3 examples
    ids = golden_ranking["target_ids"]
    codes = golden_ranking["target_codes"][[ids.index(i) for i in sample.ids]]
    write_features(tmp_path / "sample.jsonl", sample.ids, codes)
    ref = query([TargetRequest("features", str(tmp_path / "sample.jsonl"))], idx, k=5)
    assert res.table.select(["docid", "score"]).equals(ref.table.select(["docid", "score"]))
    manifest = json.loads((tmp_path / "s.parquet.manifest.json").read_text())
    assert (manifest["max_examples"], manifest["example_seed"]) == (3, 7)
    assert manifest["targets"][0]["examples"] == {"used": 3, "available": 6, "source": f"file:{path}"}
    monkeypatch.setattr(encoder, "build_extractor", _no_model)
    data = collect(tmp_path / "s.parquet", idx)
    assert data.targets[0].matches and "3 of 6 examples" in data.targets[0].how
    assert "(cached NAGs)" in data.targets[0].how


def test_imported_index_without_backbone_explains_target_features(golden_index, golden_dir):
    target = parse_target(str(golden_dir / "data/target/target.parquet"), "file")
    with pytest.raises(NagIndexError, match="pass --target-features"):
        query([target], golden_index, k=3)


def test_mix_yaml(golden_index, target_features, golden_dir, tmp_path):
    (tmp_path / "t").mkdir()
    for name in ("sci_target", "story_target"):
        (tmp_path / "t" / f"{name}.jsonl").write_text(target_features[name].read_text())
    cfg = tmp_path / "m.yaml"
    cfg.write_text("mode: paper\nfraction: 0.6\ndedup: true\ntargets:\n"
                   "  - features: t/sci_target.jsonl\n  - features: t/story_target.jsonl\n    weight: 1\n")
    out = tmp_path / "mix.jsonl"
    result = CliRunner().invoke(main, ["mix", "--index", str(golden_index), str(cfg), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["docid"] for r in rows] == _expect(golden_dir, "multi_target_dedup")[0]


def test_mix_yaml_errors_name_the_field(golden_index, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("fraction: 0.2\ntargets:\n  - file: ../../etc/passwd\n")
    result = CliRunner().invoke(main, ["mix", "--index", str(golden_index), str(cfg)])
    assert result.exit_code != 0
    assert "field 'targets[0].file'" in result.output and "points outside" in result.output
    cfg.write_text("k: 10\nfraction: 0.2\ntargets:\n  - name: arc_challenge\n")
    result = CliRunner().invoke(main, ["mix", "--index", str(golden_index), str(cfg)])
    assert "give exactly one of fraction, k, tokens" in result.output


def test_output_never_overwrites_an_input(golden_index, target_features, tmp_path, monkeypatch):
    """A selection written onto its own target file would destroy it: refused, and the default avoids it."""
    from nagindex.query.run import default_output

    features = target_features["sci_target"]
    before = features.read_bytes()
    result = CliRunner().invoke(main, ["query", "--index", str(golden_index), "--target-features", str(features),
                                       "--k", "3", "-o", str(features)])
    assert result.exit_code != 0 and "is an input of this query" in result.output
    assert features.read_bytes() == before
    result = CliRunner().invoke(main, ["query", "--index", str(golden_index), "--target-features", str(features),
                                       "--k", "3", "-o", str(tmp_path / "sel.csv")])
    assert result.exit_code != 0 and "use a .parquet or .jsonl file name" in result.output
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.parquet").write_bytes(b"")
    assert default_output([parse_target("mine.parquet", "file")]) == "mine.selection.parquet"
    assert default_output([parse_target("other/mine.parquet", "file")]) == "mine.parquet"
    assert default_output([parse_target("arc_challenge"), parse_target("mmlu:2")]) == "arc_challenge+mmlu.parquet"
    assert default_output([parse_target("mine.parquet", "file")], "paper6") == "paper6.parquet"


def test_parse_target_weights_and_filters():
    t = parse_target("arc_challenge:2.5")
    assert (t.value, t.weight, t.display) == ("arc_challenge", 2.5, "arc_challenge")
    f = parse_target("/data/t.parquet", "file", ["dataset=sci"])
    assert f.filters == (("dataset", "sci"),) and f.display == "t[dataset=sci]"
    with pytest.raises(NagIndexError, match="expected COL=VALUE"):
        parse_target("x.parquet", "file", ["dataset"])
