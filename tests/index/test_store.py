"""The LMDB store: round trip, one-transaction atomicity, crash safety, snapshots, manifest checks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nagindex.data import Reject
from nagindex.errors import IndexMismatchError, NagIndexError
from nagindex.index import store as store_module
from nagindex.index.chunk import decode_chunk, encode_chunk
from nagindex.index.store import IndexStore

REPO = Path(__file__).resolve().parents[2]


def fill(store: IndexStore, rng: np.random.Generator, make_codes, n: int, prefix: str, source: str = "a.jsonl"):
    codes = make_codes(rng, n)
    ids = [f"{prefix}{i}" for i in range(n)]
    tokens = rng.integers(1, 10_000, n)
    first = store.append(codes, ids, tokens, source, np.arange(n),
                         progress={source: {"next_position": n, "done": False}})
    return first, codes, ids, tokens


def read_all(store: IndexStore):
    chunks = [chunk for _, chunk in store.iter_chunks()]
    return (np.concatenate([c.codes for c in chunks]), sum((c.docids for c in chunks), []),
            np.concatenate([c.token_counts for c in chunks]))


def test_chunk_format_round_trip(make_codes) -> None:
    rng = np.random.default_rng(1)
    codes = make_codes(rng, 5, num_layers=3, top_k=3)  # 9 codes per row: sections need padding
    raw = encode_chunk(codes, ["a", "é", "", "long" * 50, "z"], np.arange(5) * 7, np.arange(5) + 100,
                       np.array([0, 1, 0, 2, 0]))
    chunk = decode_chunk(bytes(raw))
    assert bytes(raw[:4]) == b"NAGC"
    assert np.array_equal(chunk.codes, codes) and chunk.docids == ["a", "é", "", "long" * 50, "z"]
    assert chunk.token_counts.tolist() == [0, 7, 14, 21, 28] and chunk.positions.tolist() == [100, 101, 102, 103, 104]
    assert chunk.source_ids.tolist() == [0, 1, 0, 2, 0]
    assert chunk.slice(3).docids == ["long" * 50, "z"]


def test_append_reopen_round_trip(tmp_path: Path, tiny_manifest, make_codes) -> None:
    rng = np.random.default_rng(0)
    with IndexStore.create(tmp_path, tiny_manifest) as store:
        _, c1, i1, t1 = fill(store, rng, make_codes, 7, "a")
        first, c2, i2, t2 = fill(store, rng, make_codes, 5, "b", source="b.parquet")
        store.append(np.zeros((0, 4, 8), np.uint16), [], [], "b.parquet", [],
                     progress={"b.parquet": {"next_position": 9, "done": True}},
                     rejects=[Reject("b.parquet", 6, "empty document", "b-x")])
    assert first == 7
    with IndexStore.open(tmp_path) as store:
        codes, ids, tokens = read_all(store)
        assert np.array_equal(codes, np.concatenate([c1, c2])) and ids == i1 + i2
        assert np.array_equal(tokens, np.concatenate([t1, t2]))
        assert len(store) == 12 and store.total_tokens == int(t1.sum() + t2.sum())
        assert store.sources() == ["a.jsonl", "b.parquet"]
        assert store.progress("b.parquet") == {"next_position": 9, "done": True, "key": "b.parquet"}
        assert set(store.all_progress()) == {"a.jsonl", "b.parquet"}
        assert list(store.rejects()) == [Reject("b.parquet", 6, "empty document", "b-x")]
        assert store.contains(["a3", "zz", "b4"]).tolist() == [True, False, True]
        assert store.manifest["top_k"] == 8 and store.manifest["rows"] == 12
        (start, chunk), = list(store.iter_chunks(9))  # starts inside the second chunk
        assert start == 9 and chunk.docids == ["b2", "b3", "b4"] and np.array_equal(chunk.codes, c2[2:])
        with pytest.raises(NagIndexError, match="read-only"):
            fill(store, rng, make_codes, 1, "c")


def test_duplicate_docids_raise_and_commit_nothing(tmp_path: Path, tiny_manifest, make_codes) -> None:
    rng = np.random.default_rng(0)
    with IndexStore.create(tmp_path, tiny_manifest) as store:
        fill(store, rng, make_codes, 3, "a")
        with pytest.raises(NagIndexError, match="'a1' is already in the index"):
            store.append(make_codes(rng, 2), ["new", "a1"], [1, 1], "x", [0, 1])
        with pytest.raises(NagIndexError, match="'n' is repeated"):
            store.append(make_codes(rng, 2), ["n", "n"], [1, 1], "x", [0, 1])
        assert len(store) == 3 and not store.contains(["new", "n"]).any() and store.sources() == ["a.jsonl"]
        long_id = "é" * 400  # 800 bytes: over LMDB's key limit, stored hashed
        store.append(make_codes(rng, 1), [long_id], [1], "x", [0])
        assert store.contains([long_id, "é" * 399]).tolist() == [True, False]


def test_append_is_one_transaction(tmp_path: Path, tiny_manifest, make_codes, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    with IndexStore.create(tmp_path, tiny_manifest) as store:
        fill(store, rng, make_codes, 3, "a")
        before = store.manifest

        def boom(*args, **kwargs):  # fails after the chunk, ids and progress were written
            raise OSError("disk full")

        monkeypatch.setattr(IndexStore, "_put_rejects", boom)
        with pytest.raises(OSError, match="disk full"):
            store.append(make_codes(rng, 4), list("wxyz"), [1] * 4, "new.jsonl", range(4),
                         progress={"a.jsonl": {"next_position": 99, "done": True}}, rejects=[Reject("s", 1, "r")])
        assert store.manifest == before and len([c for c in store.iter_chunks()]) == 1
        assert not store.contains(list("wxyz")).any() and store.progress("a.jsonl")["next_position"] == 3
        assert store.sources() == ["a.jsonl"] and list(store.rejects()) == []


def test_manifest_mismatch_names_each_setting(tmp_path: Path, tiny_manifest) -> None:
    with IndexStore.create(tmp_path, {**tiny_manifest, "weights_sha256": "aa"}):
        pass
    with IndexStore.open(tmp_path) as store:
        store.check_compatible({**tiny_manifest, "weights_sha256": None})  # unknown hash: not compared
        with pytest.raises(IndexMismatchError) as err:
            store.check_compatible({**tiny_manifest, "top_k": 20, "backbone": "Qwen/Qwen3-1.7B-Base",
                                    "weights_sha256": "bb"})
    message = str(err.value)
    assert "top_k: index has 8, requested 20" in message
    assert "backbone: index has 'dummy', requested 'Qwen/Qwen3-1.7B-Base'" in message
    assert "weights_sha256: index has 'aa', requested 'bb'" in message and "width" not in message
    with pytest.raises(IndexMismatchError, match="top_k"):
        IndexStore.open_or_create(tmp_path, {**tiny_manifest, "top_k": 20})
    with pytest.raises(NagIndexError, match="already holds an index"):
        IndexStore.create(tmp_path, tiny_manifest)


def test_one_writer_at_a_time(tmp_path: Path, tiny_manifest) -> None:
    with IndexStore.create(tmp_path, tiny_manifest):
        with pytest.raises(NagIndexError, match="writing"):
            IndexStore.open(tmp_path, readonly=False)
        with IndexStore.open(tmp_path) as reader:  # readers are welcome meanwhile
            assert len(reader) == 0
    IndexStore.open(tmp_path, readonly=False).close()  # lock released on close


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from nagindex.index.store import IndexStore
    store = IndexStore.open(sys.argv[1], readonly=False)
    rng = np.random.default_rng(0)
    batch, rounds = int(sys.argv[2]), int(sys.argv[3])
    for r in range(rounds):
        n = len(store)
        ids = [f"w{n + i}" for i in range(batch)]
        store.append(rng.integers(0, 256, (batch, 4, 8)), ids, np.ones(batch), "w.jsonl", np.arange(n, n + batch),
                     progress={"w.jsonl": {"next_position": n + batch, "done": False}})
        print("committed", flush=True)
""")


