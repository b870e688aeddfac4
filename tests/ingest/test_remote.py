"""Remote inputs by URL: the Hub by name (``hf://datasets/...``) and any fsspec filesystem.

No network here: the Hub is played by an in-memory fsspec filesystem registered
under the ``hf`` protocol, holding RefinedWeb-shaped parquet shards (``content``,
``url``: the paper's pool). The index built from the URL must equal the one
built from the same files on local disk, resume the same way, and stop (not
reject the rest of a file) on a network error.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from nagindex.encode.extract import NagExtractor
from nagindex.errors import InputError
from nagindex.index.sharded import open_index
from nagindex.ingest.run import ingest
from nagindex.sources.fetch import fetch_texts

SETTINGS = dict(top_k=8, max_length=64, backbone="m", commit_every=4)
REPO = "hf://datasets/tiiuae/falcon-refinedweb"


class FakeHub(MemoryFileSystem):
    """``hf://`` served from memory (its own store, not the ``memory://`` one)."""

    protocol = ("hf",)
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str) and path.startswith("hf://"):
            path = path[len("hf://"):]
        return super()._strip_protocol(path)

    def unstrip_protocol(self, name: str) -> str:
        return "hf://" + name.lstrip("/")  # as HfFileSystem: hf://datasets/<repo>/<path>


@pytest.fixture(scope="module")
def extractor(tiny_backbone):
    return NagExtractor(tiny_backbone, ("fwd_up",), batch_size=4, top_k=8, max_length=64)


@pytest.fixture
def hub(golden_dir, tmp_path):
    """Two RefinedWeb-like shards on the fake Hub and the same two files on local disk."""
    original = fsspec.get_filesystem_class("hf")
    fsspec.register_implementation("hf", FakeHub, clobber=True)
    FakeHub.store.clear()
    FakeHub.pseudo_dirs[:] = [""]
    pool = pq.read_table(golden_dir / "data/pool/pool.parquet").to_pylist()
    local = tmp_path / "local"
    local.mkdir()
    fs = FakeHub()
    for i, part in enumerate((pool[:9], pool[9:])):
        table = pa.table({"content": [r["doc"] for r in part], "url": [f"https://example.org/{r['docid']}" for r in part]})
        name = f"train-{i:05d}-of-00002.parquet"
        pq.write_table(table, local / name, row_group_size=3)
        with fs.open(f"/datasets/tiiuae/falcon-refinedweb/data/{name}", "wb") as fh:
            fh.write((local / name).read_bytes())
    fs.pipe("/datasets/tiiuae/falcon-refinedweb/data/.gitattributes", b"*.parquet filter=lfs\n")
    fs.pipe("/datasets/tiiuae/falcon-refinedweb/README.md", b"# RefinedWeb\n")
    yield local
    fsspec.register_implementation("hf", original, clobber=True)


def snapshot(idx: Path):
    view = open_index(idx)
    return view.docids.take(range(len(view))), np.array(view.codes), np.array(view.token_counts)


def test_hub_dataset_by_name_equals_local_files(hub, extractor, tmp_path):
    res = ingest([f"{REPO}/data"], tmp_path / "remote", extractor=extractor, id_field="url", **SETTINGS)
    assert (res.added, res.rejects) == (15, 0)  # content found by text_field auto; .gitattributes skipped
    ingest([hub], tmp_path / "local", extractor=extractor, id_field="url", **SETTINGS)
    remote, local = snapshot(tmp_path / "remote"), snapshot(tmp_path / "local")
    assert remote[0] == local[0] and remote[0][0] == "https://example.org/pool_00"
    assert np.array_equal(remote[1], local[1]) and np.array_equal(remote[2], local[2])
    view = open_index(tmp_path / "remote")
    assert view.sources == [f"{REPO}/data/train-0000{i}-of-00002.parquet" for i in range(2)]
    # texts read back from the Hub, e.g. for --with-text
    rows = np.array([0, 14])
    texts = fetch_texts([view.sources[i] for i in np.asarray(view.source_ids)[rows]],
                        np.asarray(view.positions)[rows], view.docids.take(rows), text_field="content",
                        id_field="url")
    table = pq.read_table(hub / "train-00001-of-00002.parquet")
    assert texts[1] == table.column("content")[-1].as_py() and texts[0].strip()
    # the same URL again: the inputs are done, nothing is read or encoded
    again = ingest([f"{REPO}/data"], tmp_path / "remote", extractor=None, id_field="url", **SETTINGS)
    assert (again.added, again.skipped_inputs) == (0, 2)


