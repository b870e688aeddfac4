"""Cross-shard dedup: the single-file reconcile (the anchor) against hash buckets, on 8 shards; one table.

Builds (once, under ``--workdir``) ``--shards`` shard folders holding ``--docs`` documents plus
``--append`` (1%) more: the files a reconcile reads written for real (``docids.off``/``docids.bin``
``doc-NNNNNNNNN``, ``positions.i64``, ``source_ids.u32``, ``sources.json``, ``index_info.json``), the
ones it never reads (codes, fingerprints, tokens) sparse files of the right size. ``--repeat`` of each
shard's rows repeat an id of another shard (earlier or later input, so both sides win somewhere). A shard's
``index_info.json`` first names its first rows only (the rest are rows committed, not derived: what an
append leaves), then all of them.

Each arm, with its own index root (data files hard-linked, its own ``index_info.json``): the first
reconcile of ``--docs`` rows, then the append's reconcile, each in a fresh subprocess. Arms:

- anchor: ``dedup.py`` as of commit ``cd09d59`` (one sorted hash file, everything in the driver),
  loaded from git;
- ``buckets=1``: today's code with one bucket (the same files as the anchor);
- ``buckets=B`` here, then on ``--workers`` local processes.

Time is wall-clock per reconcile; memory is the peak anonymous RSS (``RssAnon`` of /proc/<pid>/status,
sampled every 10 ms by this driver) of the step's process plus its worker processes, above its RssAnon
when the reconcile starts. Every arm must hide the same rows (their digest is compared).

    python tools/bench_dedup.py --docs 10000000 --shards 8 --workdir /tmp/bench_dedup
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from _table import ResultTable, load_average, log

ANCHOR_COMMIT = "cd09d59"
DATA_FILES = ["docids.off", "docids.bin", "positions.i64", "source_ids.u32", "sources.json"]
SPARSE = {"codes.u16": 1120, "fingerprints.u8": 512, "tokens.i64": 8}  # bytes per row (L=28, K=20)


def docid_bytes(numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, bytes) of ``doc-`` + 9 digits per number."""
    width = 13
    buf = np.empty((len(numbers), width), np.uint8)
    buf[:, :4] = np.frombuffer(b"doc-", np.uint8)
    for k in range(9):
        buf[:, 4 + k] = numbers // 10 ** (8 - k) % 10 + ord("0")
    return np.arange(0, width * len(numbers) + 1, width, dtype=np.int64), buf.ravel()


def build(work: Path, docs: int, extra: int, shards: int, repeat: float) -> None:
    """The shard folders under ``work/data`` (see the module docstring)."""
    rng = np.random.default_rng(0)
    per, more = docs // shards, extra // shards
    n = per + more
    for s in range(shards):
        folder = work / "data" / f"shard-{s:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        numbers = s * n + rng.permutation(n)
        copies = rng.random(n) < repeat
        other = (s + rng.integers(1, shards, int(copies.sum()))) % shards
        numbers[copies] = other * n + rng.integers(0, n, len(other))
        offsets, data = docid_bytes(numbers)
        offsets.astype("<i8").tofile(folder / "docids.off")
        data.tofile(folder / "docids.bin")
        np.arange(n, dtype="<i8").tofile(folder / "positions.i64")
        np.zeros(n, "<u4").tofile(folder / "source_ids.u32")
        (folder / "sources.json").write_text(json.dumps([f"/data/synthetic/part-{s:05d}.jsonl"]))
        for name, width in SPARSE.items():
            with open(folder / name, "wb") as fh:
                fh.truncate(width * n)
    (work / "data" / "layout.json").write_text(json.dumps({"per": per, "more": more, "shards": shards}))


def index_info(rows: int) -> dict[str, Any]:
    return {"rows": rows, "store_rows": rows, "derived_new_rows": rows, "nagindex_version": "0.1.0",
            "files": [*SPARSE, *DATA_FILES], "build_seconds": 0.0, "built_at": "2026-12-04T00:00:00Z",
            "manifest": {"backbone": "synthetic", "weights_sha256": None, "neuron_type": "fwd_up", "num_layers": 28,
                         "width": 6144, "top_k": 20, "max_length": 2048, "nagindex_version": "0.1.0",
                         "dtype": None, "text_template": None, "created_at": "2026-12-04T00:00:00Z"}}


def make_root(work: Path, arm: str) -> Path:
    """An index root for ``arm``: a catalog of the shards, each shard's data hard-linked, at its first rows."""
    layout = json.loads((work / "data" / "layout.json").read_text())
    root = work / arm
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    shards = []
    for s in range(layout["shards"]):
        name = f"shard-{s:05d}"
        (root / name).mkdir()
        for file in [*DATA_FILES, *SPARSE]:
            os.link(work / "data" / name / file, root / name / file)
        (root / name / "index_info.json").write_text(json.dumps(index_info(layout["per"])))
        shards.append({"name": name, "path": name})
    inputs = [{"key": f"/data/synthetic/part-{s:05d}.jsonl", "shard": s, "size": 0} for s in range(len(shards))]
    (root / "catalog.json").write_text(json.dumps({"version": 1, "identity": index_info(0)["manifest"],
                                                   "shards": shards, "inputs": inputs, "dedup": {}}))
    return root


