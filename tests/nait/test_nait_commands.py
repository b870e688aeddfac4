"""NAIT beyond query: ``evaluate --method nait`` (the training-free column is the NAIT score), ``report``,
``targets show --target-file``, and the query paths NAIT shares with NAG (decontamination, group caps, union
mixtures, ``-o`` folders)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from nagindex.cli import main
from nagindex.errors import NagIndexError
from nagindex.evaluate.run import evaluate
from nagindex.ingest.run import ingest
from nagindex.query.run import query
from tests.evaluate.conftest import TINY, write_selection
from tests.nait.conftest import SETTINGS, write_corpus


@pytest.fixture(scope="module")
def nag_only(golden_dir, tmp_path_factory):
    """The golden pool ingested without NAIT features."""
    root = tmp_path_factory.mktemp("nagonly")
    write_corpus(golden_dir, root / "pool.jsonl")
    ingest([root / "pool.jsonl"], root / "idx", backbone=str(golden_dir / "model"), dtype="float32", **SETTINGS)
    return root / "idx"


def _scores(three_way) -> dict[str, float]:
    """Every document's NAIT score against the whole target file (one shard)."""
    res = query({"file": str(three_way / "target.jsonl")}, three_way / "one", fraction=1.0, method="nait")
    return dict(zip(res.table.column("docid").to_pylist(), res.table.column("score").to_pylist()))


def test_evaluate_nait_column_is_the_mean_nait_score_of_each_arm(three_way, tmp_path):
    """With no selection manifest every example is held out, so the held-out directions are the target file's:
    each arm's ``nait_score`` is the mean of the query's NAIT scores over its documents (on three shards)."""
    scores = _scores(three_way)
    ranked = sorted(scores, key=lambda d: -scores[d])
    top = write_selection(tmp_path / "top.parquet", ranked[:20])
    bottom = write_selection(tmp_path / "bottom.parquet", ranked[-20:])
    res = evaluate([top, bottom], three_way / "three", target={"file": str(three_way / "target.jsonl")}, seeds=1,
                   config=TINY, threads=1, method="nait", json_out=tmp_path / "e.json", report=tmp_path / "e.html",
                   progress=False)
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["method"] == "nait" and "pool_nait_score" in data and "pool_nag_similarity" not in data
    arms = {a["name"]: a for a in data["arms"]}
    for name, ids in (("top", ranked[:20]), ("bottom", ranked[-20:])):
        assert "nag_similarity" not in arms[name]
        assert arms[name]["nait_score"] == pytest.approx(np.mean([scores[d] for d in ids]), rel=1e-9)
    assert arms["top"]["nait_score"] > arms["random"]["nait_score"] > arms["bottom"]["nait_score"]
    assert "NAIT score" in res.table() and "NAG sim" not in res.table()
    assert "NAIT score" in (tmp_path / "e.html").read_text()


def test_evaluate_nait_refuses_an_index_without_nait_features(nag_only, three_way, tmp_path):
    sel = write_selection(tmp_path / "s.parquet", ["doc0-0"])
    target = {"file": str(three_way / "target.jsonl")}
    with pytest.raises(NagIndexError, match=f"index {nag_only} holds no NAIT features"):
        evaluate([sel], nag_only, target=target, method="nait", config=TINY, progress=False)
    with pytest.raises(NagIndexError, match="--weighting idf applies to --method nag only"):
        evaluate([sel], three_way / "one", target=target, method="nait", weighting="idf", config=TINY)
    out = CliRunner().invoke(main, ["evaluate", str(sel), "--index", str(nag_only), "--target-file",
                                    str(three_way / "target.jsonl"), "--method", "nait"])
    assert out.exit_code != 0 and "holds no NAIT features" in out.output


def test_report_of_a_nait_selection_scores_by_nait_and_leaves_out_the_neuron_sections(three_way, nag_only,
                                                                                     tmp_path):
    """``report`` on a ``--method nait`` selection (three shards): the pool's scores are the query's NAIT scores,
    the top documents' per-layer terms sum to them, and the NAG-only sections are replaced by a note."""
    from nagindex.query.report import collect

    target = {"file": str(three_way / "target.jsonl")}
    sel = tmp_path / "sel.parquet"
    picked = query(target, three_way / "three", k=10, method="nait", out=sel)
    data = collect(sel, three_way / "three", group_by="docid-prefix")
    assert data.method == "nait" and data.targets[0].matches
    np.testing.assert_array_equal(data.pool.sel_similarity[0], picked.table.column("score").to_numpy())
    scores = _scores(three_way)
    docs = [label.split()[0] for label in data.contrib_labels]
    np.testing.assert_allclose(data.contributions.sum(axis=1), [scores[d] for d in docs], rtol=1e-12)
    runner = CliRunner()
    out = runner.invoke(main, ["report", str(sel), "--index", str(three_way / "three"), "-o", str(tmp_path / "r.html")])
    assert out.exit_code == 0, out.output
    page = (tmp_path / "r.html").read_text()
    assert "NAIT score" in page and "reproduces the selection" in page and "NAG-only" in page
    out = runner.invoke(main, ["report", str(sel), "--index", str(three_way / "three"), "--method", "nag"])
    assert out.exit_code != 0 and "made with --method nait" in out.output
    with pytest.raises(NagIndexError, match=f"index {nag_only} holds no NAIT features"):
        collect(sel, nag_only)


