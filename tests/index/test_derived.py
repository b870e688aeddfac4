"""Derived files: incremental == full rebuild, crash repair, fingerprints and the FAISS index."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from nagindex.errors import NagIndexError
from nagindex.index import derived as index_module
from nagindex.index.derived import FAISS_FILE, INFO_FILE, fingerprint_bits, fingerprints, open_shard, sync_derived
from nagindex.index.sharded import open_index
from nagindex.index.store import IndexStore

DERIVED = ["codes.u16", "tokens.i64", "positions.i64", "source_ids.u32", "docids.off", "docids.bin", "sources.json"]


def batches(make_codes, sizes=(6, 5, 4)):
    rng = np.random.default_rng(7)
    out, row = [], 0
    for b, n in enumerate(sizes):
        ids = [f"doc-{row + i:03d}-{'é' * (i % 3)}" for i in range(n)]
        out.append((make_codes(rng, n), ids, rng.integers(1, 500, n), f"src{b % 2}.jsonl", np.arange(n) + 10 * b))
        row += n
    return out


def build(directory: Path, manifest: dict, parts, sync_each: bool) -> None:
    with IndexStore.create(directory, manifest) as store:
        for codes, ids, tokens, source, positions in parts:
            store.append(codes, ids, tokens, source, positions)
            if sync_each:
                sync_derived(directory)
    sync_derived(directory)


def faiss_codes(directory: Path) -> np.ndarray:
    return np.fromfile(directory / FAISS_FILE, "u1").reshape(-1, 512)


def assert_same_derived(a: Path, b: Path) -> None:
    for name in DERIVED:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert np.array_equal(faiss_codes(a), faiss_codes(b))
    assert json.loads((a / INFO_FILE).read_text())["rows"] == json.loads((b / INFO_FILE).read_text())["rows"]


def test_fingerprint_hash_and_bits(make_codes) -> None:
    codes = make_codes(np.random.default_rng(3), 50, num_layers=4, top_k=8, width=256)
    bits = fingerprint_bits(codes, 256).reshape(50, -1)
    pair = (np.arange(4)[None, :, None] * 256 + codes.astype(np.int64)).reshape(50, -1)
    assert np.array_equal(bits, (pair * 2654435761 % 2**32) >> 20)  # the documented hash
    fps = fingerprints(codes, 256)
    assert fps.shape == (50, 512) and fps.dtype == np.uint8
    popcount = np.unpackbits(fps, axis=1).sum(axis=1)
    assert popcount.tolist() == [len(set(row.tolist())) for row in bits]
    unpacked = np.unpackbits(fps, axis=1, bitorder="little")  # FAISS layout: bit i in byte i // 8
    assert all(set(np.flatnonzero(u).tolist()) == set(b.tolist()) for u, b in zip(unpacked, bits))


def test_incremental_derive_equals_full_rebuild(tmp_path: Path, tiny_manifest, make_codes) -> None:
    parts = batches(make_codes)
    build(tmp_path / "inc", tiny_manifest, parts, sync_each=True)
    build(tmp_path / "full", tiny_manifest, parts, sync_each=False)
    assert_same_derived(tmp_path / "inc", tmp_path / "full")
    view = open_index(tmp_path / "inc")
    assert len(view) == 15 and view.pending == 0
    assert np.array_equal(view.codes, np.concatenate([p[0] for p in parts]))
    assert view.token_counts.tolist() == np.concatenate([p[2] for p in parts]).tolist()
    ids = sum((p[1] for p in parts), [])
    assert view.docids.take([14, 0, 7]) == [ids[14], ids[0], ids[7]]
    assert view.docids.numpy().tolist() == ids
    assert [ids[i] for i in view.docids.sort_indices()] == sorted(ids)
    assert view.sources == ["src0.jsonl", "src1.jsonl"] and view.source_ids.tolist() == [0] * 6 + [1] * 5 + [0] * 4
    assert view.positions[6:8].tolist() == [10, 11]


def test_faiss_finds_each_doc_itself_at_distance_0(tmp_path: Path, tiny_manifest, make_codes) -> None:
    parts = batches(make_codes)
    build(tmp_path, tiny_manifest, parts, sync_each=False)
    view = open_index(tmp_path)
    index = view.faiss_index()
    distances, rows = index.search(fingerprints(view.codes, 256), 1)
    assert index.ntotal == 15 and distances[:, 0].tolist() == [0] * 15
    assert rows[:, 0].tolist() == list(range(15))


def test_crash_mid_derive_is_repaired(tmp_path: Path, tiny_manifest, make_codes, monkeypatch) -> None:
    parts = batches(make_codes)
    build(tmp_path / "full", tiny_manifest, parts, sync_each=False)
    crashed = tmp_path / "crashed"
    build(crashed, tiny_manifest, parts[:1], sync_each=False)
    with IndexStore.open(crashed, readonly=False) as store:
        for part in parts[1:]:
            store.append(*part)

    def killed(*args, **kwargs):  # the row files were appended; sources.json and index_info.json were not
        raise KeyboardInterrupt

    monkeypatch.setattr(index_module, "_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        sync_derived(crashed)
    monkeypatch.undo()
    assert (crashed / "codes.u16").stat().st_size == 15 * 32 * 2  # bytes past the trusted count
    view = open_index(crashed)
    assert len(view) == 6 and view.pending == 9 and view.faiss_index().ntotal == 6
    with open(crashed / "docids.bin", "ab") as fh:  # and a torn write on top
        fh.write(b"garbage")
    sync_derived(crashed)
    assert_same_derived(crashed, tmp_path / "full")


def test_faiss_ahead_of_info_is_trimmed(tmp_path: Path, tiny_manifest, make_codes) -> None:
    parts = batches(make_codes)
    build(tmp_path / "full", tiny_manifest, parts, sync_each=False)
    ahead = tmp_path / "ahead"
    build(ahead, tiny_manifest, parts, sync_each=False)
    info = json.loads((ahead / INFO_FILE).read_text())
    (ahead / INFO_FILE).write_text(json.dumps({**info, "rows": 6}))  # died after FAISS, before the info
    assert open_index(ahead).faiss_index().ntotal == 6
    (ahead / FAISS_FILE).unlink()  # and a lost fingerprint file is rebuilt from the store
    sync_derived(ahead)
    assert_same_derived(ahead, tmp_path / "full")


def test_open_index_reports_pending_rows(tmp_path: Path, tiny_manifest, make_codes, caplog) -> None:
    parts = batches(make_codes)
    with IndexStore.create(tmp_path, tiny_manifest) as store:
        store.append(*parts[0])
        with caplog.at_level(logging.WARNING, logger="nagindex.index.derived"):
            view = open_index(tmp_path)
        assert len(view) == 0 and view.pending == 6 and view.codes.shape == (0, 4, 8)
        assert "6 rows are in the store but not derived yet" in caplog.text
        sync_derived(tmp_path)
        store.append(*parts[1])
        view = open_index(tmp_path)
        assert len(view) == 6 and view.pending == 5 and view.manifest["top_k"] == 8


def test_open_shard_rows_is_the_prefix_while_the_folder_appends(tmp_path: Path, tiny_manifest, make_codes) -> None:
    """A view of the first rows equals the view of an index holding only those rows, whatever was
    committed and derived after them (the derived files only grow)."""
    parts = batches(make_codes)
    build(tmp_path / "first", tiny_manifest, parts[:2], sync_each=False)
    grown = tmp_path / "grown"
    build(grown, tiny_manifest, parts, sync_each=True)
    with IndexStore.open(grown, readonly=False) as store:  # committed, not derived yet
        store.append(make_codes(np.random.default_rng(3), 2), ["late-0", "late-1"], [5, 6], "src9.jsonl", [0, 1])
    want, got = open_shard(tmp_path / "first"), open_shard(grown, rows=11)
    assert len(got) == 11 and got.pending == 17 - 11
    for name in ("codes", "token_counts", "positions", "source_ids"):
        assert np.array_equal(np.asarray(getattr(got, name)), np.asarray(getattr(want, name))), name
    assert got.docids.arrow().equals(want.docids.arrow())
    assert np.array_equal(got.faiss_index().codes, want.faiss_index().codes)
    assert (got.manifest["rows"], got.manifest["tokens"], got.info["rows"]) == (11, want.manifest["tokens"], 11)
    assert open_shard(grown, rows=15).manifest["tokens"] == open_shard(grown).manifest["tokens"]
    assert len(open_shard(grown, rows=0)) == 0
    with pytest.raises(NagIndexError, match="15 documents derived, fewer than the 16 asked for"):
        open_shard(grown, rows=16)


def test_a_reader_never_sees_the_old_row_count_over_rebuilt_files(tmp_path: Path, tiny_manifest,
                                                                  make_codes) -> None:
    """A derive that starts over (a lost file) takes ``index_info.json`` away first: a reader opening
    mid-rebuild gets no rows, not the old count over files still being rewritten."""
    parts = batches(make_codes)
    build(tmp_path, tiny_manifest, parts, sync_each=False)
    (tmp_path / "tokens.i64").unlink()
    seen = []
    sync_derived(tmp_path, progress=lambda done, total: seen.append((len(open_shard(tmp_path)), done)))
    assert seen and all(rows == 0 for rows, _ in seen), seen
    assert len(open_shard(tmp_path)) == 15


@pytest.mark.parametrize("lost", ["codes.u16", "docids.off", "tokens.i64"])
def test_lost_derived_file_is_a_clear_error_and_info_derive_rebuilds_it(tmp_path, tiny_manifest, make_codes, lost):
    """A copy of the store without (all of) its derived files once crashed on a bare FileNotFoundError."""
    from click.testing import CliRunner

    from nagindex.cli import main

    good, copy = tmp_path / "good", tmp_path / "copy"
    build(good, tiny_manifest, batches(make_codes), sync_each=False)
    build(copy, tiny_manifest, batches(make_codes), sync_each=False)
    (copy / lost).write_bytes((copy / lost).read_bytes()[:-8]) if lost == "tokens.i64" else (copy / lost).unlink()
    with pytest.raises(NagIndexError, match=rf"{lost} (is missing|holds).*nagindex info --derive --index"):
        open_index(copy)
    run = CliRunner().invoke(main, ["info", "--derive", "--index", str(copy)])
    assert run.exit_code == 0, run.output
    assert_same_derived(good, copy)
    assert open_index(copy).docids.numpy().tolist() == open_index(good).docids.numpy().tolist()
