"""Side files per shard: one streamed alignment (``query/sidefile.py``) against today's whole-file joins; one table.

A shard of N documents (docids ``doc-NNNNNNNNN``, shuffled) and a parquet side file naming 90% of them in
another order, 5% of its rows repeating an earlier id with another value (the first row wins) and 5%
naming documents the shard lacks, with a float quality column and a string group column (8 labels).
Each arm aligns the file to every shard row, in its own subprocess, so peaks are separate:

- anchor: what ``ShardScan`` does today (copied below from ``scan.py``): the whole file read
  (``read_keyed_values``), first row per id (``_first_per_id``), then an Arrow hash join per 1M-row
  block: inner join into the NaN scratch (``_join_quality``) or left outer join + sort + ``(none)``
  (``_groups``, here over all rows instead of per candidate table);
- new: ``DocidLookup(docids)`` (once per shard) and ``lookup.align(keyed_batches(file))``, the file
  streamed in ``BATCH_ROWS`` batches.

Time is wall-clock from the file name to the per-row column; memory is the peak anonymous RSS
(``RssAnon`` in /proc/self/status, sampled every 2 ms) above the process's RssAnon once the shard's docids
are in memory. Both arms' columns are hashed and must agree.

    python tools/bench_sidefile.py --sizes 1000000,10000000 --workdir /tmp/bench_sidefile
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from _table import ResultTable, load_average, log  # noqa: E402

SCRATCH_BLOCK = 1 << 20  # scan.py's block of the joins the anchor does
LABELS = [f"group-{i}" for i in range(8)]


def docids_of(numbers: np.ndarray) -> Any:
    """``doc-`` + 9 digits for each number, as a large_string Arrow array built from byte buffers."""
    import pyarrow as pa

    width = 13
    buf = np.empty((len(numbers), width), np.uint8)
    buf[:, :4] = np.frombuffer(b"doc-", np.uint8)
    for k in range(9):
        buf[:, 4 + k] = numbers // 10 ** (8 - k) % 10 + ord("0")
    offsets = np.arange(0, width * len(numbers) + 1, width, dtype=np.int64)
    return pa.Array.from_buffers(pa.large_string(), len(numbers), [None, pa.py_buffer(offsets), pa.py_buffer(buf)])


def shard_docids(n: int) -> Any:
    """The shard's docids in row order (seeded, the same in every process)."""
    return docids_of(np.random.default_rng(1338).permutation(n))


def write_side_file(n: int, path: Path) -> int:
    """The side file for a shard of ``n`` (see the module docstring); returns its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1339)
    named = rng.permutation(n)[: n * 9 // 10]
    numbers = np.concatenate([named, rng.choice(named, n // 20), n + np.arange(n // 20)])
    numbers = numbers[rng.permutation(len(numbers))]
    groups = pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, len(LABELS), len(numbers)).astype(np.int32)),
                                            pa.array(LABELS)).cast(pa.string())
    table = pa.table({"docid": docids_of(numbers), "quality": pa.array(rng.random(len(numbers))), "group": groups})
    pq.write_table(table, path)
    return len(numbers)


# ---------------------------------------------------------------- the anchor: scan.py today
def _first_per_id(path: Path, id_field: str, column: str, numeric: bool) -> Any:
    """Arrow table ``docid, value`` of a per-document file, the first row of a repeated id winning."""
    import pyarrow as pa

    from nagindex.sources.records import read_keyed_values

    ids, values = read_keyed_values(path, id_field, column, numeric)
    if len(ids) == 0:
        return pa.table({"docid": ids, "value": values})
    first = pa.table({"docid": ids, "i": pa.array(np.arange(len(ids)))}).group_by("docid").aggregate([("i", "min")])
    keep = first.column("i_min")
    return pa.table({"docid": ids.take(keep), "value": values.take(keep)})


def anchor_quality(path: Path, docids: Any) -> np.ndarray:
    """``_join_quality``: the NaN scratch filled by an inner join per 1M-row block."""
    import pyarrow as pa

    quality = np.full(len(docids), np.nan)
    lookup = _first_per_id(path, "docid", "quality", True)
    for lo in range(0, len(docids), SCRATCH_BLOCK):
        hi = min(len(docids), lo + SCRATCH_BLOCK)
        block = pa.table({"docid": docids.slice(lo, hi - lo), "row": pa.array(np.arange(lo, hi, dtype=np.int64))})
        joined = block.join(lookup, "docid", join_type="inner")
        quality[joined.column("row").to_numpy()] = joined.column("value").to_numpy(zero_copy_only=False)
    return quality


def anchor_groups(path: Path, docids: Any) -> Any:
    """``_groups`` over every row, 1M-row block by block: left outer join, back to row order, ``(none)``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lookup = _first_per_id(path, "docid", "group", False)
    out = []
    for lo in range(0, len(docids), SCRATCH_BLOCK):
        block = docids.slice(lo, SCRATCH_BLOCK)
        joined = pa.table({"docid": block, "i": pa.array(np.arange(len(block)))}).join(
            lookup, "docid", join_type="left outer").sort_by("i")
        out.append(pc.fill_null(pc.cast(joined.column("value"), pa.string()), "(none)").combine_chunks())
    return pa.chunked_array(out)


