"""NAIT on a real backbone: ingest cost of the dense features against NAG alone, and the rank agreement of
``--nait-dims r`` projections with exact scores (Spearman, top-10% Jaccard), for the README.

    python tools/bench_nait.py --docs 2000 --targets 100 --dims 16,32,64,128,256 --out nait_bench.json
    python tools/bench_nait.py --docs 64 --rounds 3 --dims 64      # the ingest A/B alone, small

Builds the demo corpus (``nagindex.demo``: real passages of oe-eval tasks) and a target of ``--targets``
passages of one source, ingests it twice (``--features nag`` and ``nag,nait``, timed), then scores the
full-width index exactly and, per r, projects the stored rows and the target's directions with the seeded
matrices an ``--nait-dims r`` ingest would use (rounded to the index's dtype as that ingest stores them).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from _table import stage_seconds  # tools/ is on sys.path when run as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=1, help="timed ingest pairs, alternating which arm goes first")
    ap.add_argument("--targets", type=int, default=100)
    ap.add_argument("--target-source", default="sciriff")
    ap.add_argument("--dims", default="16,32,64,128,256")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--work", default="nait_bench")
    ap.add_argument("--out", default="nait_bench.json")
    args = ap.parse_args()

    from scipy.stats import spearmanr

    from nagindex.demo import build_demo_corpus, load_demo_passages
    from nagindex.encode.dense import DenseSpec, project
    from nagindex.index.dense import open_dense, to_float32, to_stored
    from nagindex.ingest.run import ingest
    from nagindex.query.nait import nait_scores, target_directions

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    if not corpus.exists():
        build_demo_corpus(corpus, n_docs=args.docs, seed=args.seed)
    texts = load_demo_passages()[args.target_source][: args.targets]
    result: dict = {"docs": args.docs, "targets": len(texts), "target_source": args.target_source,
                    "backbone": args.backbone}
    arms = (("nag", None), ("nag,nait", DenseSpec()))
    seconds: dict[str, list[dict[str, float]]] = {name: [] for name, _ in arms}
    for rnd in range(args.rounds):  # A B, then B A, ...: a load that drifts during the run hits both arms alike
        for name, nait in arms if rnd % 2 == 0 else arms[::-1]:
            idx = work / name.replace(",", "_")
            shutil.rmtree(idx, ignore_errors=True)
            start = time.perf_counter()
            res = ingest([corpus], idx, backbone=args.backbone, nait=nait, show_progress=False)
            seconds[name].append({"total": time.perf_counter() - start, **stage_seconds(res.timings)})
            result[f"index_bytes_{name}"] = sum(f.stat().st_size for f in idx.rglob("*") if f.is_file())
    for name, runs in seconds.items():
        result[f"ingest_runs_{name}"] = runs
        result[f"ingest_best_{name}"] = {k: round(min(run[k] for run in runs), 2) for k in runs[0]}
    print("| arm | best extract s | best store s | best total s | total / NAG alone | index bytes / doc |")
    print("|---|---|---|---|---|---|")
    for name in seconds:
        best = result[f"ingest_best_{name}"]
        print(f"| {name} | {best.get('extract', float('nan')):.2f} | {best.get('store', float('nan')):.2f} | "
              f"{best['total']:.2f} | {best['total'] / result['ingest_best_nag']['total']:.2f}x | "
              f"{result[f'index_bytes_{name}'] / args.docs:,.0f} |")
    idx = work / "nag_nait"
    manifest = json.loads((idx / "index_info.json").read_text())["manifest"]
    rows = open_dense(idx, manifest, manifest["rows"])
    dtype = manifest["dtype"]
    directions = target_directions(idx, manifest, texts, name=args.target_source)
    exact = nait_scores(rows, directions[None], dtype)[:, 0]
    top = max(1, len(exact) // 10)
    best = set(np.argsort(-exact, kind="stable")[:top].tolist())
    full = to_float32(np.asarray(rows), dtype)
    result["dims"] = {}
    for r in (int(x) for x in args.dims.split(",")):
        spec = DenseSpec(dims=r, seed=args.seed)
        stored = to_float32(to_stored(project(full, spec), dtype), dtype)
        approx = nait_scores(stored, project(directions, spec)[None], "float32")[:, 0]
        picked = set(np.argsort(-approx, kind="stable")[:top].tolist())
        result["dims"][r] = {"spearman": round(float(spearmanr(exact, approx).statistic), 4),
                             "jaccard_top10": round(len(best & picked) / len(best | picked), 4),
                             "bytes_per_doc": r * manifest["num_layers"] * (4 if dtype == "float32" else 2)}
    result["full_width"] = manifest["nait_width"]
    result["num_layers"] = manifest["num_layers"]
    result["dtype"] = dtype
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("\n| r per layer | Spearman against exact | top-10% Jaccard |\n|---|---|---|")
    for r, row in result["dims"].items():
        print(f"| {r} | {row['spearman']:.3f} | {row['jaccard_top10']:.2f} |")
    print(f"\n(all figures: {args.out})")


if __name__ == "__main__":
    main()
