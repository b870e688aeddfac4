"""The paper's deactivation test (Sec. 5, Table 3) with an index's backbone, printed as BENCHMARKS.md's table.

For each target, its 20 most frequent neurons per layer (from ``--max-examples`` profile examples) are
switched off and the backbone answers ``--heldout`` other examples of the target; the same for as many random
neurons (``--draws`` seeded draws) and for another target's top neurons (``nagindex/explain/deactivate.py``).
PIQA, SciQ and BoolQ are not in the registry: their target YAMLs are in ``tools/repro_targets/``.

    python tools/repro_deactivation.py --index /tmp/explain_demo/idx --json deactivation.json

Paper (Qwen3-1.7B-Base, 28 layers x 6144, 20 neurons a layer: 0.33% of its up-projection neurons): the
targets' average accuracy 60.6 -> 37.1 with the NAG neurons off, -0.2 points with random ones.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: target -> the other target whose neurons are its third arm
TARGETS = {"arc_easy": "hellaswag", "hellaswag": "arc_easy", "piqa": "arc_easy", "sciq": "arc_easy",
           "boolq": "arc_easy"}
CHANCE = {"arc_easy": 25.0, "hellaswag": 25.0, "piqa": 50.0, "sciq": 25.0, "boolq": 50.0}
PAPER = "paper (Qwen3-1.7B, 6 targets avg): 60.6 -> 37.1 (-23.5) NAG neurons; -0.2 random"


def request(name: str):
    """A registry target, or one of ``tools/repro_targets/``."""
    from nagindex.query.request import TargetRequest

    path = HERE / "repro_targets" / f"{name}.yaml"
    return TargetRequest("file", str(path)) if path.is_file() else TargetRequest("name", name)


def cell(delta: dict, scale: float) -> str:
    if delta["lo"] is None:
        return f"{scale * delta['mean']:+.1f}"
    return f"{scale * delta['mean']:+.1f} [{scale * delta['lo']:+.1f}, {scale * delta['hi']:+.1f}]"


def main() -> None:
    import torch

    from nagindex.explain.deactivate import deactivation_test, load_index_backbone
    from nagindex.explain.profile import index_manifest
    from nagindex.index.sharded import shard_specs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--heldout", type=int, default=100)
    parser.add_argument("--max-examples", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone = load_index_backbone(index_manifest(args.index, shard_specs(args.index)), "cpu")
    started, results = time.perf_counter(), []
    for name in args.targets.split(","):
        t0 = time.perf_counter()
        res = deactivation_test(request(name), args.index, top=args.top, draws=args.draws, heldout=args.heldout,
                                max_examples=args.max_examples, against=[request(TARGETS[name])], device="cpu",
                                backbone=backbone)
        results.append(res)
        print(res.table(), f"\n({time.perf_counter() - t0:.0f} s)\n", flush=True)
    print(f"## {backbone.name}, top {args.top} neurons per layer, {args.max_examples} profile examples, "
          f"{args.heldout} held-out examples per target, {args.draws} random draws; "
          f"{platform.processor() or platform.machine()}, {args.threads} threads, "
          f"{time.perf_counter() - started:.0f} s\n")
    print("| target (chance) | n | intact acc | NAG off: d acc [95% CI] | random off: d acc [95% CI] | "
          "other target's off | NAG off: d gold logp | random off: d gold logp |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for res in results:
        intact, nag, rnd, other = res.arms
        rows.append((intact.accuracy, nag.accuracy, rnd.accuracy, other.accuracy))
        print(f"| {res.target} ({CHANCE.get(res.target, 0):.0f}) | {res.heldout} | {100 * intact.accuracy:.1f} | "
              f"{cell(nag.delta_accuracy, 100)} | {cell(rnd.delta_accuracy, 100)} | "
              f"{other.name.removeprefix('other:')}: {cell(other.delta_accuracy, 100)} | "
              f"{cell(nag.delta_logprob, 1)} | {cell(rnd.delta_logprob, 1)} |")
    mean = [100 * sum(r[i] for r in rows) / len(rows) for i in range(4)]
    print(f"| **average** | | {mean[0]:.1f} | {mean[1] - mean[0]:+.1f} ({mean[0]:.1f} -> {mean[1]:.1f}) | "
          f"{mean[2] - mean[0]:+.1f} | {mean[3] - mean[0]:+.1f} | | |")
    print(f"\n{PAPER}")
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_dict() for r in results], indent=1))


if __name__ == "__main__":
    main()