# ---------------------------------------------------------------- the new alignment
def new_quality(path: Path, docids: Any) -> tuple[np.ndarray, float]:
    """The NaN-filled quality column (zero-copy from the aligned array), and the lookup's build seconds."""
    from nagindex.query.sidefile import DocidLookup, keyed_batches

    start = time.perf_counter()
    lookup = DocidLookup(docids)
    built = time.perf_counter() - start
    aligned = lookup.align(keyed_batches(path, "docid", "quality", True), True)
    return np.frombuffer(aligned.buffers()[1], np.float64), built


def new_groups(path: Path, docids: Any) -> tuple[Any, float]:
    """The group column with ``(none)`` for documents the file lacks, and the lookup's build seconds."""
    import pyarrow.compute as pc

    from nagindex.query.sidefile import DocidLookup, keyed_batches

    start = time.perf_counter()
    lookup = DocidLookup(docids)
    built = time.perf_counter() - start
    return pc.fill_null(lookup.align(keyed_batches(path, "docid", "group", False), False), "(none)"), built


# ---------------------------------------------------------------- one arm in this process
def rss_anon_kib() -> int:
    """This process's anonymous resident memory now, KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise RuntimeError("no RssAnon in /proc/self/status")


def digest(column: Any) -> str:
    """A hash of a float column (NaNs made canonical) or of a string column (as label codes)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, np.ndarray):
        data = np.where(np.isnan(column), np.nan, column).tobytes()
    else:
        codes = pc.index_in(column, value_set=pa.array(["(none)", *LABELS]))
        data = pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int32).tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def run_arm(arm: str, kind: str, n: int, path: Path) -> dict[str, Any]:
    """Time one arm and sample its peak RssAnon above the baseline (docids built, code warm)."""
    import pyarrow as pa
    import pyarrow.acero  # noqa: F401 - imported by Table.join on first use: not timed, as in a warm shard
    import pyarrow.compute  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from nagindex.query.sidefile import DocidLookup

    # load (or compile) the numba kernels before timing: a shard loads them once
    DocidLookup(shard_docids(2)).align([(shard_docids(1), pa.array([0.5]))], True)
    docids = shard_docids(n)
    base = rss_anon_kib()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], rss_anon_kib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    fn: Callable[[Path, Any], Any] = {("anchor", "quality"): anchor_quality, ("anchor", "group"): anchor_groups,
                                      ("new", "quality"): new_quality, ("new", "group"): new_groups}[(arm, kind)]
    start = time.perf_counter()
    result = fn(path, docids)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    peak[0] = max(peak[0], rss_anon_kib())
    column, built = result if arm == "new" else (result, None)
    return {"seconds": seconds, "build_seconds": built, "peak_mib": (peak[0] - base) / 1024, "digest": digest(column)}


# ---------------------------------------------------------------- the driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,10000000", help="shard sizes (documents), comma-separated")
    ap.add_argument("--anchor-max", type=int, default=10**9, help="skip the anchor above this size")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_sidefile"))
    ap.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm (anchor|new:quality|group:N)
    args = ap.parse_args()
    if args.arm:
        arm, kind, n = args.arm.split(":")
        print(json.dumps(run_arm(arm, kind, int(n), args.workdir / f"side-{n}.parquet")))
        return

    import pyarrow.parquet as pq

    args.workdir.mkdir(parents=True, exist_ok=True)
    table = ResultTable("seconds; peak RssAnon above the docids")
    log(f"{platform.node()}: {platform.processor() or platform.machine()}, load {load_average()}")
    for n in (int(s) for s in args.sizes.split(",")):
        path = args.workdir / f"side-{n}.parquet"
        if not path.exists():
            log(f"writing {path}")
            write_side_file(n, path)
        rows = pq.ParquetFile(path).metadata.num_rows
        for kind in ("quality", "group"):
            measured = {}
            for arm in ("anchor", "new"):
                if arm == "anchor" and n > args.anchor_max:
                    continue
                log(f"{n:,} docids, {kind}, {arm} (load {load_average()})")
                out = subprocess.run([sys.executable, __file__, "--workdir", str(args.workdir), "--arm",
                                      f"{arm}:{kind}:{n}"], capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"{arm} {kind} {n:,} failed ({out.returncode}):\n{out.stderr[-3000:]}")
                measured[arm] = json.loads(out.stdout)
            anchor, new = measured.get("anchor"), measured["new"]
            label = f"{n:,} docids, {rows:,}-row parquet, {kind}"
            if anchor is not None:
                table.add(f"{label}: anchor (whole file, first per id, join per 1M block)",
                          f"{anchor['seconds']:.2f} s; {anchor['peak_mib']:,.0f} MiB", "1.00x")
            ratio = "" if anchor is None else (f"{new['seconds'] / anchor['seconds']:.2f}x time, "
                                               f"{new['peak_mib'] / anchor['peak_mib']:.2f}x memory; "
                                               f"same column: {'yes' if new['digest'] == anchor['digest'] else '**no**'}")
            table.add(f"{label}: new (lookup built in {new['build_seconds']:.2f} s, file streamed)",
                      f"{new['seconds']:.2f} s; {new['peak_mib']:,.0f} MiB", ratio)
    print(f"load average at the end: {load_average()}")
    print(table.markdown())


if __name__ == "__main__":
    main()
