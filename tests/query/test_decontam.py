"""Decontamination with real benchmark text: planted ARC-Challenge and HellaSwag examples are found
verbatim, re-cased and re-punctuated, and inside longer passages; near misses on the same topic stay."""
from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from nagindex.query.decontam import Benchmarks, Example, load_benchmarks, normalize
from nagindex.query.run import query


@pytest.fixture(scope="module")
def guard():
    return load_benchmarks(["arc_challenge", "hellaswag"])


def _test_question(guard) -> str:
    """A real ARC-Challenge test-split question (from the package's offline request file)."""
    bench, _ = guard
    from nagindex.query.decontam import test_requests

    (_, ids, texts), = list(test_requests("arc_challenge"))
    return texts[0]


def test_reads_every_split_here(guard):
    _, read = guard
    assert read == ["arc_challenge/validation (299)", "arc_challenge/test (1,172)", "hellaswag/validation (10,042)"]


def test_copies_are_found_in_every_disguise(guard):
    bench, _ = guard
    question = _test_question(guard)
    from nagindex.query.decontam import _registry_splits

    (_, _, swag), = list(_registry_splits("hellaswag"))
    plants = {
        "verbatim": question,
        "recased": question.upper().replace("?", " ?!").replace(",", ";"),
        "embedded": "Our unit on planets went well. " + question + " Students then wrote essays for an hour.",
        "hellaswag": "Transcript. " + swag[17] + " The end.",
    }
    for how, text in plants.items():
        hit = bench.match(text)
        assert hit is not None, how
        example = bench.examples[hit[0]]
        assert example.benchmark == ("hellaswag" if how == "hellaswag" else "arc_challenge")
        assert len(hit[1].split()) == 13 and hit[1] in normalize(text)
    assert bench.examples[bench.match(question)[0]].split == "test"


def test_near_misses_are_kept(guard):
    bench, _ = guard
    words = normalize(_test_question(guard)).split()
    near = " ".join(w if i % 6 else "indeed" for i, w in enumerate(words))  # same topic, no 13-word run
    assert len(words) >= 13 and bench.match(near) is None
    assert bench.match("Planets rotate; meteorites impact planets; astronomers observe rotation and days.") is None


def test_short_examples_match_on_their_whole_text():
    bench = Benchmarks.build([(Example("b", "test", "1"), "What is the boiling point?"),
                              (Example("b", "test", "2"), "one two three four five six seven eight nine ten eleven "
                                                          "twelve thirteen fourteen")], n=13)
    assert bench.match("so, WHAT is the boiling point?! nobody knew")[1] == "what is the boiling point"
    assert bench.match("what is the point") is None
    assert bench.match("x one two three four five six seven eight nine ten eleven twelve thirteen y")[0] == 1
    assert bench.match("one two three four five six seven eight nine ten eleven twelve") is None


@pytest.fixture()
def planted_index(tiny_backbone, golden_dir, tmp_path, guard):
    """Real passages (the golden pool) plus planted copies of ARC test questions and near misses."""
    from nagindex.encode.extract import NagExtractor
    from nagindex.ingest import run as ingest_run

    pool = pq.read_table(golden_dir / "data/pool/pool.parquet").to_pylist()
    from nagindex.query.decontam import test_requests

    (_, _, questions), = list(test_requests("arc_challenge"))
    rows = [{"docid": r["docid"], "doc": r["doc"]} for r in pool]
    for i, q in enumerate(questions[:6]):
        rows.append({"docid": f"copy{i}", "doc": (q if i % 2 else q.upper()) + " Explain your answer."})
        words = normalize(q).split()
        rows.append({"docid": f"near{i}", "doc": " ".join(w if j % 6 else "maybe" for j, w in enumerate(words))})
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ex = NagExtractor(tiny_backbone, top_k=8, max_length=64)
    ingest_run.ingest([corpus], tmp_path / "idx", backbone=str(golden_dir / "model"), top_k=8, max_length=64,
                      extractor=ex)
    return tmp_path / "idx", ex, len(rows)


def test_query_removes_planted_copies_and_still_meets_k(planted_index, tmp_path, monkeypatch):
    from nagindex.encode import encoder

    idx, ex, n = planted_index
    monkeypatch.setattr(encoder, "build_extractor", lambda *a, **k: ex)
    out = tmp_path / "arc.parquet"
    res = query("arc_challenge", idx, k=n - 6, max_examples=20, out=out)  # all but the 6 copies
    docids = res.table.column("docid").to_pylist()
    assert len(docids) == n - 6 and not [d for d in docids if d.startswith("copy")]
    assert sum(d.startswith("near") for d in docids) == 6  # near misses stay
    found = pq.read_table(tmp_path / "arc.parquet.contamination.parquet").to_pydict()
    assert sorted(found["docid"]) == [f"copy{i}" for i in range(6)]
    assert set(found["benchmark"]) == {"arc_challenge"} and set(found["split"]) == {"test"}
    assert all(len(g.split()) == 13 for g in found["ngram"])
    manifest = json.loads((tmp_path / "arc.parquet.manifest.json").read_text())
    assert manifest["decontamination"]["removed"] == 6 and manifest["decontamination"]["ngram"] == 13
    assert any(re.search(r"decontamination: 6 document", note) for note in res.notes)
    kept = query("arc_challenge", idx, k=n - 6, max_examples=20, decontaminate=False).table
    assert sum(d.startswith("copy") for d in kept.column("docid").to_pylist()) > 0


def test_file_targets_opt_in(planted_index, golden_dir, tmp_path, monkeypatch):
    from nagindex.encode import encoder

    idx, ex, n = planted_index
    monkeypatch.setattr(encoder, "build_extractor", lambda *a, **k: ex)
    target = {"file": str(golden_dir / "data/target/target.parquet")}
    plain = query(target, idx, k=n).table
    assert plain.num_rows == n  # no decontamination unless asked
    guarded = query(target, idx, k=n, decontaminate_against="arc_challenge").table
    assert guarded.num_rows == n - 6 and guarded.num_rows == len(set(guarded.column("docid").to_pylist()))
