"""``--with-text`` attaches a text only when it is provably the indexed document's."""
from __future__ import annotations

import json
import os

import pytest

from nagindex.errors import InputError
from nagindex.query.run import query

WORDS = ["river", "forest", "energy", "leaves", "orbit", "planet", "cell", "water"]


@pytest.fixture()
def indexed(tiny_backbone, golden_dir, tmp_path):
    from nagindex.encode.extract import NagExtractor
    from nagindex.ingest import run as ingest_run

    corpus = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"docid": f"d{i}", "doc": f"the {WORDS[i]} and the {WORDS[-1 - i]} story {i}"})
             for i in range(8)]
    corpus.write_text("\n".join(lines) + "\n")
    ex = NagExtractor(tiny_backbone, top_k=8, max_length=64)
    ingest_run.ingest([corpus], tmp_path / "idx", backbone=str(golden_dir / "model"), top_k=8, max_length=64,
                      extractor=ex)
    target = {"features": str(golden_dir / "features_fwd_up_only/target/target.jsonl")}
    return corpus, lines, tmp_path / "idx", target


def test_texts_are_attached_when_the_source_is_unchanged(indexed):
    corpus, lines, idx, target = indexed
    got = query(target, idx, k=8, with_text=True).table.to_pydict()
    by_id = {json.loads(x)["docid"]: json.loads(x)["doc"] for x in lines}
    assert got["text"] == [by_id[d] for d in got["docid"]] and len(got["text"]) == 8


def test_a_changed_source_is_an_error_naming_it(indexed):
    corpus, lines, idx, target = indexed
    with open(corpus, "a") as fh:
        fh.write(json.dumps({"docid": "late", "doc": "appended later"}) + "\n")
    with pytest.raises(InputError, match=rf"{corpus} changed since it was ingested"):
        query(target, idx, k=3, with_text=True)
    assert len(query(target, idx, k=3)) == 3  # without texts the index still answers


def test_records_moved_under_the_same_size_and_time_are_caught_by_docid(indexed):
    corpus, lines, idx, target = indexed
    st = os.stat(corpus)
    swapped = [lines[1], lines[0], *lines[2:]]  # same bytes, two records swapped
    corpus.write_text("\n".join(swapped) + "\n")
    os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(InputError, match=r"the record at position [01] is 'd[01]', not the indexed 'd[01]'"):
        query(target, idx, k=8, with_text=True)


def test_a_vanished_source_is_an_error(indexed):
    corpus, _, idx, target = indexed
    corpus.unlink()
    with pytest.raises(InputError, match=rf"{corpus}: cannot read the source of 8 selected document"):
        query(target, idx, k=8, with_text=True)
