"""Corpus readers: every format, resume positions, and a counted Reject for every bad record."""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from nagindex.data import Document, Reject
from nagindex.errors import InputError
from nagindex.sources import inputs
from nagindex.sources.inputs import input_files
from nagindex.sources.read import iter_records

ROWS = [{"docid": f"d{i}", "doc": f"text number {i}", "n": i + 1} for i in range(10)]


def jsonl_bytes(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def docs(records) -> list[Document]:
    out = list(records)
    assert all(isinstance(r, Document) for r in out), [r for r in out if isinstance(r, Reject)]
    return out


def spy_row_groups(monkeypatch) -> list[int]:
    """The row groups parquet reads decode from now on, in order."""
    asked: list[int] = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, row_groups=None, **kwargs):
        asked.extend(row_groups)
        return real(self, *args, row_groups=row_groups, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    return asked


def write_hf_folder(folder: Path, tables: list[pa.Table], file_format: bool = False) -> Path:
    """Mimic ``datasets.Dataset.save_to_disk``: data-XXXXX-of-NNNNN.arrow (IPC stream) + state.json."""
    folder.mkdir(parents=True)
    names = [f"data-{i:05d}-of-{len(tables):05d}.arrow" for i in range(len(tables))]
    for name, table in zip(names, tables):
        with pa.OSFile(str(folder / name), "wb") as sink:
            new = pa.ipc.new_file if file_format else pa.ipc.new_stream
            with new(sink, table.schema) as writer:
                for batch in table.to_batches(max_chunksize=2):
                    writer.write_batch(batch)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names],
                                                   "_fingerprint": "abc", "_split": "train"}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))
    return folder


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_formats(tmp_path: Path, suffix: str) -> None:
    raw = jsonl_bytes(ROWS)
    data = {".jsonl": raw, ".jsonl.gz": gzip.compress(raw), ".jsonl.zst": zstandard.ZstdCompressor().compress(raw)}
    path = tmp_path / f"c{suffix}"
    path.write_bytes(data[suffix])
    out = docs(iter_records([path], token_field="n"))
    assert [(d.docid, d.text, d.position, d.token_count) for d in out] == \
        [(r["docid"], r["doc"], i, r["n"]) for i, r in enumerate(ROWS)]
    assert out[0].source == str(path)


def test_multiframe_zstd_and_skip_ahead(tmp_path: Path) -> None:
    raw = jsonl_bytes(ROWS)
    cctx = zstandard.ZstdCompressor()
    path = tmp_path / "c.jsonl.zst"
    path.write_bytes(cctx.compress(raw[:100]) + cctx.compress(raw[100:]))  # two frames, split mid-line
    key = input_files(path)[0].key
    out = docs(iter_records(path, start_positions={key: 7}))
    assert [d.position for d in out] == [7, 8, 9]


