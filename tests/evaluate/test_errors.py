"""Bad selections and impossible requests stop before any training, naming the file, column or arm."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from nagindex.cli import main
from nagindex.errors import InputError, NagIndexError
from nagindex.evaluate.run import evaluate
from tests.evaluate.conftest import TINY, index_docids, write_selection


def _run(selections, index, target, **kw):
    return evaluate(selections, index, target={"file": str(target)}, seeds=1, config=TINY, threads=1,
                    progress=False, **kw)


def test_docids_missing_from_the_index_are_named_with_the_file(prose_index, plain_target, tmp_path):
    sel = write_selection(tmp_path / "mine.parquet", ["prose-001", "nope-1", "prose-002", "nope-2"])
    with pytest.raises(InputError, match=r"mine.parquet: 2 of 4 docids are not in the index \(first: 'nope-1', "
                                         r"'nope-2'\)"):
        _run([sel], prose_index, plain_target)


def test_a_file_without_a_docid_column_is_named_with_the_column(prose_index, plain_target, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["prose-001"]}), tmp_path / "ids.parquet")
    with pytest.raises(InputError, match=r"ids.parquet: no 'docid' column \(columns: id\)"):
        _run([tmp_path / "ids.parquet"], prose_index, plain_target)
    (tmp_path / "rows.jsonl").write_text(json.dumps({"docid": "prose-001"}) + "\n" + json.dumps({"id": 2}) + "\n")
    with pytest.raises(InputError, match=r"rows.jsonl: record 2: no 'docid' field"):
        _run([tmp_path / "rows.jsonl"], prose_index, plain_target)


def test_arm_names_must_be_distinct_and_not_random(prose_index, plain_target, tmp_path):
    ids = index_docids(prose_index)[:5]
    with pytest.raises(InputError, match=r"random.parquet: the arm name 'random' is the built-in baseline's"):
        _run([write_selection(tmp_path / "random.parquet", ids)], prose_index, plain_target)
    (tmp_path / "b").mkdir()
    a, b = write_selection(tmp_path / "x.parquet", ids), write_selection(tmp_path / "b" / "x.parquet", ids)
    with pytest.raises(InputError, match=r"would both be the arm 'x'"):
        _run([a, b], prose_index, plain_target)


def test_a_token_budget_larger_than_an_arm_is_refused(prose_index, plain_target, tmp_path):
    sel = write_selection(tmp_path / "small.parquet", index_docids(prose_index)[:10])
    with pytest.raises(NagIndexError, match=r"--tokens 1,000,000: arm '(small|random)' holds only"):
        _run([sel], prose_index, plain_target, tokens=1_000_000)


def test_the_cli_needs_exactly_one_target(prose_index, plain_target, tmp_path):
    sel = write_selection(tmp_path / "s.parquet", index_docids(prose_index)[:10])
    for extra in ([], ["--target", "arc_challenge", "--target-file", str(plain_target)]):
        got = CliRunner().invoke(main, ["evaluate", "--index", str(prose_index), str(sel), *extra])
        assert got.exit_code == 2 and "give one target" in got.output
