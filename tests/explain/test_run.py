"""``nagindex explain`` and ``nagindex.explain``: the three forms, as a table, JSON and an HTML page."""
from __future__ import annotations

import json

from click.testing import CliRunner

import nagindex
from nagindex.cli import main
from nagindex.index.sharded import open_index


def test_cli_profile_doc_and_deactivation(prose_index, arith_target, tmp_path):
    docid = open_index(prose_index).docids.take([7])[0]
    out_json, out_html = tmp_path / "x.json", tmp_path / "x.html"
    result = CliRunner().invoke(main, [
        "explain", "--index", str(prose_index), "--target-file", str(arith_target), "--top", "3", "--doc", docid,
        "--deactivate", "--max-examples", "40", "--heldout", "10", "--draws", "2", "--device", "cpu",
        "--rank", "lift",
        "--json", str(out_json), "--html", str(out_html)])
    assert result.exit_code == 0, result.output
    assert "target arith: 40 examples, pool 120 documents, top 3 of 256 neurons per layer" in result.output
    assert f"{docid} for arith: score " in result.output and "deactivation test: arith on " in result.output
    data = json.loads(out_json.read_text())
    assert data["profile"]["examples"]["used"] == 40 and len(data["profile"]["layers"]) == 4
    assert data["doc"]["docid"] == docid and 1 <= data["doc"]["rank"] <= 120
    assert [a["name"] for a in data["deactivation"]["arms"]] == ["intact", "target", "random"]
    assert data["deactivation"]["rank"] == "lift" and "per layer by lift" in result.output
    assert data["deactivation"]["heldout"] == 10 and len(data["deactivation"]["arms"][2]["draws"]) == 2
    page = out_html.read_text()
    assert page.count("<img") == 3 and "Deactivation test of arith" in page and docid in page


def test_python_api_profile_only(prose_index, arith_target):
    res = nagindex.explain({"file": str(arith_target)}, prose_index, top=2, device="cpu")
    assert res.doc is None and res.deactivation is None
    assert [len(layer.neurons) for layer in res.profile.layers] == [2, 2, 2, 2]
    assert res.to_dict()["profile"]["pool_docs"] == 120


def test_cli_needs_one_target(prose_index):
    result = CliRunner().invoke(main, ["explain", "--index", str(prose_index)])
    assert result.exit_code == 2 and "give one target" in result.output
