"""A 20% selection written by the shards (``-o DIR``) against the same selection as one file (``-o FILE``, the
anchor): the coordinator's peak anonymous memory and the wall time, for one target and for the paper mixture
of eight, on ``tools/bench_scale.py``'s synthetic index (built once and cached there: 10M documents, 8 shards),
in process (the shards scanned in the coordinator's process: its memory is theirs too) and through Ray
(the shards in actors of a private cluster: the coordinator's process alone).

Each query runs in a fresh subprocess; its ``RssAnon`` (``/proc/<pid>/status``: not the page cache or the
memory-mapped index) is sampled every 20 ms. The two outputs must hold the same rows (the parts sorted by rank
equal the file; checked by digest). One markdown table with the ratio parts / file.

    python tools/bench_parts.py                  # 10M documents (the bench_scale index: ~18 min to build once)
    python tools/bench_parts.py --docs 500000    # a quick check
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale  # noqa: E402  the index builder this benchmark shares

CHILD = """
import json, sys, time
from nagindex.query.request import TargetRequest
from nagindex.query.run import query
spec = json.loads(sys.argv[1])
targets = [TargetRequest("features", t, label=f"t{i}") for i, t in enumerate(spec["targets"])]
if spec["ray"]:  # the shards in actors of a private cluster: this process is the coordinator alone
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
t = time.perf_counter()
res = query(targets, spec["index"], fraction=0.2, out=spec["out"], ray_address="local" if spec["ray"] else None)
print(json.dumps({"seconds": time.perf_counter() - t, "rows": len(res), "tokens": res.tokens}))
"""


def peak_anon(cmd: list[str]) -> tuple[dict, float]:
    """Run ``cmd``; its JSON answer and its peak RssAnon in MB, sampled every 20 ms."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak, done = [0], threading.Event()

    def sample() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while not done.is_set():
            try:
                kb = next(int(line.split()[1]) for line in status.read_text().splitlines()
                          if line.startswith("RssAnon:"))
                peak[0] = max(peak[0], kb)
            except (OSError, StopIteration):
                pass
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} failed with exit {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1]), peak[0] / 1024


def digest(path: Path) -> str:
    """The selection's docids in rank order (a file, or a folder of parts sorted by rank)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["rank", "docid"]).sort_by("rank")
    h = hashlib.sha1()
    for batch in table.column("docid").chunks:
        h.update("\n".join(batch.to_pylist()).encode())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/nagscale")
    ap.add_argument("--docs", type=int, default=10_000_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--procs", type=int, default=2)
    args = ap.parse_args()
    build, work = bench_scale.index_args(args.workdir, args.docs, args.shards, args.procs)
    data = bench_scale.build(build, work)
    targets = [str(t) for t in data["targets"]]
    rows = []
    for (name, chosen), ray in ((q, r) for r in (False, True)
                                for q in (("1 target", targets[:1]), ("8 targets (paper)", targets))):
        name = f"{name}, {'Ray' if ray else 'in process'}"
        got = {}
        for form, out in (("file", work / "sel.parquet"), ("parts", work / "sel_parts")):
            spec = {"targets": chosen, "index": str(data["eight"]), "out": str(out), "ray": ray}
            got[form] = (*peak_anon([sys.executable, "-c", CHILD, json.dumps(spec)]), digest(out))
        (a, mem_a, dig_a), (b, mem_b, dig_b) = got["file"], got["parts"]
        if dig_a != dig_b or a["rows"] != b["rows"]:
            raise SystemExit(f"{name}: the parts differ from the file")
        rows.append(f"| {name} | {a['rows']:,} | {a['seconds']:.1f} s | {b['seconds']:.1f} s | "
                    f"{b['seconds'] / a['seconds']:.2f}x | {mem_a:,.0f} MB | {mem_b:,.0f} MB | {mem_b / mem_a:.2f}x |")
    print(f"{time.strftime('%Y-%m-%d')}, {platform.node()}, {args.docs:,} documents in {args.shards} shards, "
          "fraction 0.2")
    print("| query | rows | time, one file | time, parts | ratio | coordinator peak RssAnon, one file "
          "| parts | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
