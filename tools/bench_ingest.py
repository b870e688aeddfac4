"""Ingest at scale: what the store path costs one shard and eight, and what sharding buys extraction.

One run, one markdown table, then the arithmetic for the paper's 1.25B-document pool:
  (a) the store path with no model, one shard in one process: ``--docs`` synthetic Qwen3-shape NAGs
      (L=28, K=20, width 6144; ~40-byte web-like docids; token counts), per window of ``--window`` docs
      the duplicate-id screen (``store.contains``) and one ``store.append`` (one LMDB transaction),
      then one ``sync_derived`` (code matrix, docid column, fingerprints);
  (b) the same documents over ``--shards`` shards written by ``--procs`` processes (each writes its
      shards one after another), then the driver's ``dedup.reconcile`` over all shards;
  (c) the per-shard figure: one shard writer's docs/s (its documents over its own seconds), the
      ceiling of the GPUs that can feed one shard;
  (d) extraction with the tiny golden model (``../shared/fixtures/nag-golden/model``, top_k 8,
      max_length 64, CPU): ``nagindex ingest --shards 2`` vs ``--shards 1`` as fresh processes on
      ``--extract-docs`` documents in 4 jsonl files, interleaved rounds, best of each; each also
      with one torch thread per process (``OMP_NUM_THREADS=1``: 2 workers, 2 threads on 2 cores);
  (e) 1.25B documents on paper, from (a)-(c): shards, disk per node, derive and reconcile time, and the
      share of a GPU fleet's extraction rate the store path costs (350 docs/s per H100 in the paper,
      1,000 the project's goal; both ASSUMED, not measured here).

Data is generated before the clock starts (codes drawn once as a pool of windows and reused: their
values do not change what LMDB or the derive does); the processes start together behind a barrier.

    python tools/bench_ingest.py                  # 10M docs: ~30 GB on disk at a time, over 25 min on 2 cores
    python tools/bench_ingest.py --docs 2000000   # ~13 min on 2 cores
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _table import ResultTable, load_average, log  # tools/ is on sys.path when run as a script

SHAPE = (28, 20, 6144)  # Qwen3-1.7B: layers, top-k, MLP width
POOL_WINDOWS = 64  # distinct random code windows, cycled
PAPER_DOCS = 1_250_000_000
GPUS_PER_NODE = 8
ASSUMED_GPU_RATES = {"paper, H100, Qwen3-1.7B": 350.0, "project goal, H100": 1000.0}
GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "nag-golden"


def web_ids(first: int, n: int) -> list[str]:
    """~40-byte ids like a crawl's: ``cc/2024-10/<16 hex>/<10 digits>``, unrelated to row order."""
    h = (np.arange(first, first + n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(0x5851F42D)
    return [f"cc/2024-10/{a:016x}/{b:010d}" for a, b in zip(h.tolist(), range(first, first + n))]


# ---------------------------------------------------------------- (a)-(c) store path, no model
def write_shards(jobs: list[tuple[str, int, int]], window: int, seed: int, barrier: Any, results: Any) -> None:
    """One writer process: generate its shards' documents, wait for the others, then per shard
    screen + append window by window and derive; put each shard's seconds on ``results``."""
    from nagindex.index.derived import sync_derived
    from nagindex.index.store import IndexStore

    num_layers, top_k, width = SHAPE
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, width, (POOL_WINDOWS, window, num_layers, top_k), dtype=np.uint16)
    data = [(path, first, web_ids(first, n), rng.integers(1, 2049, n)) for path, first, n in jobs]
    manifest = {"backbone": "synthetic", "weights_sha256": None, "neuron_type": "fwd_up", "num_layers": num_layers,
                "width": width, "top_k": top_k, "max_length": 2048}
    barrier.wait()
    for path, first, ids, tokens in data:
        source = f"/data/corpus/part-{first:012d}.jsonl.zst"
        start = time.monotonic()
        store_s = 0.0
        with IndexStore.create(path, manifest) as store:
            for w, at in enumerate(range(0, len(ids), window)):
                chunk = ids[at:at + window]
                store.contains(chunk)
                store.append(pool[w % POOL_WINDOWS][:len(chunk)], chunk, tokens[at:at + window], source,
                             np.arange(at, at + len(chunk)),
                             progress={source: {"next_position": at + len(chunk), "done": False}})
            store_s = time.monotonic() - start
        t = time.monotonic()
        sync_derived(path)
        end = time.monotonic()
        results.put({"path": path, "docs": len(ids), "start": start, "end": end, "store": store_s, "derive": end - t})


def run_writers(root: Path, docs: int, shards: int, procs: int, window: int) -> dict[str, Any]:
    """``shards`` shards of ``docs`` documents written by ``procs`` processes; wall time and per-shard times."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    bounds = np.linspace(0, docs, shards + 1).astype(int).tolist()
    jobs = [(str(root / f"shard-{s:05d}"), bounds[s], bounds[s + 1] - bounds[s]) for s in range(shards)]
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=write_shards, args=(jobs[p::procs], window, p, barrier, results))
               for p in range(procs)]
    for w in workers:
        w.start()
    shard_runs = [results.get() for _ in jobs]
    for w in workers:
        w.join()
        if w.exitcode:
            raise SystemExit(f"a writer process exited with {w.exitcode}")
    wall = max(r["end"] for r in shard_runs) - min(r["start"] for r in shard_runs)
    return {"wall": wall, "shards": shard_runs, "paths": [Path(p) for p, _, _ in jobs]}


def reconcile_shards(root: Path, paths: list[Path]) -> float:
    """The driver's last step of a sharded ingest: a catalog of the written shards, then
    ``finish_shards`` (identity check and cross-shard id reconcile); its seconds."""
    from nagindex.index.catalog import new_catalog
    from nagindex.ingest.sharded import finish_shards

    catalog = new_catalog(root, len(paths))
    catalog.inputs = [{"key": f"/data/corpus/part-{i:05d}", "shard": i, "size": 0} for i in range(len(paths))]
    t = time.monotonic()
    hidden = finish_shards(catalog)
    seconds = time.monotonic() - t
    assert hidden == 0, hidden
    return seconds


def disk_bytes(paths: list[Path]) -> dict[str, int]:
    """Bytes on disk over all shards, by part (``index.info.disk_usage``)."""
    from nagindex.index.info import disk_usage

    total: dict[str, int] = {}
    for path in paths:
        for part, n in disk_usage(path).items():
            total[part] = total.get(part, 0) + n
    return total


# ---------------------------------------------------------------- (d) extraction, tiny model
def extraction_corpus(folder: Path, docs: int) -> list[Path]:
    """``docs`` golden pool texts under new ids, in 4 jsonl files (whole files are what shards own)."""
    import pyarrow.parquet as pq

    texts = pq.read_table(GOLDEN / "data/pool/pool.parquet", columns=["doc"]).column("doc").to_pylist()
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"part-{i}.jsonl" for i in range(4)]
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open(f, "w", encoding="utf-8")) for f in files]
        for i in range(docs):
            handles[i % 4].write(json.dumps({"docid": f"doc-{i:07d}", "doc": texts[i % len(texts)]}) + "\n")
    return files


#: (d)'s configurations: shards, and torch threads per process (None: torch's default, one per core)
EXTRACT_RUNS = {"--shards 1": (1, None), "--shards 1, OMP_NUM_THREADS=1": (1, 1), "--shards 2": (2, None),
                "--shards 2, OMP_NUM_THREADS=1": (2, 1)}


def timed_ingest(files: list[Path], index: Path, shards: int, threads: int | None) -> float:
    """Seconds of one ``nagindex ingest`` in a fresh process, as a user runs it (imports, model load).

    ``threads`` sets ``OMP_NUM_THREADS`` for it and its shard workers: left to torch, each of N
    workers starts one thread per core, N x cores threads on the cores."""
    shutil.rmtree(index, ignore_errors=True)
    cmd = [sys.executable, "-m", "nagindex", "ingest", *map(str, files), "--index", str(index), "--backbone",
           str(GOLDEN / "model"), "--top-k", "8", "--max-length", "64", "--device", "cpu", "--shards", str(shards)]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    t = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.monotonic() - t


# ---------------------------------------------------------------- (e) paper
def paper_rows(add: Any, per_doc_store: float, shard_rate: float, bytes_per_doc: float, derive_per_doc: float,
               reconcile_per_doc: float, docid_bytes: float) -> None:
    """1.25B documents, one shard per GPU, ``GPUS_PER_NODE`` GPUs per node, from the measured rates."""
    for name, rate in ASSUMED_GPU_RATES.items():
        for gpus in (64, 256):
            fleet = rate * gpus
            per_shard = PAPER_DOCS / gpus
            add(f"(e) {gpus} H100 at {rate:,.0f} docs/s ({name}; ASSUMED): {gpus} shards of "
                f"{per_shard / 1e6:,.1f}M docs, {gpus // GPUS_PER_NODE} nodes; extraction "
                f"{PAPER_DOCS / fleet / 3600:,.1f} h", f"{per_shard * GPUS_PER_NODE * bytes_per_doc / 1e12:,.2f} TB/node",
                f"derive {per_shard * derive_per_doc / 60:,.0f} min per shard (in parallel)")
        share = per_doc_store / (1 / rate + per_doc_store)
        add(f"(e) store path's share of a GPU worker's time at {rate:,.0f} docs/s, run in line after extraction "
            f"(s/doc of (a) over 1/rate + it); one shard writer (c) keeps up with {shard_rate / rate:,.1f} GPUs",
            f"{share:.2%}", f"{rate / shard_rate:.1%} of a core per GPU")
    add(f"(e) driver's reconcile of all 1.25B ids, linear from (b) (a sort: somewhat more); memory about "
        f"{docid_bytes:.0f} B of ids + 24 B per row", f"{PAPER_DOCS * reconcile_per_doc / 60:,.0f} min",
        f"{PAPER_DOCS * (docid_bytes + 24) / 1e9:,.0f} GB RAM")


@contextlib.contextmanager
def scratch(workdir: str | None) -> Iterator[Path]:
    """``workdir`` (kept), or a temporary folder removed afterwards: tens of GB at full size."""
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="nagbench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if not workdir:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed after)")
    ap.add_argument("--docs", type=int, default=10_000_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--window", type=int, default=512, help="documents per LMDB commit (ingest's --commit-every)")
    ap.add_argument("--extract-docs", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=2, help="rounds of (d), best of each")
    args = ap.parse_args()
    load_before = load_average()
    table = ResultTable("value")
    add = table.add
    with scratch(args.workdir) as work:
        log(f"(a) one shard, one process, {args.docs:,} docs")
        one = run_writers(work / "one", args.docs, 1, 1, args.window)
        run = one["shards"][0]
        one_bytes = sum(disk_bytes(one["paths"]).values()) / args.docs
        docid_bytes = float(np.mean([len(d) for d in web_ids(0, 1000)]))
        shutil.rmtree(work / "one")
        one_rate = args.docs / one["wall"]
        add(f"(a) store path, 1 shard, 1 process, {args.docs:,} docs, L={SHAPE[0]} K={SHAPE[1]} width {SHAPE[2]}, "
            f"~{docid_bytes:.0f}-byte ids, windows of {args.window}: screen + append {run['store']:.1f} s, "
            f"derive {run['derive']:.1f} s", f"{one_rate:,.0f} docs/s", "1.00x")
        add("(a) bytes on disk per doc, 1 shard (LMDB + derived files + fingerprints)", f"{one_bytes:,.0f} B/doc")

        log(f"(b) {args.shards} shards, {args.procs} processes")
        many = run_writers(work / "many", args.docs, args.shards, args.procs, args.window)
        reconcile_s = reconcile_shards(work / "many", many["paths"])
        many_bytes = sum(disk_bytes(many["paths"]).values()) / args.docs
        many_rate = args.docs / many["wall"]
        with_reconcile = args.docs / (many["wall"] + reconcile_s)
        add(f"(b) store path, {args.shards} shards, {args.procs} processes ({args.shards // args.procs} shards each, "
            f"one after another), same docs", f"{many_rate:,.0f} docs/s", f"{many_rate / one_rate:.2f}x (a)")
        add(f"(b) + the driver's reconcile of all {args.docs:,} ids ({reconcile_s:.1f} s)",
            f"{with_reconcile:,.0f} docs/s", f"{with_reconcile / one_rate:.2f}x (a)")
        add(f"(b) bytes on disk per doc, {args.shards} shards", f"{many_bytes:,.0f} B/doc",
            f"{many_bytes / one_bytes:.2f}x (a)")
        runs = many["shards"]
        seconds = [r["end"] - r["start"] for r in runs]
        shard_rate = sum(r["docs"] for r in runs) / sum(seconds)
        add(f"(c) per shard writer: its docs / its own seconds, mean of {len(runs)} (screen + append "
            f"{np.mean([r['store'] for r in runs]):.1f} s, derive {np.mean([r['derive'] for r in runs]):.1f} s per "
            f"shard of {runs[0]['docs']:,}): the ceiling of what one shard takes from GPUs",
            f"{shard_rate:,.0f} docs/s", f"{shard_rate / one_rate:.2f}x (a)")
        shutil.rmtree(work / "many")

        log(f"(d) extraction, tiny model, {args.extract_docs} docs")
        files = extraction_corpus(work / "corpus", args.extract_docs)
        best = dict.fromkeys(EXTRACT_RUNS, float("inf"))
        for _ in range(args.repeats):
            for name, (shards, threads) in EXTRACT_RUNS.items():
                best[name] = min(best[name], timed_ingest(files, work / "x", shards, threads))
        anchor = best["--shards 1"]
        for name, seconds in best.items():
            add(f"(d) `nagindex ingest {name}`, tiny golden model (4 layers), {args.extract_docs:,} docs in 4 files, "
                f"CPU, fresh process (imports + model load included), best of {args.repeats}: {seconds:.1f} s",
                f"{args.extract_docs / seconds:,.1f} docs/s", f"{anchor / seconds:.2f}x --shards 1")

        per_doc_store = one["wall"] / args.docs
        derive_per_doc = float(np.mean([r["derive"] / r["docs"] for r in runs]))
        paper_rows(add, per_doc_store, shard_rate, one_bytes, derive_per_doc, reconcile_s / args.docs, docid_bytes)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()} x {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; load average before "
          f"{load_before}, after {load_average()}\n")
    print(table.markdown())


if __name__ == "__main__":
    main()
