"""One prepared GPU check (issue 20 item 8): extraction speed, GPU scoring against memory bandwidth, and
GPU selections equal to CPU ones, in under 8 minutes on one H100/H200 with no network.

A lent GPU comes for minutes, bare and offline, so everything is built here: a randomly initialised
Qwen3 of Qwen3-1.7B's shape (the paper's backbone: same FLOPs, so the same docs/s as the real weights),
random token ids of ``max_length`` 120, seeded synthetic NAG codes and a small index imported from them.

1. Extraction through nagindex's own ``NagExtractor`` (bf16, fwd_up, K=20) at a few batch sizes, in
   documents/s. Goal: >= 1,000 docs/s, about 3x the paper's ~350.
2. Scoring through ``TorchScorer`` exactly as a shard scan calls it (blocks of ``scan.CODE_BLOCK`` rows
   of host codes), in code bytes/s against a device-to-device copy (bytes read + written: the memory
   bandwidth the GPU really reaches). Goal: >= 50%. A host-to-device copy of the same bytes is reported
   beside it, since host codes cannot be scored faster than they reach the device.
3. Selections: the same queries (features targets; single, layers, power 2, paper and union mixtures,
   sampling, a token quota) through ``nagindex.query.run.query`` on ``device="cpu"`` and on the GPU, on a
   two-shard index; every table must be equal.

``--dry-run`` (the default where torch sees no CUDA) runs every step with tiny shapes on the CPU in
seconds; there the torch scorer runs on CPU torch in the GPU's place, so the equality check still
compares the torch path with the numba kernels. Prints one markdown table with the date and device:

    python tools/gpu_check.py                    # on a lent GPU
    python tools/gpu_check.py --dry-run --json out.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/_table.py when run as a script
from _table import ResultTable, load_average, log  # noqa: E402

PAPER_DOCS_PER_S = 350
GOAL_DOCS_PER_S = 1000
GOAL_BANDWIDTH = 0.5


@dataclass(frozen=True)
class Sizes:
    """Everything one run builds; ``full`` fits a GPU check in under 8 minutes, ``dry`` a CPU in seconds."""

    model: dict[str, int]
    batch_sizes: tuple[int, ...]
    extract_docs: int
    score_docs: int
    score_shape: tuple[int, int, int]  # (L, K, width) of the scored codes
    pool_docs: int
    pool_shape: tuple[int, int, int]  # (L, K, width) of the equality index
    repeats: int


# Qwen3-1.7B's config.json (head_dim 128, tied embeddings; MLP width 6144 as in the spec)
QWEN3_1_7B = dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, vocab_size=151936)
FULL = Sizes(QWEN3_1_7B, (64, 128, 256), 8192, 5_000_000, (28, 20, 6144), 50_000, (28, 20, 6144), 2)
DRY = Sizes(dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=1000),
            (4, 8), 16, 70_000, (4, 6, 48), 1_500, (4, 6, 48), 1)


class IdsOnlyTokenizer:
    """The little of a tokenizer ``NagExtractor`` touches (pad id, a probe): the check feeds random token
    ids, and a real tokenizer would need the network or the embedded model's conversion."""

    pad_token_id = 0
    eos_token_id = 0

    def __call__(self, texts: str | Sequence[str], add_special_tokens: bool = False) -> dict[str, Any]:
        ids = [1] if isinstance(texts, str) else [[1] for _ in texts]
        return {"input_ids": ids}


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn: Callable[[], Any], device: torch.device, repeats: int,
                 warmup: Callable[[], Any] | None = None) -> float:
    """The best of ``repeats`` timed calls after one warm-up call (``warmup``, else ``fn``): the first call
    pays for compilation and allocation."""
    (warmup or fn)()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