class TransportError(Exception):
    """Like httpx's errors: not an OSError, raised from inside an HTTP client library."""


TransportError.__module__ = "httpx"


@pytest.mark.parametrize("error", [ConnectionError, TransportError])
def test_network_error_stops_then_the_same_command_resumes(hub, extractor, tmp_path, monkeypatch, error):
    outage = {"on": True}
    real_open = FakeHub._open

    def flaky_open(self, path, mode="rb", **kw):
        if "00001" in path and outage["on"]:
            raise error("connection reset by peer")
        return real_open(self, path, mode, **kw)

    monkeypatch.setattr(FakeHub, "_open", flaky_open)
    with pytest.raises(InputError, match=r"train-00001-of-00002\.parquet: cannot read: connection reset.*again to resume"):
        ingest([f"{REPO}/data/*.parquet"], tmp_path / "idx", extractor=extractor, id_field="url", **SETTINGS)
    assert len(open_index(tmp_path / "idx")) == 9  # the first shard is committed, nothing rejected
    outage["on"] = False
    res = ingest([f"{REPO}/data/*.parquet"], tmp_path / "idx", extractor=extractor, id_field="url", **SETTINGS)
    assert (res.added, res.rejects, res.skipped_inputs) == (6, 0, 1)
    ingest([hub], tmp_path / "ref", extractor=extractor, id_field="url", **SETTINGS)
    got, ref = snapshot(tmp_path / "idx"), snapshot(tmp_path / "ref")
    assert got[0] == ref[0] and np.array_equal(got[1], ref[1])


def test_compressed_jsonl_on_any_fsspec_filesystem(golden_dir, extractor, tmp_path):
    pool = pq.read_table(golden_dir / "data/pool/pool.parquet").to_pylist()
    data = gzip.compress("".join(json.dumps({"docid": r["docid"], "text": r["doc"]}) + "\n" for r in pool).encode())
    (tmp_path / "c.jsonl.gz").write_bytes(data)
    fsspec.filesystem("memory").pipe("/nagtest/corpus/c.jsonl.gz", data)
    try:
        first = ingest(["memory://nagtest/corpus/c.jsonl.gz"], tmp_path / "m", extractor=extractor, limit=5,
                       **SETTINGS)
        assert first.rows == 5
        ingest(["memory://nagtest/corpus/"], tmp_path / "m", extractor=extractor, **SETTINGS)  # resumes at 5
    finally:
        fsspec.filesystem("memory").rm("/nagtest", recursive=True)
    ingest([tmp_path / "c.jsonl.gz"], tmp_path / "l", extractor=extractor, **SETTINGS)
    got, ref = snapshot(tmp_path / "m"), snapshot(tmp_path / "l")
    assert got[0] == ref[0] and len(got[0]) == 15 and np.array_equal(got[1], ref[1])


def test_missing_remote_path_is_an_error(hub):
    from nagindex.sources.inputs import input_files, transport_error

    assert transport_error(TransportError()) and transport_error(TimeoutError())
    assert not transport_error(gzip.BadGzipFile()) and not transport_error(KeyError("x"))
    with pytest.raises(InputError, match="cannot list it"):
        input_files(["nosuchprotocol://bucket/data.parquet"])

    with pytest.raises(InputError, match="does not exist"):
        input_files([f"{REPO}/no-such-folder"])
    with pytest.raises(InputError, match="holds no files"):
        input_files([f"{REPO}/data/*.jsonl"])
