"""Side files aligned to a shard's rows (``query/sidefile.py``): the first-row-wins dict join, streamed."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import nagindex.query.sidefile as S
from nagindex.errors import InputError
from nagindex.sources.records import read_keyed_values

BATCH = 7  # rows per file batch in these tests: every repeated id below straddles batches


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    """``rows`` as JSONL or parquet, by the suffix."""
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def _dict_join(docids: list[str], rows: list[dict[str, Any]], numeric: bool) -> list[Any]:
    """Brute force: each docid's value in the first row naming it (file null -> NaN if numeric), else None."""
    first: dict[str, Any] = {}
    for r in rows:
        value = r["v"]
        first.setdefault(str(r["docid"]), (math.nan if value is None else float(value)) if numeric else
                         (None if value is None else str(value)))
    return [first.get(d) for d in docids]


def _comparable(values: list[Any]) -> list[Any]:
    """NaN as a string, so lists holding NaN compare equal."""
    return ["NaN" if isinstance(v, float) and math.isnan(v) else v for v in values]


def _seeded(numeric: bool, seed: int = 1338) -> tuple[list[str], list[dict[str, Any]]]:
    """A shard of 300 rows over 200 ids (repeats; 50 ids the file lacks) and a file of 400 rows over 150 shard
    ids and 40 others, 30% of rows repeating an earlier id with another value, some values null."""
    rng = np.random.default_rng(seed)
    pool = [f"doc-{i:05d}" for i in rng.permutation(100_000)[:240]]
    shard = [pool[i] for i in rng.integers(0, 200, 300)]
    named = pool[:150] + pool[200:240]
    rows: list[dict[str, Any]] = []
    for i in range(400):
        docid = rows[int(rng.integers(0, len(rows)))]["docid"] if rows and rng.random() < 0.3 else \
            named[int(rng.integers(0, len(named)))]
        value = None if rng.random() < 0.05 else round(float(rng.normal()), 6) if numeric else \
            str(rng.choice(["wiki", "web", "code", "books"]))
        rows.append({"docid": docid, "v": value})
    return shard, rows


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S, "BATCH_ROWS", BATCH)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("numeric", [True, False])
def test_align_equals_first_row_wins_dict_join(tmp_path: Path, suffix: str, numeric: bool) -> None:
    shard, rows = _seeded(numeric)
    path = _write(tmp_path / f"side{suffix}", rows)
    got = S.align(path, "docid", "v", numeric, pa.array(shard, pa.large_string()))
    expected = _dict_join(shard, rows, numeric)
    assert got.type == (pa.float64() if numeric else pa.string())
    assert _comparable(got.to_pylist()) == _comparable(expected)
    # the data checks what it claims: repeats across batches with other values, ids missing both ways
    first_at = {}
    straddling = [i for i, r in enumerate(rows) if first_at.setdefault(r["docid"], i) // BATCH < i // BATCH
                  and r["v"] != rows[first_at[r["docid"]]]["v"] and r["docid"] in shard]
    assert len(straddling) > 20
    assert len(set(shard)) < len(shard) and set(shard) - set(first_at) and set(first_at) - set(shard)
    assert 0 < sum(d not in first_at for d in shard) < len(shard) // 2


def test_first_row_wins_within_and_across_batches_by_hand(tmp_path: Path) -> None:
    rows = [{"docid": "a", "v": 1.0}, {"docid": "b", "v": None}, {"docid": "a", "v": 2.0},  # batch 1: a twice
            *({"docid": f"x{i}", "v": 9.0} for i in range(4)),
            {"docid": "b", "v": 3.0}, {"docid": "c", "v": 4.0}, {"docid": "a", "v": 5.0}]  # batch 2
    path = _write(tmp_path / "q.parquet", rows)
    got = S.align(path, "docid", "v", True, pa.array(["c", "a", "b", "zz", "a"], pa.large_string()))
    assert _comparable(got.to_pylist()) == [4.0, 1.0, "NaN", None, 1.0]  # b's first row is null: NaN, not 3.0
    assert got.null_count == 1
    column = np.frombuffer(got.buffers()[1], np.float64)  # NaN under the null: the scratch column without a copy
    assert column[[0, 1, 4]].tolist() == [4.0, 1.0, 1.0] and np.isnan(column[[2, 3]]).all()


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_empty_file_gives_all_null(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.table({"docid": pa.array([], pa.string()), "v": pa.array([], pa.float64())}), path)
    else:
        path.write_text("\n", "utf-8")
    docids = pa.array(["a", "b"], pa.large_string())
    assert S.align(path, "docid", "v", True, docids).to_pylist() == [None, None]
    assert S.align(path, "docid", "v", False, docids).to_pylist() == [None, None]


