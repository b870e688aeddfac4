"""The ingest driver: golden parity, encode-once, bad input, and kill -9 then resume."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from nagindex.errors import IndexMismatchError, InputError
from nagindex.encode.extract import NagExtractor
from nagindex.index.sharded import open_index
from nagindex.ingest.run import extract_files, ingest
from nagindex.index.store import IndexStore

SETTINGS = dict(top_k=8, max_length=64)


@pytest.fixture(scope="module")
def extractor(tiny_backbone):
    return NagExtractor(tiny_backbone, ("fwd_up",), batch_size=4, **SETTINGS)


@pytest.fixture()
def corpus(golden_dir, tmp_path) -> Path:
    """The golden pool as JSONL in two files, with bad records sprinkled in."""
    pool = pq.read_table(golden_dir / "data/pool/pool.parquet").to_pylist()
    root = tmp_path / "corpus"
    root.mkdir()
    lines = [json.dumps({"docid": r["docid"], "doc": r["doc"]}) for r in pool]
    bad = ['{"docid": "broken", "doc": ', json.dumps({"docid": "empty", "doc": "  "}),
           json.dumps({"docid": "pool_03", "doc": "a duplicate id"}), json.dumps({"docid": "notext"})]
    first = lines[:8] + bad[:2]
    second = lines[8:] + bad[2:]
    (root / "a.jsonl").write_text("\n".join(first) + "\n")
    (root / "b.jsonl").write_text("\n".join(second) + "\n")
    return root


def snapshot(index_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[tuple]]:
    view = open_index(index_dir)
    with IndexStore.open(index_dir) as store:
        rejects = sorted((r.source, r.position, r.reason) for r in store.rejects())
    return view.docids.take(range(len(view))), np.array(view.codes), np.array(view.token_counts), rejects


def _golden_codes(golden_dir: Path) -> dict[str, list[int]]:
    lines = (golden_dir / "features_fwd_up_only/pool/pool.jsonl").read_text().splitlines()
    return {r["docid"]: r["fwd_up_feature"]["layer_topk_value_index"] for r in map(json.loads, lines)}


def test_ingest_matches_reference_and_counts_rejects(extractor, corpus, golden_dir, tmp_path):
    idx = tmp_path / "idx"
    res = ingest([corpus], idx, backbone=str(golden_dir / "model"), extractor=extractor, commit_every=3, **SETTINGS)
    assert (res.added, res.rejects) == (15, 4)
    assert res.reject_reasons == {"malformed JSON": 1, "whitespace-only document": 1, "duplicate id": 1,
                                  "missing text field 'doc'": 1}
    docids, codes, tokens, rejects = snapshot(idx)
    golden = _golden_codes(golden_dir)
    assert docids == sorted(golden)  # input order = golden order here
    assert [codes[i].ravel().tolist() for i in range(15)] == [golden[d] for d in docids]
    texts = pq.read_table(golden_dir / "data/pool/pool.parquet").column("doc").to_pylist()
    assert tokens.tolist() == extractor.tokenize(texts)[1]  # full, untruncated token counts
    reasons = {r[2] for r in rejects}
    assert "duplicate id" in reasons and "whitespace-only document" in reasons
    lines = (idx / "rejects.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all({"source", "line_or_row", "reason", "docid"} <= set(json.loads(x)) for x in lines)
    # the same input again adds nothing and loads no model
    again = ingest([corpus], idx, backbone=str(golden_dir / "model"), extractor=None, **SETTINGS)
    assert (again.added, again.skipped_inputs, again.rows) == (0, 2, 15)


def test_sources_are_absolute_so_texts_read_back_from_anywhere(extractor, corpus, tmp_path, monkeypatch):
    """An index made with a relative input path still finds its texts when used from another folder."""
    from nagindex.sources.fetch import fetch_texts

    monkeypatch.chdir(corpus.parent)
    ingest(["corpus"], "idx", extractor=extractor, backbone="m", **SETTINGS)
    monkeypatch.chdir(tmp_path.parent)
    view = open_index(tmp_path / "idx")
    assert view.sources == [str(corpus / "a.jsonl"), str(corpus / "b.jsonl")]
    rows = np.array([0, 14])
    texts = fetch_texts([view.sources[i] for i in np.asarray(view.source_ids)[rows]], np.asarray(view.positions)[rows],
                        view.docids.take(rows), text_field="doc", id_field="docid")
    by_id: dict = {}
    for f in ("a", "b"):
        for line in (corpus / f"{f}.jsonl").read_text().splitlines():
            if line.endswith("}"):  # the one malformed line does not
                by_id.setdefault(json.loads(line)["docid"], json.loads(line).get("doc"))  # first wins, as in ingest
    assert texts == [by_id[d] for d in view.docids.take(rows)]


def test_other_settings_are_refused(extractor, corpus, golden_dir, tmp_path):
    idx = tmp_path / "idx"
    ingest([corpus / "a.jsonl"], idx, backbone=str(golden_dir / "model"), extractor=extractor, **SETTINGS)
    with pytest.raises(IndexMismatchError, match="top_k: index has 8, requested 9"):
        ingest([corpus / "b.jsonl"], idx, backbone=str(golden_dir / "model"), top_k=9, max_length=64)
    with pytest.raises(IndexMismatchError, match="neuron_type: index has 'fwd_up', requested 'att_o'"):
        ingest([corpus / "b.jsonl"], idx, backbone=str(golden_dir / "model"), neuron_type="att_o", **SETTINGS)


def test_appending_a_new_input_equals_one_run(extractor, corpus, golden_dir, tmp_path):
    ingest([corpus / "a.jsonl"], tmp_path / "two", extractor=extractor, backbone="m", **SETTINGS)
    ingest([corpus / "b.jsonl"], tmp_path / "two", extractor=extractor, backbone="m", **SETTINGS)
    ingest([corpus], tmp_path / "one", extractor=extractor, backbone="m", **SETTINGS)
    a, b = snapshot(tmp_path / "two"), snapshot(tmp_path / "one")
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2]) and a[3] == b[3]


def test_strict_stops_at_first_bad_record(extractor, corpus, tmp_path):
    with pytest.raises(InputError, match=r"a\.jsonl:9: malformed JSON"):
        ingest([corpus], tmp_path / "idx", extractor=extractor, backbone="m", strict=True, **SETTINGS)


def test_limit_then_resume(extractor, corpus, tmp_path):
    first = ingest([corpus], tmp_path / "idx", extractor=extractor, backbone="m", limit=5, commit_every=3, **SETTINGS)
    assert first.rows == 5
    ingest([corpus], tmp_path / "idx", extractor=extractor, backbone="m", **SETTINGS)
    ingest([corpus], tmp_path / "ref", extractor=extractor, backbone="m", **SETTINGS)
    a, b = snapshot(tmp_path / "idx"), snapshot(tmp_path / "ref")
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and a[3] == b[3]


def test_extract_files_writes_reference_format(extractor, golden_dir, tmp_path):
    out = tmp_path / "pool.jsonl"
    assert extract_files([golden_dir / "data/pool/pool.parquet"], out, extractor=extractor) == 15
    assert out.read_text() == (golden_dir / "features_fwd_up_only/pool/pool.jsonl").read_text()


def test_extract_refuses_to_write_onto_an_input(corpus, tmp_path):
    before = (corpus / "a.jsonl").read_bytes()
    with pytest.raises(InputError, match=r"a\.jsonl is one of the inputs"):
        extract_files([corpus], corpus / "a.jsonl", extractor=object(), **SETTINGS)  # no model is even needed
    assert (corpus / "a.jsonl").read_bytes() == before


def test_index_path_that_is_a_file_is_refused_up_front(corpus, tmp_path):
    from nagindex.errors import NagIndexError

    not_a_folder = tmp_path / "corpus.parquet"
    not_a_folder.write_bytes(b"PAR1")
    with pytest.raises(NagIndexError, match=r"corpus\.parquet is a file; an index is a folder"):
        ingest([corpus], not_a_folder, extractor=object(), backbone="m", **SETTINGS)
    assert not_a_folder.read_bytes() == b"PAR1"


def test_extract_files_names_an_empty_document(extractor, tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text('{"docid": "ok", "doc": "fine text"}\n{"docid": "blank", "doc": ""}\n')
    with pytest.raises(InputError, match=r"docs\.jsonl:2 \(docid 'blank'\): empty document"):
        extract_files([src], tmp_path / "out.jsonl", extractor=extractor)
    assert not (tmp_path / "out.jsonl").exists()


# A real `kill -9` at chosen moments: inside an open LMDB write transaction, and between commits.
_KILLER = textwrap.dedent("""
    import os, signal, sys
    from nagindex.index import store
    from nagindex.cli import main
    mode, n = sys.argv[1], int(sys.argv[2])
    calls = [0]
    original = store.IndexStore._put_progress if mode == "in_txn" else store.IndexStore.append
    def killer(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    setattr(store.IndexStore, "_put_progress" if mode == "in_txn" else "append", killer)
    main(sys.argv[3:])
""")


@pytest.mark.parametrize("mode,n", [("in_txn", 1), ("in_txn", 3), ("between", 5)])
def test_kill_9_then_resume_gives_the_uninterrupted_index(extractor, corpus, golden_dir, tmp_path, mode, n):
    args = ["ingest", str(corpus), "--backbone", str(golden_dir / "model"), "--top-k", "8", "--max-length", "64",
            "--commit-every", "3", "--batch-size", "2", "--device", "cpu"]
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    idx = tmp_path / "idx"
    killed = subprocess.run([sys.executable, str(script), mode, str(n), *args, "--index", str(idx)],
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    with IndexStore.open(idx) as store:
        assert len(store) < 15  # it really stopped part-way
    resumed = subprocess.run([sys.executable, "-m", "nagindex", *args, "--index", str(idx)],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ingest([corpus], tmp_path / "ref", backbone=str(golden_dir / "model"), extractor=extractor,
           commit_every=7, **SETTINGS)
    a, b = snapshot(idx), snapshot(tmp_path / "ref")
    assert a[0] == b[0]
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    assert a[3] == b[3]


@pytest.mark.parametrize("reason, kind", [
    ("invalid UTF-8 at byte 17", "invalid UTF-8"),
    ("malformed JSON: Expecting value at column 3", "malformed JSON"),
    ("unsupported file type (expected one of: .jsonl, .parquet)", "unsupported file type"),
    ("token field 'n' is not a non-negative integer: -3", "token field 'n' is not a non-negative integer"),
    ("missing text field 'doc' (in data-00000-of-00001.arrow)", "missing text field 'doc'"),
    ("duplicate id", "duplicate id"),
])
def test_reject_summary_groups_by_kind(reason, kind):
    """The end-of-run summary counts kinds, not every distinct byte offset or value."""
    from nagindex.ingest.worker import reject_kind

    assert reject_kind(reason) == kind


class _NoTokensFor(NagExtractor):
    """The tiny extractor, except that texts starting with ``SILENT`` tokenize to nothing (as some
    control-character texts do): the documents ingest drops only once it encodes them."""

    def __init__(self, base: NagExtractor) -> None:
        self.__dict__.update(base.__dict__)

    def tokenize(self, texts):
        ids, counts = super().tokenize(texts)
        silent = [t.startswith("SILENT") for t in texts]
        return [[] if s else x for s, x in zip(silent, ids)], [0 if s else c for s, c in zip(silent, counts)]


@pytest.mark.parametrize("second_line", [1, 4], ids=["same window", "next window"])
def test_an_id_dropped_for_no_tokens_is_free_with_or_without_a_crash(extractor, tmp_path, second_line):
    """A document dropped for having no tokens does not claim its id: the later document with that id
    is indexed, in one run and after a crash between the two documents alike."""
    lines = [{"docid": f"d{i}", "doc": f"plain text number {i}"} for i in range(8)]
    lines[0] = {"docid": "shared", "doc": "SILENT nothing to see"}
    lines[second_line] = {"docid": "shared", "doc": "the real document with this id"}
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    enc = _NoTokensFor(extractor)
    kw = dict(extractor=enc, backbone="m", commit_every=3, **SETTINGS)
    ingest([src], tmp_path / "one", **kw)

    real_append, calls = IndexStore.append, [0]

    def crash_after_first_window(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt  # what Ctrl-C does between two commits
        return real_append(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(IndexStore, "append", crash_after_first_window)
        with pytest.raises(KeyboardInterrupt):
            ingest([src], tmp_path / "two", **kw)
    ingest([src], tmp_path / "two", **kw)
    one, two = snapshot(tmp_path / "one"), snapshot(tmp_path / "two")
    assert "shared" in one[0] and one[0].index("shared") == second_line - 1
    assert one[0] == two[0] and np.array_equal(one[1], two[1]) and one[3] == two[3]
    assert [r[2] for r in one[3]] == ["no tokens"]


def test_ids_are_found_as_users_data_has_them(extractor, tmp_path):
    """``{"id": ..., "text": ...}`` (the common HF shape) gives its ids, and the summary says so;
    an id-like field that is not used is warned about instead of silently making path ids."""
    from click.testing import CliRunner

    from nagindex.cli import main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "web.jsonl").write_text("".join(json.dumps({"id": f"web-{i}", "text": f"some web text {i}"}) + "\n"
                                              for i in range(4)))
    res = ingest([corpus], tmp_path / "idx", extractor=extractor, backbone="m", **SETTINGS)
    assert snapshot(tmp_path / "idx")[0] == ["web-0", "web-1", "web-2", "web-3"]
    assert res.fields == {"text": {"text": 4}, "id": {"id": 4}} and res.warnings == []

    (corpus / "urls.jsonl").write_text("".join(json.dumps({"url": f"https://x.org/{i}", "content": "a page"}) + "\n"
                                               for i in range(3)))
    res = ingest([corpus / "urls.jsonl"], tmp_path / "idx", extractor=extractor, backbone="m", **SETTINGS)
    assert res.fields == {"text": {"content": 3}, "id": {"<source>:<line or row>": 3}}
    assert res.warnings == ["3 records carry the field 'url', which looks like an id, but their ids were made from "
                            "their position (<source>:<line or row>): pass --id-field url to use it"]
    out = CliRunner().invoke(main, ["ingest", str(corpus / "urls.jsonl"), "--index", str(tmp_path / "cli"),
                                    "--backbone", str(Path(extractor.backbone.model.name_or_path)),
                                    "--top-k", "8", "--max-length", "64", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "fields: text from 'content'; id from '<source>:<line or row>'" in out.output
    assert "pass --id-field url to use it" in out.output


def test_windows_span_small_inputs(extractor, tmp_path):
    """A folder of one-document files commits in full windows, not one per file; a limit and a crash
    inside a window that spans files resume to the uninterrupted index."""
    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(12):
        (notes / f"n{i:02d}.txt").write_text(f"note number {i} about some topic")
    commits = []
    real_append = IndexStore.append

    def counting_append(self, codes, docids, *args, **kwargs):
        commits.append((len(docids), sorted(kwargs["progress"])))
        return real_append(self, codes, docids, *args, **kwargs)

    kw = dict(extractor=extractor, backbone="m", commit_every=5, **SETTINGS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(IndexStore, "append", counting_append)
        ingest([notes], tmp_path / "one", **kw)
    assert [n for n, _ in commits] == [5, 5, 2] and len(commits[0][1]) == 5  # one commit covers 5 files
    first = ingest([notes], tmp_path / "two", limit=7, **kw)  # stops inside the second window
    assert first.rows == 7
    ingest([notes], tmp_path / "two", **kw)
    assert snapshot(tmp_path / "two")[0] == snapshot(tmp_path / "one")[0] == [f"n{i:02d}.txt" for i in range(12)]
    assert np.array_equal(snapshot(tmp_path / "two")[1], snapshot(tmp_path / "one")[1])
