"""Forward pass with hooks on a stock transformers model -> top-K neurons per layer (a NAG).

Spec sec. 1: for each decoder layer and neuron type, a neuron's impact is the
mean of |activation| over the document's real tokens; the NAG keeps each
layer's K largest, in descending order (``torch.topk(sorted=True)``).

Unlike the reference, which computes all six neuron types, the vocabulary logits
and a second up-projection on every forward, this engine only does the work
asked for: it runs the base model (never the LM head), hooks only the modules of
the requested types, reduces each activation to its (batch, width) impact inside
the hook (no activation is kept), and stops the forward right after the last
module it needs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from nagindex.errors import NagIndexError

if TYPE_CHECKING:
    import torch

    from nagindex.encode.dense import DenseSpec
    from nagindex.models import Backbone

log = logging.getLogger(__name__)

NEURON_TYPES = ("fwd_up", "fwd_down", "att_q", "att_k", "att_v", "att_o")

# Candidate module paths inside one decoder layer, first match wins. Qwen3's q/k
# norms come first: the reference takes q/k after the per-head norm, before RoPE.
_MODULE_PATHS: dict[str, tuple[str, ...]] = {
    "fwd_up": ("mlp.up_proj", "mlp.c_fc", "mlp.dense_h_to_4h", "mlp.fc1"),
    "fwd_down": ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2"),
    "att_q": ("self_attn.q_norm", "self_attn.q_proj", "attention.q_proj"),
    "att_k": ("self_attn.k_norm", "self_attn.k_proj", "attention.k_proj"),
    "att_v": ("self_attn.v_proj", "attention.v_proj"),
    "att_o": ("self_attn.o_proj", "attn.c_proj", "attention.dense", "attention.o_proj"),
}
# Execution order inside a decoder layer, to know which hook fires last.
_ORDER = {"att_q": 0, "att_k": 1, "att_v": 2, "att_o": 3, "fwd_up": 4, "fwd_down": 5}


class _StopForward(Exception):
    """Raised by the last needed hook: the rest of the network is not computed."""


def parse_neuron_types(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"fwd_up,att_q"`` -> ("fwd_up", "att_q"), validated, order kept, no duplicates."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [s for s in items if s not in NEURON_TYPES]
    if bad or not items:
        raise NagIndexError(f"unknown neuron type(s) {bad or spec!r}; choose from {', '.join(NEURON_TYPES)}")
    return tuple(dict.fromkeys(items))


def _get_path(module: "torch.nn.Module", path: str) -> "torch.nn.Module | None":
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def decoder_layers(model: "torch.nn.Module") -> "torch.nn.ModuleList":
    """The decoder blocks of a causal LM, found generically (the ModuleList of num_hidden_layers)."""
    import torch

    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for _, mod in model.base_model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return mod
    raise NagIndexError(f"cannot find the {n} decoder layers of {type(model).__name__}")


@dataclass(frozen=True)
class _Hook:
    neuron_type: str
    module: "torch.nn.Module"
    repeat: int  # GQA: key/value heads repeated to all query heads (1 = none)
    head_dim: int


def _gqa(model: "torch.nn.Module") -> tuple[int, int]:
    cfg = model.config
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return heads // kv, head_dim


def find_hooks(model: "torch.nn.Module", neuron_types: Sequence[str]) -> list[list[_Hook]]:
    """Per decoder layer, the module to hook for each requested neuron type."""
    layers = decoder_layers(model)
    repeat, head_dim = _gqa(model)
    found: list[list[_Hook]] = []
    for idx, layer in enumerate(layers):
        row = []
        for ntype in neuron_types:
            for path in _MODULE_PATHS[ntype]:
                mod = _get_path(layer, path)
                if mod is not None:
                    rep = repeat if ntype in ("att_k", "att_v") else 1
                    row.append(_Hook(ntype, mod, rep, head_dim))
                    break
            else:
                raise NagIndexError(
                    f"neuron type {ntype!r}: layer {idx} of {type(model).__name__} has none of "
                    f"{', '.join(_MODULE_PATHS[ntype])} (fused projections such as gate_up_proj or qkv_proj are not "
                    "supported)"
                )
        found.append(row)
    return found


def dense_modules(model: "torch.nn.Module", site: str) -> list["torch.nn.Module"]:
    """Per decoder layer, the module whose output is the activation NAIT's ``site`` names (``encode.dense``):
    the block itself (its output is the residual stream) or its MLP's down projection."""
    layers = decoder_layers(model)
    if site == "residual":
        return list(layers)
    found = []
    for idx, layer in enumerate(layers):
        mod = next((m for m in (_get_path(layer, p) for p in _MODULE_PATHS["fwd_down"]) if m is not None), None)
        if mod is None:
            raise NagIndexError(f"--nait-site mlp: layer {idx} has none of {', '.join(_MODULE_PATHS['fwd_down'])}")
        found.append(mod)
    return found


