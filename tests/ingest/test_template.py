"""``ingest --text-template``: records that are not one text field, rendered in the target registry's sandbox."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from nagindex.encode.extract import NagExtractor
from nagindex.errors import IndexMismatchError, InputError
from nagindex.index.sharded import open_index
from nagindex.index.store import IndexStore
from nagindex.ingest.run import ingest
from tests.sources.test_read import write_hf_folder

SETTINGS = {"top_k": 8, "max_length": 64}
ALPACA = "### Instruction:\n{{ instruction }}\n{% if input %}\n### Input:\n{{ input }}\n{% endif %}\n### Response:\n{{ output }}"
CHAT = "{% for m in messages %}{% if not loop.first %}\n{% endif %}<|{{ m.role }}|>\n{{ m.content }}{% endfor %}"
ALPACA_ROWS = [
    {"id": "a0", "instruction": "Name the largest planet.", "input": "", "output": "Jupiter is the largest planet."},
    {"id": "a1", "instruction": "Summarize the text.", "input": "Leaves turn sunlight into energy.",
     "output": "Plants make energy from light."},
    {"id": "a2", "instruction": "Translate to French.", "input": "the river", "output": "la rivière"},
]
ALPACA_TEXTS = [
    "### Instruction:\nName the largest planet.\n\n### Response:\nJupiter is the largest planet.",
    ("### Instruction:\nSummarize the text.\n\n### Input:\nLeaves turn sunlight into energy.\n\n"
     "### Response:\nPlants make energy from light."),
    "### Instruction:\nTranslate to French.\n\n### Input:\nthe river\n\n### Response:\nla rivière",
]
CHAT_ROWS = [
    {"id": "c0", "messages": [{"role": "user", "content": "Why is the sky blue?"},
                              {"role": "assistant", "content": "Air scatters blue light most."}]},
    {"id": "c1", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                              {"role": "assistant", "content": "4"}]},
]
CHAT_TEXTS = [
    "<|user|>\nWhy is the sky blue?\n<|assistant|>\nAir scatters blue light most.",
    "<|system|>\nBe brief.\n<|user|>\n2+2?\n<|assistant|>\n4",
]


@pytest.fixture(scope="module")
def extractor(tiny_backbone):
    return NagExtractor(tiny_backbone, ("fwd_up",), batch_size=4, **SETTINGS)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def rows_of(index_dir: Path) -> list[tuple]:
    """Every row's docid, NAG, token count and position, in row order."""
    view = open_index(index_dir)
    return [(view.docids.take([i])[0], np.asarray(view.codes[i]).tobytes(), int(view.token_counts[i]),
             int(view.positions[i])) for i in range(len(view))]


@pytest.mark.parametrize("rows, template, texts", [(ALPACA_ROWS, ALPACA, ALPACA_TEXTS), (CHAT_ROWS, CHAT, CHAT_TEXTS)],
                         ids=["alpaca", "chat"])
def test_records_encode_as_their_rendered_text(extractor, tmp_path, rows, template, texts):
    """Rendered exactly as expected, and encoded to the NAGs of that text given as a plain text field."""
    from nagindex.sources.read import iter_records

    records = write_jsonl(tmp_path / "records.jsonl", rows)
    assert [d.text for d in iter_records(records, id_field="id", text_template=template)] == texts
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"id": r["id"], "text": t} for r, t in zip(rows, texts)])
    res = ingest([records], tmp_path / "templated", text_template=template, extractor=extractor, backbone="m",
                 **SETTINGS)
    ingest([plain], tmp_path / "plain", text_field="text", extractor=extractor, backbone="m", **SETTINGS)
    assert (res.added, res.rejects) == (len(rows), 0)
    assert res.fields["text"] == {"--text-template": len(rows)}
    assert rows_of(tmp_path / "templated") == rows_of(tmp_path / "plain")
    with IndexStore.open(tmp_path / "templated") as store:
        assert store.manifest["text_template"] == template


def test_jsonl_parquet_and_hf_folders_give_the_same_index(extractor, tmp_path):
    """Columnar inputs render whole rows (nested ``messages`` included) exactly as JSONL records."""
    rows = [{"id": r["id"], "instruction": r["instruction"], "input": r["input"], "output": r["output"],
             "messages": [{"role": "user", "content": r["instruction"]}]} for r in ALPACA_ROWS]
    template = ALPACA + "{% for m in messages %} ({{ m.role }}){% endfor %}"
    write_jsonl(tmp_path / "c.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet", row_group_size=2)
    write_hf_folder(tmp_path / "hf", [pa.Table.from_pylist(rows[:2]), pa.Table.from_pylist(rows[2:])])
    for name in ("c.jsonl", "c.parquet", "hf"):
        res = ingest([tmp_path / name], tmp_path / f"idx-{name}", text_template=template, extractor=extractor,
                     backbone="m", **SETTINGS)
        assert (res.added, res.rejects) == (3, 0), name
    assert rows_of(tmp_path / "idx-c.jsonl") == rows_of(tmp_path / "idx-c.parquet") == rows_of(tmp_path / "idx-hf")


