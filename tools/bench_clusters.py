"""How well NAG clusters find copies: precision and recall on real passages with planted copies; one table.

Takes a demo folder (``nagindex demo --out DIR``: ``corpus.jsonl`` and ``idx/``, real passages encoded
with the embedded SmolLM2-135M), copies its index, plants ``--per-kind`` copies of each kind
(``tools/planted.py``: exact, lowercased, mixed-case, boilerplate, edited, reordered) of distinct corpus passages and
ingests them into the copy (only they are encoded). Then, for each radius, clusters the index with
``multihash`` (the default) and with ``flat`` (FAISS's exhaustive range search: the anchor, every pair
within the radius), timing both in the same run, and scores the clusters against the planted pairs:

- recall (per kind): planted copies in the same cluster as their original;
- precision, two ways, over all pairs of documents that share a cluster (a cluster of m documents has
  m(m-1)/2 pairs, so chaining at large radii is punished): "planted", the pairs that are a planted copy
  and its original; "text", those or pairs whose texts are near-duplicates by words (at least half of the
  shorter one's word 5-grams appear in the other: the demo corpus has no exact repeats, but BoolQ and DROP
  hold several versions of one Wikipedia paragraph). A few pairs that are neither are printed.

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
import tempfile
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
    from nagindex.index.sharded import open_index

    view = open_index(index)
    labels = np.fromfile(index / CLUSTER_FILE, dtype="<i8")
    ids = view.docids.take(np.arange(len(view)))
    return {d: int(lab) for d, lab in zip(ids, labels) if lab >= 0}


def _shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def _text_duplicates(a: str, b: str) -> bool:
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) >= 0.5 * min(len(sa), len(sb))


def _score(cluster_of: dict[str, int], planted: list[dict],
           texts: dict[str, str]) -> tuple[dict[str, float], float, float, int, list]:
    members: dict[int, list[str]] = {}
    for d, lab in cluster_of.items():
        members.setdefault(lab, []).append(d)
    predicted = {frozenset(p) for m in members.values() for p in itertools.combinations(m, 2)}
    truth = {frozenset((r["docid"], r["original"])) for r in planted}
    found = Counter(r["kind"] for r in planted if frozenset((r["docid"], r["original"])) in predicted)
    recall = {k: found[k] / sum(r["kind"] == k for r in planted) for k in KINDS}
    recall["all"] = sum(found.values()) / len(planted)
    hits = len(predicted & truth)
    strays = [p for p in predicted - truth if not _text_duplicates(*(texts[d] for d in p))]
    planted_precision = hits / len(predicted) if predicted else float("nan")
    text_precision = 1 - len(strays) / len(predicted) if predicted else float("nan")
    return recall, planted_precision, text_precision, len(predicted), sorted(strays, key=sorted)[:5]


def _faiss_multihash_pairs(fp: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """The anchor for ``multihash``: FAISS's ``IndexBinaryMultiHash`` (64 tables of 64 bits, nflip 0)
    over all fingerprints, every row a query (nagindex 0.1's implementation, blocks aside)."""
    import faiss

    index = faiss.IndexBinaryMultiHash(fp.shape[1] * 8, 64, 64)
    index.nflip = 0
    index.add(fp)
    lims, _, labels = index.range_search(fp, radius + 1)
    return np.repeat(np.arange(len(fp)), np.diff(lims.astype(np.int64))), labels.astype(np.int64)


def _scale_rows(table: ResultTable, real: np.ndarray, size: int, radius: int, seed: int, flat_max: int) -> None:
    """Pair search alone on ``size`` fingerprints like real ones: each a real fingerprint with 30% of its
    set bits moved to random places (about 330 bits from its source, as far as unrelated real documents
    are), so nearly all pairs are far apart, as in a real corpus. Every method must find the same pairs
    (multihash's beyond 63 bits: a subset of flat's). Flat runs up to ``flat_max`` documents. Then the
    pass ``build_clusters`` runs (identical fingerprints collapsed, pairs streamed into the union-find,
    no pair list), in this process and on 2 worker processes: its links must be the anchor's pairs."""
    from nagindex.index.pairs import PairSearch, link, pair_list

    rng = np.random.default_rng(seed)
    bits = np.unpackbits(real[rng.integers(0, len(real), size)], axis=1, bitorder="little").astype(bool)
    for row in bits:
        on = np.flatnonzero(row)
        row[rng.choice(on, int(0.3 * len(on)), replace=False)] = False
        row[rng.integers(0, row.size, int(0.3 * len(on)))] = True
    fp = np.packbits(bits, axis=1, bitorder="little")
    def search(method: str) -> tuple[np.ndarray, np.ndarray]:  # one shard, nothing hidden, every row new
        return pair_list([fp], np.array([0, size]), [np.zeros(0, np.int64)], [np.arange(size)], radius, method)

    methods = {
        "FAISS flat range search": lambda: search("flat"),
        "FAISS IndexBinaryMultiHash": lambda: _faiss_multihash_pairs(fp, radius),
        "nagindex multihash (sort join)": lambda: search("multihash"),
    }
    if size > flat_max:
        del methods["FAISS flat range search"]
    found, seconds = {}, {}
    for method, run in methods.items():
        start = time.perf_counter()
        a, b = run()
        seconds[method] = time.perf_counter() - start
        found[method] = {(x, y) for x, y in zip(a.tolist(), b.tolist()) if x < y}
    anchor = "FAISS IndexBinaryMultiHash"
    assert found["nagindex multihash (sort join)"] == found[anchor]
    if "FAISS flat range search" in found:
        assert found[anchor] <= found["FAISS flat range search"]
    count = {method: len(pairs) for method, pairs in found.items()}
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "fingerprints.u8"
        fp.tofile(path)  # memory-mapped as an index's, so worker processes reopen it
        for workers, method in ((1, "nagindex pass (identical collapsed, streamed union-find)"),
                                (2, "nagindex pass, 2 worker processes")):
            pass_search = PairSearch([np.memmap(path, dtype="u1", mode="r", shape=fp.shape)], np.array([0, size]),
                                      [np.zeros(0, np.int64)], [np.arange(size)], radius)
            start = time.perf_counter()
            count[method] = link(np.arange(size, dtype=np.int64), pass_search, "multihash", workers, None, False)
            seconds[method] = time.perf_counter() - start
            assert count[method] == count[anchor]  # no identical fingerprints here: a link is a pair
    for method, took in seconds.items():
        table.add(f"{size:,} synthetic real-like fingerprints, radius {radius}, pair search, {method}: "
                  f"{count[method]:,} pairs", took, f"{took / seconds[anchor]:.3f}x FAISS multi-hash")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, required=True, help="a `nagindex demo --out` folder")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/clusterbench"))
    ap.add_argument("--per-kind", type=int, default=50)
    ap.add_argument("--radii", default="40,80,100,120,140,160,200")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", default="20000,80000", help="sizes of the synthetic pair-search timing ('' : none)")
    ap.add_argument("--scale-radius", type=int, default=100)
    ap.add_argument("--flat-max", type=int, default=80000, help="largest --scale size flat is timed at")
    args = ap.parse_args()

    from nagindex.index.clusters import build_clusters
    from nagindex.index.sharded import open_index

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
            recall, precision, text_precision, pairs, strays = _score(clusters, planted, texts)
            kinds = ", ".join(f"{k} {recall[k]:.2f}" for k in KINDS)
            table.add(f"radius {radius}, {method}: {res.clusters} clusters, {res.clustered_rows} docs, "
                      f"{pairs} pairs; recall {recall['all']:.2f} ({kinds}); precision planted {precision:.2f}, "
                      f"text {text_precision:.2f}", seconds, f"{seconds / flat_s:.2f}x flat")
            if method == "multihash":
                same = clusters == flat_clusters
                details.append(f"radius {radius}: multihash clusters {'==' if same else '!='} flat clusters; "
                               f"unplanted pairs e.g. " + "; ".join(
                                   " | ".join(texts[d][:60].replace("\n", " ") for d in sorted(p)) for p in strays[:2]))
    for size in (int(x) for x in args.scale.split(",") if x):
        _scale_rows(table, open_index(index).faiss_index().codes, size, args.scale_radius, args.seed, args.flat_max)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}: {n:,} documents ({len(planted)} planted, "
          f"{args.per_kind} per kind), load average {load_average()}\n")
    print(table.markdown())
    print()
    for line in details:
        print("- " + line)


if __name__ == "__main__":
    main()
