"""Extraction throughput: nagindex vs a bare forward vs the reference's way, in one run.

(a) nagindex: hooks on the requested type only, no LM head, stops after the last layer.
(b) bare forward of the base model (no hooks, no LM head): the floor for any extractor.
(c) the reference's way: the full causal LM (logits computed), all six neuron types
    captured as full activations, reduced afterwards, plus the second up_proj matmul
    the reference runs in its MLP hook.

    python tools/bench_extract.py --docs 512 --batch-size 32
    python tools/bench_extract.py --backbone qwen3-shape --device cuda --dtype bfloat16 --docs 20000
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from nagindex.encode.extract import NEURON_TYPES, NagExtractor, find_hooks


def passages(n: int) -> list[str]:
    from nagindex.demo import load_demo_passages

    texts = [t for source in load_demo_passages().values() for t in source]
    return (texts * (n // len(texts) + 1))[:n]


def qwen3_shaped(device: str, dtype: torch.dtype):
    """A randomly initialised model of Qwen3-1.7B's shape (same FLOPs as the paper's backbone)."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from nagindex.models import Backbone, materialize_embedded

    cfg = Qwen3Config(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                      num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True)
    model = Qwen3ForCausalLM(cfg).to(device=device, dtype=dtype).eval().requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(materialize_embedded("smollm2-135m")[0])  # any tokenizer: ids < vocab
    return Backbone("qwen3-1.7b-shape(random)", model, tok, "", torch.device(device), dtype)


def bare_forward(ex: NagExtractor, batches: list[list[list[int]]]) -> None:
    for seqs in batches:
        ids, mask = _pad(ex, seqs)
        ex.backbone.model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)


def reference_way(ex: NagExtractor, batches: list[list[list[int]]]) -> None:
    model = ex.backbone.model
    hooks = find_hooks(model, NEURON_TYPES)
    for seqs in batches:
        ids, mask = _pad(ex, seqs)
        acts: dict[str, list[torch.Tensor]] = {t: [] for t in NEURON_TYPES}
        handles = []
        for row in hooks:
            for h in row:
                def hook(mod, inp, out, t=h.neuron_type):
                    acts[t].append(out.reshape(out.shape[0], out.shape[1], -1))
                    if t == "fwd_up":
                        acts.setdefault("fwd_up_again", []).append(  # the reference's 2nd matmul
                            torch.nn.functional.linear(inp[0], mod.weight, mod.bias))
                handles.append(h.module.register_forward_hook(hook))
        try:
            model(input_ids=ids, attention_mask=mask, use_cache=False)  # LM head and logits included
        finally:
            for handle in handles:
                handle.remove()
        m = mask.unsqueeze(-1).to(torch.float32)
        for t in NEURON_TYPES:
            imp = torch.stack([(a.float().abs() * m).sum(1) / m.sum(1) for a in acts[t]], 1)
            torch.topk(imp, ex.top_k, dim=-1)


def _pad(ex: NagExtractor, seqs: list[list[int]]):
    length = max(map(len, seqs))
    ids = torch.zeros((len(seqs), length), dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s)
        mask[b, : len(s)] = 1
    return ids.to(ex.backbone.device), mask.to(ex.backbone.device)


def timed(fn, sync: bool) -> float:
    if sync:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        fn()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="smollm2-135m", help="a backbone name, or qwen3-shape (random, paper FLOPs)")
    ap.add_argument("--docs", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=120)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best time of each path counts")
    args = ap.parse_args()

    from nagindex.models import load_backbone, resolve_dtype

    if args.backbone == "qwen3-shape":
        bb = qwen3_shaped(args.device, resolve_dtype(args.dtype, torch.device(args.device)))
    else:
        bb = load_backbone(args.backbone, device=args.device, dtype=args.dtype)
    ex = NagExtractor(bb, top_k=20, max_length=args.max_length, batch_size=args.batch_size)
    ids, _ = ex.tokenize(passages(args.docs))
    ids = [s for s in ids if s]
    tokens = sum(map(len, ids))
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # the same length buckets for all three
    batches = [[ids[i] for i in order[s : s + args.batch_size]] for s in range(0, len(ids), args.batch_size)]
    sync = bb.device.type == "cuda"
    timed(lambda: ex.codes(ids[: args.batch_size]), sync)  # warm-up
    paths = {"(a) nagindex extraction": lambda: ex.codes(ids),
             "(b) bare forward, no hooks/head": lambda: bare_forward(ex, batches)}
    if not args.skip_reference:
        paths["(c) reference way (head + 6 types)"] = lambda: reference_way(ex, batches)
    best = {name: float("inf") for name in paths}
    for _ in range(args.repeats):  # interleaved rounds, best of each: robust to a noisy neighbour
        for name, fn in paths.items():
            best[name] = min(best[name], timed(fn, sync))
    rows = list(best.items())
    device = torch.cuda.get_device_name() if sync else f"{platform.processor() or platform.machine()} CPU x{torch.get_num_threads()}"
    print(f"backbone {bb.name}, {len(ids)} docs, {tokens} tokens (max_length {args.max_length}), "
          f"batch {args.batch_size}, {bb.dtype}, {device}, {time.strftime('%Y-%m-%d')}")
    print("| path | seconds | docs/s | tokens/s | (a) vs this |")
    print("|---|---|---|---|---|")
    a = rows[0][1]
    for name, sec in rows:
        print(f"| {name} | {sec:.2f} | {len(ids) / sec:,.0f} | {tokens / sec:,.0f} | {sec / a:.2f}x |")


if __name__ == "__main__":
    main()
