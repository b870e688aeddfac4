"""A moved or copied corpus: queries that need its texts say what needed them and how to re-attach it, and
``nagindex sources --move`` re-attaches it after checking every record by docid at its position (refusing a
copy that differs), on one-folder and sharded indexes."""
from __future__ import annotations

import json
import re
import shutil

import pytest
from click.testing import CliRunner

from nagindex.cli import main
from nagindex.errors import InputError
from nagindex.index.catalog import load_catalog
from nagindex.ingest.relocate import Reattached, reattach_sources, source_states
from nagindex.query.run import query
from tests.query import pools

WORDS = ["river", "forest", "energy", "leaves", "orbit", "planet", "cell", "water", "stone", "cloud"]


@pytest.fixture()
def indexed(tiny_backbone, golden_dir, tmp_path, monkeypatch):
    """A corpus folder of two files ingested with the tiny backbone (which also encodes registry targets)."""
    from nagindex.encode import encoder
    from nagindex.encode.extract import NagExtractor
    from nagindex.ingest import run as ingest_run

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, first in (("a.jsonl", 0), ("b.jsonl", 5)):
        (corpus / name).write_text("".join(json.dumps({"docid": f"{name[0]}{i}", "doc": f"the {WORDS[i]} and the "
                                                                                       f"{WORDS[-1 - i]} story {i}"})
                                           + "\n" for i in range(first, first + 5)))
    ex = NagExtractor(tiny_backbone, top_k=8, max_length=64)
    ingest_run.ingest([corpus], tmp_path / "idx", backbone=str(golden_dir / "model"), top_k=8, max_length=64,
                      extractor=ex)
    monkeypatch.setattr(encoder, "build_extractor", lambda *a, **k: ex)
    target = {"features": str(golden_dir / "features_fwd_up_only/target/target.jsonl")}
    return corpus, tmp_path / "idx", target


def _without_source(table):
    return table.drop_columns(["source"])


def test_a_moved_corpus_names_what_needed_its_texts_and_the_switch_that_does_without(indexed, tmp_path):
    corpus, idx, target = indexed
    shutil.move(corpus, tmp_path / "moved")
    a = corpus / "a.jsonl"
    with pytest.raises(InputError) as caught:
        query("arc_challenge", idx, k=4, max_examples=5)  # decontamination, on by default, reads the texts
    assert str(caught.value).startswith(f"{a}: cannot read the source of ")
    assert str(caught.value).endswith(f"re-attach it where it is now (`nagindex sources --index IDX --move {a} "
                                      "NEW_PATH`, or a folder of it and the new folder). The texts are needed by "
                                      "decontamination against arc_challenge: pass --no-decontaminate to select "
                                      "without them")
    assert "--with-text" not in str(caught.value)
    with pytest.raises(InputError, match=re.escape("The texts are needed by --with-text and by decontamination "
                                                   "against arc_challenge: drop --with-text and pass "
                                                   "--no-decontaminate to select without them")):
        query("arc_challenge", idx, k=4, max_examples=5, with_text=True)
    with pytest.raises(InputError, match=re.escape("The texts are needed by --with-text: drop --with-text to select "
                                                   "without them")) as caught:
        query(target, idx, k=4, with_text=True)
    assert "decontaminat" not in str(caught.value)
    assert len(query("arc_challenge", idx, k=4, max_examples=5, decontaminate=False)) == 4


def test_sources_moved_are_listed_then_reattached_and_read_as_before(indexed, tmp_path):
    corpus, idx, target = indexed
    before = query(target, idx, k=10, with_text=True).table
    runner = CliRunner()
    listed = runner.invoke(main, ["sources", "--index", str(idx)])
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines() == [f"unchanged             5  {corpus / 'a.jsonl'}",
                                          f"unchanged             5  {corpus / 'b.jsonl'}", "2 sources: 2 unchanged"]
    moved = tmp_path / "elsewhere" / "corpus"
    shutil.copytree(corpus, moved, copy_function=shutil.copy)  # a copy: new modification times
    shutil.rmtree(corpus)
    assert [s.state for s in source_states(idx)] == ["missing", "missing"]
    res = runner.invoke(main, ["sources", "--index", str(idx), "--move", str(corpus), str(moved)])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == [f"re-attached {corpus / 'a.jsonl'} -> {moved / 'a.jsonl'} (5 records checked)",
                                       f"re-attached {corpus / 'b.jsonl'} -> {moved / 'b.jsonl'} (5 records checked)"]
    assert [(s.path, s.state) for s in source_states(idx)] == [(str(moved / "a.jsonl"), "unchanged"),
                                                               (str(moved / "b.jsonl"), "unchanged")]
    after = query(target, idx, k=10, with_text=True).table
    assert _without_source(after).equals(_without_source(before))
    assert after.column("source").to_pylist() == [s.replace(str(corpus), str(moved))
                                                  for s in before.column("source").to_pylist()]


