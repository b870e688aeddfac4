"""Faults a user can meet give one ``Error:`` line, not a traceback, and lose nothing committed.

Each fault is injected from outside (monkeypatch): a disk that fills while
committing to LMDB or deriving the scan files, LMDB's own failures (a damaged
file; a full map is not one: it grows, ``tests/index/test_growth.py``), a Ray
encode worker that dies. After each, the same command
run again gives the index an uninterrupted run gives.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from nagindex.errors import NagIndexError
from nagindex.index import derived as index_mod
from nagindex.index.derived import sync_derived
from nagindex.index.sharded import open_index
from nagindex.index.store import IndexStore

DERIVED = ["codes.u16", "tokens.i64", "positions.i64", "source_ids.u32", "docids.off", "docids.bin",
           "fingerprints.u8", "sources.json"]


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def fill(store: IndexStore, rng, make_codes, first: int, n: int, source: str = "s.jsonl") -> None:
    store.append(make_codes(rng, n), [f"d{i:05d}" for i in range(first, first + n)], np.arange(n) + 1, source,
                 np.arange(first, first + n))


# ---------------------------------------------------------------- LMDB
class _CommitFails:
    """A write transaction whose commit fails as LMDB's does on a full disk (or with ``error``)."""

    def __init__(self, txn, error: Exception) -> None:
        self._txn, self._error = txn, error

    def __enter__(self):
        return self._txn.__enter__()

    def __exit__(self, *exc):
        if exc[0] is not None:
            return self._txn.__exit__(*exc)
        self._txn.abort()
        raise self._error


class _Env:
    """An LMDB environment whose write transactions fail to commit with ``error``."""

    def __init__(self, env, error: Exception) -> None:
        self._env, self._error = env, error

    def __getattr__(self, name):
        return getattr(self._env, name)

    def begin(self, write: bool = False, **kw):
        txn = self._env.begin(write=write, **kw)
        return _CommitFails(txn, self._error) if write else txn


def fail_commits(monkeypatch, error: Exception) -> None:
    """Every store opened from now on fails its commits with ``error``, raised by LMDB itself."""
    import lmdb

    real_open = lmdb.open
    monkeypatch.setattr(lmdb, "open", lambda *a, **kw: _Env(real_open(*a, **kw), error))


@pytest.mark.parametrize("error, says", [
    ("DiskError", "no space left writing"),
    ("quota", "no space left writing"),
    ("OSError", "no space left writing"),
    ("ReadonlyError", "is read-only"),
    ("LockError", "is locked by another process"),
    ("CorruptedError", "is damaged"),
    ("PanicError", "run the same command again"),
])
def test_a_failed_commit_is_a_user_error_naming_the_store(tmp_path, tiny_manifest, make_codes, monkeypatch,
                                                         error, says):
    import lmdb

    exc = {"quota": lmdb.Error("mdb_txn_commit: Disk quota exceeded"),  # EDQUOT has no class of its own
           "OSError": OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))}.get(error) \
        or getattr(lmdb, error)(f"mdb_txn_commit: {error}")
    rng = np.random.default_rng(0)
    with IndexStore.create(tmp_path / "idx", tiny_manifest) as store:
        fill(store, rng, make_codes, 0, 3)
    with monkeypatch.context() as m:
        fail_commits(m, exc)
        with IndexStore.open(tmp_path / "idx", readonly=False) as store:
            with pytest.raises(NagIndexError) as err:
                fill(store, rng, make_codes, 3, 3)
            assert len(store) == 3  # nothing of the failed batch, all of the committed ones
    assert str(tmp_path / "idx" / "store.lmdb") in str(err.value) and says in str(err.value)
    with IndexStore.open(tmp_path / "idx", readonly=False) as store:  # room again: the same batch commits
        fill(store, rng, make_codes, 3, 3)
        assert len(store) == 6


def test_a_damaged_store_is_a_user_error(tmp_path, tiny_manifest, make_codes):
    """Both meta pages overwritten: LMDB no longer recognises the file."""
    with IndexStore.create(tmp_path / "idx", tiny_manifest) as store:
        fill(store, np.random.default_rng(2), make_codes, 0, 3)
    with open(tmp_path / "idx" / "store.lmdb" / "data.mdb", "r+b") as fh:
        fh.write(b"\0" * 8192)
    with pytest.raises(NagIndexError, match="is damaged") as err:
        IndexStore.open(tmp_path / "idx")
    assert str(tmp_path / "idx" / "store.lmdb") in str(err.value)


