"""How well NAG clusters find copies: precision and recall on real passages with planted copies; one table.

Takes a demo folder (``nagindex demo --out DIR``: ``corpus.jsonl`` and ``idx/``, real passages encoded
with the embedded SmolLM2-135M), copies its index, plants ``--per-kind`` copies of each kind
(``tools/planted.py``: exact, recased, boilerplate, edited, reordered) of distinct corpus passages and
ingests them into the copy (only they are encoded). Then, for each radius, clusters the index with
``multihash`` (the default) and with ``flat`` (FAISS's exhaustive range search: the anchor, every pair
within the radius), timing both in the same run, and scores the clusters against the planted pairs:

- recall (per kind): planted copies in the same cluster as their original;
- precision: of all pairs of documents that share a cluster, those that are a planted copy and its
  original. The demo corpus has no exact repeats, but related passages (DROP and BoolQ paragraphs of
  one Wikipedia article) can be near in NAG space: such pairs count against precision here, and a few
  are printed so a reader can judge them.

    nagindex demo --out /tmp/demo2k
    python tools/bench_clusters.py --demo /tmp/demo2k --workdir /tmp/clusterbench
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from _table import ResultTable, load_average, log  # noqa: E402
from planted import KINDS, plant  # noqa: E402


def _prepare(demo: Path, work: Path, per_kind: int, seed: int) -> tuple[Path, list[dict]]:
    from nagindex.ingest.run import ingest

    index = work / "idx"
    planted_file = work / "planted.jsonl"
    rows = [json.loads(line) for line in (demo / "corpus.jsonl").read_text("utf-8").splitlines()]
    planted = plant([r for r in rows if r.get("source") != "planted"], per_kind, seed)
    if not index.exists():
        shutil.copytree(demo / "idx", index)
        with open(planted_file, "w", encoding="utf-8") as fh:
            for r in planted:
                fh.write(json.dumps({"docid": r["docid"], "text": r["text"]}, ensure_ascii=False) + "\n")
        start = time.perf_counter()
        res = ingest([planted_file], index, text_field="text", id_field="docid", batch_size=16, show_progress=True)
        log(f"planted {res.added} copies encoded in {time.perf_counter() - start:.0f}s")
    return index, planted


def _clusters(index: Path) -> dict[str, int]:
    from nagindex.index.clusters import CLUSTER_FILE
    from nagindex.index.derived import open_index

    view = open_index(index)
    labels = np.fromfile(index / CLUSTER_FILE, dtype="<i8")
    ids = view.docids.take(np.arange(len(view)))
    return {d: int(lab) for d, lab in zip(ids, labels) if lab >= 0}


def _score(cluster_of: dict[str, int], planted: list[dict]) -> tuple[dict[str, float], float, int, list]:
    members: dict[int, list[str]] = {}
    for d, lab in cluster_of.items():
        members.setdefault(lab, []).append(d)
    predicted = {frozenset(p) for m in members.values() for p in itertools.combinations(m, 2)}
    truth = {frozenset((r["docid"], r["original"])) for r in planted}
    found = Counter(r["kind"] for r in planted if frozenset((r["docid"], r["original"])) in predicted)
    recall = {k: found[k] / sum(r["kind"] == k for r in planted) for k in KINDS}
    recall["all"] = sum(found.values()) / len(planted)
    hits = len(predicted & truth)
    precision = hits / len(predicted) if predicted else float("nan")
    return recall, precision, len(predicted), sorted(predicted - truth, key=sorted)[:5]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, required=True, help="a `nagindex demo --out` folder")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/clusterbench"))
    ap.add_argument("--per-kind", type=int, default=60)
    ap.add_argument("--radii", default="40,80,120,160,200,240")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from nagindex.index.clusters import build_clusters
    from nagindex.index.derived import open_index

    args.workdir.mkdir(parents=True, exist_ok=True)
    index, planted = _prepare(args.demo, args.workdir, args.per_kind, args.seed)
    texts = {json.loads(line)["docid"]: json.loads(line)["text"]
             for f in (args.demo / "corpus.jsonl", args.workdir / "planted.jsonl")
             for line in f.read_text("utf-8").splitlines()}
    n = len(open_index(index))
    build_clusters(index, radius=0, method="multihash")  # compile the numba kernels outside the timings
    table = ResultTable("seconds")
    details = []
    for radius in (int(r) for r in args.radii.split(",")):
        timed = {}
        for method in ("flat", "multihash"):
            start = time.perf_counter()
            res = build_clusters(index, radius=radius, method=method)
            timed[method] = (time.perf_counter() - start, res, _clusters(index))
        flat_s, flat, flat_clusters = timed["flat"]
        for method in ("flat", "multihash"):
            seconds, res, clusters = timed[method]
            recall, precision, pairs, strays = _score(clusters, planted)
            kinds = ", ".join(f"{k} {recall[k]:.2f}" for k in KINDS)
            table.add(f"radius {radius}, {method}: {res.clusters} clusters, {res.clustered_rows} docs, "
                      f"{pairs} pairs; recall {recall['all']:.2f} ({kinds}); precision {precision:.2f}",
                      seconds, f"{seconds / flat_s:.2f}x flat")
            if method == "multihash":
                same = clusters == flat_clusters
                details.append(f"radius {radius}: multihash clusters {'==' if same else '!='} flat clusters; "
                               f"unplanted pairs e.g. " + "; ".join(
                                   " | ".join(texts[d][:60].replace("\n", " ") for d in sorted(p)) for p in strays[:2]))
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}: {n:,} documents ({len(planted)} planted, "
          f"{args.per_kind} per kind), load average {load_average()}\n")
    print(table.markdown())
    print()
    for line in details:
        print("- " + line)


if __name__ == "__main__":
    main()
