"""Sharded ingest: any number of shards gives the index (and every query) of a one-shard ingest."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from nagindex.index.catalog import load_catalog
from nagindex.index.sharded import open_index
from nagindex.ingest.run import ingest

SETTINGS = dict(top_k=8, max_length=64, device="cpu", commit_every=3)


@pytest.fixture()
def corpus(golden_dir, tmp_path) -> Path:
    """The golden pool over five inputs of different sizes and kinds, ids repeated across inputs
    (a later copy, and one whose first copy has no text), plus a folder of one-document txt files."""
    pool = pq.read_table(golden_dir / "data/pool/pool.parquet").to_pylist()
    root = tmp_path / "corpus"
    (root / "notes").mkdir(parents=True)
    rec = [{"docid": r["docid"], "doc": r["doc"]} for r in pool]

    def jsonl(name: str, rows: list[dict]) -> None:
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    jsonl("a.jsonl", rec[:6] + [{"docid": "pool_12", "doc": "   "}])  # empty first copy: claims nothing
    jsonl("b.jsonl", rec[6:9] + [{"docid": "pool_01", "doc": "a later copy of pool_01"}])
    pq.write_table(__import__("pyarrow").Table.from_pylist(rec[9:13]), root / "c.parquet")
    jsonl("d.jsonl", rec[13:] + [{"docid": "pool_07", "doc": "another later copy"}])
    for i in range(3):
        (root / "notes" / f"n{i}.txt").write_text(f"a short note number {i}")
    return root


def _rows(index_dir: Path) -> list[tuple]:
    view = open_index(index_dir)
    ids = view.docids.take(range(len(view)))
    return sorted((d, np.asarray(view.codes[i]).tobytes(), int(view.token_counts[i]), int(view.positions[i]),
                   view.sources[int(view.source_ids[i])]) for i, d in enumerate(ids))


@pytest.mark.parametrize("shards", [5])
def test_sharded_ingest_equals_one_shard(golden_dir, corpus, tmp_path, shards):
    model = str(golden_dir / "model")
    one = ingest([corpus], tmp_path / "one", backbone=model, **SETTINGS)
    many = ingest([corpus], tmp_path / "many", backbone=model, shards=shards, **SETTINGS)
    catalog = load_catalog(tmp_path / "many")
    assert len(catalog.shards) == shards and len({i["shard"] for i in catalog.inputs}) == min(shards, 8)
    assert _rows(tmp_path / "many") == _rows(tmp_path / "one")
    # the 2 repeated ids: rejected inside a shard, or hidden across shards
    assert many.rows == one.rows and many.hidden + many.reject_reasons.get("duplicate id", 0) == 2
    assert many.added - many.hidden == one.added
    again = ingest([corpus], tmp_path / "many", backbone=model, **SETTINGS)  # appends: nothing new
    assert (again.added, again.rows) == (0, one.rows)

    from nagindex.query.run import query

    qa = query({"features": str(golden_dir / "features_fwd_up_only/target/target.jsonl")}, tmp_path / "one",
               fraction=0.4, out=tmp_path / "one.parquet")
    qb = query({"features": str(golden_dir / "features_fwd_up_only/target/target.jsonl")}, tmp_path / "many",
               fraction=0.4, out=tmp_path / "many.parquet")
    assert len(qa) == len(qb) > 0
    ta, tb = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "many.parquet")
    assert ta.equals(tb)


def test_kill_9_of_a_sharded_ingest_then_resume(golden_dir, tmp_path):
    """kill -9 of the driver and its workers part-way, then the same command: the one-shard index."""
    import subprocess
    import sys


    pool = pq.read_table(golden_dir / "data/pool/pool.parquet").to_pylist()
    root = tmp_path / "corpus"
    root.mkdir()
    for f in range(4):  # 4 inputs x 40 docs, repeats of the pool texts under new ids
        (root / f"p{f}.jsonl").write_text("".join(
            json.dumps({"docid": f"d{(f * 40 + i) % 150}", "doc": pool[i % len(pool)]["doc"]}) + "\n"
            for i in range(40)))
    model = str(golden_dir / "model")
    args = [sys.executable, "-m", "nagindex", "ingest", str(root), "--index", str(tmp_path / "idx"), "--shards", "2",
            "--backbone", model, "--top-k", "8", "--max-length", "64", "--commit-every", "2", "--batch-size", "2",
            "--device", "cpu"]
    committed = ingest_until_killed(args, tmp_path / "idx")
    assert 10 <= committed < 150, committed  # it really stopped part-way
    resumed = subprocess.run(args, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ingest([root], tmp_path / "one", backbone=model, **SETTINGS)
    assert _rows(tmp_path / "idx") == _rows(tmp_path / "one")


def test_ray_sharded_ingest_equals_one_shard(golden_dir, corpus, tmp_path):
    """One Ray task per shard, each reading its own inputs: the same index as one local writer."""
    ray = pytest.importorskip("ray")
    model = str(golden_dir / "model")
    from nagindex.query.run import query

    ingest([corpus], tmp_path / "one", backbone=model, **SETTINGS)
    target = {"features": str(golden_dir / "features_fwd_up_only/target/target.jsonl")}
    expected = query(target, tmp_path / "one", fraction=0.4, with_text=True).table
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = ingest([corpus], tmp_path / "ray", backbone=model, shards=3, ray_address="local", **SETTINGS)
        # each shard scored by its own actor, on the node the catalog records; texts read there
        got = query(target, tmp_path / "ray", fraction=0.4, with_text=True, ray_address="local").table
    finally:
        ray.shutdown()
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "one")
    assert res.hidden + res.reject_reasons.get("duplicate id", 0) == 2
    assert got.equals(expected)
    assert all(t for t in got.column("text").to_pylist()) and len(got) > 0
    ips = [s.get("node_ip") for s in load_catalog(tmp_path / "ray").shards]
    assert any(ips) and len(set(filter(None, ips))) == 1  # one node here


def test_info_lists_the_shards(golden_dir, corpus, tmp_path):
    from click.testing import CliRunner

    from nagindex.cli import main

    ingest([corpus / "a.jsonl", corpus / "b.jsonl"], tmp_path / "idx", backbone=str(golden_dir / "model"),
           shards=3, **SETTINGS)
    out = CliRunner().invoke(main, ["info", "--index", str(tmp_path / "idx")])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert "(3 shards, catalog.json)" in lines[0]
    assert "documents        9 queryable (1 repeated ids across shards left out)" in out.output, out.output
    shard_lines = [x.split() for x in lines if x.startswith("shard-")]
    assert [(x[0], x[1], x[4], x[5]) for x in shard_lines] == [
        ("shard-00000", "6", "1", "complete"), ("shard-00001", "4", "1", "complete"), ("shard-00002", "0", "0", "empty")]


def test_local_workers_cap_the_processes_running_at_once(golden_dir, corpus, tmp_path, monkeypatch):
    """--shards 4 --workers 2: at most 2 shard worker processes at once, and the index of --workers 4."""
    import subprocess
    import threading

    running, peak, lock = [0], [0], threading.Lock()
    real = subprocess.run

    def counted(args, *rest, **kwargs):
        if "nagindex.ingest.sharded" not in args:
            return real(args, *rest, **kwargs)
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            return real(args, *rest, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(subprocess, "run", counted)
    model = str(golden_dir / "model")
    two = ingest([corpus], tmp_path / "two", backbone=model, shards=4, workers=2, **SETTINGS)
    assert peak == [2] and two.timings == "4 shard worker(s)"
    peak[0] = 0
    four = ingest([corpus], tmp_path / "four", backbone=model, shards=4, workers=4, **SETTINGS)
    assert peak == [4]
    assert _rows(tmp_path / "two") == _rows(tmp_path / "four")
    assert (two.added, two.rows, two.hidden, two.rejects) == (four.added, four.rows, four.hidden, four.rejects)


def test_default_workers_fit_cores_memory_and_shards(golden_dir, tmp_path, monkeypatch):
    from nagindex.errors import NagIndexError
    from nagindex.ingest import sharded

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    weights = sum(f.stat().st_size for f in (golden_dir / "model").rglob("*") if f.suffix in (".safetensors", ".bin"))
    per_model = sharded.WORKER_OVERHEAD + 2 * weights
    for free, jobs, want in ((64 << 30, 5, 5), (64 << 30, 12, 8), (3 * per_model + 1, 12, 3), (per_model // 2, 4, 1)):
        monkeypatch.setattr(sharded, "_available_memory", lambda: free)
        assert sharded.default_workers(jobs, str(golden_dir / "model")) == want, (free, jobs)
    monkeypatch.setattr(sharded, "_available_memory", lambda: 7 << 30)  # a backbone by name: 1 GiB + 2 GiB each
    assert sharded.default_workers(12, "smollm2-135m") == 2
    monkeypatch.setattr(sharded, "_available_memory", lambda: None)  # memory unknown: cores and shards
    assert sharded.default_workers(12, "smollm2-135m") == 8
    with pytest.raises(NagIndexError, match="--workers applies to sharded ingests"):
        ingest([tmp_path], tmp_path / "one", backbone=str(golden_dir / "model"), workers=2, **SETTINGS)
    with pytest.raises(NagIndexError, match="--workers 2: give at least 1, and only without --ray-address"):
        ingest([tmp_path], tmp_path / "many", backbone=str(golden_dir / "model"), shards=2, workers=2,
               ray_address="auto", **SETTINGS)


def ingest_until_killed(args: list[str], index: Path, at_least: int = 10) -> int:
    """Run the ingest command ``args`` in its own process group and ``kill -9`` the group once the shards of
    ``index`` have committed ``at_least`` documents (or it ended, or 240 s passed); how many were committed."""
    import signal
    import subprocess
    import time

    from nagindex.index.store import IndexStore

    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    committed, deadline = 0, time.time() + 240
    while committed < at_least and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
        committed = 0
        for shard in index.glob("shard-*"):
            if (shard / "store.lmdb").exists():
                try:
                    with IndexStore.open(shard) as store:
                        committed += len(store)
                except Exception:  # noqa: BLE001 - a store being created
                    pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return committed
