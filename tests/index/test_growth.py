"""An index at scale: the LMDB map grows, derives append (fingerprints included), readers survive repairs,
rejects are appended, and the progress estimate does not read the corpus through.

Readers that could crash (SIGBUS on a truncated memory map) or that need a second LMDB environment run
in a child process importing the same ``nagindex`` as the tests.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import nagindex
from nagindex.data import Reject
from nagindex.index import store as store_mod
from nagindex.index.derived import INFO_FILE, fingerprints, sync_derived
from nagindex.index.sharded import open_index
from nagindex.index.store import IndexStore

FAISS_FILE, LEGACY_FAISS_FILE = "fingerprints.u8", "fingerprints.faiss"  # the new layout, and the one before
ROW_FILES = ["codes.u16", "tokens.i64", "positions.i64", "source_ids.u32", "docids.off", "docids.bin", FAISS_FILE]
CHILD_ENV = {**os.environ, "PYTHONPATH": str(Path(nagindex.__file__).resolve().parents[1])}


def fill(store: IndexStore, rng, make_codes, first: int, n: int, rejects=()) -> np.ndarray:
    codes = make_codes(rng, n)
    store.append(codes, [f"d{i:06d}" for i in range(first, first + n)], np.arange(n) + 1, "s.jsonl",
                 np.arange(first, first + n), rejects=rejects)
    return codes


def child(script: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], env=CHILD_ENV,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


# ---------------------------------------------------------------- the LMDB map grows
READER = """
    import sys
    from nagindex.index import store as store_mod
    store_mod._MAP_SIZE = 64 << 10
    with store_mod.IndexStore.open(sys.argv[1]) as store:
        for _ in sys.stdin:  # one line: read everything again
            rows = sum(len(chunk) for _, chunk in store.iter_chunks())
            print(len(store), rows, flush=True)