def test_ids_and_custom_fields(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(jsonl_bytes([{"id": 17, "body": "x"}, {"body": "no id here"}, {"id": "s", "body": "y"}]))
    out = docs(iter_records(path, text_field="body", id_field="id"))
    assert [d.docid for d in out] == ["17", f"{path}:1", "s"]


def test_parquet_row_groups_and_start_position(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=3)
    assert [d.docid for d in docs(iter_records(path))] == [r["docid"] for r in ROWS]
    key = input_files(path)[0].key
    out = docs(iter_records(path, token_field="n", start_positions={key: 4}))
    assert [(d.docid, d.position, d.token_count) for d in out] == [(f"d{i}", i, i + 1) for i in range(4, 10)]


def test_parquet_skips_whole_row_groups_without_reading_them(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=3)
    asked = spy_row_groups(monkeypatch)
    docs(iter_records(path, start_positions={str(path.resolve()): 7}))
    assert asked == [2, 3]  # rows 6-8 and 9; groups 0 and 1 were never decoded


def test_txt_folder_walk_sorted_relative_ids(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    (root / "b").mkdir(parents=True)
    (root / "b" / "z.txt").write_text("zed")
    (root / "a.txt").write_text("alpha")
    (root / ".hidden.txt").write_text("never read")
    out = docs(iter_records(root))
    assert [(d.docid, d.text, d.source) for d in out] == [("a.txt", "alpha", f"{root}/a.txt"),
                                                          ("b/z.txt", "zed", f"{root}/b/z.txt")]


@pytest.mark.parametrize("file_format", [False, True])
def test_hf_save_to_disk_folder(tmp_path: Path, file_format: bool) -> None:
    t1, t2 = pa.Table.from_pylist(ROWS[:5]), pa.Table.from_pylist(ROWS[5:])
    folder = write_hf_folder(tmp_path / "ds", [t1, t2], file_format)
    files = input_files(tmp_path)  # the walk treats the dataset folder as one input
    assert [(f.kind, f.key) for f in files] == [("hf", str(folder.resolve()))]
    out = docs(iter_records(folder))
    assert [(d.docid, d.position) for d in out] == [(r["docid"], i) for i, r in enumerate(ROWS)]
    resumed = docs(iter_records(folder, start_positions={files[0].key: 6}))
    assert [d.position for d in resumed] == [6, 7, 8, 9]


def test_input_files_keys_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_bytes(jsonl_bytes(ROWS[:1]))
    files = input_files([tmp_path, tmp_path / "x.jsonl"])  # the same file twice: listed once
    assert [f.key for f in files] == [str((tmp_path / "x.jsonl").resolve())]
    with pytest.raises(InputError, match="does not exist"):
        input_files([tmp_path / "nope.jsonl"])


def test_bad_corpus_every_case_is_a_counted_reject(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    lines = [
        json.dumps({"docid": "ok1", "doc": "fine", "n": 3}).encode(),  # 0
        b'{"docid": "broken", "doc": ',  # 1 malformed JSON
        b'["a", "list"]',  # 2 not an object
        json.dumps({"docid": "notext"}).encode(),  # 3 missing text field
        b'{"docid": "utf", "doc": "caf\xe9"}',  # 4 invalid UTF-8
        json.dumps({"docid": "empty", "doc": ""}).encode(),  # 5
        json.dumps({"docid": "ws", "doc": " \n\t "}).encode(),  # 6
        json.dumps({"docid": "neg", "doc": "x", "n": -1}).encode(),  # 7 bad token
        json.dumps({"docid": "str", "doc": "x", "n": "12"}).encode(),  # 8 bad token
        json.dumps({"docid": "num", "doc": 5}).encode(),  # 9 non-string text
        json.dumps({"doc": "no id"}).encode(),  # 10 generated id, kept
    ]
    (root / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    good = gzip.compress(jsonl_bytes(ROWS))
    (root / "b.jsonl.gz").write_bytes(good[: len(good) * 2 // 3])  # cut mid-stream
    (root / "c.parquet").write_bytes(b"PAR1 this is not parquet")
    (root / "d.csv").write_text("docid,doc\n1,x\n")
    rng = random.Random(0)  # incompressible text: several 128 KiB zstd blocks, so some decode
    many = [{"docid": f"z{i}", "doc": f"{rng.getrandbits(200):x}"} for i in range(6000)]
    zst = zstandard.ZstdCompressor().compress(jsonl_bytes(many))
    (root / "e.jsonl.zst").write_bytes(zst[: len(zst) * 2 // 3])

    records = list(iter_records(root, token_field="n"))
    rejects = [r for r in records if isinstance(r, Reject)]
    kept = [r for r in records if isinstance(r, Document)]
    a = f"{root}/a.jsonl"
    got = {(r.source, r.position): r for r in rejects}
    expected = {1: "malformed JSON", 2: "not an object", 3: "missing text field 'doc'", 4: "invalid UTF-8",
                5: "empty document", 6: "whitespace-only", 7: "not a non-negative integer",
                8: "not a non-negative integer", 9: "not a string"}
    for position, reason in expected.items():
        assert reason in got[(a, position)].reason, (position, got[(a, position)])
    assert got[(a, 3)].docid == "notext" and got[(a, 9)].docid == "num"
    assert [d.docid for d in kept if d.source == a] == ["ok1", f"{a}:10"]

    gz = [d for d in kept if d.source.endswith("b.jsonl.gz")]
    assert 0 < len(gz) < len(ROWS) and [d.position for d in gz] == list(range(len(gz)))
    (gz_reject,) = [r for r in rejects if r.source.endswith("b.jsonl.gz")]
    assert gz_reject.position == len(gz) and "truncated" in gz_reject.reason
    (pq_reject,) = [r for r in rejects if r.source.endswith("c.parquet")]
    assert pq_reject.position is None and "parquet" in pq_reject.reason
    (csv_reject,) = [r for r in rejects if r.source.endswith("d.csv")]
    assert csv_reject.position is None and "unsupported" in csv_reject.reason
    zs = [d for d in kept if d.source.endswith("e.jsonl.zst")]
    (zst_reject,) = [r for r in rejects if r.source.endswith("e.jsonl.zst")]
    assert 0 < len(zs) < len(many) and zst_reject.position == len(zs)
    assert [d.position for d in zs] == list(range(len(zs)))
    assert len(rejects) == len(expected) + 4


def test_permission_denied_is_a_file_reject(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "locked.jsonl"
    path.write_bytes(jsonl_bytes(ROWS[:2]))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(inputs, "open", denied, raising=False)  # root ignores chmod, so fake it
    (reject,) = list(iter_records(path))
    assert reject == Reject(str(path), None, "cannot read file: Permission denied")


def test_parquet_missing_text_column_and_null_values(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"docid": ["a", "b", None], "doc": ["x", None, "z"]}), path)
    out = list(iter_records(path))
    assert isinstance(out[0], Document) and out[2].docid == f"{path}:2"
    assert isinstance(out[1], Reject) and "null" in out[1].reason and out[1].docid == "b"
    other = tmp_path / "o.parquet"
    pq.write_table(pa.table({"docid": ["a"], "body": ["x"]}), other)
    (reject,) = list(iter_records(other))
    assert reject.position is None and "missing text field 'doc'" in reject.reason


def test_auto_text_field_takes_doc_then_text_then_content(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nagindex.data import Document
    from nagindex.sources.read import iter_records

    (tmp_path / "a.jsonl").write_text('{"id": 1, "text": "from text"}\n{"doc": "from doc", "text": "no"}\n'
                                      '{"content": "from content"}\n{"body": "none"}\n')
    pq.write_table(pa.table({"content": ["parquet content"]}), tmp_path / "b.parquet")
    recs = list(iter_records([tmp_path], text_field="auto", id_field="id"))
    texts = [r.text for r in recs if isinstance(r, Document)]
    assert texts == ["from text", "from doc", "from content", "parquet content"]
    assert [r.reason for r in recs if not isinstance(r, Document)] == ["missing text field 'doc'"]


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.zst", "parquet", "hf", "template"])
def test_only_the_wanted_positions_are_read(tmp_path: Path, monkeypatch, kind: str) -> None:
    """``read_input(only=...)`` (reading texts back for a sparse selection) gives exactly the wanted records of
    a full read, never parses an unwanted JSON line (a broken one there is not even seen) and never decodes
    a row group without a wanted row."""
    from nagindex.sources.read import Fields, read_input

    rows = [dict(r, doc=f"{r['doc']} {r['n']}") for r in ROWS]
    if kind.startswith("jsonl") or kind == "template":
        data = jsonl_bytes(rows[:4]) + b"{not json\n" + jsonl_bytes(rows[4:])  # line 4 is broken
        path = tmp_path / f"c.{'jsonl' if kind == 'template' else kind}"
        path.write_bytes(zstandard.ZstdCompressor().compress(data) if kind.endswith("zst") else data)
    elif kind == "parquet":
        path = tmp_path / "c.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3)
    else:
        path = write_hf_folder(tmp_path / "ds", [pa.Table.from_pylist(rows[:5]), pa.Table.from_pylist(rows[5:])])
    fields = Fields("doc", "docid", None, template="{docid}: {doc}" if kind == "template" else None)
    (item,) = input_files(path)
    every = {r.position: r for r in read_input(item, fields=fields)}
    asked = spy_row_groups(monkeypatch)
    only = np.array([1, 2, 8] if kind != "parquet" else [1, 2, 9], np.int64)
    got = docs(read_input(item, fields=fields, start=1, only=only))
    lines = kind.startswith("jsonl") or kind == "template"
    want = [every[p] for p in only.tolist()]  # (a JSON file's positions are its line numbers)
    assert [(d.position, d.docid, d.text) for d in got] == [(d.position, d.docid, d.text) for d in want]
    assert isinstance(every[4], Reject) == lines  # the broken line, in a full read
    if kind == "parquet":
        assert asked == [0, 3]  # rows 0-2 (1, 2 wanted) and 9; groups 1 and 2 never decoded