def test_group_values_of_other_types_become_strings(tmp_path: Path) -> None:
    rows = [{"docid": 1, "v": 7}, {"docid": 2, "v": None}, {"docid": 3, "v": 2}]
    for suffix in (".jsonl", ".parquet"):
        path = _write(tmp_path / f"g{suffix}", rows)
        got = S.align(path, "docid", "v", False, pa.array(["3", "2", "1", "4", None], pa.large_string()))
        assert got.type == pa.string() and got.to_pylist() == ["2", None, "7", None, None]


def test_sliced_chunked_string_docids_with_nulls(tmp_path: Path) -> None:
    path = _write(tmp_path / "q.jsonl", [{"docid": "b", "v": 2.5}, {"docid": "c", "v": 3.5}])
    docids = pa.chunked_array([pa.array(["a", "b"], pa.string()), pa.array([None, "c", "b"], pa.string())])
    assert S.align(path, "docid", "v", True, docids.slice(1, 3)).to_pylist() == [2.5, None, 3.5]


def test_lookup_aligns_several_files(tmp_path: Path) -> None:
    lookup = S.DocidLookup(pa.array(["a", "b"], pa.large_string()))
    q = _write(tmp_path / "q.jsonl", [{"docid": "b", "v": 1}])
    g = _write(tmp_path / "g.parquet", [{"docid": "a", "v": "web"}])
    assert lookup.align(S.keyed_batches(q, "docid", "v", True), True).to_pylist() == [None, 1.0]
    assert lookup.align(S.keyed_batches(g, "docid", "v", False), False).to_pylist() == ["web", None]
    assert len(lookup) == 2


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_batches_stream_the_file(tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / f"q{suffix}", [{"docid": f"d{i}", "v": float(i)} for i in range(20)])
    monkeypatch.setattr(pq, "read_table", None)  # a whole-file read would fail
    batches = list(S.keyed_batches(path, "docid", "v", True))
    assert [len(ids) for ids, _ in batches] == [7, 7, 6]
    assert batches[2][0].type == pa.large_string() and batches[2][1].to_pylist() == [14.0, 15, 16, 17, 18, 19]


@pytest.mark.parametrize(("line", "message"), [
    ('{"docid": "b", "v": "high"}', ":3: field 'v' is 'high', not a number"),
    ('{"docid": "b"}', ":3: needs fields 'docid' and 'v'"),
    ('{"docid": "b", "v": ', ":3: invalid JSON: Expecting value"),
    ('[1, 2]', ":3: expected a JSON object, got list"),
])
def test_jsonl_errors_name_file_line_and_field_as_read_keyed_values(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"docid": "a", "v": 1}\n\n' + line + "\n", "utf-8")
    with pytest.raises(InputError) as streamed:
        S.align(path, "docid", "v", True, pa.array(["a"], pa.large_string()))
    with pytest.raises(InputError) as whole:
        read_keyed_values(path, "docid", "v", True)
    assert str(streamed.value) == str(whole.value) == f"{path}{message}"


def test_parquet_errors_name_file_row_and_column(tmp_path: Path) -> None:
    docids = pa.array(["a"], pa.large_string())
    path = _write(tmp_path / "q.parquet", [{"docid": f"d{i}", "v": str(i)} for i in range(9)] + [{"docid": "x", "v": "n/a"}])
    with pytest.raises(InputError) as exc:
        S.align(path, "docid", "v", True, docids)
    assert str(exc.value) == f"{path}:10: field 'v' is 'n/a', not a number"
    with pytest.raises(InputError) as exc:
        S.align(path, "docid", "quality", True, docids)
    assert str(exc.value) == f"{path}: needs columns 'docid' and 'quality' (has docid, v)"
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=f"^{re.escape(str(broken))}: cannot read parquet: "):
        S.align(broken, "docid", "v", True, docids)


def test_ids_sharing_a_hash_tag_and_first_slot_stay_apart(tmp_path: Path) -> None:
    """Two docids whose hashes share the 32-bit slot tag and the first slot: the bytes, not the tag, decide."""
    names = pa.array([f"id{i}" for i in range(600_000)], pa.large_string())
    _, offsets, data, _ = S._string_buffers(names)
    h = S._hash_all(offsets, data)
    key = (h >> np.uint64(32)) << np.uint64(3) | (h & np.uint64(7))  # tag and the first of 8 slots
    order = np.argsort(key, kind="stable")
    pair = order[np.flatnonzero(np.diff(key[order]) == 0)[0]:][:2]
    a, b = (names[int(i)].as_py() for i in pair)
    path = _write(tmp_path / "q.jsonl", [{"docid": b, "v": 2.0}, {"docid": a, "v": 1.0}])
    assert S.align(path, "docid", "v", True, pa.array([a], pa.large_string())).to_pylist() == [1.0]
    assert S.align(path, "docid", "v", True, pa.array([a, b, "zz"], pa.large_string())).to_pylist() == [1.0, 2.0, None]