"""


def test_the_lmdb_map_grows_from_64_kib_and_readers_elsewhere_follow(tmp_path, tiny_manifest, make_codes,
                                                                      monkeypatch):
    monkeypatch.setattr(store_mod, "_MAP_SIZE", 64 << 10)
    rng = np.random.default_rng(1)
    idx = tmp_path / "idx"
    with IndexStore.create(idx, tiny_manifest) as store:
        fill(store, rng, make_codes, 0, 50)
        reader = child(READER, idx)
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert reader.stdout.readline().split() == ["50", "50"]  # its map: 64 KiB
        for start in range(50, 10_000, 50):  # over 1 MB of chunks and ids
            fill(store, rng, make_codes, start, 50)
        assert store._env.info()["map_size"] >= 1 << 20
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert reader.stdout.readline().split() == ["10000", "10000"]  # it adopted the grown map
        reader.stdin.close()
        assert reader.wait(30) == 0
    with IndexStore.open(idx, readonly=False) as store:  # a new process opens at 64 KiB: grows again
        fill(store, rng, make_codes, 10_000, 50)
        assert len(store) == 10_050 and len(list(store.iter_chunks())) == 201


def test_the_map_is_not_resized_under_an_open_read(tmp_path, tiny_manifest, make_codes, monkeypatch):
    """LMDB remaps on a resize: a snapshot open in this process would read freed pages, so it is refused."""
    monkeypatch.setattr(store_mod, "_MAP_SIZE", 64 << 10)
    rng = np.random.default_rng(2)
    with IndexStore.create(tmp_path / "idx", tiny_manifest) as store, store.snapshot() as snap:
        with pytest.raises(store_mod.StoreError, match="read of it open"):
            for start in range(0, 10_000, 50):
                fill(store, rng, make_codes, start, 50)
        assert len(snap) == 0
    with IndexStore.open(tmp_path / "idx") as store:
        assert len(store) == start > 0  # every batch before the refused one is committed


# ---------------------------------------------------------------- fingerprints are appended
def test_a_derive_appends_fingerprints_and_never_rewrites_them(tmp_path, tiny_manifest, make_codes):
    rng = np.random.default_rng(3)
    idx = tmp_path / "idx"
    with IndexStore.create(idx, tiny_manifest) as store:
        first = fill(store, rng, make_codes, 0, 40)
        sync_derived(idx)
        before = (idx / FAISS_FILE).read_bytes()
        inode = (idx / FAISS_FILE).stat().st_ino
        second = fill(store, rng, make_codes, 40, 25)
        sync_derived(idx)
    after = (idx / FAISS_FILE).read_bytes()
    assert (idx / FAISS_FILE).stat().st_ino == inode and after[:len(before)] == before  # appended in place
    assert after == fingerprints(np.concatenate([first, second]), 256).tobytes()
    assert not (idx / LEGACY_FAISS_FILE).exists()


@pytest.mark.parametrize("k", [1, 10, 300, 1000])
def test_searching_the_mapped_fingerprints_is_faiss_index_binary_flat(tmp_path, tiny_manifest, make_codes, k):
    """Width 16 and 4 neurons: few distinct fingerprints, so many ties at every rank."""
    import faiss

    manifest = {**tiny_manifest, "width": 16, "top_k": 4}
    with IndexStore.create(tmp_path, manifest) as store:
        store.append(make_codes(np.random.default_rng(4), 1000, top_k=4, width=16), [f"d{i}" for i in range(1000)],
                     np.ones(1000), "s.jsonl", np.arange(1000))
    sync_derived(tmp_path)
    view = open_index(tmp_path)
    flat = faiss.IndexBinaryFlat(4096)
    flat.add(fingerprints(view.codes, 16))
    queries = fingerprints(make_codes(np.random.default_rng(5), 7, top_k=4, width=16), 16)
    mapped = view.faiss_index()
    assert mapped.ntotal == 1000 and isinstance(mapped.codes, np.memmap)
    for got, want in zip(mapped.search(queries, k), flat.search(queries, k)):
        assert np.array_equal(got, want)


def make_legacy(idx: Path) -> None:
    """What nagindex derived before ``fingerprints.u8``: the same files, and ``fingerprints.faiss`` (the same
    bytes as that version's ``sync_derived`` writes, checked once against it)."""
    import faiss

    view = open_index(idx)
    index = faiss.IndexBinaryFlat(4096)
    index.add(fingerprints(view.codes, view.manifest["width"]))
    faiss.write_index_binary(index, str(idx / LEGACY_FAISS_FILE))
    (idx / FAISS_FILE).unlink()
    info = json.loads((idx / INFO_FILE).read_text())
    info["files"] = [LEGACY_FAISS_FILE if f == FAISS_FILE else f for f in info["files"]]
    (idx / INFO_FILE).write_text(json.dumps(info))


def test_an_index_with_the_old_faiss_file_is_queried_then_migrated(tmp_path, tiny_manifest, make_codes):
    import faiss

    rng = np.random.default_rng(6)
    idx = tmp_path / "idx"
    with IndexStore.create(idx, tiny_manifest) as store:
        first = fill(store, rng, make_codes, 0, 30)
    sync_derived(idx)
    make_legacy(idx)
    old = faiss.read_index_binary(str(idx / LEGACY_FAISS_FILE))
    queries = fingerprints(make_codes(rng, 5), 256)
    legacy_view = open_index(idx)
    for got, want in zip(legacy_view.faiss_index().search(queries, 12), old.search(queries, 12)):
        assert np.array_equal(got, want)  # read as it is, before any derive
    with IndexStore.open(idx, readonly=False) as store:
        second = fill(store, rng, make_codes, 30, 10)
    sync_derived(idx)
    assert not (idx / LEGACY_FAISS_FILE).exists()
    assert (idx / FAISS_FILE).read_bytes() == fingerprints(np.concatenate([first, second]), 256).tobytes()
    flat = faiss.IndexBinaryFlat(4096)
    flat.add(fingerprints(np.concatenate([first, second]), 256))
    for got, want in zip(open_index(idx).faiss_index().search(queries, 40), flat.search(queries, 40)):
        assert np.array_equal(got, want)
    for got, want in zip(legacy_view.faiss_index().search(queries, 12), old.search(queries, 12)):
        assert np.array_equal(got, want)  # a view opened before the migration still searches its rows


# ---------------------------------------------------------------- readers survive repairs
def arrays(view) -> dict[str, np.ndarray]:
    return {"codes": view.codes, "tokens": view.token_counts, "positions": view.positions, "sources": view.source_ids,
            "offsets": view.docids._offsets, "docids": view.docids._blob, "fingerprints": view.faiss_index().codes}


def test_a_repair_leaves_an_open_view_intact(tmp_path, tiny_manifest, make_codes):
    """Garbage past the trusted rows (a killed derive) is cut back while a view maps the files."""
    rng = np.random.default_rng(7)
    idx = tmp_path / "idx"
    with IndexStore.create(idx, tiny_manifest) as store:
        fill(store, rng, make_codes, 0, 20)
        sync_derived(idx)
        view = open_index(idx)
        before = {k: np.array(v) for k, v in arrays(view).items()}
        for name in ROW_FILES:
            with open(idx / name, "ab") as fh:
                fh.write(b"\xff" * 5000)
        fill(store, rng, make_codes, 20, 7)
        sync_derived(idx)
    for name, array in arrays(view).items():
        assert np.array_equal(np.array(array), before[name]), name
    assert len(open_index(idx)) == 27


VIEW_READER = """
    import sys
    import numpy as np
    from nagindex.index.sharded import open_index
    view = open_index(sys.argv[1])
    def total():
        parts = [view.codes, view.token_counts, view.positions, view.source_ids, view.docids._offsets,
                 view.docids._blob, view.faiss_index().codes]
        return [int(np.asarray(p, dtype=np.int64).sum()) for p in parts]
    print(total(), flush=True)
    sys.stdin.readline()  # the derive has started over and written its first chunk
    print(total(), flush=True)
"""


@pytest.mark.parametrize("how", ["new store", "lost file"])
def test_a_derive_that_starts_over_never_truncates_a_mapped_file(tmp_path, tiny_manifest, make_codes, how):
    """A new store in the folder, or a lost derived file: everything is derived again from row 0.

    The reader reads its view again while the derive is under way (after its first chunk): truncated
    files would take the pages from under it (SIGBUS: it dies)."""
    rng = np.random.default_rng(8)
    idx = tmp_path / "idx"
    with IndexStore.create(idx, tiny_manifest) as store:
        for start in range(0, 3000, 1000):
            fill(store, rng, make_codes, start, 1000)
    sync_derived(idx)
    reader = child(VIEW_READER, idx)
    first = reader.stdout.readline()
    if how == "new store":
        shutil.rmtree(idx / "store.lmdb")
        with IndexStore.create(idx, {**tiny_manifest, "top_k": 4}) as store:
            store.append(make_codes(rng, 10, top_k=4), [f"n{i}" for i in range(10)], np.ones(10), "n.jsonl",
                         np.arange(10))
    else:
        (idx / "positions.i64").unlink()
    again: list[str] = []

    def midway(done: int, total: int) -> None:
        if not again:
            reader.stdin.write("\n")
            reader.stdin.flush()
            again.append(reader.stdout.readline())

    sync_derived(idx, progress=midway)
    assert reader.wait(30) == 0 and again == [first]
    assert len(open_index(idx)) == (10 if how == "new store" else 3000)


# ---------------------------------------------------------------- rejects.jsonl is appended
def test_rejects_are_appended_once_even_after_a_kill(tmp_path, tiny_manifest, make_codes, monkeypatch):
    from nagindex.ingest.worker import REJECTS_FILE, _write_rejects

    rng = np.random.default_rng(9)
    idx = tmp_path / "idx"
    path = idx / REJECTS_FILE
    with IndexStore.create(idx, tiny_manifest) as store:
        fill(store, rng, make_codes, 0, 3, rejects=[Reject("s.jsonl", i, "empty document", f"r{i}") for i in range(4)])
        _write_rejects(store, idx)
        head, inode = path.read_bytes(), path.stat().st_ino
        assert head.count(b"\n") == 4
        fill(store, rng, make_codes, 3, 3, rejects=[Reject("t.jsonl", None, "bad json", None)])
        with monkeypatch.context() as m:  # killed after appending, before recording it
            m.setattr(store, "set_exported_rejects", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
            with pytest.raises(KeyboardInterrupt):
                _write_rejects(store, idx)
        with open(path, "ab") as fh:
            fh.write(b'{"source": "torn')  # and a torn line on top
        fill(store, rng, make_codes, 6, 3, rejects=[Reject("u.jsonl", 7, "too long", "u7")])
        _write_rejects(store, idx)
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert path.stat().st_ino == inode and path.read_bytes().startswith(head)
        assert [r["docid"] for r in lines] == ["r0", "r1", "r2", "r3", None, "u7"]
        assert lines[4] == {"source": "t.jsonl", "line_or_row": None, "docid": None, "reason": "bad json"}
        assert lines[5]["line_or_row"] == 8
        path.unlink()  # removed by hand: written again whole
        _write_rejects(store, idx)
        assert [json.loads(line)["docid"] for line in path.read_text().splitlines()] == [r["docid"] for r in lines]


# ---------------------------------------------------------------- the progress estimate
def test_the_record_estimate_reads_one_mib_of_a_large_jsonl(tmp_path, monkeypatch):
    from nagindex.ingest import worker
    from nagindex.sources.inputs import input_files

    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    lines = [json.dumps({"docid": f"d{i}", "doc": "word " * (20 + i % 17)}) + "\n" for i in range(60_000)]
    big.write_text("".join(lines))
    small.write_text("".join(lines[:100]))
    read = []

    class Counting:
        def __init__(self, fh):
            self._fh = fh

        def read(self, n=-1):
            data = self._fh.read(n)
            read.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self._fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._fh.close()

    monkeypatch.setattr(worker, "open", lambda *a, **kw: Counting(open(*a, **kw)), raising=False)
    assert big.stat().st_size > 4 << 20
    estimate = worker.estimate_records(input_files([big, small]), {str(big.resolve()): 1000})
    assert abs(estimate - (59_000 + 100)) < 0.02 * 60_000 and sum(read) <= (1 << 20) + len(small.read_bytes())
    assert worker.estimate_records(input_files([small]), {}) == 100  # a file under 1 MiB: counted exactly