def run_writer(directory: Path, batch: int, rounds: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(directory), str(batch), str(rounds)],
                            stdout=subprocess.PIPE, text=True, env=env)


def test_reader_snapshot_is_consistent_while_another_process_writes(tmp_path: Path, tiny_manifest) -> None:
    IndexStore.create(tmp_path, tiny_manifest).close()
    with IndexStore.open(tmp_path) as reader:
        with reader.snapshot() as snap:
            writer = run_writer(tmp_path, 50, 2)
            assert writer.wait(timeout=60) == 0
            assert len(snap) == 0 and list(snap.iter_chunks()) == [] and not snap.contains(["w0"]).any()
        assert len(reader) == 100 and reader.contains(["w0", "w99"]).all()


def test_kill_9_leaves_whole_batches_and_matching_progress(tmp_path: Path, tiny_manifest) -> None:
    IndexStore.create(tmp_path, tiny_manifest).close()
    writer = run_writer(tmp_path, 2000, 10_000)
    for _ in range(3):
        assert writer.stdout.readline() == "committed\n"
    writer.send_signal(signal.SIGKILL)  # most likely mid-transaction
    writer.wait(timeout=60)
    with IndexStore.open(tmp_path, readonly=False) as store:  # the dead writer's lock is gone
        rows = len(store)
        chunk_rows = [len(c) for _, c in store.iter_chunks()]
        assert rows >= 6000 and rows % 2000 == 0 and sum(chunk_rows) == rows and set(chunk_rows) == {2000}
        assert store.progress("w.jsonl")["next_position"] == rows
        assert store.contains([f"w{rows - 1}", f"w{rows}"]).tolist() == [True, False]


def test_envs_are_shared_and_closed(tmp_path: Path, tiny_manifest) -> None:
    writer = IndexStore.create(tmp_path, tiny_manifest)
    reader = IndexStore.open(tmp_path)
    key = str((tmp_path / "store.lmdb").resolve())
    assert store_module._ENVS[key][1] == 2  # one LMDB environment per path per process
    writer.close()
    assert len(reader) == 0
    reader.close()
    assert key not in store_module._ENVS
