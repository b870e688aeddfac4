"""Big inputs cut into parts: byte ranges at line starts, runs of row groups, whole-file positions kept."""
from __future__ import annotations

import gzip
import json
import random
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from nagindex.data import Reject
from nagindex.sources.inputs import WHOLE, InputFile, Part, input_files
from nagindex.sources.read import Fields, read_input
from nagindex.sources.split import split_input

FIELDS = Fields("doc", "docid", None)


def _item(path: Path) -> InputFile:
    return input_files(path)[0]


def _read_parts(item: InputFile, parts: list[tuple[Part, int]], start: int = 0) -> list:
    """Every part read by itself (as different workers would), concatenated in file order."""
    return [r for part, _ in parts for r in read_input(replace(item, parts=(part,)), fields=FIELDS, start=start)]


def test_jsonl_ranges_start_at_line_starts_and_keep_line_numbers(tmp_path):
    """20-byte lines, 50-byte parts: cuts at 50, 100, 150 move to the line starts 60, 100 (already one), 160."""
    lines = [f'{{"doc": "line-{i:03d}"}}\n' for i in range(10)]
    lines[4] = '{"doc": broken-004}\n'
    lines[6] = " " * 19 + "\n"  # blank: counted, skipped
    assert {len(line) for line in lines} == {20}
    path = tmp_path / "c.jsonl"
    path.write_text("".join(lines))
    item = _item(path)
    parts = split_input(item, 50, 200)
    assert parts == [(Part(0, 60, 0, 3), 60), (Part(60, 100, 3, 5), 40), (Part(100, 160, 5, 8), 60),
                     (Part(160, None, 8, None), 40)]
    records = _read_parts(item, parts)
    assert records == list(read_input(item, fields=FIELDS))
    assert [r.position for r in records] == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    bad = records[4]
    assert isinstance(bad, Reject) and bad.message() == f"{path}:5: malformed JSON: Expecting value at column 9"
    # one worker owning parts 1 and 3, resuming at line 4: line 4 of part 1, then part 3 (lines 8, 9)
    mine = replace(item, parts=(parts[1][0], parts[3][0]))
    assert [r.position for r in read_input(mine, fields=FIELDS, start=4)] == [4, 8, 9]
    assert [r.position for r in read_input(mine, fields=FIELDS, start=5)] == [8, 9]


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_jsonl_parts_read_together_are_the_whole_file_at_any_size_and_resume_point(tmp_path, trailing_newline):
    rng = random.Random(7)
    lines = []
    for i in range(400):
        r = rng.random()
        lines.append("" if r < 0.05 else "{broken" if r < 0.08 else "x" * 900 if r < 0.1 else
                     json.dumps({"docid": f"d{i % 250}", "doc": "w " * rng.randint(1, 150)}))
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + ("\n" if trailing_newline else ""))
    item, size = _item(path), path.stat().st_size
    whole = list(read_input(item, fields=FIELDS))
    for unit in (1, 700, 4096, size - 1, size):
        parts = split_input(item, unit, size)
        assert sum(n for _, n in parts) == size and [p.start for p, _ in parts] == sorted({p.start for p, _ in parts})
        assert all(a.stop == b.start and a.end == b.first for (a, _), (b, _) in pairwise(parts))
        assert _read_parts(item, parts) == whole, unit
        together = replace(item, parts=tuple(p for p, _ in parts))
        for start in (0, 1, 123, 399, 400):
            assert list(read_input(together, fields=FIELDS, start=start)) == \
                list(read_input(item, fields=FIELDS, start=start)), (unit, start)
    assert len(split_input(item, 700, size)) > 50 and split_input(item, size, size) == [(WHOLE, size)]


def test_parquet_parts_are_runs_of_row_groups_with_their_first_row(tmp_path):
    rows = [{"docid": f"d{i}", "doc": f"text number {i} " * (i + 1)} for i in range(10)]
    path = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3)  # groups of 3, 3, 3, 1 rows
    item, size = _item(path), path.stat().st_size
    meta = pq.ParquetFile(path).metadata
    group_bytes = [sum(meta.row_group(g).column(c).total_compressed_size for c in range(meta.num_columns))
                   for g in range(4)]
    assert [p for p, _ in split_input(item, 1, size)] == [Part(0, 1, 0, 3), Part(1, 2, 3, 6), Part(2, 3, 6, 9),
                                                          Part(3, None, 9, None)]
    two = split_input(item, group_bytes[0] + group_bytes[1], size)
    assert two == [(Part(0, 2, 0, 6), group_bytes[0] + group_bytes[1]),
                   (Part(2, None, 6, None), group_bytes[2] + group_bytes[3])]
    whole = list(read_input(item, fields=FIELDS))
    assert _read_parts(item, two) == whole and [d.position for d in whole] == list(range(10))
    assert [d.position for d in _read_parts(item, two, start=7)] == [7, 8, 9]


def test_what_cannot_be_split_is_one_whole_part(tmp_path):
    raw = "".join(json.dumps({"doc": f"text {i}"}) + "\n" for i in range(50)).encode()
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    (tmp_path / "one-line.jsonl").write_text(json.dumps({"doc": "x" * 5000}))
    pq.write_table(pa.table({"doc": [f"text {i}" for i in range(50)]}), tmp_path / "one-group.parquet")
    items = input_files(tmp_path)
    assert [i.name for i in items] == ["c.jsonl.gz", "c.jsonl.zst", "one-group.parquet", "one-line.jsonl"]
    for item in items:
        size = item.path.stat().st_size
        assert size > 100 and split_input(item, 10, size) == [(WHOLE, size)], item.name
    (tmp_path / "small.jsonl").write_bytes(raw)  # no bigger than the split size
    assert split_input(_item(tmp_path / "small.jsonl"), len(raw), len(raw)) == [(WHOLE, len(raw))]