def run_arm(work: Path, arm: str, step: str, buckets: int, workers: int) -> None:
    """The child: one reconcile of its root (``first``, or ``append`` after the shards' later rows are
    derived), announced on stdout for the driver's sampling, then a JSON line of its time and the hidden
    rows' digest. Each step is a fresh process, so memory freed by one does not hide the next one's."""
    from nagindex.index.catalog import load_catalog
    from nagindex.index.dedup import hidden_rows

    root = work / arm
    if arm == "anchor":
        sys.path.insert(0, str(work))  # imported by name: numba's cache finds its kernel's module again
        reconcile = importlib.import_module("anchor_dedup").reconcile
    else:
        from nagindex.index.dedup import reconcile as bucketed

        def reconcile(catalog: Any) -> int:
            return bucketed(catalog, buckets=buckets, workers=workers)

    layout = json.loads((work / "data" / "layout.json").read_text())
    if step == "append":
        for s in range(layout["shards"]):
            info = index_info(layout["per"] + layout["more"])
            (root / f"shard-{s:05d}" / "index_info.json").write_text(json.dumps(info))
    print("start", flush=True)
    started = time.perf_counter()
    hidden = reconcile(load_catalog(root))
    seconds = time.perf_counter() - started
    print("end", flush=True)
    catalog = load_catalog(root)
    digest = hashlib.sha256()
    for s in range(len(catalog.shards)):
        digest.update(hidden_rows(catalog, s).tobytes())
    print(json.dumps({"seconds": seconds, "hidden": hidden, "digest": digest.hexdigest()[:16]}), flush=True)


def _anon_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next((int(line.split()[1]) for line in fh if line.startswith("RssAnon:")), 0)
    except OSError:
        return 0


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    children.setdefault(int(fh.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except OSError:
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def measure(work: Path, arm: str, step: str, buckets: int, workers: int) -> dict[str, Any]:
    """Run one step of ``arm`` in a subprocess, sampling its tree's RssAnon; the peak above its RssAnon
    when the reconcile starts (imports done)."""
    import select

    proc = subprocess.Popen([sys.executable, __file__, "--workdir", str(work), "--arm",
                             f"{arm}:{step}:{buckets}:{workers}"], stdout=subprocess.PIPE, text=True)
    peak, base, running, result = 0, 0, False, None
    while True:
        ready, _, _ = select.select([proc.stdout], [], [], 0.01)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("start"):
                running, base = True, sum(_anon_kb(p) for p in _tree(proc.pid))
            elif line.startswith("end"):
                running = False
            elif line.startswith("{"):
                result = json.loads(line)
        if running:
            peak = max(peak, sum(_anon_kb(p) for p in _tree(proc.pid)) - base)
    if proc.wait() or result is None:
        raise SystemExit(f"arm {arm} {step} failed ({proc.returncode})")
    result["peak_mib"] = peak / 1024
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=10_000_000)
    ap.add_argument("--append", type=int, default=None, help="rows of the append (default 1%% of --docs)")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--repeat", type=float, default=0.05, help="share of each shard's rows that repeat an id")
    ap.add_argument("--buckets", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_dedup"))
    ap.add_argument("--arm", help=argparse.SUPPRESS)  # internal: name:step:buckets:workers
    args = ap.parse_args()
    if args.arm:
        arm, step, buckets, workers = args.arm.split(":")
        run_arm(args.workdir, arm, step, int(buckets), int(workers))
        return
    extra = args.docs // 100 if args.append is None else args.append
    work = args.workdir
    if not (work / "data" / "layout.json").is_file():
        log(f"building {args.docs + extra:,} docids over {args.shards} shards in {work}")
        build(work, args.docs, extra, args.shards, args.repeat)
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{ANCHOR_COMMIT}:nagindex/index/dedup.py"],
                            check=True, capture_output=True, text=True).stdout
    (work / "anchor_dedup.py").write_text(source)
    shutil.rmtree(work / "__pycache__", ignore_errors=True)  # numba's cache of an earlier copy
    arms = [("anchor", 1, 1), ("one", 1, 1), ("many", args.buckets, 1), ("many-procs", args.buckets, args.workers)]
    log(f"{platform.node()}: {os.cpu_count()} cores, load {load_average()}")
    measured = {}
    for arm, buckets, workers in arms:
        log(f"{arm}: buckets={buckets} workers={workers} (load {load_average()})")
        make_root(work, arm)
        measured[arm] = {step: measure(work, arm, step, buckets, workers) for step in ("first", "append")}
        log(f"  {measured[arm]}")
        shutil.rmtree(work / arm, ignore_errors=True)
    digests = {(m["first"]["digest"], m["append"]["digest"]) for m in measured.values()}
    if len(digests) != 1:
        raise SystemExit(f"arms hide different rows: {measured}")
    table = ResultTable("seconds; peak RssAnon")
    anchor = measured["anchor"]
    labels = {"anchor": f"anchor (dedup.py at {ANCHOR_COMMIT}: one sorted file, all in the driver)",
              "one": "buckets=1 (today's code, the single-file layout)",
              "many": f"buckets={args.buckets}, in-process",
              "many-procs": f"buckets={args.buckets}, {args.workers} processes"}
    for step, what in (("first", f"first reconcile, {args.docs:,} rows"), ("append", f"append of {extra:,} rows")):
        for arm, m in measured.items():
            got, base = m[step], anchor[step]
            ratio = f"{got['seconds'] / base['seconds']:.2f}x time" + (
                f", {got['peak_mib'] / base['peak_mib']:.2f}x memory" if base["peak_mib"] >= 1 else "")
            table.add(f"{what}: {labels[arm]}", f"{got['seconds']:.2f} s; {got['peak_mib']:,.0f} MiB", ratio)
    print(f"{args.docs:,} + {extra:,} docids over {args.shards} shards, {args.repeat:.0%} of rows repeat another "
          f"shard's id; hidden {anchor['first']['hidden']:,} then {anchor['append']['hidden']:,} (digests "
          f"{anchor['first']['digest']}, {anchor['append']['digest']}, "
          f"same in every arm); load {load_average()}\n")
    print(table.markdown())


if __name__ == "__main__":
    main()
