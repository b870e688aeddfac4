"""What an evaluation writes: the JSON document, the terminal table, the HTML page; the same numbers every run."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from nagindex.cli import main
from nagindex.evaluate.run import evaluate
from tests.evaluate.conftest import TINY, index_docids, write_selection


@pytest.fixture(scope="module")
def selections(prose_index, tmp_path_factory):
    """Two selections of the prose index: a parquet and a JSONL (its docids in another column order)."""
    root = tmp_path_factory.mktemp("sel")
    ids = index_docids(prose_index)
    alpha = write_selection(root / "alpha.parquet", ids[:40])
    beta = root / "beta.jsonl"
    beta.write_text("".join(json.dumps({"score": 1.0, "docid": d}) + "\n" for d in ids[50:90]))
    return alpha, beta


@pytest.fixture(scope="module")
def evaluated(prose_index, plain_target, selections, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return evaluate(list(selections), prose_index, target={"file": str(plain_target)}, seeds=2, config=TINY,
                    threads=1, json_out=out / "eval.json", report=out / "eval.html", progress=False)


def test_json_holds_every_arm_named_after_its_file(evaluated, plain_target):
    data = json.loads(evaluated.json_out.read_text())
    assert data == json.loads(json.dumps(evaluated.data))
    assert data["target"] == "sums" and data["heldout_examples"] == 40 == len(data["heldout_ids"])
    assert data["multiple_choice"] is False and data["seeds"] == [0, 1]
    assert [a["name"] for a in data["arms"]] == ["random", "alpha", "beta"]
    per = TINY.batch_size * TINY.context
    assert data["train_tokens"] % per == 0 and data["curve_tokens"][-1] == data["train_tokens"]
    for arm in data["arms"]:
        assert len(arm["bpb"]) == 2 and all(0 < b < 16 for b in arm["bpb"])
        assert arm["gold_logprob"] is None and arm["accuracy"] is None  # the target has no choices
        assert len(arm["curve_bpb"]) == 2 and all(len(c) == len(data["curve_tokens"]) for c in arm["curve_bpb"])
        assert arm["curve_bpb"][0][-1] == arm["bpb"][0]
        assert arm["proxy_tokens"] >= data["train_tokens"] + 1  # no arm repeats a token
        assert isinstance(arm["kl_reduction"], float) and 0 <= arm["nag_similarity"] <= 1
    random, alpha, beta = data["arms"]
    assert "delta_bpb_vs_random" not in random and "delta_gold_logprob_vs_random" not in alpha
    assert alpha["documents"] == 40 and beta["documents"] == 40
    for arm in (alpha, beta):
        delta = arm["delta_bpb_vs_random"]
        diffs = np.subtract(arm["bpb"], random["bpb"])
        assert delta["mean"] == pytest.approx(diffs.mean())
        assert delta["lo"] < delta["mean"] < delta["hi"]
        # 95% t-interval with one degree of freedom: mean +- 12.706 x sd / sqrt(2)
        assert delta["hi"] - delta["mean"] == pytest.approx(12.7062 * diffs.std(ddof=1) / np.sqrt(2), rel=1e-4)
    assert random["tokens"] >= max(alpha["tokens"], beta["tokens"]) * 0.9  # as large as the largest selection
    assert any("measured on 40 held-out examples of sums only" in n for n in data["notes"])


def test_table_and_report_show_the_arms(evaluated):
    table = evaluated.table()
    assert "sums: 40 held-out examples" in table
    lines = table.splitlines()
    assert [line.split()[0] for line in lines[2:5]] == ["random", "alpha", "beta"]
    page = evaluated.report.read_text()
    assert page.count("data:image/png;base64,") == 2 and "Learning curves" in page and "alpha" in page


def test_the_same_seeds_give_the_same_numbers_through_the_cli(evaluated, prose_index, plain_target, selections,
                                                                 tmp_path, monkeypatch):
    from nagindex.evaluate import train

    monkeypatch.setattr(train, "ProxyConfig", lambda: TINY)  # the CLI with the suite's tiny proxy model
    out = tmp_path / "again.json"
    args = ["evaluate", "--index", str(prose_index), "--target-file", str(plain_target), *map(str, selections),
            "--seeds", "2", "--threads", "1", "--json", str(out)]
    got = CliRunner().invoke(main, args)
    assert got.exit_code == 0, got.output
    assert "random" in got.output and "alpha" in got.output and f"-> {out}" in got.output
    again = json.loads(out.read_text())
    first = json.loads(json.dumps(evaluated.data))
    for doc in (again, first):
        doc.pop("timings")
        doc["proxy"].pop("threads")
    assert again == first


def test_one_seed_leaves_the_interval_undefined(prose_index, plain_target, selections):
    res = evaluate([selections[0]], prose_index, target={"file": str(plain_target)}, seeds=1, config=TINY,
                   threads=1, progress=False)
    delta = res.data["arms"][1]["delta_bpb_vs_random"]
    assert delta["lo"] is None and delta["hi"] is None and np.isfinite(delta["mean"])
    assert "[n/a: 1 seed]" in res.table()


def test_docids_are_read_as_strings(prose_index, plain_target, tmp_path):
    from nagindex.evaluate.selections import read_selection

    path = tmp_path / "nums.jsonl"
    path.write_text('{"docid": 7}\n{"docid": "prose-001"}\n')
    assert read_selection(path).docids.equals(pa.array(["7", "prose-001"], pa.large_string()))
