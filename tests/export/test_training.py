"""``write_training``: a selection's texts out as parquet, ``jsonl.zst`` and Megatron parts, checked, resumable."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nagindex.errors import InputError, NagIndexError
from nagindex.export.training import write_training
from nagindex.query.run import query
from tests.query import pools

ROOT = Path(__file__).resolve().parents[2]
SHARD = "3KB"  # the pool's texts are ~20 KB: several parts per task, several tasks


def _text(docid: str) -> str:
    return f"passage {docid}: " + "ünïcode words " * (1 + len(docid) % 7)


@pytest.fixture(scope="module")
def selected(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("training")
    files = pools.write_pool(root / "data", sizes=(90, 30, 120, 5, 60), texts=_text)
    target = pools.write_targets(root / "data")["alpha"]
    idx = pools.build_index(files, root / "idx", 2)
    sel = root / "sel.parquet"
    query({"features": str(target)}, idx, k=150, out=sel)
    return {"root": root, "sel": sel, "idx": idx, "data": root / "data"}


def _selection(sel: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(sel).to_pylist()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(out: Path, suffix: str) -> list[dict]:
    """Every output row, parts in the manifest's order."""
    import pyarrow.parquet as pq
    import zstandard

    rows = []
    for part in json.loads((out / "manifest.json").read_text())["parts"]:
        (name,) = part["files"]
        assert name.endswith(suffix)
        if suffix == ".parquet":
            rows += pq.read_table(out / name).to_pylist()
        else:
            with open(out / name, "rb") as fh:
                raw = zstandard.ZstdDecompressor().stream_reader(fh).read().decode()
            rows += [json.loads(line) for line in raw.splitlines()]
    return rows


@pytest.mark.parametrize("fmt,suffix", [("parquet", ".parquet"), ("jsonl.zst", ".jsonl.zst")])
def test_texts_are_the_selection_s_in_rank_order_once_sorted(selected, tmp_path, fmt, suffix):
    res = write_training(selected["sel"], tmp_path / "out", format=fmt, shard_size=SHARD)
    rows = _rows(tmp_path / "out", suffix)
    want = _selection(selected["sel"])
    assert len(want) == 150 and res.documents == 150 and len(rows) == 150
    assert sorted(rows, key=lambda r: r["rank"]) == [{"docid": r["docid"], "text": _text(r["docid"]),
                                                      "rank": r["rank"]} for r in want]
    # a part closes at the first document reaching 3 KB; a task's last part holds what is left
    assert [(p["name"], p["rows"], p["bytes"]) for p in res.parts] == [
        ("part-00000-00000", [0, 30], 3280), ("part-00000-00001", [30, 62], 3061),
        ("part-00000-00002", [62, 90], 2894), ("part-00001-00000", [0, 26], 3172),
        ("part-00001-00001", [26, 39], 1234), ("part-00002-00000", [0, 21], 2138)]
    assert res.bytes == sum(len(r["text"].encode()) for r in rows)
    # within a part, a source's documents come in the source's order
    by_id = {r["docid"]: (r["source"], r["position"]) for r in want}
    first = _rows(tmp_path / "out", suffix)[:res.parts[0]["documents"]]
    assert [by_id[r["docid"]] for r in first] == sorted(by_id[r["docid"]] for r in first)