def test_a_copy_whose_records_differ_is_refused_naming_the_file_and_record(indexed, tmp_path):
    corpus, idx, target = indexed
    copy = tmp_path / "copy"
    shutil.copytree(corpus, copy)
    lines = (copy / "b.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"b7"', '"b7-edited"')
    (copy / "b.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=re.escape(
            f"{copy / 'b.jsonl'}: the record at position 2 is 'b7-edited', not the indexed 'b7': it does not hold "
            f"the records indexed from {corpus / 'b.jsonl'}; nothing was re-attached")):
        reattach_sources(idx, {str(corpus): str(copy)})
    (copy / "b.jsonl").write_text("\n".join(lines[:3]) + "\n")  # cut short
    with pytest.raises(InputError, match=re.escape(f"{copy / 'b.jsonl'}: the record at position 2 is 'b7-edited'")):
        reattach_sources(idx, {str(corpus): str(copy)})
    (copy / "b.jsonl").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(InputError, match=re.escape(f"{copy / 'b.jsonl'}: the record at position 2 is missing (the "
                                                   "file ends before it), not the indexed 'b7'")):
        reattach_sources(idx, {str(corpus): str(copy)})
    assert [s.path for s in source_states(idx)] == [str(corpus / "a.jsonl"), str(corpus / "b.jsonl")]
    assert len(query(target, idx, k=10, with_text=True)) == 10  # the originals still serve


def test_a_touched_source_is_checked_in_place(indexed):
    import os

    corpus, idx, target = indexed
    before = query(target, idx, k=10, with_text=True).table
    os.utime(corpus / "a.jsonl", (1_000_000_000, 1_000_000_000))
    with pytest.raises(InputError, match=re.escape(f"`nagindex sources --index IDX --move {corpus / 'a.jsonl'} "
                                                   f"{corpus / 'a.jsonl'}` checks every record")):
        query(target, idx, k=10, with_text=True)
    assert reattach_sources(idx, {str(corpus / "a.jsonl"): str(corpus / "a.jsonl")}) == [
        Reattached(str(corpus / "a.jsonl"), str(corpus / "a.jsonl"), 5, False)]
    assert query(target, idx, k=10, with_text=True).table.equals(before)


def test_a_sharded_index_is_reattached_in_every_shard_and_its_catalog(tmp_path):
    corpus = tmp_path / "data"
    files = pools.write_pool(corpus, sizes=(40, 7, 60), texts=lambda docid: f"text of {docid}")
    (tmp_path / "targets").mkdir()
    target = {"features": str(pools.write_targets(tmp_path / "targets")["alpha"])}
    idx = pools.build_index(files, tmp_path / "idx", shards=2)
    before = query(target, idx, k=60, with_text=True).table
    assert len(set(before.column("source").to_pylist())) == 3
    moved = tmp_path / "moved"
    shutil.move(corpus, moved)
    with pytest.raises(InputError, match="cannot read the source of"):
        query(target, idx, k=60, with_text=True)
    done = reattach_sources(idx, {str(corpus): str(moved)})
    assert sorted((r.old, r.new, r.documents) for r in done) == [
        (str(corpus / f"part{i}.jsonl"), str(moved / f"part{i}.jsonl"), n) for i, n in enumerate((40, 7, 60))]
    after = query(target, idx, k=60, with_text=True).table
    assert _without_source(after).equals(_without_source(before))
    catalog = load_catalog(idx)
    assert sorted(i["key"] for i in catalog.inputs) == [str(moved / f"part{i}.jsonl") for i in range(3)]
    assert {s.state for s in source_states(idx)} == {"unchanged"}


def test_a_split_input_keeps_its_parts_sizes_when_reattached(golden_dir, tmp_path):
    """An input split over the shards at ingest is one catalog entry per shard, each recording the bytes of its
    parts: a moved copy keeps them (not the whole file's size on every entry), and reads back as before."""
    from nagindex.ingest.run import ingest

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = {f"s{i}": f"the {WORDS[i % 10]} and the {WORDS[-1 - i % 10]} story number {i}" for i in range(60)}
    big = corpus / "big.jsonl"
    big.write_text("".join(json.dumps({"docid": d, "doc": t}) + "\n" for d, t in texts.items()))
    idx = tmp_path / "idx"
    ingest([corpus], idx, backbone=str(golden_dir / "model"), shards=3, split_size=800, top_k=8, max_length=64,
           device="cpu", commit_every=5)
    entries = load_catalog(idx).inputs
    assert len(entries) == 3 and all("parts" in e for e in entries)  # really split over the three shards
    assert sum(e["size"] for e in entries) == big.stat().st_size
    moved = tmp_path / "moved"
    shutil.copytree(corpus, moved, copy_function=shutil.copy)  # a copy: new modification times
    shutil.rmtree(corpus)
    res = CliRunner().invoke(main, ["sources", "--index", str(idx), "--move", str(corpus), str(moved)])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == [f"re-attached {big} -> {moved / 'big.jsonl'} (60 records checked)"]
    listed = CliRunner().invoke(main, ["sources", "--index", str(idx)])
    assert listed.output.splitlines() == [f"unchanged            60  {moved / 'big.jsonl'}", "1 source: 1 unchanged"]
    assert load_catalog(idx).inputs == [{**e, "key": str(moved / "big.jsonl")} for e in entries]
    target = {"features": str(golden_dir / "features_fwd_up_only/target/target.jsonl")}
    table = query(target, idx, k=60, with_text=True).table
    assert dict(zip(table.column("docid").to_pylist(), table.column("text").to_pylist())) == texts
