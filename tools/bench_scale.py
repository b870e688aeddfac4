"""Query at scale: one shard vs eight, in-process vs Ray, on millions of documents; one markdown table.

Builds (once, cached under ``--workdir`` keyed by the parameters) ``--docs`` synthetic documents
(L=28, K=20, width 6144, skewed like ``bench_query``'s generator: topics with Zipf-like neuron
preferences plus hub neurons; token counts 20..2000, lognormal; docids ``d000001234``-like, 1% of them
300-byte URLs) twice:

- ``eight/``: a sharded index of ``--shards`` shards, each written for real through
  ``IndexStore.append`` (windows of ``--window`` docs, one LMDB transaction each) and
  ``sync_derived``, by ``--procs`` processes, then the driver's ``finish_shards`` (identity check,
  cross-shard id reconcile). The shards' ``store.lmdb`` are then dropped to save disk (queries read only
  derived files); an empty ``store.lmdb/`` stays as a placeholder, because ``shard_specs`` lists
  only shards whose store folder exists (``--keep-stores`` keeps them).
- ``one/``: a one-folder index of the same documents in the same order, whose derived files are the
  shards' derived files concatenated (codes, tokens, positions, source ids, docids with rebased
  offsets, fingerprints, sources.json, index_info.json); no store (``open_shard`` falls back to
  ``index_info.json``).

Targets: ``reference feature`` files of ``--target-docs`` documents each, drawn from 8 different topic
mixtures (``bench_query.target_mixtures``), not in the pool.

Then, in the same run, each query in a fresh subprocess (so memory is per query), for (a) the one-shard
index, (b) the 8-shard index in-process and (c) the 8-shard index through a local Ray cluster
(``ray.init(address="local", num_cpus=2)`` once in the subprocess, then ``ray_address="local"``):

  Q1 ``k=1,000,000``, one target;  Q2 ``fraction=0.2``, one target;  Q3 the paper mixture of 8 targets
  at ``fraction=0.2``.

Each subprocess runs its query ``1 + --runs`` times: the first (fresh process: numba kernels loaded, Ray
actors started and their maps opened) is reported apart, the best later one is the query time. Ray
starts its actors at nice 15; they are reniced to ``--actor-nice`` (0, like the in-process runs) so that
both compete for a shared machine's cores on the same terms. Every mode must select the same rows in the
same order (a digest of the selection is compared). Peak anonymous memory is SAMPLED from this process
every 20 ms (``RssAnon`` of ``/proc/<pid>/status``: page cache and the memory-mapped index are not in it)
over the query runs, for the query process and, with Ray, summed over the shard actor processes
(``ray::ShardActor``) and over Ray's own processes (raylet, gcs, idle workers), which are all descendants
of the query subprocess. Shard-side rounds in-process are timed by wrapping ``ShardScan`` methods in the
subprocess (wall and process CPU seconds).

Also in the same run, in one subprocess on the one-shard index: the score round (``ShardScan.score``,
what every query's first round costs, 2 threads) as GB/s of ``codes.u16``, against this machine's
memory bandwidth (the best plain read: a 2 GB array summed by numpy on one core and by numba on all
cores, best of 3, and the codes summed through a populated map) and the page-cache read rate of the
codes through a fresh memory map; and the kernel alone
(``BlockScorer.sums`` on blocks of the memmap, ``numba.set_num_threads(1)``) in documents/s per core
for 1 and 8 targets.

Then a paper calculation for 1.25B documents on a Ray cluster, from the per-shard figures. The raw figures
go to ``<workdir>/<key>/results.json`` (and a timestamped copy); ``--report`` prints the table again.

    python tools/bench_scale.py                     # 10M docs: ~35 GB on disk, ~18 min build, ~10-15 min queries
    python tools/bench_scale.py --docs 200000       # a quick check
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import bench_query  # tools/ is on sys.path when run as a script
import numpy as np
from _table import ResultTable, load_average, log
from bench_query import draw_codes, sampling_tables, target_mixtures

# bench_query.draw_codes builds (compiles) a new numba kernel on every call; build it once per process
bench_query._draw_kernel = functools.lru_cache(maxsize=None)(bench_query._draw_kernel)

FORMAT_VERSION = 1  # bump when the generated data or the layout changes
PAPER_DOCS = 1_250_000_000
URL_EVERY = 100  # 1 document in 100 has a 300-byte URL docid
URL_BYTES = 300
TOKENS_MIN, TOKENS_MAX = 20, 2000
SAMPLE_S = 0.02
STORE_BYTES_PER_DOC = 1300  # a store.lmdb: codes, tokens, positions, docids and the id -> row tree
QUERIES = {  # name -> (label, query keywords, targets)
    "Q1": ("k=1M, 1 target", {"k": 1_000_000}, 1),
    "Q2": ("fraction 0.2, 1 target", {"fraction": 0.2}, 1),
    "Q3": ("fraction 0.2, paper mixture of 8 targets", {"fraction": 0.2, "mode": "paper"}, 8),
}
MODES = {"one": "(a) 1 shard, in-process", "eight": "(b) 8 shards, in-process", "ray": "(c) 8 shards, Ray actors"}
DERIVED = ("codes.u16", "tokens.i64", "positions.i64", "source_ids.u32", "docids.off", "docids.bin",
           "fingerprints.u8")
QUERY_FILES = ("codes.u16", "tokens.i64", "docids.off", "docids.bin", "positions.i64", "source_ids.u32")


# ---------------------------------------------------------------- synthetic documents
def docids(first: int, n: int) -> list[str]:
    """Short ids ``d<9 digits>`` unrelated to row order (``i * 2654435761 mod 10^9``, a bijection), and a
    ``URL_BYTES``-byte URL for one document in ``URL_EVERY`` (chosen by a hash of the row)."""
    i = np.arange(first, first + n, dtype=np.uint64)
    short = (i * np.uint64(2654435761)) % np.uint64(10**9)
    out = [f"d{x:09d}" for x in short.tolist()]
    url = ((i * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)) % np.uint64(URL_EVERY) == 0
    for j in np.flatnonzero(url).tolist():
        out[j] = url_id(first + j)
    return out


def url_id(i: int) -> str:
    head = f"https://www.site{(i * 7919) % 99991:05d}.example.org/{2020 + i % 6}/{i % 12 + 1:02d}/articles/"
    tail = f"-{i:010d}.html"
    slug = ("a-rather-long-article-title-made-of-many-words-" * 8)[:URL_BYTES - len(head) - len(tail)]
    return head + slug + tail


def token_counts(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.clip(rng.lognormal(6.0, 0.9, n), TOKENS_MIN, TOKENS_MAX).astype(np.int64)


def build_shard(path: str, shard: int, first: int, n: int, opts: dict[str, Any]) -> dict[str, Any]:
    """One shard, for real: ``IndexStore.append`` per window, then ``sync_derived``. Runs in a worker process."""
    import numba

    from nagindex.index.derived import sync_derived
    from nagindex.index.store import IndexStore

    numba.set_num_threads(1)  # --procs workers share the cores
    L, K, W = opts["layers"], opts["top_k"], opts["width"]
    tables = sampling_tables(opts["topics"], L, W, opts["seed"])
    rng = np.random.default_rng([opts["seed"], shard])
    manifest = {"backbone": "synthetic", "weights_sha256": None, "neuron_type": "fwd_up", "num_layers": L,
                "width": W, "top_k": K, "max_length": 2048}
    source = f"/data/synthetic/part-{shard:05d}.jsonl"
    shutil.rmtree(path, ignore_errors=True)  # a shard left by a killed build
    gen_s = append_s = 0.0
    with IndexStore.create(path, manifest) as store:
        for at in range(0, n, opts["window"]):
            m = min(opts["window"], n - at)
            t = time.perf_counter()
            codes = draw_codes(first + at, opts["seed"], rng.integers(0, opts["topics"], m), tables, K)
            ids, tokens = docids(first + at, m), token_counts(rng, m)
            t2 = time.perf_counter()
            store.append(codes, ids, tokens, source, np.arange(at, at + m))
            gen_s, append_s = gen_s + t2 - t, append_s + time.perf_counter() - t2
    t = time.perf_counter()
    sync_derived(path)
    return {"shard": shard, "docs": n, "generate": gen_s, "append": append_s, "derive": time.perf_counter() - t}


def build_eight(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from nagindex.index.catalog import new_catalog
    from nagindex.index.store import STORE_DIR
    from nagindex.ingest.sharded import finish_shards

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    bounds = np.linspace(0, args.docs, args.shards + 1).astype(int).tolist()
    opts = {k: getattr(args, k) for k in ("layers", "top_k", "width", "topics", "seed", "window")}
    jobs = [(str(root / f"shard-{s:05d}"), s, bounds[s], bounds[s + 1] - bounds[s], opts) for s in range(args.shards)]
    started = time.perf_counter()
    with mp.get_context("spawn").Pool(args.procs) as pool:
        runs = pool.starmap(build_shard, jobs, chunksize=1)
    wall = time.perf_counter() - started
    catalog = new_catalog(root, args.shards)
    catalog.inputs = [{"key": f"/data/synthetic/part-{s:05d}.jsonl", "shard": s, "size": 0} for s in range(args.shards)]
    t = time.perf_counter()
    hidden = finish_shards(catalog)
    reconcile = time.perf_counter() - t
    if hidden:
        raise SystemExit(f"{hidden} docids repeated across shards: the generator should make unique ids")
    store_bytes = sum(_du(root / f"shard-{s:05d}" / STORE_DIR) for s in range(args.shards))
    if not args.keep_stores:
        for s in range(args.shards):
            store = root / f"shard-{s:05d}" / STORE_DIR
            shutil.rmtree(store)
            store.mkdir()  # placeholder: shard_specs lists a shard only if its store folder exists
    return {"wall": round(wall, 1), "reconcile": round(reconcile, 1), "store_bytes": store_bytes,
            "generate": round(sum(r["generate"] for r in runs), 1), "append": round(sum(r["append"] for r in runs), 1),
            "derive": round(sum(r["derive"] for r in runs), 1)}


def _copy(src: Path, dst_fd: int, size: int) -> None:
    """The first ``size`` bytes of ``src`` appended to ``dst_fd`` in the kernel (``copy_file_range``)."""
    with open(src, "rb") as fh:
        done = 0
        while done < size:
            n = os.copy_file_range(fh.fileno(), dst_fd, min(size - done, 1 << 30))
            if n <= 0:
                raise OSError(f"{src}: short copy at {done} of {size} bytes")
            done += n


def build_one(root: Path, shard_dirs: list[Path]) -> dict[str, Any]:
    """A one-folder index of the shards' rows in shard order: their derived files concatenated."""
    from nagindex.index.derived import INFO_FILE

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.perf_counter()
    infos = [json.loads((d / INFO_FILE).read_text("utf-8")) for d in shard_dirs]
    manifest = infos[0]["manifest"]
    per_row = {"codes.u16": 2 * manifest["num_layers"] * manifest["top_k"], "tokens.i64": 8, "positions.i64": 8,
               "fingerprints.u8": 512}
    offsets = [np.fromfile(d / "docids.off", "<u8", count=info["rows"] + 1) for d, info in zip(shard_dirs, infos)]
    for name, width in per_row.items():
        with open(root / name, "wb") as out:
            for d, info in zip(shard_dirs, infos):
                _copy(d / name, out.fileno(), info["rows"] * width)
    with open(root / "docids.bin", "wb") as out:
        for d, off in zip(shard_dirs, offsets):
            _copy(d / "docids.bin", out.fileno(), int(off[-1]))
    sources: list[str] = []
    with open(root / "source_ids.u32", "wb") as ids_out, open(root / "docids.off", "wb") as off_out:
        off_out.write(np.zeros(1, "<u8").tobytes())
        base = 0
        for d, info, off in zip(shard_dirs, infos, offsets):
            ids = np.fromfile(d / "source_ids.u32", "<u4", count=info["rows"])
            ids_out.write((ids + np.uint32(len(sources))).astype("<u4").tobytes())
            sources += json.loads((d / "sources.json").read_text("utf-8"))
            off_out.write((off[1:] + np.uint64(base)).astype("<u8").tobytes())
            base += int(off[-1])
    (root / "sources.json").write_text(json.dumps(sources), "utf-8")
    rows = sum(i["rows"] for i in infos)
    tokens = int(sum(i["manifest"]["tokens"] for i in infos))
    info = {**infos[0], "rows": rows, "store_rows": rows, "derived_new_rows": rows,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "manifest": {**manifest, "rows": rows, "tokens": tokens},
            "concatenated_from": [str(d) for d in shard_dirs]}
    (root / INFO_FILE).write_text(json.dumps(info, indent=1), "utf-8")  # last: its rows are what readers trust
    return {"seconds": round(time.perf_counter() - started, 1)}


