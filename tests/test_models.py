"""Backbone loading: the embedded SmolLM2 offline, presets, local folders, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nagindex.errors import NagIndexError
from nagindex.models import backbone_preset, embedded_gguf, file_sha256, load_backbone, materialize_embedded

SENTENCES = [
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The Treaty of Westphalia ended the Thirty Years' War in 1648.",
    "A balanced diet includes proteins, carbohydrates, fats, vitamins and minerals.",
    "She opened the door and the cold wind rushed into the small kitchen.",
    "Water boils at a lower temperature at high altitude because air pressure is lower.",
]


@pytest.mark.slow
def test_embedded_smollm2_offline_and_batch_independent(monkeypatch):
    from nagindex.encode.extract import NagExtractor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bb = load_backbone("smollm2-135m", device="cpu")
    folder, sha = materialize_embedded("smollm2-135m")
    assert bb.weights_sha256 == sha == file_sha256([embedded_gguf("smollm2-135m")])
    info = json.loads((folder / "nagindex_backbone.json").read_text())
    assert info["gguf_sha256"] == sha
    assert info["weights"] == {"model.safetensors": file_sha256([folder / "model.safetensors"])}
    ex = NagExtractor(bb, top_k=20, max_length=120, batch_size=1)
    assert (ex.num_layers, ex.widths["fwd_up"]) == (30, 1536)
    ids, counts = ex.tokenize(SENTENCES)
    assert counts == [len(x) for x in ids] and min(counts) > 5
    one = ex.codes(ids)["fwd_up"]
    ex.batch_size = 3
    three = ex.codes(ids)["fwd_up"]
    assert one.shape == (5, 30, 20)
    assert np.array_equal(one, three)
    # distinct documents get distinct NAGs; each layer's K neurons are distinct
    assert len({c.tobytes() for c in one}) == 5
    assert all(len(set(row)) == 20 for doc in one for row in doc.tolist())


def test_presets_name_the_papers_backbone():
    preset = backbone_preset("qwen3-1.7b-base")
    assert preset == {"name": "qwen3-1.7b-base", "model": "Qwen/Qwen3-1.7B-Base", "top_k": 20, "max_length": 120}
    assert backbone_preset("smollm2-135m")["model"] == "smollm2-135m"
    assert backbone_preset("Qwen/Qwen3-1.7B-Base") is None


def test_local_folder_records_weights_hash(tiny_backbone, golden_dir):
    assert tiny_backbone.weights_sha256 == file_sha256([golden_dir / "model" / "model.safetensors"])


def test_unreachable_hub_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(NagIndexError, match="(?s)cannot load backbone .qwen3-1.7b-base.*local HF model folder"):
        load_backbone("qwen3-1.7b-base", device="cpu")


def test_bad_dtype_is_named():
    with pytest.raises(NagIndexError, match="--dtype 'float8'"):
        load_backbone("smollm2-135m", device="cpu", dtype="float8")
