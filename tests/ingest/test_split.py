"""Big inputs split over the shards: the index, rejects, texts and resume of a one-shard ingest."""
from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nagindex.index.catalog import load_catalog, new_catalog
from nagindex.ingest.run import ingest
from nagindex.ingest.sharded import assign_inputs
from nagindex.sources.inputs import Part, input_files
from tests.ingest.test_sharded import SETTINGS, _rows, ingest_until_killed

SPLIT = 1500  # bytes: the big .jsonl (~7 KB) in 5 parts, the parquet (9 row groups) in several runs


@pytest.fixture()
def corpus(golden_dir, tmp_path) -> Path:
    """One big .jsonl and one parquet of 9 row groups, with ids repeated inside each file (in other parts),
    an empty first copy that claims nothing, an id of the .jsonl repeated in the parquet, a bad and a blank line."""
    pool = [r["doc"] for r in pq.read_table(golden_dir / "data/pool/pool.parquet").to_pylist()]
    root = tmp_path / "corpus"
    root.mkdir()
    lines = [json.dumps({"docid": f"j{i}", "doc": pool[i % 14]}) for i in range(60)]
    lines[10] = json.dumps({"docid": "j50", "doc": "   "})  # j50's first copy has no text: line 50's is kept
    lines[25] = '{"docid": "j25", "doc": '  # malformed: rejected as big.jsonl:26
    lines[33] = ""
    lines[40] = json.dumps({"docid": "j3", "doc": "a later copy of j3, three parts on"})
    (root / "big.jsonl").write_text("\n".join(lines) + "\n")
    rows = [{"docid": f"p{i}", "doc": pool[(i * 5) % 14]} for i in range(45)]
    rows[30] = {"docid": "p2", "doc": "a later copy of p2"}
    rows[12] = {"docid": "j5", "doc": "a later copy of j5, in another input"}
    pq.write_table(pa.Table.from_pylist(rows), root / "big.parquet", row_group_size=5)
    return root


def _rejects(index_dir: Path) -> list[dict]:
    return sorted((json.loads(line) for f in sorted(index_dir.rglob("rejects.jsonl"))
                   for line in f.read_text().splitlines()), key=lambda r: (r["source"], r["line_or_row"]))