def write_targets(folder: Path, args: argparse.Namespace) -> list[Path]:
    from nagindex.ingest.interop import write_features

    tables = sampling_tables(args.topics, args.layers, args.width, args.seed)
    paths = []
    for i, (mix_topics, mix_w) in enumerate(target_mixtures(args.topics, 8, args.seed)):
        rng = np.random.default_rng(args.seed + 100 + i)
        topics = mix_topics[rng.choice(3, args.target_docs, p=mix_w)]
        codes = draw_codes(10**12 + i * 10**6, args.seed, topics, tables, args.top_k)  # not pool documents
        path = folder / f"target_{i}.jsonl"
        write_features(path, [f"target{i}-{j:05d}" for j in range(args.target_docs)], codes)
        paths.append(path)
    return paths


def build(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Both indexes and the targets (each reused when its ``.done`` marker is there)."""
    work.mkdir(parents=True, exist_ok=True)
    eight, one = work / "eight", work / "one"
    done_eight, done_one, done_targets = work / "eight.done", work / "one.done", work / "targets.done"
    if not done_targets.is_file():
        write_targets(work, args)
        done_targets.write_text("{}")
    stats: dict[str, Any] = {}
    if done_eight.is_file():
        log(f"reusing {eight}")
    else:
        done_one.unlink(missing_ok=True)
        need = args.docs * (2 * per_doc_bytes(args) + STORE_BYTES_PER_DOC) + 5e9  # the stores live until finish_shards
        free = shutil.disk_usage(work).free
        if free < need:
            raise SystemExit(f"{work}: {free / 1e9:.0f} GB free, the two indexes need about {need / 1e9:.0f} GB: "
                             "use a smaller --docs")
        log(f"building {args.shards} shards of {args.docs // args.shards:,} docs with {args.procs} processes ...")
        done_eight.write_text(json.dumps(build_eight(eight, args)))
    stats["eight"] = json.loads(done_eight.read_text())
    if done_one.is_file():
        log(f"reusing {one}")
    else:
        log("concatenating the shards' derived files into the one-shard index ...")
        done_one.write_text(json.dumps(build_one(one, [eight / f"shard-{s:05d}" for s in range(args.shards)])))
    stats["one"] = json.loads(done_one.read_text())
    return {"eight": eight, "one": one, "targets": [work / f"target_{i}.jsonl" for i in range(8)], "stats": stats}


def per_doc_bytes(args: argparse.Namespace) -> float:
    """Derived bytes per document: codes, tokens, positions, source id, docid offset and bytes, fingerprint."""
    return 2 * args.layers * args.top_k + 8 + 8 + 4 + 8 + 13 + 512


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def warm(folders: list[Path]) -> tuple[float, float]:
    """Read the files a query maps (all but fingerprints) once, so the queries find them in the page
    cache; (GB read, seconds)."""
    buf = bytearray(64 << 20)
    total, started = 0, time.perf_counter()
    for folder in folders:
        for name in QUERY_FILES:
            with open(folder / name, "rb", buffering=0) as fh:
                while n := fh.readinto(buf):
                    total += n
    return total / 1e9, time.perf_counter() - started


# ---------------------------------------------------------------- memory sampling
def _anon_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return 0


def _nice(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[16])
    except (OSError, IndexError, ValueError):
        return 0


def _renice(pid: int, nice: int) -> None:
    """Every thread of ``pid`` to ``nice`` (Linux niceness is per thread; new threads inherit their creator's)."""
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            if os.getpriority(os.PRIO_PROCESS, int(tid)) != nice:
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
    except OSError:
        pass


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


class AnonSampler(threading.Thread):
    """Every ``SAMPLE_S``: RssAnon (kB) of the root process, and summed over its descendants by kind:
    Ray shard actors (``ray::ShardActor``) and everything else below it (Ray's own processes)."""

    def __init__(self, root: int, actor_nice: int | None = None) -> None:
        super().__init__(daemon=True)
        self.root, self.renice = root, actor_nice
        self.samples: list[tuple[float, ...]] = []  # (t, root, actors, others, max actor, max other)
        self.seen: dict[int, float] = {}  # descendant pid -> its start time (to clean up by id)
        self.actor_pids: set[int] = set()
        self.actor_nice: set[int] = set()
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def run(self) -> None:
        import psutil

        kinds: dict[int, str] = {}
        last_scan = 0.0
        while not self._halt.is_set():
            now = time.perf_counter()
            if now - last_scan > 0.2:
                last_scan = now
                try:
                    children = psutil.Process(self.root).children(recursive=True)
                except psutil.NoSuchProcess:
                    children = []
                kinds = {}
                for child in children:
                    cmd = _cmdline(child.pid)
                    kinds[child.pid] = "actor" if cmd.startswith("ray::ShardActor") else "other"
                    if child.pid not in self.seen:
                        try:
                            self.seen[child.pid] = child.create_time()
                        except psutil.NoSuchProcess:
                            pass
                    if kinds[child.pid] == "actor":
                        if child.pid not in self.actor_pids:
                            self.actor_nice.add(_nice(child.pid))  # as Ray started it
                        self.actor_pids.add(child.pid)
                        if self.renice is not None:
                            _renice(child.pid, self.renice)
            root = _anon_kb(self.root)
            if root is None:
                break
            actors = others = top = top_other = 0
            for pid, kind in kinds.items():
                kb = _anon_kb(pid) or 0
                if kind == "actor":
                    actors, top = actors + kb, max(top, kb)
                else:
                    others, top_other = others + kb, max(top_other, kb)
            self.samples.append((now, root, actors, others, top, top_other))
            time.sleep(SAMPLE_S)

    def peak(self, t0: float, t1: float) -> dict[str, float]:
        """Peaks (MB) over samples in ``[t0, t1)``: each column's own maximum."""
        rows = [s for s in self.samples if t0 <= s[0] < t1] or self.samples[-1:]
        cols = np.array([s[1:] for s in rows], dtype=np.int64) if rows else np.zeros((1, 5), np.int64)
        top = cols.max(axis=0) / 1024
        return {"driver": float(top[0]), "actors": float(top[1]), "ray_other": float(top[2]),
                "max_actor": float(top[3]), "max_other": float(top[4])}


def run_child(work: Path, name: str, spec: dict[str, Any], actor_nice: int | None = None,
              script: str = __file__) -> dict[str, Any]:
    """``script`` (this one by default) as a fresh subprocess (``--child``), sampled; its result with phase
    marks and memory. The child prints ``@mark <name>`` lines and one ``@result <json>``."""
    import psutil

    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    cmd = [sys.executable, str(Path(script).resolve()), "--child", json.dumps(spec)]
    marks: dict[str, float] = {}
    result: Any = None
    with open(logs / f"{name}.log", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        sampler = AnonSampler(proc.pid, actor_nice)
        sampler.start()
        for line in proc.stdout:
            if line.startswith("@mark "):
                marks[line.split()[1]] = time.perf_counter()
            elif line.startswith("@result "):
                result = json.loads(line[8:])
        rc = proc.wait()
        sampler.stop()
    time.sleep(0.5)
    for pid, created in sampler.seen.items():  # anything it started that outlived it (Ray's processes)
        try:
            p = psutil.Process(pid)
            if p.create_time() == created:
                log(f"  {name}: process {pid} ({_cmdline(pid)[:60]}) outlived the query subprocess: ending it")
                p.terminate()
        except psutil.NoSuchProcess:
            pass
    if rc or result is None:
        tail = (logs / f"{name}.log").read_text()[-3000:]
        raise SystemExit(f"child {name} failed (exit {rc}); its log {logs / f'{name}.log'} ends:\n{tail}")
    result["marks"] = marks
    result["memory"] = {}
    if "ready" in marks:
        runs = sorted(k for k in marks if k.startswith("run"))
        end = marks.get("end", time.perf_counter())
        result["memory"]["ready"] = sampler.peak(marks["ready"] - 0.1, marks["ready"] + 0.1)
        result["memory"]["first"] = sampler.peak(marks[runs[0]], marks[runs[1]] if len(runs) > 1 else end)
        result["memory"]["queries"] = sampler.peak(marks[runs[0]], end)
        result["memory"]["later"] = sampler.peak(marks[runs[1]], end) if len(runs) > 1 else result["memory"]["first"]
    result["actor_pids"] = sorted(sampler.actor_pids)
    result["actor_nice"] = sorted(sampler.actor_nice)
    return result


# ---------------------------------------------------------------- subprocesses
def _mark(name: str) -> None:
    print(f"@mark {name}", flush=True)


def child(spec: dict[str, Any]) -> None:
    if spec["kind"] == "query":
        out = child_query(spec)
    else:
        out = child_micro(spec)
    print("@result " + json.dumps(out), flush=True)


def _instrument(acc: dict[str, list[float]]) -> None:
    """Wrap the shard-side rounds of ``ShardScan`` to add up their wall and process-CPU seconds."""
    from nagindex.query.scan import ShardScan

    def wrap(name: str) -> None:
        orig = getattr(ShardScan, name)

        def timed(self: Any, *a: Any, **kw: Any) -> Any:
            w, c = time.perf_counter(), time.process_time()
            try:
                return orig(self, *a, **kw)
            finally:
                got = acc.setdefault(name, [0.0, 0.0])
                got[0] += time.perf_counter() - w
                got[1] += time.process_time() - c

        setattr(ShardScan, name, timed)

    for name in ("score", "histogram", "candidates", "fetch"):
        wrap(name)


def child_query(spec: dict[str, Any]) -> dict[str, Any]:
    import gc

    import numba  # noqa: F401  what every query loads: counted in the memory "after imports"
    import pyarrow.compute  # noqa: F401

    from nagindex.query.request import TargetRequest
    from nagindex.query.run import query

    targets = [TargetRequest("features", t, label=f"t{i}") for i, t in enumerate(spec["targets"])]
    rounds: dict[str, list[float]] = {}
    if spec["ray"]:
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        _instrument(rounds)
    _mark("ready")
    runs = []
    for r in range(1 + spec["runs"]):
        rounds.clear()
        gc.collect()
        _mark(f"run{r}")
        wall, cpu = time.perf_counter(), time.process_time()
        res = query(targets, spec["index"], ray_address="local" if spec["ray"] else None, **spec["query"])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        runs.append({"seconds": wall, "cpu": cpu, "rows": len(res), "tokens": res.tokens, "pool_docs": res.pool_docs,
                     "pool_tokens": res.pool_tokens, "timings": res.timings,
                     "rounds": {k: list(v) for k, v in rounds.items()}})
        if r < spec["runs"]:
            del res
    _mark("end")
    digest = hashlib.sha1()  # the selection in order, to check that every mode selects the same rows
    ids, target = res.table.column("docid"), res.table.column("target") if "target" in res.table.column_names else None
    for lo in range(0, len(res), 100_000):
        digest.update("\n".join(ids.slice(lo, 100_000).to_pylist()).encode())
        if target is not None:
            digest.update("\n".join(target.slice(lo, 100_000).to_pylist()).encode())
    if spec["ray"]:
        import ray

        ray.shutdown()
    return {"runs": runs, "digest": digest.hexdigest()}


def child_micro(spec: dict[str, Any]) -> dict[str, Any]:
    """Score round, memory bandwidth, page-cache read and kernel docs/s per core on the one-shard index."""
    import numba
    from numba import njit, prange

    from nagindex.index.derived import open_shard
    from nagindex.query.profile import count_profile
    from nagindex.query.request import TargetRequest
    from nagindex.query.run import feature_codes
    from nagindex.query.scan import ScorePlan, ShardScan
    from nagindex.query.score import BLOCK_ROWS, BlockScorer

    @njit(parallel=True, nogil=True)
    def psum(a):  # pragma: no cover - compiled
        s = np.uint64(0)
        for i in prange(a.shape[0]):
            s += a[i]
        return s

    out: dict[str, Any] = {"threads": numba.get_num_threads()}
    view = open_shard(spec["index"])
    manifest, n = view.manifest, len(view)
    codes_bytes = view.codes.nbytes
    profiles = np.stack([count_profile(feature_codes(TargetRequest("features", t), manifest), manifest["width"])
                         for t in spec["targets"]])
    layers = tuple(range(manifest["num_layers"]))
    for p in (1, 8):  # load the kernels (numba disk cache) before any clock
        BlockScorer(view.codes.shape, profiles[:p]).sums(np.asarray(view.codes[:4096]))
    ro = np.zeros(16, np.uint64)
    ro.flags.writeable = False  # a read-only map is its own numba type: compile both before any clock
    psum(np.zeros(16, np.uint64)), psum(ro)

    def best(fn: Any, repeats: int = 3) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    # score round as a query runs it: a fresh ShardScan (fresh maps: page faults included), best of 2
    def fresh_score(p: int) -> None:
        scan = ShardScan(spec["index"])
        scan.score(ScorePlan(profiles[:p], layers))
        scan.close()

    for r in range(2):  # interleaved, best of each: the 8-target kernel suffers most from a busy neighbour
        for p in (1, 8):
            t = time.perf_counter()
            fresh_score(p)
            out[f"score_fresh_{p}"] = min(out.get(f"score_fresh_{p}", math.inf), time.perf_counter() - t)
    # the same scan again on a ShardScan whose maps are populated (a warm Ray actor's second query)
    scan = ShardScan(spec["index"])
    scan.score(ScorePlan(profiles[:1], layers))
    out["score_mapped_1"] = best(lambda: scan.score(ScorePlan(profiles[:1], layers)), 2)
    scan.close()
    # kernel alone over the memmap, all threads
    codes = view.codes
    scorer = BlockScorer(codes.shape, profiles[:1])

    def kernel_pass(rows: int) -> None:
        for lo in range(0, rows, BLOCK_ROWS):
            scorer.sums(codes[lo:lo + BLOCK_ROWS])

    kernel_pass(n)  # populate this process's map of the codes
    out["kernel_all_threads"] = best(lambda: kernel_pass(n), 2)
    # page-cache read of the codes: a fresh map (faults) and the same map again
    words = [np.memmap(Path(spec["index"]) / "codes.u16", dtype="<u8", mode="r")]
    t = time.perf_counter()
    psum(words[0])
    out["mmap_fresh"] = time.perf_counter() - t
    out["mmap_mapped"] = best(lambda: psum(words[0]), 2)
    words.clear()
    # memory bandwidth: 2 GB array in anonymous memory
    words.append(np.ones(int(spec["bandwidth_gb"] * 1e9) // 8, dtype=np.uint64))
    out["bw_bytes"] = words[0].nbytes
    out["bw_numpy"] = best(lambda: words[0].sum())
    out["bw_numba"] = best(lambda: psum(words[0]))
    words.clear()
    # kernel docs/s per core: one thread, blocks of the (already mapped) memmap
    numba.set_num_threads(1)
    rows = min(n, spec["kernel_docs"])
    scorers = {p: BlockScorer(codes.shape, profiles[:p]) for p in (1, 8)}
    for r in range(5):  # interleaved rounds, best of each
        for p, scorer in scorers.items():
            t = time.perf_counter()
            kernel_pass(rows)
            out[f"kernel1_{p}"] = min(out.get(f"kernel1_{p}", math.inf), time.perf_counter() - t)
    out.update(rows=rows, docs=n, codes_bytes=codes_bytes)
    return out


# ---------------------------------------------------------------- report
def mb(x: float) -> str:
    return f"{x:,.0f} MB"


def index_args(workdir: str = "/tmp/nagscale", docs: int = 10_000_000, shards: int = 8,
               procs: int = 2) -> tuple[argparse.Namespace, Path]:
    """The default build's parameters for ``docs`` and ``shards`` and its cache folder: how the benchmarks
    that share this index (``bench_parts``, ``bench_pool``) find it."""
    args = argparse.Namespace(docs=docs, shards=shards, layers=28, top_k=20, width=6144, topics=50, target_docs=200,
                              seed=0, window=16384, procs=procs, keep_stores=False)
    return args, work_dir(workdir, args)


def work_dir(workdir: str, args: argparse.Namespace) -> Path:
    return Path(workdir) / (f"n{args.docs}_S{args.shards}_L{args.layers}_K{args.top_k}_w{args.width}"
                            f"_t{args.topics}_T{args.target_docs}_s{args.seed}_v{FORMAT_VERSION}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/nagscale", help="cache folder for the built indexes")
    ap.add_argument("--docs", type=int, default=10_000_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--width", type=int, default=6144)
    ap.add_argument("--topics", type=int, default=50)
    ap.add_argument("--target-docs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window", type=int, default=16384, help="documents per store.append (one LMDB transaction)")
    ap.add_argument("--procs", type=int, default=2, help="processes writing shards")
    ap.add_argument("--keep-stores", action="store_true", help="keep the shards' store.lmdb (about +1.2 KB/doc)")
    ap.add_argument("--runs", type=int, default=2, help="timed queries per subprocess after its first one")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--actor-nice", type=int, default=0,
                    help="renice Ray's shard actors (started at nice 15) to this, as the in-process queries run; "
                         "-1: leave them as Ray starts them")
    ap.add_argument("--bandwidth-gb", type=float, default=2.0)
    ap.add_argument("--kernel-docs", type=int, default=1_000_000, help="rows of the per-core kernel figure")
    ap.add_argument("--node-cores", type=int, default=16, help="paper calculation: cores per node (ASSUMED)")
    ap.add_argument("--node-ram-gb", type=float, default=128, help="paper calculation: RAM per node (ASSUMED)")
    ap.add_argument("--cache-share", type=float, default=0.75,
                    help="paper calculation: share of a node's RAM the page cache may give the index (ASSUMED)")
    ap.add_argument("--clean", action="store_true", help="delete the built indexes at the end")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--report", metavar="RESULTS_JSON", help="print the table again from a run's results.json")
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        results = {tuple(k.split("|")): v for k, v in saved["results"].items()}
        report(argparse.Namespace(**saved["args"]), {"stats": saved["stats"]}, saved["micro"], results,
               saved["loads"], saved["build_s"], *saved["warm"])
        return

    work = work_dir(args.workdir, args)
    loads = [load_average()]
    started = time.perf_counter()
    data = build(args, work)
    build_s = time.perf_counter() - started
    targets = [str(t) for t in data["targets"]]
    shard_dirs = [data["eight"] / f"shard-{s:05d}" for s in range(args.shards)]

    # (a) the one-shard index: micro figures, then its queries; (b), (c) the 8-shard index
    log("warming the one-shard index ...")
    gb, sec = warm([data["one"]])
    log(f"  read {gb:.1f} GB in {sec:.1f} s")
    log("scan rate, memory bandwidth, kernel per core ...")
    micro = run_child(work, "micro", {"kind": "micro", "index": str(data["one"]), "targets": targets,
                                       "bandwidth_gb": args.bandwidth_gb, "kernel_docs": args.kernel_docs})
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for mode in ("one", "eight", "ray"):
        if mode == "ray" and args.skip_ray:
            continue
        if mode == "eight":
            log("warming the 8-shard index ...")
            gb8, sec8 = warm(shard_dirs)
            log(f"  read {gb8:.1f} GB in {sec8:.1f} s")
        for q, (label, kw, ntargets) in QUERIES.items():
            log(f"{MODES[mode]}: {q} {label} ...")
            spec = {"kind": "query", "index": str(data["one"] if mode == "one" else data["eight"]),
                    "targets": targets[:ntargets], "query": kw, "ray": mode == "ray", "runs": args.runs}
            res = run_child(work, f"{mode}-{q}", spec, None if args.actor_nice < 0 else args.actor_nice)
            results[(mode, q)] = res
            best_s = min(r["seconds"] for r in res["runs"][1:])
            m = res["memory"]["queries"]
            log(f"  first {res['runs'][0]['seconds']:.2f} s, best later {best_s:.2f} s; {res['runs'][-1]['rows']:,} rows;"
                f" peak anon {m['driver']:.0f} MB" + (f" + actors {m['actors']:.0f} MB" if mode == "ray" else ""))
    loads.append(load_average())

    saved = {"args": {k: v for k, v in vars(args).items() if k not in ("child", "report")}, "micro": micro,
             "results": {f"{mode}|{q}": r for (mode, q), r in results.items()}, "loads": loads, "build_s": build_s,
             "warm": [gb, sec], "stats": data["stats"], "date": time.strftime("%Y-%m-%d %H:%M")}
    for name in (f"results-{time.strftime('%Y%m%d-%H%M%S')}.json", "results.json"):
        (work / name).write_text(json.dumps(saved, indent=1))
    report(args, data, micro, results, loads, build_s, gb, sec)
    sizes = {name: _du(data[name]) for name in ("one", "eight")}
    log(f"indexes left in {work}: one-shard {sizes['one'] / 1e9:.1f} GB, 8-shard {sizes['eight'] / 1e9:.1f} GB")
    if args.clean:
        shutil.rmtree(work)
        log(f"removed {work}")


def report(args: argparse.Namespace, data: dict[str, Any], micro: dict[str, Any],
           results: dict[tuple[str, str], dict[str, Any]], loads: list[str], build_s: float, warm_gb: float,
           warm_s: float) -> None:
    n = micro["docs"]
    table = ResultTable("value")
    add = table.add
    best = {k: min(r["seconds"] for r in v["runs"][1:]) for k, v in results.items()}
    first = {k: v["runs"][0]["seconds"] for k, v in results.items()}
    have_ray = not args.skip_ray

    def detail(mode: str, q: str) -> str:
        run = min(results[(mode, q)]["runs"][1:], key=lambda r: r["seconds"])
        rounds = ", ".join(f"{k} {v[0]:.2f}" for k, v in run["rounds"].items())
        return f"stages {run['timings']}; shard rounds (s): {rounds}"

    for q, (label, _, ntargets) in QUERIES.items():
        one, eight = best[("one", q)], best[("eight", q)]
        rows = results[("one", q)]["runs"][-1]["rows"]
        same = {m: results[(m, q)]["digest"] == results[("one", q)]["digest"] for m in MODES if (m, q) in results}
        add(f"{q} {label}: {MODES['one']} ({rows:,} docs selected; first query in a fresh process "
            f"{first[('one', q)]:.2f} s; {detail('one', q)})", f"{one:.2f} s", "1.00x")
        add(f"{q} {MODES['eight']} (first {first[('eight', q)]:.2f} s; same selection as (a): "
            f"{'yes' if same['eight'] else 'NO'}; {detail('eight', q)})", f"{eight:.2f} s", f"{eight / one:.2f}x (a)",
            "<= 1.2x (a)", eight / one <= 1.2)
        if have_ray:
            ray_s = best[("ray", q)]
            nice = ",".join(map(str, results[("ray", q)].get("actor_nice", [])))
            add(f"{q} {MODES['ray']}, after a warm-up query in the same process (first, with Ray's actor start-up: "
                f"{first[('ray', q)]:.2f} s; same selection: {'yes' if same['ray'] else 'NO'}; actors started at nice {nice}"
                f"{'' if args.actor_nice < 0 else f', reniced to {args.actor_nice}'})",
                f"{ray_s:.2f} s",
                f"{ray_s / one:.2f}x (a)", "<= 1.5x (a)", ray_s / one <= 1.5)
        goal_mb = {1: 512, 8: 1024}[ntargets] if "fraction" in QUERIES[q][1] else None
        for mode in ("one", "eight"):
            m = results[(mode, q)]["memory"]
            ok = None if goal_mb is None else m["queries"]["driver"] < goal_mb
            add(f"{q}   peak anon RSS of the query process, {MODES[mode]} (after imports: "
                f"{mb(m['ready']['driver'])})", mb(m["queries"]["driver"]), "",
                f"< {goal_mb:,} MB" if goal_mb else "", ok)
        if have_ray:
            m = results[("ray", q)]["memory"]
            actors = len(results[("ray", q)]["actor_pids"])
            add(f"{q}   peak anon RSS with Ray: driver (after imports and `ray.init`: {mb(m['ready']['driver'])}); "
                f"{actors} shard actors summed {mb(m['queries']['actors'])} (largest {mb(m['queries']['max_actor'])}); "
                f"Ray's own processes {mb(m['queries']['ray_other'])}", mb(m["queries"]["driver"]), "",
                f"< {goal_mb:,} MB (driver)" if goal_mb else "", None if goal_mb is None else
                m["queries"]["driver"] < goal_mb)
    for mode in ("one", "eight") + (("ray",) if have_ray else ()):
        r = best[(mode, "Q3")] / best[(mode, "Q2")]
        add(f"Q3 vs Q2: 8 targets vs 1 target at fraction 0.2, {MODES[mode]}", f"{r:.2f}x", "", "<= 1.5x", r <= 1.5)

    cb = micro["codes_bytes"]
    # the machine's read bandwidth: the best of the three plain reads (all far larger than the caches)
    bw = max(micro["bw_bytes"] / micro["bw_numba"], micro["bw_bytes"] / micro["bw_numpy"],
             cb / micro["mmap_mapped"]) / 1e9
    threads = micro["threads"]
    for p in (1, 8):
        s = micro[f"score_fresh_{p}"]
        add(f"score round (`ShardScan.score`: kernel, scratch sums, stats), {p} target(s), one process, {threads} "
            f"threads, fresh maps as in a query; {n:,} docs, {cb / 1e9:.1f} GB of codes: {s:.2f} s",
            f"{cb / s / 1e9:.2f} GB/s", f"{cb / s / 1e9 / bw:.2f} of memory bandwidth")
    s = micro["score_mapped_1"]
    add(f"score round, 1 target, maps already populated (a warm actor's next query): {s:.2f} s",
        f"{cb / s / 1e9:.2f} GB/s", f"{cb / s / 1e9 / bw:.2f} of memory bandwidth")
    s = micro["kernel_all_threads"]
    add(f"kernel alone over the memmap (`BlockScorer.sums` per 64K block), 1 target, {threads} threads: {s:.2f} s",
        f"{cb / s / 1e9:.2f} GB/s", f"{cb / s / 1e9 / bw:.2f} of memory bandwidth")
    add(f"memory bandwidth, the best plain read: a {micro['bw_bytes'] / 1e9:.0f} GB array summed (best of 3) by numpy "
        f"on 1 core {micro['bw_bytes'] / micro['bw_numpy'] / 1e9:.1f} GB/s, by numba on {threads} threads "
        f"{micro['bw_bytes'] / micro['bw_numba'] / 1e9:.1f} GB/s; codes.u16 summed by numba through a populated map "
        f"{cb / micro['mmap_mapped'] / 1e9:.1f} GB/s", f"{bw:.1f} GB/s", "1.00")
    add(f"page-cache read of codes.u16 through a fresh map (page faults included), numba sum, {threads} threads",
        f"{cb / micro['mmap_fresh'] / 1e9:.1f} GB/s", f"{cb / micro['mmap_fresh'] / 1e9 / bw:.2f} of memory bandwidth")
    rate = {p: micro["rows"] / micro[f"kernel1_{p}"] for p in (1, 8)}
    add(f"kernel docs/s per core, 1 target (1 thread, {micro['rows']:,} rows of the memmap, best of 5 interleaved; "
        f"L={args.layers}, K={args.top_k})", f"{rate[1] / 1e6:.2f}M docs/s", "", ">= 4.6M", rate[1] >= 4.6e6)
    add("kernel docs/s per core, 8 targets in one pass", f"{rate[8] / 1e6:.2f}M docs/s",
        f"{rate[1] / rate[8]:.2f}x the time of 1", "<= 1.5x", rate[1] / rate[8] <= 1.5)

    st = data["stats"]
    e8 = st["eight"]
    print(f"\n{n:,} docs, L={args.layers}, K={args.top_k}, width {args.width}, {args.topics} topics, token counts "
          f"{TOKENS_MIN}..{TOKENS_MAX}, 1% of docids {URL_BYTES}-byte URLs; targets {args.target_docs} docs each; "
          f"{platform.machine()} x {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
          f"load average before {loads[0]}, after {loads[1]}. Build ({'cached' if build_s < 60 else f'{build_s:.0f} s'}): "
          f"{args.shards} shards by {args.procs} processes in {e8['wall']} s (generate {e8['generate']} s, "
          f"store.append {e8['append']} s, sync_derived {e8['derive']} s, summed over shards), finish_shards "
          f"{e8['reconcile']} s, one-shard concatenation {st['one']['seconds']} s; warm-up read of the one-shard "
          f"index {warm_gb:.1f} GB in {warm_s:.1f} s. Peak anon RSS sampled every {SAMPLE_S * 1000:.0f} ms "
          f"(RssAnon, /proc/<pid>/status) over the query runs.\n")
    print(table.markdown())
    paper(args, micro, results, best, have_ray)


def paper(args: argparse.Namespace, micro: dict[str, Any], results: dict[tuple[str, str], dict[str, Any]],
          best: dict[tuple[str, str], float], have_ray: bool) -> None:
    """1.25B documents on a Ray cluster, from the per-shard figures measured above."""
    n = micro["docs"]
    per_doc = micro["codes_bytes"] / n + 8 + 8 + 13  # codes, tokens, docid offset and bytes: what a query reads
    cache = args.node_ram_gb * 1e9 * args.cache_share
    docs_node_max = cache / per_doc
    nodes = math.ceil(PAPER_DOCS / docs_node_max)
    shards = nodes * args.node_cores
    per_shard = PAPER_DOCS / shards
    lines = [(f"\n**1.25B documents on paper** (from the figures above; ASSUMED: nodes of {args.node_cores} cores "
              f"and {args.node_ram_gb:.0f} GB RAM, {args.cache_share:.0%} of it page cache for the index, which must "
              f"fit there (codes, tokens, docids: {per_doc:,.0f} B/doc; fingerprints only for `--approx`); one shard "
              "actor per core, each scanning on one core as fast as a core here; the coordinator's per-row work "
              "and memory as here):\n"),
             (f"- {nodes} nodes x {args.node_cores} shards = {shards} shards of {per_shard / 1e6:.1f}M docs "
              f"({per_shard * per_doc / 1e9:.1f} GB each, {docs_node_max / 1e6:.0f}M docs per node at most)."),
             "", ("| query | shard side (all shards in parallel) | coordinator | total | coordinator memory | "
                  "memory per shard actor |"), "|---|---|---|---|---|---|"]
    for q, (label, kw, ntargets) in QUERIES.items():
        run = min(results[("eight", q)]["runs"][1:], key=lambda r: r["seconds"])
        rounds = run["rounds"]
        rows = run["rows"]
        sel_paper = PAPER_DOCS * kw["fraction"] if "fraction" in kw else kw["k"]
        # core-seconds of the shard-side rounds here: the scans (score, histograms) go with the shard's
        # documents, candidates and fetch with the rows it returns (selected / shards at 1.25B)
        scan_cpu = sum(rounds.get(k, [0, 0])[1] for k in ("score", "histogram"))
        rows_cpu = sum(rounds.get(k, [0, 0])[1] for k in ("candidates", "fetch"))
        t_shard = scan_cpu / n * per_shard + rows_cpu / rows * sel_paper / shards
        coord = max(run["seconds"] - sum(v[0] for v in rounds.values()), 0.0)  # wall outside the shard calls
        t_coord = coord / rows * sel_paper
        mem = results[("eight", q)]["memory"]
        per_row = max(mem["queries"]["driver"] - mem["ready"]["driver"], 0.0) * 1e6 / rows
        coord_mem = mem["ready"]["driver"] * 1e6 + per_row * sel_paper
        actor = ""
        if have_ray:
            rm = results[("ray", q)]["memory"]["queries"]
            actor = f"{rm['max_actor']:,.0f} MB here (largest of {args.shards} actors of {n / args.shards / 1e6:.2f}M docs)"
        lines.append(f"| {q} {label}: {sel_paper:,.0f} docs selected | {t_shard:,.1f} s (scan {scan_cpu / n * 1e6:.2f} "
                     f"core-us/doc; candidates + fetch {rows_cpu / rows * 1e6:.2f} core-us per selected doc) | "
                     f"{t_coord:,.1f} s ({coord / rows * 1e6:.2f} us per selected doc) | {t_shard + t_coord:,.1f} s | "
                     f"{coord_mem / 1e9:,.1f} GB ({per_row:,.0f} B per selected doc) | {actor} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