# ---------------------------------------------------------------- deriving
class _FullFile:
    """A file whose writes fail with ENOSPC once ``fail()`` says so."""

    def __init__(self, fh, fail) -> None:
        self._fh, self._fail = fh, fail

    def write(self, data):
        if self._fail():
            disk_full()
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def fill_disk_at(monkeypatch, name: str, nth: int) -> None:
    """The ``nth`` write ``index.py`` makes to ``name`` (or a temporary file of it) finds the disk full."""
    count = [0]

    def hit() -> bool:
        count[0] += 1
        return count[0] >= nth

    def fake_open(path, mode="r", *args, **kwargs):
        fh = open(path, mode, *args, **kwargs)
        return _FullFile(fh, hit) if name in Path(path).name and "r" not in mode else fh

    monkeypatch.setattr(index_mod, "open", fake_open, raising=False)


@pytest.mark.parametrize("name", ["codes.u16", "docids.bin", "fingerprints.u8", "sources.json", "index_info.json"])
def test_disk_full_while_deriving_is_an_error_and_the_next_derive_repairs(tmp_path, tiny_manifest, make_codes,
                                                                         monkeypatch, name):
    rng = np.random.default_rng(3)
    idx = tmp_path / "idx"
    with IndexStore.create(idx, tiny_manifest) as store:
        fill(store, rng, make_codes, 0, 4, "a.jsonl")
        sync_derived(idx)  # 4 rows derived, then 2 more chunks committed
        fill(store, rng, make_codes, 4, 5, "b.jsonl")
        fill(store, rng, make_codes, 9, 3, "c.jsonl")
    shutil.copytree(idx / "store.lmdb", tmp_path / "clean" / "store.lmdb")
    with monkeypatch.context() as m:
        fill_disk_at(m, name, 2)
        with pytest.raises(NagIndexError) as err:
            sync_derived(idx)
    message = str(err.value)
    assert message.startswith(f"no space left writing {idx} ") and "the derived files need about" in message
    assert temp_files(idx) == []
    if name in ("codes.u16", "docids.bin"):  # new rows were appended before the disk filled: cut back below
        assert (idx / "codes.u16").stat().st_size > 4 * 4 * 8 * 2
    assert len(open_index(idx)) == 4  # readers still see the last complete derive
    assert sync_derived(idx)["rows"] == 12
    sync_derived(tmp_path / "clean")
    for f in DERIVED:
        assert (idx / f).read_bytes() == (tmp_path / "clean" / f).read_bytes(), f


def test_derive_removes_temporary_files_left_by_a_kill(tmp_path, tiny_manifest, make_codes):
    with IndexStore.create(tmp_path / "idx", tiny_manifest) as store:
        fill(store, np.random.default_rng(4), make_codes, 0, 3)
    stale = [".fingerprints.faiss.123.0badf00d.tmp", ".index_info.json.77.12345678.tmp", ".sources.json.9.aa.tmp"]
    for name in stale:
        (tmp_path / "idx" / name).write_bytes(b"half")
    sync_derived(tmp_path / "idx")
    assert temp_files(tmp_path / "idx") == []


# ---------------------------------------------------------------- whole-file writers
def _writers(tmp_path: Path):
    """(what it writes, how) for every writer of a whole file outside the index folder."""
    from nagindex.demo import build_demo_corpus
    from nagindex.ingest.interop import export_features, write_features
    from nagindex.query.write import write_selection

    cols = {"docid": ["a", "b"], "score": [0.5, 0.25]}
    return {
        "selection.parquet": lambda out: write_selection(out, cols, {"k": 2}),
        "selection.jsonl": lambda out: write_selection(out, cols, {"k": 2}),
        "features.jsonl": lambda out: write_features(out, ["a"], np.zeros((1, 4, 8), np.uint16)),
        "export.jsonl": lambda out: export_features(tmp_path / "idx", out),
        "demo.jsonl": lambda out: build_demo_corpus(out, n_docs=20),
    }


@pytest.mark.parametrize("what", ["selection.parquet", "selection.jsonl", "features.jsonl", "export.jsonl",
                                  "demo.jsonl"])
def test_disk_full_in_a_whole_file_writer_keeps_the_old_file_and_no_temp(tmp_path, tiny_manifest, make_codes,
                                                                         monkeypatch, what):
    """The disk fills as the new file is flushed (``fsync`` reports ENOSPC, as with delayed allocation)."""
    with IndexStore.create(tmp_path / "idx", tiny_manifest) as store:
        fill(store, np.random.default_rng(5), make_codes, 0, 3)
    out = tmp_path / "out" / what
    out.parent.mkdir()
    out.write_text("old\n")
    write = _writers(tmp_path)[what]
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", disk_full)
        with pytest.raises(NagIndexError, match=f"no space left writing {out}"):
            write(out)
    assert out.read_text() == "old\n" and temp_files(tmp_path / "out") == []
    write(out)
    assert out.read_bytes() != b"old\n"