def test_split_inputs_over_3_shards_equal_a_one_shard_ingest(golden_dir, corpus, tmp_path):
    from nagindex.query.run import query

    model = str(golden_dir / "model")
    one = ingest([corpus], tmp_path / "one", backbone=model, **SETTINGS)
    many = ingest([corpus], tmp_path / "many", backbone=model, shards=3, split_size=SPLIT, **SETTINGS)
    catalog = load_catalog(tmp_path / "many")
    for name in ("big.jsonl", "big.parquet"):  # each file really split over all 3 shards, parts tiling it
        entries = [e for e in catalog.inputs if e["key"] == str((corpus / name).resolve())]
        assert sorted(e["shard"] for e in entries) == [0, 1, 2]
        parts = sorted((Part(*p) for e in entries for p in e["parts"]), key=lambda p: p.start)
        assert len(parts) >= 3 and parts[0].start == parts[0].first == 0 and parts[-1].stop is None
        assert all(a.stop == b.start and a.end == b.first for a, b in pairwise(parts))
    assert _rows(tmp_path / "many") == _rows(tmp_path / "one")
    # j3, p2 and j5 repeat an id: rejected where one shard read both copies, else hidden
    # 60 lines (1 blank, 3 rejects) and 45 rows (2 rejects)
    assert (one.rows, one.reject_reasons) == (99, {"duplicate id": 3, "whitespace-only document": 1,
                                                   "malformed JSON": 1})
    assert many.rows == 99 and many.hidden + many.reject_reasons["duplicate id"] == 3 and many.hidden >= 1
    assert many.added - many.hidden == one.added == 99
    bad = [r for r in _rejects(tmp_path / "many") if r["reason"].startswith("malformed JSON")]
    assert bad == [{"source": str(corpus / "big.jsonl"), "line_or_row": 26, "docid": None,
                    "reason": "malformed JSON: Expecting value at column 25"}]
    assert [r for r in _rejects(tmp_path / "many") if r["reason"] != "duplicate id"] == \
        [r for r in _rejects(tmp_path / "one") if r["reason"] != "duplicate id"]
    from click.testing import CliRunner

    from nagindex.cli import main

    info = CliRunner().invoke(main, ["info", "--index", str(tmp_path / "many")]).output
    shards = [x.split() for x in info.splitlines() if x.startswith("shard-")]
    assert [(x[0], x[4], x[5]) for x in shards] == [(f"shard-0000{i}", "2", "complete") for i in range(3)]  # parts
    # of 2 inputs each: one entry and one resume cursor per input
    again = ingest([corpus], tmp_path / "many", backbone=model, split_size=SPLIT, **SETTINGS)  # nothing new
    assert (again.added, again.rows, load_catalog(tmp_path / "many").inputs) == (0, 99, catalog.inputs)

    # texts read back by position (--with-text, write-training) from the parts' global positions
    target = {"features": str(golden_dir / "features_fwd_up_only/target/target.jsonl")}
    qa = query(target, tmp_path / "one", fraction=0.5, with_text=True, out=tmp_path / "one.parquet")
    qb = query(target, tmp_path / "many", fraction=0.5, with_text=True, out=tmp_path / "many.parquet")
    assert len(qa) == len(qb) > 20
    ta, tb = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "many.parquet")
    assert ta.equals(tb) and all(ta.column("text").to_pylist())
    from nagindex.export.training import write_training

    write_training(tmp_path / "one.parquet", tmp_path / "train-one", shard_size="1MB")
    write_training(tmp_path / "many.parquet", tmp_path / "train-many", shard_size="1MB")
    read = [pq.read_table(p).to_pylist() for p in (tmp_path / "train-one", tmp_path / "train-many")
            for p in sorted(p.glob("*.parquet"))]
    assert len(read) == 2 and read[0] == read[1] and len(read[0]) == len(qa)


def test_ray_shard_tasks_read_their_parts(golden_dir, corpus, tmp_path):
    """Ray tasks get their parts with their inputs (``InputFile.to_json``): the index of one local writer."""
    ray = pytest.importorskip("ray")
    model = str(golden_dir / "model")
    ingest([corpus], tmp_path / "one", backbone=model, **SETTINGS)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = ingest([corpus], tmp_path / "ray", backbone=model, shards=3, split_size=SPLIT, ray_address="local",
                     **SETTINGS)
    finally:
        ray.shutdown()
    assert sum("parts" in e for e in load_catalog(tmp_path / "ray").inputs) == 6
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "one")
    assert res.rows == 99 and res.hidden + res.reject_reasons["duplicate id"] == 3


def test_the_plan_is_recorded_once_and_balances_parts(corpus, tmp_path):
    """Parts go one by one to the least-loaded shard; a shard's adjacent parts are one range; an input
    already planned keeps its plan (a resumed or appended ingest never re-splits it)."""
    files = input_files([corpus / "big.jsonl"])
    key = files[0].key
    assert (corpus / "big.jsonl").stat().st_size == 6444  # parts at bytes 0, 1557, 3014, 4508, 6025
    catalog = new_catalog(tmp_path / "idx", 2)
    catalog.inputs.append({"key": "/elsewhere/earlier.jsonl", "shard": 0, "size": 4500})
    plan = assign_inputs(catalog, files, SPLIT)
    # shard 1 takes parts until it passes shard 0's 4500 bytes (0-4508), shard 0 the next, shard 1 the last
    assert catalog.inputs[1:] == [
        {"key": key, "shard": 1, "size": 4927, "parts": [[0, 4508, 0, 44], [6025, None, 58, None]]},
        {"key": key, "shard": 0, "size": 1517, "parts": [[4508, 6025, 44, 58]]}]
    assert plan[1][0].parts == (Part(0, 4508, 0, 44), Part(6025, None, 58, None))
    assert plan[0][0].parts == (Part(4508, 6025, 44, 58),)
    recorded = [dict(e) for e in catalog.inputs]
    again = assign_inputs(catalog, files, 10)  # another split size: the recorded plan stands
    assert again == plan and catalog.inputs == recorded
    assert assign_inputs(new_catalog(tmp_path / "one", 1), files, SPLIT)[0] == files  # one shard: whole


