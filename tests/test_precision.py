"""Precision is identity: an index records its dtype, refuses appends in another, and its targets use it.

bfloat16 and float32 rank neurons differently (the golden fixture's model differs on every
target example), so NAGs of two dtypes must never be mixed: not inside an index, and not
between an index and the target NAGs a query compares with it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from nagindex.encode import encoder
from nagindex.errors import IndexMismatchError
from nagindex.index.store import IndexStore
from nagindex.ingest.run import ingest
from nagindex.query.target_nags import cache_key, target_codes

SETTINGS = {"top_k": 8, "max_length": 64, "device": "cpu"}


@pytest.fixture(scope="module")
def corpus(golden_dir, tmp_path_factory) -> Path:
    """The golden pool as two JSONL inputs (the second one to append)."""
    root = tmp_path_factory.mktemp("corpus")
    rows = pq.read_table(golden_dir / "data/pool/pool.parquet").to_pylist()
    lines = [json.dumps({"docid": r["docid"], "doc": r["doc"]}) for r in rows]
    (root / "a.jsonl").write_text("\n".join(lines[:8]) + "\n")
    (root / "b.jsonl").write_text("\n".join(lines[8:]) + "\n")
    return root


@pytest.fixture(scope="module")
def target_texts(golden_dir) -> list[str]:
    return pq.read_table(golden_dir / "data/target/target.parquet").column("doc").to_pylist()


def _index(golden_dir: Path, corpus: Path, root: Path, dtype: str | None) -> Path:
    idx = root / f"idx-{dtype or 'auto'}"
    ingest([corpus / "a.jsonl"], idx, backbone=str(golden_dir / "model"), dtype=dtype, **SETTINGS)
    return idx


@pytest.fixture(scope="module")
def f32_index(golden_dir, corpus, tmp_path_factory) -> Path:
    """An index of a.jsonl made on CPU with the automatic dtype (float32 there)."""
    return _index(golden_dir, corpus, tmp_path_factory.mktemp("f32"), None)


@pytest.fixture(scope="module")
def bf16_index(golden_dir, corpus, tmp_path_factory) -> Path:
    """An index of a.jsonl made with --dtype bfloat16 (the tiny model runs in bf16 on CPU too)."""
    return _index(golden_dir, corpus, tmp_path_factory.mktemp("bf16"), "bfloat16")


def _manifest(idx: Path) -> dict:
    with IndexStore.open(idx) as store:
        return dict(store.manifest)


def _rows(idx: Path) -> int:
    with IndexStore.open(idx) as store:
        return len(store)


def _no_model(*_args, **_kwargs):
    raise AssertionError("a model was loaded although the settings could be refused before")


def test_manifest_records_dtype_and_compute(f32_index, bf16_index):
    m = _manifest(f32_index)
    assert (m["dtype"], m["compute"]) == ("float32", "cpu")
    assert (_manifest(bf16_index)["dtype"], _manifest(bf16_index)["compute"]) == ("bfloat16", "cpu")


@pytest.mark.parametrize("dtype", ["bfloat16", "bf16"])
def test_append_in_another_dtype_is_refused_before_loading_a_model(f32_index, corpus, golden_dir, monkeypatch,
                                                                   dtype):
    rows = _rows(f32_index)
    monkeypatch.setattr(encoder, "build_extractor", _no_model)
    with pytest.raises(IndexMismatchError, match="dtype: index has 'float32', requested 'bfloat16'"):
        ingest([corpus / "b.jsonl"], f32_index, backbone=str(golden_dir / "model"), dtype=dtype, **SETTINGS)
    assert _rows(f32_index) == rows


def test_append_in_this_machines_default_dtype_is_refused_once_the_model_is_known(bf16_index, corpus, golden_dir):
    """dtype auto (float32 on CPU) is known only after loading; the full manifest check still refuses it."""
    rows = _rows(bf16_index)
    with pytest.raises(IndexMismatchError, match="dtype: index has 'bfloat16', requested 'float32'"):
        ingest([corpus / "b.jsonl"], bf16_index, backbone=str(golden_dir / "model"), dtype=None, **SETTINGS)
    assert _rows(bf16_index) == rows


def test_targets_are_encoded_in_the_index_dtype(bf16_index, f32_index, golden_dir, target_texts, monkeypatch):
    asked: list[str | None] = []
    real = encoder.build_extractor

    def spy(*args, **kwargs):
        asked.append(kwargs.get("dtype"))
        return real(*args, **kwargs)

    monkeypatch.setattr(encoder, "build_extractor", spy)
    got = target_codes(bf16_index, _manifest(bf16_index), target_texts, name="t", device="cpu")
    assert asked == ["bfloat16"]  # not this CPU's float32 default

    def direct(dtype: str) -> np.ndarray:
        ex = real(str(golden_dir / "model"), ["fwd_up"], top_k=8, max_length=64, batch_size=4, device="cpu",
                  dtype=dtype)
        return ex.codes(ex.tokenize(target_texts)[0])["fwd_up"]

    assert np.array_equal(got, direct("bfloat16"))
    assert (got != direct("float32")).reshape(len(got), -1).any(axis=1).any()  # the dtype matters here
    assert cache_key(target_texts, _manifest(bf16_index)) != cache_key(target_texts, _manifest(f32_index))


# cache_key of these settings and texts computed by the code before dtypes were recorded
_OLD_MANIFEST = {"backbone": "/models/tiny", "weights_sha256": "ab" * 32, "neuron_type": "fwd_up", "num_layers": 4,
                 "width": 256, "top_k": 8, "max_length": 64, "nagindex_version": "0.1.0", "text_field": "doc",
                 "id_field": "docid", "created_at": "2026-01-01T00:00:00+00:00"}
_OLD_TEXTS = ["The sun is a star.", "Plants need light."]
_OLD_KEY = "3cf4cc23367582f0accf25fb19089ac9"


def test_an_index_without_dtype_keeps_its_cache_keys(tmp_path, tiny_manifest, caplog):
    """Old indexes keep their cached targets (same key) and open and append unchanged; new ones key the dtype."""
    assert cache_key(_OLD_TEXTS, _OLD_MANIFEST) == _OLD_KEY
    assert cache_key(_OLD_TEXTS, {**_OLD_MANIFEST, "dtype": None}) == _OLD_KEY
    keys = {cache_key(_OLD_TEXTS, {**_OLD_MANIFEST, "dtype": d}) for d in ("float32", "bfloat16")}
    assert len(keys) == 2 and _OLD_KEY not in keys
    with IndexStore.open_or_create(tmp_path / "old", tiny_manifest) as store:  # records no dtype
        store.check_compatible({**tiny_manifest, "dtype": "bfloat16"})  # unknown: warned about, not refused
    assert "does not record dtype" in caplog.text