def test_nait_selections_are_decontaminated(golden_dir, tmp_path):
    """A pool document holding an ARC-Challenge test question is dropped from a NAIT selection that guards
    against arc_challenge; the rest is the unguarded selection in the same order."""
    from nagindex.encode.dense import DenseSpec
    from nagindex.query.decontam import test_requests
    from tests.nait.conftest import write_targets

    (_, _, questions), = list(test_requests("arc_challenge"))
    write_corpus(golden_dir, tmp_path / "pool.jsonl")
    with open(tmp_path / "pool.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "planted", "text": f"Class notes. {questions[0]} We discussed it."}) + "\n")
    write_targets(golden_dir, tmp_path / "target.jsonl")
    ingest([tmp_path / "pool.jsonl"], tmp_path / "idx", backbone=str(golden_dir / "model"), dtype="float32",
           nait=DenseSpec(), **SETTINGS)
    target = {"file": str(tmp_path / "target.jsonl")}
    plain = query(target, tmp_path / "idx", fraction=1.0, method="nait")
    guarded = query(target, tmp_path / "idx", fraction=1.0, method="nait", decontaminate_against="arc_challenge")
    assert "planted" in plain.table.column("docid").to_pylist()
    assert guarded.contamination.column("docid").to_pylist() == ["planted"]
    keep = [i for i, d in enumerate(plain.table.column("docid").to_pylist()) if d != "planted"]
    assert guarded.table.select(["docid", "score"]).equals(plain.table.select(["docid", "score"]).take(keep))


def test_group_caps_and_union_mixtures_are_the_same_on_one_and_three_shards(three_way, golden_dir):
    """``--group-by docid-prefix --max-group-share`` (each golden document's three variants are one group) and a
    ``--mode union`` mixture of two NAIT targets select the same rows on one shard and on three."""
    from nagindex.index.sharded import open_index

    target = {"file": str(three_way / "target.jsonl")}
    budget = int(sum(open_index(three_way / "one").token_counts) * 0.6)

    def groups(table) -> dict[str, int]:
        out: dict[str, int] = {}
        for docid, n in zip(table.column("docid").to_pylist(), table.column("token_count").to_pylist()):
            out[docid.rsplit("-", 1)[0]] = out.get(docid.rsplit("-", 1)[0], 0) + n
        return out

    assert max(groups(query(target, three_way / "one", fraction=0.6, method="nait").table).values()) > 0.1 * budget
    capped = [query(target, three_way / layout, fraction=0.6, method="nait", group_by="docid-prefix",
                    max_group_share=0.1).table for layout in ("one", "three")]
    assert capped[0].equals(capped[1]) and len(capped[0]) > 0
    assert max(groups(capped[0]).values()) <= int(0.1 * budget)
    scores = _scores(three_way)
    assert capped[0].column("score").to_pylist() == [scores[d] for d in capped[0].column("docid").to_pylist()]

    sci = {"file": str(golden_dir / "data/target/target.parquet"), "filter": {"dataset": "sci_target"}}
    union = [query([target, sci], three_way / layout, k=20, method="nait", mode="union").table
             for layout in ("one", "three")]
    assert union[0].equals(union[1])
    docids = union[0].column("docid").to_pylist()
    assert len(docids) == 20 == len(set(docids))  # turns without duplicates
    assert set(union[0].column("target").to_pylist()) == {"target", "target[dataset=sci_target]"}


@pytest.mark.parametrize("options", [{"fraction": 0.4}, {"k": 45}, {"fraction": 0.4, "sample": True, "seed": 2}])
def test_parts_written_by_the_shards_are_the_one_file_selection(three_way, tmp_path, options):
    """``-o DIR``: the parts the shards write, sorted by rank, are the one-file selection, on 1 and 3 shards."""
    import pyarrow.parquet as pq

    target = {"file": str(three_way / "target.jsonl")}
    query(target, three_way / "one", out=tmp_path / "one.parquet", method="nait", **options)
    want = pq.read_table(tmp_path / "one.parquet")
    assert want.num_rows > 0
    for layout in ("one", "three"):
        res = query(target, three_way / layout, out=tmp_path / f"parts-{layout}", method="nait", **options)
        assert res.parts and pq.read_table(tmp_path / f"parts-{layout}").sort_by("rank").equals(want), layout


def test_targets_show_prints_the_directions_of_a_target_file(three_way, nag_only):
    """``targets show --target-file F --method nait --index I``: the directions a query of that file uses."""
    from nagindex.query.nait import directions_key

    runner = CliRunner()
    path = three_way / "target.jsonl"
    out = runner.invoke(main, ["targets", "show", "--target-file", str(path), "--method", "nait", "--index",
                               str(three_way / "one")])
    assert out.exit_code == 0, out.output
    texts = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    manifest = json.loads((three_way / "one" / "index_info.json").read_text())["manifest"]
    cached = np.load(three_way / "one" / "targets" / f"nait-{directions_key(texts, manifest)}.npy")
    lines = [line for line in out.output.splitlines() if line.startswith(("target:", "layer"))]
    assert lines[0].startswith("target: NAIT directions of 6 examples from") and len(lines) == 5
    for layer, line in enumerate(lines[1:]):
        big = int(np.argmax(np.abs(cached[layer])))
        assert line.startswith(f"layer {layer:>3}: {big}:{cached[layer][big]:+.3f}, ")
    out = runner.invoke(main, ["targets", "show", "--target-file", str(path), "--method", "nait", "--index",
                               str(nag_only)])
    assert out.exit_code != 0 and f"index {nag_only} holds no NAIT features" in out.output
    out = runner.invoke(main, ["targets", "show", "arc_challenge", "--target-file", str(path)])
    assert out.exit_code != 0 and "give one target" in out.output
    out = runner.invoke(main, ["targets", "show", "--target-file", str(path), "-n", "1"])  # NAG: the examples
    assert out.exit_code == 0 and out.output.startswith("target: 6 examples from") and texts[0] in out.output