def test_extract_leaves_no_output_when_the_disk_fills(golden_dir, tiny_backbone, tmp_path, monkeypatch):
    from nagindex.encode.extract import NagExtractor
    from nagindex.ingest.run import extract_files

    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"docid": "x", "doc": "some words here"}) + "\n")
    out = tmp_path / "out" / "f.jsonl"
    ex = NagExtractor(tiny_backbone, top_k=8, max_length=64)
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(NagIndexError, match=f"no space left writing {out}"):
        extract_files([corpus], out, extractor=ex)
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------- end to end
def _corpus(golden_dir: Path, tmp_path: Path) -> Path:
    rows = pq.read_table(golden_dir / "data/pool/pool.parquet").to_pylist()
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"docid": r["docid"], "doc": r["doc"]}) + "\n" for r in rows)
                      + '{"docid": "broken", \n')
    return corpus


def _same_index(a: Path, b: Path) -> None:
    va, vb = open_index(a), open_index(b)
    assert len(va) == len(vb) and va.pending == vb.pending == 0
    assert va.docids.take(range(len(va))) == vb.docids.take(range(len(vb)))
    assert np.array_equal(np.asarray(va.codes), np.asarray(vb.codes))
    assert np.array_equal(np.asarray(va.token_counts), np.asarray(vb.token_counts))
    with IndexStore.open(a) as sa, IndexStore.open(b) as sb:
        assert list(sa.rejects()) == list(sb.rejects())
    assert (a / "rejects.jsonl").read_text() == (b / "rejects.jsonl").read_text()


def test_cli_ingest_disk_full_on_commit_prints_an_error_and_resumes(golden_dir, tiny_backbone, tmp_path, monkeypatch):
    import lmdb

    from nagindex.cli import main
    from nagindex.encode.extract import NagExtractor
    from nagindex.ingest.run import ingest

    corpus = _corpus(golden_dir, tmp_path)
    idx = tmp_path / "idx"
    args = ["ingest", str(corpus), "--index", str(idx), "--backbone", str(golden_dir / "model"), "--top-k", "8",
            "--max-length", "64", "--commit-every", "4", "--device", "cpu"]
    runner = CliRunner()
    assert runner.invoke(main, [*args, "--limit", "4"]).exit_code == 0  # a first window committed
    (idx / ".rejects.jsonl.4242.deadbeef.tmp").write_text("left by a kill -9")
    with monkeypatch.context() as m:
        fail_commits(m, lmdb.DiskError("mdb_txn_commit: No space left on device"))
        result = runner.invoke(main, args)
    assert result.exit_code == 1, result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert error.startswith(f"Error: no space left writing {idx / 'store.lmdb'}") and "Free space there" in error
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert len(open_index(idx)) == 4 and temp_files(idx) == []
    assert runner.invoke(main, args).exit_code == 0
    ex = NagExtractor(tiny_backbone, top_k=8, max_length=64)
    ingest([corpus], tmp_path / "ref", backbone=str(golden_dir / "model"), extractor=ex, commit_every=7,
           top_k=8, max_length=64)
    _same_index(idx, tmp_path / "ref")


def test_a_lost_ray_worker_is_an_error_and_the_same_command_resumes(golden_dir, tiny_backbone, tmp_path,
                                                                   monkeypatch):
    ray = pytest.importorskip("ray")
    from nagindex.ingest import distributed
    from nagindex.encode.extract import NagExtractor
    from nagindex.ingest.run import ingest

    class DiesOnSecondWindow(distributed._EncodeWorker):  # defined here: Ray ships it to the worker by value
        windows = 0

        def encode(self, window):
            self.windows += 1
            if self.windows == 2:
                os._exit(1)  # the worker process dies, as on an OOM kill or a lost node
            return super().encode(window)

    corpus = _corpus(golden_dir, tmp_path)
    kw = dict(backbone=str(golden_dir / "model"), top_k=8, max_length=64, commit_every=4, device="cpu",
              ray_address="local", ray_workers=1)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with monkeypatch.context() as m:
            m.setattr(distributed, "_EncodeWorker", DiesOnSecondWindow)
            with pytest.raises(NagIndexError) as err:
                ingest([corpus], tmp_path / "ray", **kw)
        message = str(err.value)
        assert "Ray encode worker 1 of 1 was lost" in message and "run the same command again" in message
        assert "worker process has died" in message  # why, as Ray tells it
        assert len(open_index(tmp_path / "ray")) == 4  # the window committed before it, derived
        ingest([corpus], tmp_path / "ray", **kw)
    finally:
        ray.shutdown()
    ex = NagExtractor(tiny_backbone, top_k=8, max_length=64)
    ingest([corpus], tmp_path / "local", backbone=str(golden_dir / "model"), extractor=ex, commit_every=4,
           top_k=8, max_length=64)
    _same_index(tmp_path / "ray", tmp_path / "local")
