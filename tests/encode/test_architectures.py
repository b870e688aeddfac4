"""NAG extraction beyond the fixture's Qwen3: tiny random models of other families, built in code.

For each family the expected impacts come from the plainest possible
computation: one document at a time, no padding, a forward hook on the module
the spec names for that family (``mlp.up_proj``, GPT-2's ``mlp.c_fc``,
GPT-NeoX's ``mlp.dense_h_to_4h``, ...), a mean of ``|output|`` over the tokens.
The extractor batches, pads on either side and stops the forward early; it
must land on the same impacts and the same top-K.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nagindex.encode.extract import NagExtractor
from nagindex.models import Backbone
from tests.hooks import forward_with_hooks

VOCAB = 512  # the fixture tokenizer's vocabulary
SEQS = [[5, 17, 300, 42, 9, 77, 12], [8, 3], [400, 401, 402, 403, 11], [250]]


def _llama_like(name: str):
    import transformers

    cfg = getattr(transformers, f"{name}Config")(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, head_dim=8)
    return getattr(transformers, f"{name}ForCausalLM")(cfg)


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64))


def _neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=80,
                                            num_hidden_layers=3, num_attention_heads=4,
                                            max_position_embeddings=64))


# family -> (model factory, {neuron type: module path inside a decoder layer, per the spec})
FAMILIES = {
    "llama": (lambda: _llama_like("Llama"), {"fwd_up": "mlp.up_proj", "fwd_down": "mlp.down_proj",
                                             "att_q": "self_attn.q_proj", "att_o": "self_attn.o_proj"}),
    "mistral": (lambda: _llama_like("Mistral"), {"fwd_up": "mlp.up_proj", "att_v": "self_attn.v_proj"}),
    "qwen2": (lambda: _llama_like("Qwen2"), {"fwd_up": "mlp.up_proj", "att_k": "self_attn.k_proj"}),
    "gemma": (lambda: _llama_like("Gemma"), {"fwd_up": "mlp.up_proj", "fwd_down": "mlp.down_proj"}),
    "gpt2": (_gpt2, {"fwd_up": "mlp.c_fc", "fwd_down": "mlp.c_proj", "att_o": "attn.c_proj"}),
    "gpt_neox": (_neox, {"fwd_up": "mlp.dense_h_to_4h", "fwd_down": "mlp.dense_4h_to_h", "att_o": "attention.dense"}),
}


@pytest.fixture(scope="module")
def tokenizer(golden_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(golden_dir / "model"))


def _layers(model) -> list:
    base = model.base_model
    return list(base.h if hasattr(base, "h") else base.layers)


def _naive_impacts(model, seq: list[int], path: str) -> np.ndarray:
    """(L, width) mean |output| of ``path`` in every decoder layer, for one unpadded document."""
    grabbed = []
    forward_with_hooks(model, [layer.get_submodule(path) for layer in _layers(model)], lambda _m, _i, out: grabbed.append(
        (out[0] if isinstance(out, tuple) else out)[0].abs().mean(0)), seq)
    return torch.stack(grabbed).float().numpy()


def _repeat_kv(imp: np.ndarray, model) -> np.ndarray:
    """The reference's GQA repeat of key/value heads to all query heads, on (L, kv_heads * head_dim)."""
    cfg = model.config
    rep = cfg.num_attention_heads // cfg.num_key_value_heads
    L = imp.shape[0]
    return np.repeat(imp.reshape(L, cfg.num_key_value_heads, 1, -1), rep, axis=2).reshape(L, -1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_matches_one_document_at_a_time(family, tokenizer):
    factory, paths = FAMILIES[family]
    torch.manual_seed(0)
    model = factory().eval().requires_grad_(False)
    bb = Backbone(family, model, tokenizer, "", torch.device("cpu"), torch.float32)
    types = tuple(paths)
    expected = {}
    for ntype, path in paths.items():
        rows = [_naive_impacts(model, s, path) for s in SEQS]
        if ntype in ("att_k", "att_v"):
            rows = [_repeat_kv(r, model) for r in rows]
        expected[ntype] = np.stack(rows)
    for padding_side in ("left", "right"):
        ex = NagExtractor(bb, types, top_k=4, max_length=16, batch_size=3, padding_side=padding_side)
        assert ex.num_layers == 3
        got = ex.impacts(SEQS)
        codes = ex.codes(SEQS)
        for ntype in types:
            assert got[ntype].shape == expected[ntype].shape, (ntype, padding_side)
            np.testing.assert_allclose(got[ntype], expected[ntype], rtol=2e-5, atol=1e-7,
                                       err_msg=f"{family} {ntype} {padding_side}")
            top = np.argsort(-expected[ntype], axis=-1, kind="stable")[..., :4]
            if ntype in ("att_k", "att_v"):  # repeated heads tie exactly: compare as sets
                assert np.array_equal(np.sort(codes[ntype], -1), np.sort(top, -1))
            else:
                assert np.array_equal(codes[ntype], top), (family, ntype, padding_side)


def test_fused_projection_is_a_clear_error(tokenizer):
    """Phi-3 fuses gate and up projections: no separate up_proj output to read, so say so."""
    from transformers import Phi3Config, Phi3ForCausalLM

    from nagindex.errors import NagIndexError

    model = Phi3ForCausalLM(Phi3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       pad_token_id=0, eos_token_id=0, bos_token_id=0)).eval()
    bb = Backbone("phi3", model, tokenizer, "", torch.device("cpu"), torch.float32)
    with pytest.raises(NagIndexError, match=r"fwd_up.*Phi3ForCausalLM has none of mlp\.up_proj.*gate_up_proj"):
        NagExtractor(bb, ("fwd_up",), top_k=4)
