"""The public Python API: ``nagindex.query`` / ``nagindex.mix`` with plain strings and mappings."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import nagindex
from nagindex.errors import InputError, NagIndexError
from nagindex.query.request import TargetRequest, as_targets


def _docids(path: Path) -> list[str]:
    return pq.read_table(path).column("docid").to_pylist()


def test_query_with_a_mapping_equals_the_cli_request(golden_index, target_features, golden_dir, tmp_path):
    by_map = nagindex.query({"features": str(target_features["sci_target"])}, golden_index, fraction=0.3,
                            out=tmp_path / "a.parquet")
    by_req = nagindex.query([TargetRequest("features", str(target_features["sci_target"]))], golden_index,
                            fraction=0.3, out=tmp_path / "b.parquet")
    assert by_map.table.equals(by_req.table)
    assert _docids(tmp_path / "a.parquet") == _docids(golden_dir / "ranking/selected_sci.parquet")


def test_mix_mapping_equals_the_yaml_file(golden_index, target_features, tmp_path):
    spec = {"mode": "paper", "fraction": 0.6, "dedup": True,
            "targets": [{"features": str(target_features["sci_target"]), "weight": 2},
                        {"features": str(target_features["story_target"])}]}
    cfg = tmp_path / "m.yaml"
    cfg.write_text(json.dumps(spec))  # JSON is YAML
    a = nagindex.mix(spec, golden_index, out=tmp_path / "a.parquet")
    b = nagindex.mix(cfg, golden_index, out=tmp_path / "b.parquet")
    assert a.targets == b.targets == ["sci_target", "story_target"]
    assert a.table.equals(b.table) and len(a) > 0
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))
    with pytest.raises(NagIndexError, match="fraction: set by the mixture"):
        nagindex.mix(spec, golden_index, fraction=0.1)


def test_targets_as_strings_and_mappings():
    assert as_targets("mmlu:2") == [TargetRequest("name", "mmlu", 2.0)]
    assert as_targets(["arc_challenge", {"file": "t.jsonl", "filter": {"dataset": "chem"}, "label": "chem"}]) == [
        TargetRequest("name", "arc_challenge"), TargetRequest("file", "t.jsonl", 1.0, (("dataset", "chem"),), "chem")]
    with pytest.raises(NagIndexError, match=r"pass \{'file': 'mine.jsonl'\}"):
        as_targets("mine.jsonl")
    with pytest.raises(InputError, match=r"targets: field '\[1\]': give exactly one of name, file, features"):
        as_targets(["arc_challenge", {"weight": 2}])
    with pytest.raises(InputError, match=r"field '\[0\].weight': expected a number > 0"):
        as_targets([{"name": "mmlu", "weight": 0}])


def test_a_query_spec_is_validated_once_before_any_work(tmp_path):
    """Every query option reaches the engine as one ``QuerySpec``: unknown options, a missing or double quota
    and options that make no sense together are refused before the index is even opened."""
    from nagindex.errors import NagIndexError
    from nagindex.query.run import query
    from nagindex.query.spec import QuerySpec

    missing = tmp_path / "no-index"  # never opened: every error below comes first
    spec = QuerySpec.of("arc_challenge:2", missing, k=5, max_group_share=None)
    assert spec.targets[0].weight == 2.0 and spec.quota.k == 5 and spec.scoring_device == "cpu"
    for options, message in [({"k": 5, "topk": 3}, "unknown query option.*topk"),
                             ({"k": 5, "fraction": 0.1}, "exactly one of k, tokens, fraction"),
                             ({}, "exactly one of k, tokens, fraction"),
                             ({"k": 5, "mode": "mixed"}, "mode 'mixed'"),
                             ({"k": 5, "sample": True, "temperature": 0}, "temperature must be a positive"),
                             ({"k": 5, "quality_file": "q.jsonl"}, "needs --quality-col"),
                             ({"k": 5, "max_group_share": 0.2}, "need --group-by"),
                             ({"k": 5, "group_by": "lang", "max_group_share": 0.2}, "a column needs --group-file")]:
        with pytest.raises(NagIndexError, match=message):
            query("arc_challenge", missing, **options)
    with pytest.raises(NagIndexError, match="no target"):
        query([], missing, k=5)
