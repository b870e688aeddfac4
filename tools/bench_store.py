"""Storage cost: what the LMDB store, the derived files and FAISS add to an ingest, and bytes per doc.

One run, one markdown table:
  (a) extraction time per document with the embedded SmolLM2-135M on this machine
      (``--extract-docs`` real passages from ``nagindex.demo``, max_length 120, after one warm-up batch);
  (b) store + derive time per document on ``--docs`` synthetic NAGs, the way ``ingest`` does it:
      per window of ``--window`` docs the duplicate-id screen (``store.contains``) and one
      ``store.append`` (one LMDB transaction), then one ``sync_derived`` (code matrix, docid column,
      FAISS fingerprints); at L=28, K=20, width 6144 (Qwen3-1.7B's shape) and at SmolLM2-135M's
      shape (L=30, K=20, width 1536);
  store share = b / (a + b), with a and b at SmolLM2's shape (both measured here), and, for the
  Qwen3 shape, against GPU extraction rates that are NOT measured here (stated as assumptions);
  (c) a real small ingest (``--ingest-docs`` passages) and its stage timings (``IngestResult.timings``);
  (d) bytes per document on disk for the ``--docs`` index at L=28, K=20 with ~20-character docids.

    python tools/bench_store.py                       # 100K docs, 64 + 200 real passages
    python tools/bench_store.py --docs 20000 --extract-docs 32 --ingest-docs 64
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _table import ResultTable, load_average, log, stage_seconds  # tools/ is on sys.path when run as a script

SHAPES = {"qwen3-1.7b shape": (28, 20, 6144), "smollm2-135m shape": (30, 20, 1536)}
ASSUMED_GPU_RATES = {"paper, H100, Qwen3-1.7B (spec sec. 7)": 350.0, "project goal, H100": 1000.0}


def passages(n: int) -> list[str]:
    from nagindex.demo import load_demo_passages

    texts = [t for source in load_demo_passages().values() for t in source]
    return (texts * (n // len(texts) + 1))[:n]


def docids(first: int, n: int) -> list[str]:
    """~20-character ids like a web corpus's: ``cc-<8 hex>-<8 digits>``."""
    h = (np.arange(first, first + n, dtype=np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
    return [f"cc-{a:08x}-{b:08d}" for a, b in zip(h.tolist(), range(first, first + n))]


# ---------------------------------------------------------------- (b) store + derive
def store_and_derive(directory: Path, shape: tuple[int, int, int], docs: int, window: int, seed: int) -> dict:
    """Append ``docs`` synthetic NAGs in windows like ``ingest``, then derive; seconds by step."""
    from nagindex.index.derived import sync_derived
    from nagindex.index.store import IndexStore

    num_layers, top_k, width = shape
    shutil.rmtree(directory, ignore_errors=True)
    rng = np.random.default_rng(seed)
    manifest = {"backbone": "synthetic", "weights_sha256": None, "neuron_type": "fwd_up", "num_layers": num_layers,
                "width": width, "top_k": top_k, "max_length": 120}
    source = "/data/corpus/shard-00000.jsonl.zst"
    batches = []
    for first in range(0, docs, window):  # generated up front: not part of the timing
        n = min(window, docs - first)
        codes = rng.integers(0, width, (n, num_layers, top_k), dtype=np.uint16)  # repeats in a layer: same bytes
        batches.append((first, codes, docids(first, n), rng.integers(1, 121, n)))
    gc.collect()
    screen = append = 0.0
    start = time.perf_counter()
    with IndexStore.create(directory, manifest) as store:
        create = time.perf_counter() - start
        for first, codes, ids, tokens in batches:
            t = time.perf_counter()
            store.contains(ids)  # ingest's duplicate-id screen, one lookup per doc
            screen += time.perf_counter() - t
            t = time.perf_counter()
            store.append(codes, ids, tokens, source, np.arange(first, first + len(ids)),
                         progress={source: {"next_position": first + len(ids), "done": False}})
            append += time.perf_counter() - t
    t = time.perf_counter()
    sync_derived(directory)
    derive = time.perf_counter() - t
    return {"create": create, "screen": screen, "append": append, "derive": derive,
            "total": create + screen + append + derive}


# ---------------------------------------------------------------- (a), (c) real model
def extraction(extract_docs: int, batch_size: int, max_length: int):
    """The SmolLM2 extractor, and its seconds per doc on ``extract_docs`` passages (warm-up excluded)."""
    from nagindex.encode.encoder import build_extractor

    t = time.perf_counter()
    ex = build_extractor("smollm2-135m", ["fwd_up"], top_k=20, max_length=max_length, batch_size=batch_size,
                         device="cpu")
    load = time.perf_counter() - t
    texts = passages(extract_docs + batch_size)
    warm, _ = ex.tokenize(texts[:batch_size])
    ex.codes(warm)
    t = time.perf_counter()
    ids, counts = ex.tokenize(texts[batch_size:])
    ex.codes(ids)
    seconds = time.perf_counter() - t
    return ex, load, seconds / extract_docs, sum(counts) / extract_docs


def real_ingest(ex, directory: Path, n: int) -> tuple[float, str, object]:
    from nagindex.ingest.run import ingest

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    corpus = directory / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as fh:
        for i, text in enumerate(passages(n)):
            fh.write(json.dumps({"docid": docids(i, 1)[0], "doc": text}) + "\n")
    t = time.perf_counter()
    res = ingest([corpus], directory / "idx", extractor=ex, max_length=ex.max_length, show_progress=False)
    return time.perf_counter() - t, res.timings, res


# ---------------------------------------------------------------- (d) bytes
def bytes_per_doc(directory: Path, docs: int) -> dict[str, float]:
    """Bytes per doc by file, and LMDB by sub-database (pages in use)."""
    import lmdb

    from nagindex.index.derived import FAISS_FILE, ROW_FILES
    from nagindex.index.info import disk_usage
    from nagindex.index.store import STORE_DIR

    usage = disk_usage(directory)
    out = {f"disk_usage {k}": v / docs for k, v in usage.items()}
    out["codes matrix (codes.u16)"] = (directory / ROW_FILES["codes"][0]).stat().st_size / docs
    out["other derived files"] = usage["derived"] / docs - out["codes matrix (codes.u16)"]
    out["faiss"] = (directory / FAISS_FILE).stat().st_size / docs
    data = directory / STORE_DIR / "data.mdb"
    out["lmdb data.mdb (size)"] = data.stat().st_size / docs
    out["lmdb data.mdb (allocated)"] = data.stat().st_blocks * 512 / docs
    env = lmdb.open(str(directory / STORE_DIR), readonly=True, lock=False, max_dbs=16)
    try:
        with env.begin() as txn:
            for name in ("chunks", "ids", "meta", "sources", "source_ids", "progress", "rejects"):
                st = txn.stat(env.open_db(name.encode(), txn=txn, create=False))
                pages = st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
                out[f"lmdb {name}"] = pages * st["psize"] / docs
    finally:
        env.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed after)")
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--window", type=int, default=512, help="documents per LMDB commit (ingest's --commit-every)")
    ap.add_argument("--extract-docs", type=int, default=64)
    ap.add_argument("--ingest-docs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=120)
    ap.add_argument("--skip-model", action="store_true", help="only (b) and (d): no SmolLM2")
    args = ap.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="nagbench-store-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    table = ResultTable("value")
    add = table.add

    try:
        per_doc_a = None
        if not args.skip_model:
            log("(a) extraction, SmolLM2-135M")
            ex, load_s, per_doc_a, tokens = extraction(args.extract_docs, args.batch_size, args.max_length)
            add(f"(a) SmolLM2-135M extraction, CPU float32, {args.extract_docs} real passages, batch "
                f"{args.batch_size}, max_length {args.max_length} ({tokens:.0f} tokens/doc; model load "
                f"{load_s:.1f} s, not counted)", f"{per_doc_a * 1e3:.1f} ms/doc")
        log("(b) store + derive")
        stored = {}
        for label, shape in SHAPES.items():
            stored[label] = store_and_derive(work / label.split()[0], shape, args.docs, args.window, seed=1)
            s = stored[label]
            per = s["total"] / args.docs
            add(f"(b) store + derive, {label} (L={shape[0]}, K={shape[1]}, width {shape[2]}), {args.docs:,} docs, "
                f"windows of {args.window}: screen {s['screen']:.2f} s, append {s['append']:.2f} s, "
                f"derive incl. FAISS {s['derive']:.2f} s", f"{per * 1e6:.0f} us/doc")
        b_small = stored["smollm2-135m shape"]["total"] / args.docs
        if per_doc_a is not None:
            share = b_small / (per_doc_a + b_small)
            add("store share of ingest, SmolLM2-135M on this CPU: b / (a + b)", f"{share:.3%}", "", "< 5%",
                share < 0.05)
        b_big = stored["qwen3-1.7b shape"]["total"] / args.docs
        for name, rate in ASSUMED_GPU_RATES.items():
            share = b_big / (1.0 / rate + b_big)
            add(f"store share, Qwen3 shape, extraction ASSUMED at {rate:,.0f} docs/s ({name}; not measured here)",
                f"{share:.2%}", "", "< 5%", share < 0.05)
        if not args.skip_model:
            log("(c) real ingest")
            wall, timings, res = real_ingest(ex, work / "ingest", args.ingest_docs)
            stage = stage_seconds(timings)
            stored_s = stage.get("store", 0.0) + stage.get("index", 0.0)
            work_s = stage.get("extract", 0.0) + stored_s
            add(f"(c) real `ingest()` of {res.added} passages, SmolLM2-135M, CPU, windows of 512 (stages: "
                f"{timings}; model passed in, so no load; extract includes tokenizing and the id screen)",
                f"{wall:.1f} s", f"store + index {stored_s / max(work_s, 1e-9):.2%} of extract + store + index")
        log("(d) bytes per doc")
        usage = bytes_per_doc(work / "qwen3-1.7b", args.docs)
        durable = usage["disk_usage lmdb"] + usage["faiss"]
        everything = sum(v for k, v in usage.items() if k.startswith("disk_usage"))
        for key in ("lmdb data.mdb (size)", "lmdb data.mdb (allocated)", "lmdb chunks", "lmdb ids", "faiss",
                    "codes matrix (codes.u16)", "other derived files"):
            note = {"lmdb chunks": " (codes 1,120 B + tokens, positions, source id, docid bytes)",
                    "lmdb ids": " (docid -> row, for dedup and lookups)",
                    "codes matrix (codes.u16)": " (a copy of the LMDB codes: rebuildable scan cache)",
                    "other derived files": " (tokens, positions, source ids, docid column; rebuildable)"}.get(key, "")
            add(f"(d) {key}{note}", f"{usage[key]:,.0f} B/doc")
        add("(d) LMDB (goal <= 1.3 KB/doc)", f"{usage['disk_usage lmdb']:,.0f} B/doc", "", "<= 1,300 B",
            usage["disk_usage lmdb"] <= 1300)
        add("(d) FAISS fingerprints (goal 512 B/doc)", f"{usage['faiss']:,.0f} B/doc", "", "<= 512 B",
            usage["faiss"] <= 512.5)
        add("(d) durable: LMDB + FAISS", f"{durable:,.0f} B/doc", "", "<= 1,812 B", durable <= 1812)
        add("(d) all files (durable + derived scan files)", f"{everything:,.0f} B/doc",
            f"{everything / durable:.2f}x durable")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{platform.machine()} x {os.cpu_count()} cores; load average before {load_before}, after "
          f"{load_average()}\n")
    print(table.markdown())


if __name__ == "__main__":
    main()
