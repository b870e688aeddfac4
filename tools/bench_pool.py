"""The pool-scale path end to end, on ``tools/bench_scale.py``'s 10M-document, 8-shard index: one table, then the
arithmetic for 10^9 documents.

Steps, each in a fresh subprocess whose peak anonymous memory (``RssAnon``: not the page cache, not the mapped
index) is sampled every 20 ms for the process and, apart, for each worker it starts (Ray shard actors, Ray
tasks, spawned processes); each against an anchor measured in the same run:

1. **texts**: the synthetic index has codes but no texts. Each shard's source ``/data/synthetic/part-<s>.jsonl``
   is written under the work folder, one JSONL record per row (``docid`` and a ``doc`` of 100 words, about
   490 bytes a line), and re-attached to a linked copy of the index (``reattach_sources``: every record's
   docid is checked at its position; the copy links the derived files and copies the small ones, so the
   cached build stays untouched). Anchor: reading the sources raw.
2. **a query written by the shards** (``-o DIR``): ``fraction=0.2`` of the pool's tokens for one target and
   for the paper mixture of eight, through a private Ray cluster. Anchor: the same query as one file.
3. **training data out**: ``write_training`` of the one-target selection (written by the shards) as parquet
   and as Megatron ``.bin/.idx`` (the embedded SmolLM2 tokenizer), ``--workers`` local processes: documents/s
   and MB/s per worker. Anchor: reading the sources raw.
4. **clusters**: ``build_clusters`` (multihash, default radius) on ``--workers`` processes. Anchor: one process.

The figures go to ``<work>/pool/results.json``; the table to stdout.

    python tools/bench_pool.py                  # 10M documents (bench_scale's index, built once: ~20 min)
    python tools/bench_pool.py --docs 200000    # a quick check
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale  # noqa: E402  the index this benchmark shares
import numpy as np  # noqa: E402
from _table import load_average, log  # noqa: E402

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there one all we their been has when who will more no if out so said what up its "
         "about into than them can only other new some could time these two may then do first any my now such like "
         "our over man me even most made after also did many before must through back years where much your way "
         "well down should because each just those people how too little state good very make world still own see "
         "men work long get here between both life being under never day same another know while last might us "
         "great old year off come since against go came right used take three").split()
SOURCE = "/data/synthetic/part-{:05d}.jsonl"  # what bench_scale's shards record as their sources


# ---------------------------------------------------------------- preparation (this process)
def linked_copy(src: Path, dst: Path) -> Path:
    """``src``'s sharded index as a folder this benchmark may write (sources re-attached, clusters): the big
    derived files hard-linked (never written in place: derive replaces files), the small ones copied."""
    if (dst / "catalog.json").is_file():
        return dst
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for path in sorted(src.rglob("*")):
        to = tmp / path.relative_to(src)
        if path.is_dir():
            to.mkdir(parents=True, exist_ok=True)
        elif path.stat().st_size > 1 << 20:
            to.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, to)
        else:
            to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, to)
    tmp.rename(dst)
    return dst


def write_texts(index: Path, folder: Path, shards: int) -> None:
    """One JSONL source per shard, a record per row (its docid at its position), ~650 bytes a document."""
    if (folder / "done").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    with mp.get_context("spawn").Pool(2) as pool:
        pool.starmap(_write_source, [(str(index / f"shard-{s:05d}"), str(folder / Path(SOURCE.format(s)).name), s)
                                     for s in range(shards)])
    (folder / "done").write_text("")


def _write_source(shard: str, out: str, seed: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from nagindex.index.derived import open_shard

    view = open_shard(shard)
    ids = view.docids.arrow()
    rng = np.random.default_rng(seed)
    phrases = [" ".join(rng.choice(WORDS, 100)) for _ in range(4096)]
    pick = rng.integers(0, len(phrases), len(ids))
    with open(out + ".tmp", "w", encoding="utf-8") as fh:
        for lo in range(0, len(ids), 65536):
            chunk = ids.slice(lo, 65536).to_pylist()
            fh.write("".join(f'{{"docid": {json.dumps(d)}, "doc": "{phrases[p]} {lo + i}"}}\n'
                             for i, (d, p) in enumerate(zip(chunk, pick[lo:lo + 65536].tolist()))))
    os.replace(out + ".tmp", out)


# ---------------------------------------------------------------- steps (a subprocess each)
def child(spec: dict[str, Any]) -> None:
    step = spec["step"]
    out: dict[str, Any]
    if step == "reattach":
        from nagindex.ingest.relocate import reattach_sources

        _mark("ready")
        _mark("run0")
        t = time.perf_counter()
        done = reattach_sources(spec["index"], {"/data/synthetic": spec["texts"]})
        out = {"seconds": time.perf_counter() - t, "documents": sum(r.documents for r in done)}
    elif step == "read":
        _mark("ready")
        _mark("run0")
        t, size = time.perf_counter(), 0
        for path in sorted(Path(spec["texts"]).glob("*.jsonl")):
            with open(path, "rb") as fh:
                while chunk := fh.read(16 << 20):
                    size += len(chunk)
        out = {"seconds": time.perf_counter() - t, "gb": size / 1e9}
    elif step == "query":
        import ray

        from nagindex.query.request import TargetRequest
        from nagindex.query.run import query

        targets = [TargetRequest("features", t, label=f"t{i}") for i, t in enumerate(spec["targets"])]
        if spec["ray"]:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        _mark("ready")
        _mark("run0")
        t = time.perf_counter()
        res = query(targets, spec["index"], out=spec["out"], ray_address="local" if spec["ray"] else None,
                    **spec["query"])
        out = {"seconds": time.perf_counter() - t, "rows": len(res), "tokens": res.tokens}
        _mark("end")
        if spec["ray"]:
            ray.shutdown()
    elif step == "training":
        from nagindex.export.training import write_training

        shutil.rmtree(spec["out"], ignore_errors=True)
        _mark("ready")
        _mark("run0")
        t = time.perf_counter()
        res = write_training(spec["selection"], spec["out"], index_dir=spec["index"], format=spec["format"],
                             shard_size=spec["shard_size"], workers=spec["workers"])
        out = {"seconds": time.perf_counter() - t, "documents": res.documents, "bytes": res.bytes,
               "tasks": len({part["name"].split("-")[1] for part in res.parts})}
    elif step == "clusters":
        from nagindex.index.clusters import CLUSTER_INFO, build_clusters

        (Path(spec["index"]) / CLUSTER_INFO).unlink(missing_ok=True)  # a whole pass, not an update
        _mark("ready")
        _mark("run0")
        t = time.perf_counter()
        res = build_clusters(spec["index"], workers=spec["workers"])
        out = {"seconds": time.perf_counter() - t, "clusters": res.clusters, "documents": res.rows, "pairs": res.pairs}
    else:
        raise SystemExit(f"unknown step {step}")
    _mark("end")
    print("@result " + json.dumps(out), flush=True)


def _mark(name: str) -> None:
    print(f"@mark {name}", flush=True)


def run(work: Path, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    log(f"{name} ...")
    res = bench_scale.run_child(work, name, spec, script=__file__)
    mem = res["memory"]["queries"]
    log(f"  {res['seconds']:.1f} s; peak anon: coordinator {mem['driver']:.0f} MB, largest actor "
        f"{mem['max_actor']:.0f} MB, largest other process {mem['max_other']:.0f} MB")
    return res


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/nagscale")
    ap.add_argument("--docs", type=int, default=10_000_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="worker processes of write-training and clusters")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    build, work = bench_scale.index_args(args.workdir, args.docs, args.shards, args.procs)
    data = bench_scale.build(build, work)
    targets = [str(t) for t in data["targets"]]
    pool = work / "pool"
    loads = [load_average()]
    log(f"linking a writable copy of {data['eight']} ...")
    index = linked_copy(data["eight"], pool / "idx")
    log("writing the texts ...")
    write_texts(index, pool / "texts", args.shards)
    r: dict[str, Any] = {}
    if any(Path(s).parent == Path(SOURCE).parent for s in json.loads((index / "shard-00000/sources.json").read_text())):
        r["reattach"] = run(work, "reattach", {"step": "reattach", "index": str(index), "texts": str(pool / "texts")})
    r["read"] = run(work, "read", {"step": "read", "texts": str(pool / "texts")})
    for name, chosen, kw in (("1", targets[:1], {"fraction": 0.2}), ("8", targets, {"fraction": 0.2, "mode": "paper"})):
        for form, out in (("file", pool / f"sel-{name}.parquet"), ("parts", pool / f"sel-{name}")):
            r[f"{form}-{name}"] = run(work, f"{form}-{name}", {"step": "query", "index": str(index), "targets": chosen,
                                                             "query": kw, "out": str(out), "ray": True})
    for fmt in ("parquet", "megatron"):
        r[f"training-{fmt}"] = run(work, f"training-{fmt}", {
            "step": "training", "selection": str(pool / "sel-1"), "index": str(index), "format": fmt,
            "out": str(pool / f"train-{fmt}"), "workers": args.workers, "shard_size": "128MB"})
    for workers in (1, args.workers):
        r[f"clusters-{workers}"] = run(work, f"clusters-{workers}", {"step": "clusters", "index": str(index),
                                                                     "workers": workers})
    loads.append(load_average())
    r.update(loads=loads, date=time.strftime("%Y-%m-%d %H:%M"), machine=platform.node(), docs=args.docs,
             shards=args.shards, workers=args.workers)
    (pool / "results.json").write_text(json.dumps(r, indent=1))
    print(markdown(r))


def markdown(r: dict[str, Any]) -> str:
    """One row per step: time and peak anonymous memory (coordinator; largest worker: a shard actor, a Ray task
    or a spawned process), against its anchor measured in the same run (ratios: step / anchor)."""
    head = "| step | time | coordinator | largest worker | anchor | its time | its coordinator | ratio, time | ratio, coordinator |"
    rows = [head, "|---|---|---|---|---|---|---|---|---|"]

    def peak(name: str) -> tuple[float, float]:
        m = r[name]["memory"]["queries"]
        return m["driver"], max(m["max_actor"], m["max_other"])

    def row(label: str, name: str, anchor: str | None = None, anchor_label: str = "") -> None:
        sec, (coord, worker) = r[name]["seconds"], peak(name)
        cells = [label, f"{sec:,.1f} s", f"{coord:,.0f} MB", f"{worker:,.0f} MB" if worker else "-"]
        if anchor is None:
            cells += ["-"] * 5
        else:
            a_sec, (a_coord, _) = r[anchor]["seconds"], peak(anchor)
            cells += [anchor_label, f"{a_sec:,.1f} s", f"{a_coord:,.0f} MB", f"{sec / a_sec:.2f}x",
                      f"{coord / a_coord:.2f}x"]
        rows.append("| " + " | ".join(cells) + " |")

    read = r["read"]
    if "reattach" in r:
        a = r["reattach"]
        row(f"re-attach the texts ({a['documents']:,} records checked, {a['documents'] / a['seconds']:,.0f}/s)",
            "reattach", "read", f"reading the {read['gb']:.1f} GB of sources raw")
    for n, label in (("1", "1 target"), ("8", "paper mixture of 8")):
        q = r[f"parts-{n}"]
        row(f"query fraction 0.2, {label}, Ray, written by the shards ({q['rows']:,} rows)", f"parts-{n}",
            f"file-{n}", "the same query as one file")
    for fmt in ("parquet", "megatron"):
        t = r[f"training-{fmt}"]
        workers = min(r["workers"], t["tasks"])
        per = t["seconds"] * workers
        row(f"write-training {fmt}, {t['tasks']} tasks on {workers} workers: {t['documents']:,} docs, "
            f"{t['bytes'] / 1e6:,.0f} MB out; per worker {t['documents'] / per:,.0f} docs/s, "
            f"{t['bytes'] / 1e6 / per:,.1f} MB/s out", f"training-{fmt}", "read", "reading the sources raw")
    c = r[f"clusters-{r['workers']}"]
    row(f"clusters (multihash), {r['workers']} workers: {c['clusters']:,} clusters of {c['documents']:,} docs",
        f"clusters-{r['workers']}", "clusters-1", "one process")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