def test_a_record_the_template_fails_on_is_a_counted_reject(extractor, tmp_path):
    rows = [CHAT_ROWS[0], {"id": "no-messages"}, {"id": "string", "messages": "hello"}, {"id": "none", "messages": []},
            CHAT_ROWS[1]]
    res = ingest([write_jsonl(tmp_path / "chat.jsonl", rows)], tmp_path / "idx", text_template=CHAT,
                 extractor=extractor, backbone="m", **SETTINGS)
    assert (res.added, res.rejects) == (2, 3)
    assert res.reject_reasons == {"text template failed": 2, "empty document": 1}
    lines = [json.loads(x) for x in (tmp_path / "idx" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line_or_row"], r["docid"]) for r in lines] == [(2, "no-messages"), (3, "string"), (4, "none")]
    assert lines[0]["reason"] == "text template failed: UndefinedError: 'messages' is undefined"
    assert lines[1]["reason"] == "text template failed: UndefinedError: 'str object' has no attribute 'role'"


def test_the_sandbox_refuses_dunder_attributes(extractor, tmp_path):
    records = write_jsonl(tmp_path / "a.jsonl", ALPACA_ROWS)
    res = ingest([records], tmp_path / "idx", text_template="{{ instruction.__class__.__mro__ }}",
                 extractor=extractor, backbone="m", **SETTINGS)
    assert (res.added, res.rejects) == (0, 3)
    reason = json.loads((tmp_path / "idx" / "rejects.jsonl").read_text().splitlines()[0])["reason"]
    assert reason == "text template failed: SecurityError: access to attribute '__class__' of 'str' object is unsafe."


def test_a_bad_template_fails_before_any_work(tmp_path):
    records = write_jsonl(tmp_path / "a.jsonl", ALPACA_ROWS)
    with pytest.raises(InputError, match=r"--text-template: invalid Jinja \(line 1\)"):
        ingest([records], tmp_path / "idx", text_template="{{ instruction ", backbone="m", **SETTINGS)
    with pytest.raises(InputError, match="--text-field text and --text-template exclude each other"):
        ingest([records], tmp_path / "idx", text_field="text", text_template=ALPACA, backbone="m", **SETTINGS)
    assert not (tmp_path / "idx").exists()


def test_cli_reads_a_template_file_and_refuses_it_with_text_field(golden_dir, tmp_path):
    from nagindex.cli import main

    records = write_jsonl(tmp_path / "a.jsonl", ALPACA_ROWS)
    (tmp_path / "alpaca.j2").write_text(ALPACA + "\n", encoding="utf-8")
    args = ["ingest", str(records), "--index", str(tmp_path / "idx"), "--backbone", str(golden_dir / "model"),
            "--top-k", "8", "--max-length", "64", "--device", "cpu"]
    both = CliRunner().invoke(main, [*args, "--text-field", "text", "--text-template", ALPACA])
    assert both.exit_code == 2 and "--text-field and --text-template exclude each other" in both.output
    bad = CliRunner().invoke(main, [*args, "--text-template", "{% if %}"])
    assert bad.exit_code == 1 and "Error: --text-template: invalid Jinja" in bad.output
    ok = CliRunner().invoke(main, [*args, "--text-template", f"@{tmp_path / 'alpaca.j2'}"])
    assert ok.exit_code == 0, ok.output
    assert "+3 documents" in ok.output and "text from '--text-template'" in ok.output
    with IndexStore.open(tmp_path / "idx") as store:
        assert store.manifest["text_template"] == ALPACA  # the file's last newline is Jinja's to drop


def test_an_append_with_another_template_or_none_is_refused(extractor, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ALPACA_ROWS[:2])
    b = write_jsonl(tmp_path / "b.jsonl", ALPACA_ROWS[2:])
    ingest([a], tmp_path / "idx", text_template=ALPACA, extractor=extractor, backbone="m", **SETTINGS)
    with pytest.raises(IndexMismatchError, match=r"text_template: index has '### Instruction.*', requested '\{\{"):
        ingest([b], tmp_path / "idx", text_template="{{ instruction }}", extractor=extractor, backbone="m", **SETTINGS)
    with pytest.raises(IndexMismatchError, match="requested None"):
        ingest([b], tmp_path / "idx", extractor=extractor, backbone="m", **SETTINGS)
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"id": "p", "text": "a plain text"}])
    ingest([plain], tmp_path / "plain-idx", extractor=extractor, backbone="m", **SETTINGS)
    with pytest.raises(IndexMismatchError, match="text_template: index has None"):
        ingest([b], tmp_path / "plain-idx", text_template=ALPACA, extractor=extractor, backbone="m", **SETTINGS)
    res = ingest([b], tmp_path / "idx", text_template=ALPACA, extractor=extractor, backbone="m", **SETTINGS)
    assert (res.added, res.rows) == (1, 3)  # the same template appends


