"""The paper's deactivation test (Sec. 5, Table 3) with an index's backbone, printed as BENCHMARKS.md's table.

For each target, its 20 most frequent neurons per layer (from ``--max-examples`` profile examples; with
``--rank lift`` its 20 of highest lift over the pool) are switched off and the backbone answers ``--heldout``
other examples of the target; the same for as many random neurons (``--draws`` seeded draws) and for another target's top neurons (``nagindex/explain/deactivate.py``).
PIQA, SciQ and BoolQ are not in the registry: their target YAMLs are in ``tools/repro_targets/``.

    python tools/repro_deactivation.py --index /tmp/explain_demo/idx --json deactivation.json
    python tools/repro_deactivation.py --index /tmp/explain_demo/idx --rank lift --device cuda --json lift.json

Paper (Qwen3-1.7B-Base, 28 layers, 20 of its 6,144 up-projection neurons a layer: 0.33%; SmolLM2-135M has 1,536): the
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


def print_table(results: list[dict], header: str) -> None:
    """The markdown table of BENCHMARKS.md from ``DeactivationResult.to_dict()``s, an average row last."""
    print(f"{header}\n")
    print("| target (chance %) | held-out n | intact acc | NAG neurons off: d acc [95% CI] | random off: d acc [95% CI] | "
          "other target's off: d acc [95% CI] | NAG off: d gold logp | random off: d gold logp | "
          "other off: d gold logp |")
    print("|---|---|---|---|---|---|---|---|---|")
    accs = []
    for res in results:
        intact, nag, rnd, other = res["arms"]
        accs.append([arm["accuracy"] for arm in (intact, nag, rnd, other)])
        print(f"| {res['target']} ({CHANCE.get(res['target'], 0):.0f}) | {res['heldout']} | "
              f"{100 * intact['accuracy']:.1f} | {cell(nag['delta_accuracy'], 100)} | "
              f"{cell(rnd['delta_accuracy'], 100)} | {other['name'].removeprefix('other:')}: "
              f"{cell(other['delta_accuracy'], 100)} | {cell(nag['delta_logprob'], 1)} | "
              f"{cell(rnd['delta_logprob'], 1)} | {cell(other['delta_logprob'], 1)} |")
    mean = [100 * sum(a[i] for a in accs) / len(accs) for i in range(4)]
    print(f"| **average** | | {mean[0]:.1f} | {mean[1] - mean[0]:+.1f} ({mean[0]:.1f} -> {mean[1]:.1f}) | "
          f"{mean[2] - mean[0]:+.1f} | {mean[3] - mean[0]:+.1f} | | | |")
    print(f"\n{PAPER}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", help="The index whose backbone and pool are tested.")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--rank", choices=("frequency", "lift"), default="frequency",
                        help="Switch off each target's most frequent neurons, or those of highest lift over the pool.")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--heldout", type=int, default=100)
    parser.add_argument("--max-examples", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="For the backbone: cpu, cuda, cuda:1, ...")
    parser.add_argument("--json", default=None, help="Write the results here, rewritten after each target.")
    parser.add_argument("--table", nargs="+", default=None, metavar="JSON",
                        help="Only print the table of earlier runs' --json files, in order.")
    args = parser.parse_args()
    if args.table:
        results = [r for path in args.table for r in json.loads(Path(path).read_text())]
        print_table(results, f"## runs {', '.join(args.table)}")
        return
    if not args.index:
        parser.error("--index is required to run the test")
    results = run(args)
    where = f"{platform.machine()}, {args.threads} threads" if args.device == "cpu" else args.device
    print_table(results, f"## {args.index}: top {args.top} neurons per layer by {args.rank}, {args.max_examples} "
                         f"profile examples, {args.heldout} held-out examples per target, {args.draws} random draws; "
                         f"{where}")


def run(args: argparse.Namespace) -> list[dict]:
    """The test of each of ``args.targets`` with one loaded backbone, each result kept as it comes."""
    import torch

    from nagindex.explain.deactivate import deactivation_test, load_index_backbone
    from nagindex.explain.profile import index_manifest
    from nagindex.index.sharded import shard_specs

    torch.set_num_threads(args.threads)
    backbone = load_index_backbone(index_manifest(args.index, shard_specs(args.index)), args.device)
    results = []
    for name in args.targets.split(","):
        started = time.perf_counter()
        res = deactivation_test(request(name), args.index, top=args.top, draws=args.draws, heldout=args.heldout,
                                max_examples=args.max_examples, against=[request(TARGETS[name])],
                                device=args.device, backbone=backbone, rank=args.rank)
        results.append({**res.to_dict(), "seconds": round(time.perf_counter() - started)})
        print(res.table(), f"\n({results[-1]['seconds']} s)\n", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