def _read_megatron(prefix: Path) -> list[np.ndarray]:
    """A minimal reader of Megatron-LM's MMapIndexedDataset (``megatron/core/datasets/indexed_dataset.py``)."""
    idx = (prefix.with_name(prefix.name + ".idx")).read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00"
    version, = struct.unpack("<Q", idx[9:17])
    code, = struct.unpack("<B", idx[17:18])
    count, doc_count = struct.unpack("<QQ", idx[18:34])
    assert version == 1
    dtype = {8: np.uint16, 4: np.int32}[code]
    at = 34
    sizes = np.frombuffer(idx, np.int32, count, at)
    pointers = np.frombuffer(idx, np.int64, count, at + 4 * count)
    documents = np.frombuffer(idx, np.int64, doc_count, at + 12 * count)
    assert len(idx) == at + 12 * count + 8 * doc_count
    assert documents.tolist() == list(range(count + 1))
    data = np.fromfile(prefix.with_name(prefix.name + ".bin"), dtype)
    assert pointers[0] == 0 and data.size == sizes.sum()
    return [data[p // np.dtype(dtype).itemsize:p // np.dtype(dtype).itemsize + n] for p, n in zip(pointers, sizes)]


def test_megatron_round_trip_gives_each_document_s_tokens_and_eos(selected, golden_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(golden_dir / "model")
    out = tmp_path / "meg"
    res = write_training(selected["sel"], out, format="megatron", shard_size="2KB", tokenizer=str(golden_dir / "model"))
    got = []
    parts = json.loads((out / "manifest.json").read_text())["parts"]
    assert [p["files"] for p in parts] == [[f"{p['name']}.bin", f"{p['name']}.idx"] for p in parts]
    for part in parts:
        got += _read_megatron(out / part["name"])
    order = _order(selected["sel"], tmp_path / "plan")
    assert len(got) == res.documents == 150
    for ids, docid in zip(got, order):
        assert ids.tolist() == tok(_text(docid))["input_ids"] + [tok.eos_token_id]
    assert res.bytes == sum(ids.nbytes for ids in got) and got[0].dtype == np.uint16
    no_eos = write_training(selected["sel"], tmp_path / "noeos", format="megatron", shard_size="2KB",
                            tokenizer=str(golden_dir / "model"), eos=False)
    assert no_eos.bytes == res.bytes - 150 * 2


def _order(sel: Path, scratch: Path) -> list[str]:
    """The docids in the order a Megatron run writes them: task by task (``plan_tasks``)."""
    from nagindex.export.plan import plan_tasks
    from nagindex.export.writers import FORMATS

    return [d for t in plan_tasks(sel, scratch, 2000, FORMATS["megatron"].bytes_per_token) for d in t.rows()[3]]


def test_one_and_three_workers_write_identical_bytes(selected, tmp_path):
    write_training(selected["sel"], tmp_path / "one", format="parquet", shard_size=SHARD, workers=1)
    res = write_training(selected["sel"], tmp_path / "three", format="parquet", shard_size=SHARD, workers=3)
    assert len({p["name"][:10] for p in res.parts}) >= 3  # several tasks, so the 3 workers share the work
    assert _tree(tmp_path / "one") == _tree(tmp_path / "three")


def test_a_selection_written_by_the_shards_gives_the_same_training_data(selected, tmp_path):
    """``query -o DIR`` (parts written by the shards) in, the same parts out as from the one-file selection."""
    query({"features": str(selected["data"] / "alpha.jsonl")}, selected["idx"], k=150, out=tmp_path / "sel")
    write_training(selected["sel"], tmp_path / "from_file", format="parquet", shard_size=SHARD)
    write_training(tmp_path / "sel", tmp_path / "from_parts", format="parquet", shard_size=SHARD)
    file, parts = _tree(tmp_path / "from_file"), _tree(tmp_path / "from_parts")
    differ = [k for k in file if file[k] != parts[k]]
    assert file.keys() == parts.keys() and differ == [".done/run.json", "manifest.json"]  # they name the selection


def test_a_changed_source_is_an_error_naming_it(selected, tmp_path):
    changed = Path(_selection(selected["sel"])[-1]["source"])
    before, st = changed.read_bytes(), os.stat(changed)
    try:
        with open(changed, "a") as fh:
            fh.write(json.dumps({"docid": "late", "doc": "appended later"}) + "\n")
        with pytest.raises(InputError, match=rf"{changed} changed since it was ingested"):
            write_training(selected["sel"], tmp_path / "out", shard_size=SHARD, workers=2)
    finally:
        changed.write_bytes(before)
        os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_options_differing_from_the_run_in_the_folder_are_refused(selected, tmp_path):
    write_training(selected["sel"], tmp_path / "out", shard_size=SHARD)
    with pytest.raises(NagIndexError, match=r"other options .*shard_bytes: 3000 -> 4000"):
        write_training(selected["sel"], tmp_path / "out", shard_size="4KB")


def test_a_second_run_into_the_same_folder_at_once_is_refused(selected, tmp_path):
    import fcntl

    (tmp_path / "out" / ".done").mkdir(parents=True)
    with open(tmp_path / "out" / ".done" / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(NagIndexError, match="another write-training is writing there now"):
            write_training(selected["sel"], tmp_path / "out", shard_size=SHARD)


KILLER = """
import os, signal, sys
from nagindex.export import training

commit, seen = training._commit, []
def killing_commit(*args, **kw):
    seen.append(1)
    if len(seen) == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)  # the part is in place, its done mark is not
    return commit(*args, **kw)

training._commit = killing_commit
training.write_training(sys.argv[1], sys.argv[2], format="jsonl.zst", shard_size="3KB")
"""


def test_kill_then_resume_writes_what_an_uninterrupted_run_writes(selected, tmp_path):
    whole = write_training(selected["sel"], tmp_path / "whole", format="jsonl.zst", shard_size=SHARD)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for n in (4, 2):  # killed twice, the second time in an already resumed run
        proc = subprocess.run([sys.executable, "-c", KILLER, str(selected["sel"]), str(out), str(n)], env=env,
                              cwd=ROOT, capture_output=True, check=False)
        assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not (out / "manifest.json").exists() and len(list(out.glob("part-*"))) >= 4
    marked = {p: p.stat().st_mtime_ns for p in out.glob("part-*")
              if (out / ".done" / (p.name[5:16] + ".json")).is_file()}
    res = write_training(selected["sel"], out, format="jsonl.zst", shard_size=SHARD)
    assert res.skipped_tasks == 1 and res.parts == whole.parts
    assert len(marked) == 4 and all(p.stat().st_mtime_ns == t for p, t in marked.items())  # not written again
    assert _tree(out) == _tree(tmp_path / "whole")


def test_ray_tasks_write_what_local_workers_write(selected, tmp_path):
    import ray

    write_training(selected["sel"], tmp_path / "local", format="jsonl.zst", shard_size=SHARD)
    try:
        write_training(selected["sel"], tmp_path / "ray", format="jsonl.zst", shard_size=SHARD, ray_address="local")
    finally:
        ray.shutdown()
    assert _tree(tmp_path / "ray") == _tree(tmp_path / "local")


def test_cli_writes_and_says_what(selected, tmp_path):
    from click.testing import CliRunner

    from nagindex.cli import main

    args = ["write-training", str(selected["sel"]), "-o", str(tmp_path / "out"), "--shard-size", SHARD]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.stdout == f"150 documents, 15,779 bytes in 6 part(s) -> {tmp_path / 'out'}\n"
    again = CliRunner().invoke(main, args)
    assert again.stdout == (f"150 documents, 15,779 bytes in 6 part(s) -> {tmp_path / 'out'} "
                            "(3 task(s) already written)\n")
    bad = CliRunner().invoke(main, [*args[:-1], "0"])
    assert bad.exit_code == 1 and "invalid size '0'" in bad.output


def test_the_embedded_smollm2_tokenizer_works_offline(monkeypatch):
    from nagindex.export.writers import TokenEncoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = TokenEncoder("smollm2-135m")
    assert [ids.tolist() for ids in enc.encode(["hello world", ""])] == [[28120, 905, 2], [2]]
    assert enc.dtype == np.uint16


def test_the_plan_streams_the_selection_and_leaves_nothing(selected, tmp_path, monkeypatch):
    """Planned a few rows at a time, flushed to the task files after every batch, the parts are the same
    bytes; what goes to a worker is the task's sources and a file name, never its rows; a plan a killed run
    left half written is started over; the finished run leaves no plan behind."""
    import dataclasses

    from nagindex.export import plan

    whole = write_training(selected["sel"], tmp_path / "whole", format="parquet", shard_size=SHARD)
    assert not (tmp_path / "whole" / ".done" / plan.PLAN).exists()
    monkeypatch.setattr(plan, "PLAN_BATCH", 7)
    monkeypatch.setattr(plan, "FLUSH_BYTES", 1)
    half = tmp_path / "streamed" / ".done" / plan.PLAN
    half.mkdir(parents=True)
    (half / "task-00000.rows").write_bytes(b"\1" * 100)  # what a kill in the middle of planning leaves
    tasks = plan.plan_tasks(selected["sel"], tmp_path / "tasks", 3000, 1.0)
    assert [f.name for f in dataclasses.fields(plan.Task)] == ["number", "sources", "documents", "plan"]
    rows = [t.rows() for t in tasks]
    assert sum(t.documents for t in tasks) == sum(len(r[3]) for r in rows) == 150
    assert sorted(d for r in rows for d in r[3]) == sorted(r["docid"] for r in _selection(selected["sel"]))
    res = write_training(selected["sel"], tmp_path / "streamed", format="parquet", shard_size=SHARD)
    assert res.parts == whole.parts and _tree(tmp_path / "streamed") == _tree(tmp_path / "whole")