def test_texts_read_back_are_the_rendered_texts(extractor, golden_dir, tmp_path):
    """``--with-text`` (and so decontamination, which reads texts the same way) renders the manifest's template."""
    from nagindex.query.run import query
    from nagindex.sources.fetch import fetch_texts, text_options

    records = write_jsonl(tmp_path / "chat.jsonl", [{"id": "bad"}, *CHAT_ROWS])
    ingest([records], tmp_path / "idx", text_template=CHAT, extractor=extractor, backbone="m", **SETTINGS)
    target = {"features": str(golden_dir / "features_fwd_up_only/target/target.jsonl")}
    got = query(target, tmp_path / "idx", k=2, with_text=True).table.to_pydict()
    by_id = dict(zip(("c0", "c1"), CHAT_TEXTS))
    assert sorted(got["docid"]) == ["c0", "c1"] and got["text"] == [by_id[d] for d in got["docid"]]
    view = open_index(tmp_path / "idx")
    rows = np.array([1, 0])
    texts = fetch_texts([view.sources[i] for i in np.asarray(view.source_ids)[rows]], np.asarray(view.positions)[rows],
                        view.docids.take(rows), **text_options(view.manifest))
    assert texts == [CHAT_TEXTS[1], CHAT_TEXTS[0]]


def test_sharded_ingest_renders_in_every_worker(golden_dir, tmp_path):
    """``--shards 2`` (local worker processes) gives the rows of one shard; the catalog refuses another template."""
    root = tmp_path / "corpus"
    root.mkdir()
    write_jsonl(root / "a.jsonl", ALPACA_ROWS[:2])
    write_jsonl(root / "b.jsonl", ALPACA_ROWS[2:] + [{"id": "no-output", "instruction": "x", "input": ""}])
    settings = {"backbone": str(golden_dir / "model"), "device": "cpu", "text_template": ALPACA, **SETTINGS}
    one = ingest([root], tmp_path / "one", **settings)
    many = ingest([root], tmp_path / "many", shards=2, **settings)
    assert (many.added, many.rejects) == (one.added, one.rejects) == (3, 1)

    def rows(index_dir: Path) -> list[tuple]:
        view = open_index(index_dir)
        return sorted((view.docids.take([i])[0], np.asarray(view.codes[i]).tobytes(), int(view.token_counts[i]),
                       int(view.positions[i]), view.sources[int(view.source_ids[i])]) for i in range(len(view)))

    assert rows(tmp_path / "many") == rows(tmp_path / "one")
    with pytest.raises(IndexMismatchError, match="text_template: index has '### Instruction.*', this ingest has None"):
        ingest([root], tmp_path / "many", **{**settings, "text_template": None})


def test_extract_renders_the_template_and_stops_at_a_record_it_fails_on(extractor, golden_dir, tmp_path):
    """``extract --text-template`` writes the features of the rendered texts; a record the template
    fails on is an error naming it (a feature file has a line per document), and nothing is written."""
    from nagindex.cli import main
    from nagindex.ingest.run import extract_files

    records = write_jsonl(tmp_path / "a.jsonl", ALPACA_ROWS)
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"id": r["id"], "text": t} for r, t in zip(ALPACA_ROWS, ALPACA_TEXTS)])
    assert extract_files([records], tmp_path / "t.jsonl", id_field="id", text_template=ALPACA, extractor=extractor) == 3
    extract_files([plain], tmp_path / "p.jsonl", id_field="id", extractor=extractor)
    assert (tmp_path / "t.jsonl").read_bytes() == (tmp_path / "p.jsonl").read_bytes()
    chat = write_jsonl(tmp_path / "chat.jsonl", [CHAT_ROWS[0], {"id": "no-messages"}, CHAT_ROWS[1]])
    with pytest.raises(InputError, match=r"chat.jsonl:2 \(docid .no-messages.\): text template failed: UndefinedError"):
        extract_files([chat], tmp_path / "c.jsonl", id_field="id", text_template=CHAT, extractor=extractor)
    assert not (tmp_path / "c.jsonl").exists()
    (tmp_path / "alpaca.j2").write_text(ALPACA + "\n", encoding="utf-8")
    args = ["extract", str(records), "--id-field", "id", "--backbone", str(golden_dir / "model"),
            "--top-k", "8", "--max-length", "64", "--device", "cpu", "-o"]
    ok = CliRunner().invoke(main, [*args, str(tmp_path / "cli.jsonl"), "--text-template", f"@{tmp_path / 'alpaca.j2'}"])
    assert ok.exit_code == 0 and "wrote 3 documents" in ok.output, ok.output
    both = CliRunner().invoke(main, [*args, str(tmp_path / "x.jsonl"), "--text-field", "text", "--text-template", ALPACA])
    assert both.exit_code == 2 and "--text-field and --text-template exclude each other" in both.output
