"""Extraction parity with the reference (golden fixture) and batch/padding independence."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from nagindex.errors import NagIndexError
from nagindex.encode.extract import NEURON_TYPES, NagExtractor, parse_neuron_types

L, K, MAX_LEN = 4, 8, 64


def _docs(golden_dir, split):
    t = pq.read_table(golden_dir / f"data/{split}/{split}.parquet").to_pydict()
    return t["docid"], t["doc"]


def _reference(golden_dir, folder, split):
    lines = (golden_dir / folder / split / f"{split}.jsonl").read_text().splitlines()
    return {r["docid"]: r for r in map(json.loads, lines)}


def _assert_codes_equal(ntype, ours, ref):
    ref = np.asarray(ref).reshape(L, K)
    if ntype in ("att_k", "att_v"):  # GQA-repeated heads hold exact duplicates: compare as sets
        assert [set(r) for r in ours.tolist()] == [set(r) for r in ref.tolist()]
    else:
        assert ours.tolist() == ref.tolist()


@pytest.mark.parametrize("split", ["target", "pool"])
def test_tokens_match_reference(tiny_backbone, golden_dir, split):
    ref = json.loads((golden_dir / "reference_tokens.json").read_text())
    ex = NagExtractor(tiny_backbone, top_k=K, max_length=MAX_LEN)
    docids, texts = _docs(golden_dir, split)
    ids, counts = ex.tokenize(texts)
    for docid, seq, count in zip(docids, ids, counts):
        assert seq == ref[docid]["input_ids"]
        assert count >= len(seq)
    if split == "pool":  # one pool doc is truncated; its count stays the untruncated length
        assert max(counts) > MAX_LEN


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("split", ["target", "pool"])
def test_all_six_types_match_reference(tiny_backbone, golden_dir, split, batch_size, padding_side):
    ex = NagExtractor(tiny_backbone, NEURON_TYPES, top_k=K, max_length=MAX_LEN,
                      batch_size=batch_size, padding_side=padding_side)
    docids, texts = _docs(golden_dir, split)
    ids, _ = ex.tokenize(texts)
    raw = np.load(golden_dir / "reference_raw_impacts.npz")
    impacts = ex.impacts(ids)
    codes = ex.codes(ids)
    ref = _reference(golden_dir, "features", split)
    for j, docid in enumerate(docids):
        for ntype in NEURON_TYPES:
            expected = raw[f"{docid}/{ntype}"]
            rel = np.abs(impacts[ntype][j] - expected) / np.maximum(np.abs(expected), 1e-30)
            assert rel.max() < 1e-5, (docid, ntype, rel.max())
            _assert_codes_equal(ntype, codes[ntype][j], ref[docid][f"{ntype}_feature"]["layer_topk_value_index"])
    assert codes["fwd_up"].dtype == np.uint16 and codes["fwd_up"].shape == (len(docids), L, K)


def test_default_fwd_up_only_matches_reference(tiny_backbone, golden_dir):
    ex = NagExtractor(tiny_backbone, top_k=K, max_length=MAX_LEN, batch_size=4)
    ref = _reference(golden_dir, "features_fwd_up_only", "pool")
    docids, texts = _docs(golden_dir, "pool")
    codes = ex.codes(ex.tokenize(texts)[0])
    assert list(codes) == ["fwd_up"]
    for j, docid in enumerate(docids):
        assert codes["fwd_up"][j].ravel().tolist() == ref[docid]["fwd_up_feature"]["layer_topk_value_index"]


def test_batch_composition_does_not_change_codes(tiny_backbone, golden_dir):
    ex = NagExtractor(tiny_backbone, ("fwd_up", "att_o"), top_k=K, max_length=MAX_LEN, batch_size=3)
    _, pool = _docs(golden_dir, "pool")
    _, target = _docs(golden_dir, "target")
    ids, _ = ex.tokenize(pool + target)
    together = ex.codes(ids)
    alone = ex.codes(ids[:1])
    reversed_ = ex.codes(ids[::-1])
    for ntype in ("fwd_up", "att_o"):
        assert np.array_equal(together[ntype][:1], alone[ntype])
        assert np.array_equal(together[ntype], reversed_[ntype][::-1])


def test_only_requested_work_is_done(tiny_backbone, golden_dir, monkeypatch):
    """No LM head, no modules past the last needed one, no hooks left behind."""
    model = tiny_backbone.model
    calls: list[str] = []
    handles = [model.lm_head.register_forward_hook(lambda *a: calls.append("lm_head")),
               model.model.norm.register_forward_hook(lambda *a: calls.append("norm")),
               model.model.layers[-1].mlp.down_proj.register_forward_hook(lambda *a: calls.append("down"))]
    try:
        ex = NagExtractor(tiny_backbone, ("fwd_up",), top_k=K, max_length=MAX_LEN)
        ex.codes(ex.tokenize(["a short document about rain"])[0])
    finally:
        for h in handles:
            h.remove()
    assert calls == []
    # every hook was removed: the original module keeps only the ones installed above
    assert not model.model.layers[0].mlp.up_proj._forward_hooks


def test_empty_document_is_an_error(tiny_backbone):
    ex = NagExtractor(tiny_backbone, top_k=K, max_length=MAX_LEN)
    with pytest.raises(NagIndexError, match="document 1 has no tokens"):
        ex.codes([[5, 6], []])


def test_neuron_type_parsing():
    assert parse_neuron_types("fwd_up, att_q,fwd_up") == ("fwd_up", "att_q")
    with pytest.raises(NagIndexError, match="unknown neuron type"):
        parse_neuron_types("fwd_sideways")


def test_top_k_larger_than_width_is_refused(tiny_backbone):
    with pytest.raises(NagIndexError, match="top_k 300 must be <= layer width 256"):
        NagExtractor(tiny_backbone, ("fwd_up",), top_k=300)