def test_progress_estimate_counts_the_records_of_a_worker_s_parts(corpus):
    from dataclasses import replace

    from nagindex.ingest.worker import estimate_records

    (item,) = input_files([corpus / "big.parquet"])
    mine = replace(item, parts=(Part(1, 3, 5, 15), Part(6, None, 30, None)))  # rows 5-14 and 30-44
    assert estimate_records([mine], {}) == 25
    assert estimate_records([mine], {item.key: 12}) == 3 + 15
    assert estimate_records([mine], {item.key: 35}) == 10


def test_kill_9_mid_part_then_resume(golden_dir, tmp_path):
    """kill -9 of the driver and its workers while the shards are inside their parts of one big .jsonl,
    then the same command: the plan recorded before is kept and the index is the one-shard index."""
    import subprocess
    import sys

    from nagindex.index.store import IndexStore

    pool = [r["doc"] for r in pq.read_table(golden_dir / "data/pool/pool.parquet").to_pylist()]
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "big.jsonl").write_text("".join(  # 160 docs, ids repeated 30 lines later (often in another part)
        json.dumps({"docid": f"d{i % 130}", "doc": pool[i % 14]}) + "\n" for i in range(160)))
    key = str((root / "big.jsonl").resolve())
    model = str(golden_dir / "model")
    args = [sys.executable, "-m", "nagindex", "ingest", str(root), "--index", str(tmp_path / "idx"), "--shards", "2",
            "--split-size", "5000", "--backbone", model, "--top-k", "8", "--max-length", "64", "--commit-every", "2",
            "--batch-size", "2", "--device", "cpu"]
    committed = ingest_until_killed(args, tmp_path / "idx")
    catalog = load_catalog(tmp_path / "idx")
    inside = []  # shards stopped inside one of their parts, neither before it nor at its end
    for entry in catalog.inputs:
        path = catalog.shard_path(entry["shard"])
        if (path / "store.lmdb").exists():
            with IndexStore.open(path) as store:
                at = (store.progress(key) or {}).get("next_position", 0)
            inside += [entry["shard"] for p in (Part(*p) for p in entry["parts"])
                       if p.first < at and (p.end is None or at < p.end)]
    assert 10 <= committed < 130 and inside, (committed, inside)  # it really stopped part-way, inside a part
    resumed = subprocess.run(args, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_catalog(tmp_path / "idx").inputs == catalog.inputs
    ingest([root], tmp_path / "one", backbone=model, **SETTINGS)
    assert _rows(tmp_path / "idx") == _rows(tmp_path / "one")


def test_compressed_inputs_are_read_whole_and_said_so_once(corpus, tmp_path, caplog):
    import gzip
    import logging

    raw = (corpus / "big.jsonl").read_bytes()
    for i in range(2):
        (tmp_path / f"c{i}.jsonl.gz").write_bytes(gzip.compress(raw, compresslevel=0))  # bigger than SPLIT
    catalog = new_catalog(tmp_path / "idx", 2)
    with caplog.at_level(logging.WARNING, logger="nagindex.ingest.sharded"):
        plan = assign_inputs(catalog, input_files([tmp_path / "c0.jsonl.gz", tmp_path / "c1.jsonl.gz"]), SPLIT)
    assert [[f.parts for f in files] for files in plan.values()] == [[None], [None]]
    assert [e.get("parts") for e in catalog.inputs] == [None, None]
    assert [r.getMessage() for r in caplog.records] == [
        "2 input(s) over the split size are read whole by one worker each (gzip, zstd and remote .jsonl cannot be "
        f"split): {tmp_path / 'c0.jsonl.gz'}, {tmp_path / 'c1.jsonl.gz'}"]