class NagExtractor:
    """Computes NAG codes for token sequences with a frozen backbone.

    Results do not depend on batch size, batch composition or padding side:
    padded positions are excluded from every mean, right padding keeps causal
    attention away from pads, and left padding gets explicit position ids.
    """

    def __init__(
        self,
        backbone: "Backbone",
        neuron_types: Sequence[str] = ("fwd_up",),
        *,
        top_k: int = 20,
        max_length: int = 120,
        batch_size: int = 32,
        padding_side: str = "right",
        dense: "DenseSpec | None" = None,
    ) -> None:
        if padding_side not in ("left", "right"):
            raise NagIndexError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
        self.backbone = backbone
        self.neuron_types = parse_neuron_types(neuron_types)
        self.top_k = top_k
        self.max_length = max_length
        self.batch_size = batch_size
        self.padding_side = padding_side
        tok = backbone.tokenizer
        self._pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        self._hooks = find_hooks(backbone.model, self.neuron_types)
        self.num_layers = len(self._hooks)
        self.dense = dense  # NAIT's activations, taken in the same forward (``encode.dense``)
        self._dense_modules = dense_modules(backbone.model, dense.site) if dense is not None else []
        self.widths = self._probe_widths()
        self.dense_width = self._probe_dense_width() if dense is not None else 0
        for ntype, width in self.widths.items():
            if not top_k <= width <= 65536:
                raise NagIndexError(f"{ntype}: top_k {top_k} must be <= layer width {width} (<= 65536 for uint16)")

    # -- tokenize ---------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        """Token ids without special tokens, truncated to max_length, and each text's full token count."""
        if not texts:
            return [], []
        ids = self.backbone.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [x[: self.max_length] for x in ids], [len(x) for x in ids]

    # -- extract ----------------------------------------------------------
    def codes(self, token_ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """NAG codes per neuron type, ``(n, L, K)`` uint16, in input order; with ``dense``, also the
        first and last real token's activations (``encode.dense.DENSE_KEYS``, ``(n, L, d)`` float32)."""
        return self._run(token_ids, keep_impacts=False)

    def impacts(self, token_ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """Raw impacts per neuron type, ``(n, L, width)`` float32 (for parity tests and analysis)."""
        return self._run(token_ids, keep_impacts=True)

    def _run(self, token_ids: Sequence[Sequence[int]], keep_impacts: bool) -> dict[str, np.ndarray]:
        import torch

        n = len(token_ids)
        lengths = np.fromiter((len(s) for s in token_ids), dtype=np.int64, count=n)
        if n and lengths.min() == 0:
            raise NagIndexError(f"document {int(lengths.argmin())} has no tokens: an empty document has no NAG")
        order = np.argsort(-lengths, kind="stable")  # length buckets: little padding per batch
        out = {
            t: np.empty((n, self.num_layers, self.widths[t] if keep_impacts else self.top_k),
                        np.float32 if keep_impacts else np.uint16)
            for t in self.neuron_types
        }
        if self.dense is not None:
            from nagindex.encode.dense import DENSE_KEYS

            out.update({k: np.empty((n, self.num_layers, self.dense_width), np.float32) for k in DENSE_KEYS})
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                rows = order[start : start + self.batch_size]
                for ntype, imp in self._forward([token_ids[i] for i in rows]).items():
                    if not keep_impacts and ntype in self.widths:
                        imp = torch.topk(imp, self.top_k, dim=-1, sorted=True).indices
                    out[ntype][rows] = imp.cpu().numpy()
        return out

    def _forward(self, seqs: list[Sequence[int]]) -> dict[str, "torch.Tensor"]:
        """One padded batch -> impacts per type, ``(B, L, width)`` (and the dense rows, ``(B, L, d)``)."""
        import torch

        dev = self.backbone.device
        length = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), length), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.bool)
        for b, s in enumerate(seqs):
            sl = slice(length - len(s), length) if self.padding_side == "left" else slice(0, len(s))
            ids[b, sl] = torch.as_tensor(list(s), dtype=torch.long)
            mask[b, sl] = True
        ids, mask = ids.to(dev), mask.to(dev)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        denom = mask.sum(-1, keepdim=True).clamp(min=1).float()  # reference: max(sum m, 1e-6)
        keep = mask.unsqueeze(-1)
        captured: dict[str, list["torch.Tensor"]] = {t: [] for t in self.neuron_types}
        # with dense features the last layer's dense hook (registered last, so it fires last) stops the forward
        last = None if self.dense is not None else max(self._hooks[-1], key=lambda h: _ORDER[h.neuron_type])

        def make_hook(h: _Hook):
            def hook(_module, _inputs, output):
                x = output[0] if isinstance(output, tuple) else output
                x = x.reshape(x.shape[0], x.shape[1], -1)
                if x.dtype != torch.float32:
                    x = x.float()
                imp = x.abs().masked_fill(~keep, 0.0).sum(1) / denom
                if h.repeat > 1:  # GQA: each kv head serves `repeat` query heads, like repeat_kv
                    imp = imp.view(imp.shape[0], -1, 1, h.head_dim).expand(-1, -1, h.repeat, -1)
                    imp = imp.reshape(imp.shape[0], -1)
                captured[h.neuron_type].append(imp)
                if h is last:
                    raise _StopForward

            return hook

        handles = [h.module.register_forward_hook(make_hook(h)) for row in self._hooks for h in row]
        if self.dense is not None:
            from nagindex.encode.dense import FIRST, LAST

            rows = torch.arange(len(seqs), device=dev)
            first_pos = mask.int().argmax(-1)  # the first real token, whatever the padding side
            last_pos = length - 1 - mask.flip(-1).int().argmax(-1)
            captured[FIRST], captured[LAST] = [], []
            final = self._dense_modules[-1]

            def dense_hook(module, _inputs, output):
                x = output[0] if isinstance(output, tuple) else output
                captured[FIRST].append(x[rows, first_pos].float())
                captured[LAST].append(x[rows, last_pos].float())
                if module is final:
                    raise _StopForward

            handles += [m.register_forward_hook(dense_hook) for m in self._dense_modules]
        try:
            self.backbone.model.base_model(
                input_ids=ids, attention_mask=mask.long(), position_ids=positions, use_cache=False
            )
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return {t: torch.stack(v, dim=1) for t, v in captured.items()}

    def _probe_widths(self) -> dict[str, int]:
        tok = self.backbone.tokenizer
        import torch

        probe = tok("probe", add_special_tokens=False)["input_ids"] or [0]
        with torch.inference_mode():
            out = self._forward([probe])
        return {t: int(out[t].shape[-1]) for t in self.neuron_types}

    def _probe_dense_width(self) -> int:
        from nagindex.encode.dense import LAST

        probe = self.backbone.tokenizer("probe", add_special_tokens=False)["input_ids"] or [0]
        import torch

        with torch.inference_mode():
            return int(self._forward([probe])[LAST].shape[-1])

