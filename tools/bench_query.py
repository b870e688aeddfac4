"""Query speed: nagindex vs the reference's per-target pandas path, in one run, one markdown table.

Builds (once, cached under ``--workdir`` keyed by the parameters) a synthetic pool in the
reference's feature format, skewed like real NAGs: ``--topics`` topics, each with its own
Zipf-like preference over the neurons of every layer, plus a global preference shared by
all documents (hub neurons); a document samples a topic and draws K distinct neurons per
layer. Writes ``features.parquet`` and ``features.jsonl`` (reference lines), ``payload.parquet``
(docid, token_num), target feature files (``--target-docs`` docs each, drawn from a mixture
of 3 topics, not in the pool), and imports the pool with ``nagindex import``.

Then times, in the same run:
  1. the whole ``nagindex query --target-features T --k 100K -o out.parquet`` CLI (subprocess,
     cold-ish and warm) and the in-process stages (target, profile, score, select, write);
  2. the reference's per-target path on the same documents: pandas reads the features (parquet,
     and JSONL on a prefix of ``--ref-jsonl-docs`` lines, scaled linearly: the full file as
     Python lists does not fit in memory here), an int64 (N, L*K) matrix, per-layer profile dict
     -> dense lookup, sum, sort by (distance, docid), token-quota prefix;
  3. 1, 4 and 8 profiles scored in one pass vs one;
  4. ``--approx`` at k = 1K and 10K: time and recall@k vs the exact query.

    python tools/bench_query.py                      # 1M docs, cache in /tmp/nagbench
    python tools/bench_query.py --docs 200000 --repeats 2
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _table import ResultTable, load_average, log, stage_seconds  # tools/ is on sys.path when run as a script

L_DEFAULT, K_DEFAULT, WIDTH_DEFAULT = 28, 20, 6144
TABLE_BITS = 12  # sampling tables: 4096 slots per (topic, layer), inverse-CDF quantised
CHUNK = 65536
FORMAT_VERSION = 1  # bump when the generated data changes


# ---------------------------------------------------------------- synthetic NAGs
def sampling_tables(topics: int, num_layers: int, width: int, seed: int) -> np.ndarray:
    """``(topics + 1, L, 4096)`` uint16: uniform slot -> neuron, Zipf-like per (topic, layer).

    Row ``topics`` is the global preference (hub neurons every document tends to activate).
    Neuron of rank r has weight ``1 / (r + 10)^1.1``; each (topic, layer) ranks the neurons
    by its own random permutation.
    """
    rng = np.random.default_rng(seed)
    weights = 1.0 / (np.arange(width) + 10.0) ** 1.1
    cdf = np.cumsum(weights) / weights.sum()
    slots = 1 << TABLE_BITS
    rank_of_slot = np.minimum(np.searchsorted(cdf, (np.arange(slots) + 0.5) / slots), width - 1)
    tables = np.empty((topics + 1, num_layers, slots), np.uint16)
    for t in range(topics + 1):
        for layer in range(num_layers):
            tables[t, layer] = rng.permutation(width).astype(np.uint16)[rank_of_slot]
    return tables


def _draw_kernel():
    from numba import njit, prange

    @njit(inline="always")
    def splitmix(x):  # pragma: no cover - compiled
        x = x + np.uint64(0x9E3779B97F4A7C15)
        z = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x, z ^ (z >> np.uint64(31))

    @njit(parallel=True)
    def draw(first, seed, topics, tables, global_per_1024, out):  # pragma: no cover - compiled
        n, num_layers, top_k = out.shape
        glob = tables.shape[0] - 1
        mask = np.uint64(tables.shape[2] - 1)
        for i in prange(n):
            s = np.uint64(seed) * np.uint64(0x100000001B3) + np.uint64(first + i)  # per-doc stream
            t = topics[i]
            for layer in range(num_layers):
                j = 0
                while j < top_k:  # K distinct neurons: redraw a repeat
                    s, r = splitmix(s)
                    src = glob if (r & np.uint64(1023)) < np.uint64(global_per_1024) else t
                    c = tables[src, layer, (r >> np.uint64(16)) & mask]
                    dup = False
                    for q in range(j):
                        if out[i, layer, q] == c:
                            dup = True
                            break
                    if not dup:
                        out[i, layer, j] = c
                        j += 1

    return draw


def draw_codes(first: int, seed: int, topics: np.ndarray, tables: np.ndarray, top_k: int,
               global_share: float = 0.3) -> np.ndarray:
    """``(len(topics), L, K)`` uint16 NAGs; deterministic per (seed, first + i)."""
    out = np.empty((len(topics), tables.shape[1], top_k), np.uint16)
    _draw_kernel()(first, seed, np.asarray(topics, np.int64), tables, int(global_share * 1024), out)
    return out


def docid(i: np.ndarray) -> list[str]:
    """20-character ids whose order is unrelated to the row order: ``cc<8 hex>-<9 digits>``."""
    h = (i.astype(np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
    return [f"cc{a:08x}-{b:09d}" for a, b in zip(h.tolist(), i.tolist())]


def target_mixtures(topics: int, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed + 1)
    return [(rng.choice(topics, 3, replace=False), np.array([0.6, 0.3, 0.1])) for _ in range(count)]


def build_data(args: argparse.Namespace, work: Path, log) -> dict:
    """Generate (or reuse) features, payload, targets and the index; return their paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nagindex.ingest.interop import write_feature_lines

    L, K, W = args.layers, args.top_k, args.width
    paths = {"features_parquet": work / "features.parquet", "features_jsonl": work / "features.jsonl",
             "payload": work / "payload.parquet", "index": work / "index",
             "targets": [work / f"target_{i}.jsonl" for i in range(8)]}
    done = work / "data.done"
    if done.is_file():
        log(f"reusing {work}")
        return {**paths, **json.loads(done.read_text())}
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tables = sampling_tables(args.topics, L, W, args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    schema = pa.schema([("docid", pa.string()),
                        ("fwd_up_feature", pa.struct([("layer_topk_value_index", pa.list_(pa.int64()))]))])
    token_nums = []
    with pq.ParquetWriter(paths["features_parquet"], schema) as writer, \
            open(paths["features_jsonl"], "w", encoding="utf-8", newline="\n") as jsonl:
        for first in range(0, args.docs, CHUNK):
            m = min(CHUNK, args.docs - first)
            codes = draw_codes(first, args.seed, rng.integers(0, args.topics, m), tables, K)
            ids = docid(np.arange(first, first + m))
            flat = pa.array(codes.reshape(-1).astype(np.int64))
            lists = pa.ListArray.from_arrays(pa.array(np.arange(0, (m + 1) * L * K, L * K, dtype=np.int32)), flat)
            feat = pa.StructArray.from_arrays([lists], names=["layer_topk_value_index"])
            writer.write_table(pa.table({"docid": pa.array(ids, pa.string()), "fwd_up_feature": feat}, schema=schema),
                               row_group_size=CHUNK)
            write_feature_lines(jsonl, ids, {"fwd_up": codes})
            token_nums.append(np.clip(rng.lognormal(6.0, 0.9, m), 1, 100_000).astype(np.int64))
            log(f"  generated {first + m:,} docs ({time.perf_counter() - started:.0f} s)")
    pq.write_table(pa.table({"docid": docid(np.arange(args.docs)), "token_num": np.concatenate(token_nums)}),
                   paths["payload"])
    gen_s = time.perf_counter() - started
    for i, (mix_topics, mix_w) in enumerate(target_mixtures(args.topics, 8, args.seed)):
        trng = np.random.default_rng(args.seed + 100 + i)
        topics = mix_topics[trng.choice(3, args.target_docs, p=mix_w)]
        first = 10**12 + i * 10**6  # own id range and random streams: target docs are not pool docs
        codes = draw_codes(first, args.seed, topics, tables, K)
        with open(paths["targets"][i], "w", encoding="utf-8", newline="\n") as fh:
            write_feature_lines(fh, [f"target{i}-{j:05d}" for j in range(args.target_docs)], {"fwd_up": codes})
    started = time.perf_counter()
    cmd = [nagindex_exe(), "import", str(paths["features_parquet"]), "--index", str(paths["index"]),
           "--num-layers", str(L), "--top-k", str(K), "--width", str(W), "--token-field", "token_num",
           "--payload", str(paths["payload"])]
    log("  " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    extra = {"generate_seconds": round(gen_s, 1), "import_seconds": round(time.perf_counter() - started, 1)}
    done.write_text(json.dumps(extra))
    return {**paths, **extra}


def nagindex_exe() -> str:
    exe = Path(sys.executable).parent / "nagindex"
    return str(exe) if exe.is_file() else shutil.which("nagindex") or "nagindex"


# ---------------------------------------------------------------- timing helpers
def best_of(fn, repeats: int):
    """(best seconds, result of the last call)."""
    times, result = [], None
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


# ---------------------------------------------------------------- 1. nagindex CLI and stages
def time_cli(data: dict, work: Path, k: str, runs: int = 3) -> tuple[float, float, str]:
    """The real CLI in fresh processes: (first run's wall, best later run's wall, that run's stage line)."""
    out = work / "cli_out.parquet"
    cmd = [nagindex_exe(), "query", "--index", str(data["index"]), "--target-features", str(data["targets"][0]),
           "--k", k, "-o", str(out)]
    walls, stages = [], []
    for _ in range(max(runs, 2)):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - start)
        stages.append(next((ln[6:] for ln in proc.stderr.splitlines() if ln.startswith("time: ")), ""))
    best = 1 + int(np.argmin(walls[1:]))
    return walls[0], walls[best], stages[best]


def import_profile(data: dict, work: Path) -> dict[str, float | bool]:
    """``python -X importtime`` of one real CLI query: heavy modules and whether torch was loaded."""
    cmd = [sys.executable, "-X", "importtime", "-m", "nagindex", "query", "--index", str(data["index"]),
           "--target-features", str(data["targets"][0]), "--k", "100K", "-o", str(work / "cli_imp.parquet")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    cumulative: dict[str, float] = {}
    total = 0.0
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _, cum, name = line[12:].split("|")
        cumulative[name.strip()] = max(cumulative.get(name.strip(), 0.0), int(cum) / 1e6)
        if not name[1:].startswith(" "):  # top-level import: no indentation beyond the one space
            total += int(cum) / 1e6
    return {"total": total, "numba": cumulative.get("numba", 0.0), "pyarrow": cumulative.get("pyarrow", 0.0),
            "faiss": cumulative.get("faiss", 0.0), "torch": "torch" in cumulative,
            "transformers": "transformers" in cumulative}


def inprocess(data: dict, work: Path, repeats: int, **kw) -> tuple[float, dict[str, float], object]:
    """Best total and best per-stage seconds of ``query()`` in this process (numba already loaded)."""
    from nagindex.query.request import parse_target
    from nagindex.query.run import query

    targets = kw.pop("targets", [data["targets"][0]])
    reqs = [parse_target(str(t), "features") for t in targets]
    best_total, stages, res = float("inf"), {}, None
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        res = query(reqs, data["index"], out=work / "inproc.parquet", **kw)
        best_total = min(best_total, time.perf_counter() - start)
        for name, sec in stage_seconds(res.timings).items():
            stages[name] = min(stages.get(name, float("inf")), sec)
    return best_total, stages, res


def target_profiles(data: dict, view) -> np.ndarray:
    from nagindex.query.profile import count_profile
    from nagindex.query.request import parse_target
    from nagindex.query.run import feature_codes

    return np.stack([count_profile(feature_codes(parse_target(str(t), "features"), view.manifest),
                                   view.manifest["width"]) for t in data["targets"]])


# ---------------------------------------------------------------- 2. the reference's path
def reference_path(features: Path, kind: str, payload: Path, target: Path, fraction: float,
                   num_layers: int, top_k: int, width: int,
                   nrows: int | None = None) -> tuple[dict[str, float], list[str]]:
    """The reference's per-target ranker (spec secs. 2-4, 6) in pandas/numpy; stage seconds and selected ids."""
    import pandas as pd

    sec, start = {}, time.perf_counter()
    if kind == "jsonl":
        df = pd.read_json(features, lines=True, nrows=nrows, dtype={"docid": str})
    else:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(features)
        groups = range(pf.num_row_groups) if nrows is None else range(-(-nrows // CHUNK))
        df = pf.read_row_groups(list(groups)).to_pandas()
        df = df if nrows is None else df.head(nrows)
    df = df.merge(pd.read_parquet(payload), on="docid", how="left")  # token_num from the payload
    sec["read"] = time.perf_counter() - start
    start = time.perf_counter()
    mat = np.array(df["fwd_up_feature"].map(lambda f: f["layer_topk_value_index"]).tolist(), dtype=np.int64)
    sec["matrix"] = time.perf_counter() - start
    start = time.perf_counter()
    tdf = pd.read_json(target, lines=True, dtype={"docid": str})
    tmat = np.array(tdf["fwd_up_feature"].map(lambda f: f["layer_topk_value_index"]).tolist(), dtype=np.int64)
    profile = []  # per layer {neuron: weight}, weights c / (|T| K)
    for layer in range(num_layers):
        neurons, counts = np.unique(tmat[:, layer * top_k:(layer + 1) * top_k], return_counts=True)
        profile.append(dict(zip(neurons.tolist(), (counts / counts.sum()).tolist())))
    sim = np.zeros(len(mat))
    for layer, weights in enumerate(profile):  # vectorised lookup of each doc's K neurons
        dense = np.zeros(width)
        dense[list(weights)] = list(weights.values())
        sim += dense[mat[:, layer * top_k:(layer + 1) * top_k]].sum(axis=1)
    df["nag_distance"] = 1.0 - sim / num_layers
    sec["kernel"] = time.perf_counter() - start
    start = time.perf_counter()
    ranked = df.sort_values(["nag_distance", "docid"], kind="mergesort")
    budget = int(ranked["token_num"].sum() * fraction)
    stop = int(np.searchsorted(ranked["token_num"].cumsum().to_numpy(), budget, side="right"))
    selected = ranked["docid"].iloc[:max(stop, 1)].tolist()
    sec["sort+quota"] = time.perf_counter() - start
    del df, mat, ranked
    gc.collect()
    return sec, selected


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/nagbench", help="cache folder for generated data and the index")
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--layers", type=int, default=L_DEFAULT)
    ap.add_argument("--top-k", type=int, default=K_DEFAULT)
    ap.add_argument("--width", type=int, default=WIDTH_DEFAULT)
    ap.add_argument("--topics", type=int, default=50)
    ap.add_argument("--target-docs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", default="100K", help="quota of the timed CLI query")
    ap.add_argument("--fraction", type=float, default=0.1, help="token quota of the reference path")
    ap.add_argument("--ref-jsonl-docs", type=int, default=100_000,
                    help="JSONL reference path on this many lines, scaled to --docs")
    ap.add_argument("--repeats", type=int, default=3, help="rounds per nagindex measurement (best kept)")
    ap.add_argument("--skip-reference", action="store_true")
    args = ap.parse_args()

    key = (f"n{args.docs}_L{args.layers}_K{args.top_k}_w{args.width}_t{args.topics}_T{args.target_docs}"
           f"_s{args.seed}_v{FORMAT_VERSION}")
    work = Path(args.workdir) / key
    loads = [load_average()]
    data = build_data(args, work, log)
    n = args.docs
    table = ResultTable("seconds")
    add = table.add

    # 1. whole CLI, then in-process stages
    log("1. CLI query")
    imports = import_profile(data, work)
    cold, warm, cli_stages = time_cli(data, work, args.k)
    k_n = int(float(args.k.rstrip("KMkm")) * {"K": 1e3, "M": 1e6}.get(args.k[-1].upper(), 1))
    from nagindex.index.sharded import open_index
    from nagindex.query.score import score_codes

    view = open_index(data["index"])
    profiles = target_profiles(data, view)
    score_codes(view.codes[:1000], profiles[:1]), score_codes(view.codes[:1000], profiles[:4])  # compile/load
    total, stages, res = inprocess(data, work, args.repeats, k=k_n)
    kernel, _ = best_of(lambda: score_codes(view.codes, profiles[:1]), args.repeats)
    import numba

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    kernel1, _ = best_of(lambda: score_codes(view.codes, profiles[:1]), args.repeats)
    numba.set_num_threads(threads)
    add(f"1a CLI `nagindex query --k {args.k}`, 1st run (fresh process)", cold)
    add(f"1b CLI, best of 2 later runs (its stages: {cli_stages})", warm, "1.00x", "<= 2 s", warm <= 2.0)
    seen = {m: "IMPORTED" if imports[m] else "not imported" for m in ("torch", "transformers")}
    add(f"1c all imports of one CLI query (`-X importtime`, lazy ones included): numba {imports['numba']:.2f} s, "
        f"pyarrow {imports['pyarrow']:.2f} s, faiss {imports['faiss']:.2f} s; torch {seen['torch']}, "
        f"transformers {seen['transformers']}", imports["total"], "", "no torch",
        not imports["torch"] and not imports["transformers"])
    add(f"1d in-process `query()` total (k={args.k})", total, f"{total / warm:.2f}x of 1b")
    for name in ("target", "profile", "score", "select", "write"):
        if name in stages:
            add(f"1e   stage {name}", stages[name])
    add(f"1f score kernel alone, {n:,} docs, 1 profile, {threads} threads", kernel,
        f"{kernel / (n / 1e6):.3f} s per 1M", "<= 0.25 s per 1M", kernel / (n / 1e6) <= 0.25)
    add("1g score kernel alone, 1 thread (per-core cost; two idle cores would take about half)", kernel1,
        f"{kernel1 / (n / 1e6):.3f} s per 1M")

    # 2. the reference's path
    if not args.skip_reference:
        log("2. reference path")
        _, frac_res = inprocess(data, work, 1, fraction=args.fraction)[1:]
        ours = set(view.docids.take(frac_res.rows))
        common = dict(payload=data["payload"], target=data["targets"][0], fraction=args.fraction,
                      num_layers=args.layers, top_k=args.top_k, width=args.width)
        ref_pq, sel_pq = reference_path(data["features_parquet"], "parquet", **common)
        ref_pq_total = sum(ref_pq.values())
        nj = min(args.ref_jsonl_docs, n)
        ref_js, _ = reference_path(data["features_jsonl"], "jsonl", nrows=nj, **common)
        ref_pq_part, _ = reference_path(data["features_parquet"], "parquet", nrows=nj, **common)
        scale = n / nj
        ref_js_total = sum(ref_js.values()) * scale
        same = len(ours & set(sel_pq)) / max(len(sel_pq), 1)
        detail = ", ".join(f"{k} {v:.1f}" for k, v in ref_pq.items())
        add(f"2a reference from parquet, {n:,} docs ({detail}); same selection as nagindex --fraction "
            f"{args.fraction}: {same:.2%} of its {len(sel_pq):,} docs", ref_pq_total,
            f"{ref_pq_total / warm:.1f}x 1b", ">= 20x", ref_pq_total / warm >= 20)
        detail = ", ".join(f"{k} {v * scale:.1f}" for k, v in ref_js.items())
        add(f"2b reference from JSONL: {nj:,} lines measured, x{scale:g} ({detail})", ref_js_total,
            f"{ref_js_total / warm:.1f}x 1b", ">= 50x", ref_js_total / warm >= 50)
        add(f"2c   check of the x{scale:g} scaling: parquet on {nj:,} docs x{scale:g}",
            sum(ref_pq_part.values()) * scale, f"{sum(ref_pq_part.values()) * scale / ref_pq_total:.2f}x of 2a")
        add("2d reference numpy kernel alone (profile dicts -> dense lookup, parquet run)", ref_pq["kernel"],
            f"{ref_pq['kernel'] / kernel:.1f}x 1f")

    # 3. several profiles in one pass
    log("3. profiles per pass")
    for nthreads in (threads, 1):
        numba.set_num_threads(nthreads)
        times = {p: float("inf") for p in (1, 4, 8)}
        for _ in range(args.repeats):  # interleaved rounds
            for p in times:
                times[p] = min(times[p], best_of(lambda: score_codes(view.codes, profiles[:p]), 1)[0])
        for p, sec in times.items():
            add(f"3{'abc'[[1, 4, 8].index(p)]} score kernel, {p} profile(s) in one pass, {nthreads} thread(s)", sec,
                f"{sec / times[1]:.2f}x of 1", "<= 1.5x" if p == 8 else "", (sec / times[1] <= 1.5) if p == 8 else None)
    numba.set_num_threads(threads)
    q1 = q8 = float("inf")
    for _ in range(args.repeats):  # interleaved with one target, so that both see the same machine load
        q1 = min(q1, inprocess(data, work, 1, k=k_n)[0])
        q8 = min(q8, inprocess(data, work, 1, k=k_n, targets=data["targets"])[0])
    add(f"3d in-process `query()`, 1 target, k={args.k} (interleaved with 3e)", q1)
    add(f"3e in-process `query()`, 8 targets (paper mixture, k={args.k} in all)", q8, f"{q8 / q1:.2f}x of 3d",
        "<= 1.5x", q8 / q1 <= 1.5)

    # 4. --approx
    log("4. approx")
    inprocess(data, work, 1, k=1000, approx=True)  # warm-up: `import faiss` and the first search are not timed
    for kk in (1000, 10000):
        exact_t, _, exact = inprocess(data, work, args.repeats, k=kk)
        approx_t, _, approx = inprocess(data, work, args.repeats, k=kk, approx=True)
        recall = len(np.intersect1d(exact.rows, approx.rows)) / kk
        add(f"4 k={kk:,}: exact `query()`", exact_t)
        add(f"4 k={kk:,}: `--approx` `query()` (recall@k {recall:.4f})", approx_t, f"{approx_t / exact_t:.2f}x exact",
            "recall >= 0.99", recall >= 0.99)

    loads.append(load_average())
    print(f"\n{n:,} docs, L={args.layers}, K={args.top_k}, width {args.width}, {args.topics} topics; target "
          f"{args.target_docs} docs; {platform.machine()} x {os.cpu_count()} cores; load average before "
          f"{loads[0]}, after {loads[1]}; data generated in {data['generate_seconds']} s, `nagindex import` "
          f"(parquet) {data['import_seconds']} s\n")
    print(table.markdown())


if __name__ == "__main__":
    main()