# ---------------------------------------------------------------- 1. extraction
def qwen3_backbone(shape: dict[str, int], device: torch.device, dtype: torch.dtype) -> Any:
    """A randomly initialised Qwen3 of ``shape``, built on ``device`` directly (a CPU init of 1.7B
    parameters would take minutes of the lent time)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from nagindex.models import Backbone

    cfg = Qwen3Config(**shape, tie_word_embeddings=True)
    torch.manual_seed(0)
    with device:
        model = Qwen3ForCausalLM(cfg)
    model = model.to(dtype=dtype).eval().requires_grad_(False)
    return Backbone("qwen3-1.7b-shape(random)", model, IdsOnlyTokenizer(), "", device, dtype)


def check_extraction(table: ResultTable, sizes: Sizes, device: torch.device, dry: bool,
                     details: dict[str, Any]) -> None:
    """docs/s of ``NagExtractor.codes`` on random ids of length 120, per batch size; the best one counts."""
    from nagindex.encode.extract import NagExtractor

    dtype = torch.float32 if dry else torch.bfloat16
    backbone = qwen3_backbone(sizes.model, device, dtype)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, sizes.model["vocab_size"], (sizes.extract_docs, 120)).tolist()
    rates: dict[int, float] = {}
    for batch in sizes.batch_sizes:
        extractor = NagExtractor(backbone, ("fwd_up",), top_k=20, max_length=120, batch_size=batch)
        seconds = best_seconds(lambda: extractor.codes(ids), device, sizes.repeats,
                               warmup=lambda: extractor.codes(ids[:2 * batch]))
        rates[batch] = len(ids) / seconds
        table.add(f"extraction, batch {batch} ({str(dtype).removeprefix('torch.')}, {len(ids)} docs x 120 tokens)",
                  f"{rates[batch]:,.0f} docs/s", f"{rates[batch] / PAPER_DOCS_PER_S:.2f}x paper")
    best = max(rates, key=rates.get)
    table.add(f"extraction, best batch ({best})", f"{rates[best]:,.0f} docs/s",
              f"{rates[best] / PAPER_DOCS_PER_S:.2f}x paper", f">= {GOAL_DOCS_PER_S:,} docs/s",
              None if dry else rates[best] >= GOAL_DOCS_PER_S)
    details["extraction_docs_per_s"] = {str(b): r for b, r in rates.items()}
    del backbone
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- 2. scoring vs bandwidth
def copy_bandwidth(device: torch.device, nbytes: int, repeats: int) -> float:
    """Bytes/s of a device-to-device copy, counting bytes read and written: the reachable bandwidth."""
    src = torch.empty(nbytes // 4, dtype=torch.int32, device=device).fill_(1)
    dst = torch.empty_like(src)
    seconds = best_seconds(lambda: dst.copy_(src), device, max(repeats, 3))
    return 2 * nbytes / seconds


def host_to_device(codes: np.ndarray, device: torch.device, repeats: int) -> float:
    """Bytes/s of moving ``codes`` to the device from pageable host memory, as ``TorchScorer.sums`` does."""
    from nagindex.query.scan import CODE_BLOCK

    def move() -> None:
        for lo in range(0, len(codes), CODE_BLOCK):
            torch.from_numpy(codes[lo:lo + CODE_BLOCK].view(np.int16)).to(device)

    return codes.nbytes / best_seconds(move, device, repeats)


def check_scoring(table: ResultTable, sizes: Sizes, device: torch.device, dry: bool,
                  details: dict[str, Any]) -> None:
    """Code bytes/s of ``TorchScorer.sums`` over host blocks, as a fraction of the copy bandwidth."""
    from nagindex.query.profile import count_profile
    from nagindex.query.scan import CODE_BLOCK
    from nagindex.query.score_torch import TorchScorer

    num_layers, top_k, width = sizes.score_shape
    rng = np.random.default_rng(1)
    tile = rng.integers(0, width, (min(sizes.score_docs, 1 << 18), num_layers, top_k), dtype=np.uint16)
    codes = np.resize(tile, (sizes.score_docs, num_layers, top_k))  # repeats the tile: random enough to scan
    bandwidth = copy_bandwidth(device, min(codes.nbytes, 4 << 30), sizes.repeats)
    table.add("memory bandwidth: device-to-device copy (read + write)", f"{bandwidth / 1e9:,.1f} GB/s")
    h2d = host_to_device(codes, device, sizes.repeats)
    table.add(f"host-to-device copy of the codes (pageable, {CODE_BLOCK:,}-row blocks)", f"{h2d / 1e9:,.1f} GB/s",
              f"{h2d / bandwidth:.2%} of bandwidth")
    details.update(bandwidth_bytes_per_s=bandwidth, host_to_device_bytes_per_s=h2d, score={})
    for num_profiles in (1, 8):
        profiles = np.stack([count_profile(tile[p * 40:(p + 1) * 40], width) for p in range(num_profiles)])
        scorer = TorchScorer(codes.shape, profiles, None, 1.0, str(device))

        def scan() -> None:
            for lo in range(0, len(codes), CODE_BLOCK):
                scorer.sums(codes[lo:lo + CODE_BLOCK], lo)

        rate = codes.nbytes / best_seconds(scan, device, sizes.repeats)
        details["score"][str(num_profiles)] = rate
        goal = num_profiles == 1  # one target: the case the goal is set for; 8 shows the cost of more
        table.add(f"GPU scoring, {num_profiles} profile(s), {len(codes):,} docs x {num_layers}x{top_k} codes",
                  f"{rate / 1e9:,.2f} GB/s ({1e6 * codes[0].nbytes / rate:.3f} s per 1M docs)",
                  f"{rate / bandwidth:.2%} of bandwidth", f">= {GOAL_BANDWIDTH:.0%} of bandwidth" if goal else "",
                  None if dry or not goal else rate / bandwidth >= GOAL_BANDWIDTH)


# ---------------------------------------------------------------- 3. GPU selections == CPU selections
def topic_codes(rng: np.random.Generator, n: int, topic: int, shape: tuple[int, int, int]) -> np.ndarray:
    """``(n, L, K)`` NAGs drawn from a topic's preferred neurons, so targets and documents overlap and
    integer score ties are common (ties at thresholds are where two scorers could disagree)."""
    num_layers, top_k, width = shape
    pool = min(width, 256)
    noise = rng.random((n, num_layers, pool), dtype=np.float32) / (np.arange(pool, dtype=np.float32) + 3)
    top = np.argsort(-noise, axis=2)[:, :, :top_k]
    return ((top + topic * (pool // 3)) % width).astype(np.uint16)


def build_pool(root: Path, sizes: Sizes) -> tuple[Path, dict[str, Path]]:
    """A two-shard index of seeded topic codes (token counts from a payload file) and three target files."""
    from nagindex.ingest.interop import import_features, write_features

    rng = np.random.default_rng(2)
    files, payload = [], []
    for part, n in enumerate(np.array_split(np.arange(sizes.pool_docs), 4)):
        ids = [f"doc{i:07d}" for i in n]
        path = root / f"part{part}.jsonl"
        write_features(path, ids, topic_codes(rng, len(ids), part % 3, sizes.pool_shape))
        payload += [{"docid": d, "token_num": int(t)} for d, t in zip(ids, rng.integers(1, 400, len(ids)))]
        files.append(path)
    (root / "payload.jsonl").write_text("".join(json.dumps(r) + "\n" for r in payload), "utf-8")
    num_layers, top_k, width = sizes.pool_shape
    index = root / "idx"
    import_features(files, index, num_layers=num_layers, top_k=top_k, width=width, shards=2,
                    payload_paths=[root / "payload.jsonl"], token_field="token_num")
    targets = {}
    for topic, name in enumerate(("alpha", "beta", "gamma")):
        targets[name] = root / f"{name}.jsonl"
        write_features(targets[name], [f"{name}-{i}" for i in range(40)], topic_codes(rng, 40, topic, sizes.pool_shape))
    return index, targets


def query_forms(targets: dict[str, Path], pool_docs: int) -> dict[str, tuple[list[dict[str, str]], dict[str, Any]]]:
    """The queries compared: each a list of features targets and ``query`` options."""
    a, b, c = ({"features": str(targets[name])} for name in ("alpha", "beta", "gamma"))
    k = pool_docs // 10
    return {"single, k": ([a], {"k": k}),
            "single, last layer, fraction": ([a], {"fraction": 0.2, "layers": "last"}),
            "single, power 2 (float sums)": ([b], {"k": k, "power": 2.0}),
            "paper mixture of 3, fraction": ([a, b, c], {"fraction": 0.3, "mode": "paper"}),
            "union of 2, k": ([a, c], {"k": k, "mode": "union"}),
            "sampled, token quota": ([c], {"tokens": 40 * pool_docs, "sample": True, "seed": 3}),
            "single, lift weighting (float sums)": ([a], {"k": k, "weighting": "lift"}),
            "paper mixture of 2, idf weighting, fraction": ([b, c], {"fraction": 0.2, "mode": "paper",
                                                                     "weighting": "idf"})}


def same_selection(cpu: Any, gpu: Any, exact: bool) -> bool:
    """Equal tables: the same rows in the same order, scores bit for bit where sums are integers. Float
    sums (power != 1, a --weighting) add in another order on the device, so there scores may differ in the last bits
    (relative 1e-12), never the rows or their order."""
    if cpu.table.num_rows == 0 or cpu.table.schema != gpu.table.schema:
        return False
    if exact:
        return cpu.table.equals(gpu.table)
    floats = {"score", "nag_distance"}
    return all(cpu.table[c].equals(gpu.table[c]) if c not in floats
               else np.allclose(cpu.table[c].to_numpy(), gpu.table[c].to_numpy(), rtol=1e-12, atol=0)
               for c in cpu.table.column_names)


@contextmanager
def torch_scorer_on(device: str) -> Iterator[None]:
    """Score queries with ``TorchScorer`` on ``device`` whatever device they ask for: the dry run's stand-in
    for a GPU, so CPU torch runs the very code the GPU runs and meets the same equality checks."""
    from nagindex.query import score_torch

    original = score_torch.make_scorer

    def make(shape: tuple[int, int, int], profiles: np.ndarray, layers: Any, power: float, _device: str,
             weights: np.ndarray | None = None) -> Any:
        return score_torch.TorchScorer(shape, profiles, layers, power, device, weights)

    score_torch.make_scorer = make
    try:
        yield
    finally:
        score_torch.make_scorer = original


def check_selections(table: ResultTable, sizes: Sizes, device: torch.device, dry: bool,
                     details: dict[str, Any]) -> None:
    """The same queries on ``device="cpu"`` and on the GPU: every selection table must be equal."""
    from nagindex.query.run import query

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        index, targets = build_pool(Path(tmp), sizes)
        forms = query_forms(targets, sizes.pool_docs)
        equal = {}
        for name, (wanted, options) in forms.items():
            cpu = query(wanted, index, device="cpu", **options)
            if dry:
                with torch_scorer_on("cpu"):
                    gpu = query(wanted, index, device="cpu", **options)
            else:
                gpu = query(wanted, index, device=str(device), **options)
            exact = options.get("power", 1.0) == 1.0 and options.get("weighting", "none") == "none"
            equal[name] = same_selection(cpu, gpu, exact=exact)
            log(f"  selection {name}: {len(cpu)} rows, {'equal' if equal[name] else 'DIFFERENT'}")
    scorer = "torch scorer on CPU torch" if dry else f"{device}"
    table.add(f"selections equal, {scorer} vs numba CPU ({len(forms)} queries, {sizes.pool_docs:,} docs, 2 shards; "
              "float sums to 1e-12)",
              f"{sum(equal.values())}/{len(equal)}", "", "all equal", all(equal.values()))
    details["selections_equal"] = equal


# ---------------------------------------------------------------- main
def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU x{torch.get_num_threads()}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks asked for (all three by default); print the table; exit 1 if the selections differ
    (speed goals only report)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (default where no CUDA)")
    ap.add_argument("--device", default="cuda", help="the GPU to check (default cuda)")
    ap.add_argument("--json", type=Path, help="also write the rows and raw figures to this JSON file")
    ap.add_argument("--checks", default="extraction,scoring,selections",
                    help="comma-separated subset of extraction, scoring, selections (default: all three)")
    args = ap.parse_args(argv)
    dry = args.dry_run or not torch.cuda.is_available()
    device = torch.device("cpu" if dry else args.device)
    sizes = DRY if dry else FULL
    started = time.perf_counter()
    table = ResultTable("value")
    details: dict[str, Any] = {}
    header = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {device_name(device)}"
              f"{' (dry run: tiny shapes, goals not judged)' if dry else ''}, torch {torch.__version__}")
    log(header)
    checks = {"extraction": check_extraction, "scoring": check_scoring, "selections": check_selections}
    wanted = [name.strip() for name in args.checks.split(",") if name.strip()]
    if unknown := sorted(set(wanted) - set(checks)):
        ap.error(f"--checks: unknown {', '.join(unknown)} (known: {', '.join(checks)})")
    for check in (checks[name] for name in wanted):
        log(f"{check.__name__} ...")
        check(table, sizes, device, dry, details)
    elapsed = time.perf_counter() - started
    print(f"{header}; load average {load_average()}; {elapsed:.0f} s in all")
    print(table.markdown())
    if args.json:
        met = {"yes": True, "**no**": False, "": None}
        rows = [{"metric": name, "value": value, "ratio": ratio, "goal": goal, "met": met[ok]}
                for name, value, ratio, goal, ok in table.rows]
        args.json.write_text(json.dumps({"header": header, "dry_run": dry, "device": device_name(device),
                                         "seconds": elapsed, "rows": rows, "details": details}, indent=1))
    return 0 if all(details.get("selections_equal", {}).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
