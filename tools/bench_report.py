"""Report and views streamed over shards: ``open_index`` and ``report.collect`` against the code that gathered
every shard's columns; one table.

On a sharded index (``bench_scale``'s 10M-document, 8-shard build), each arm runs in its own process:

- anchor: the code before the change, imported from a git worktree of it (``--anchor-tree``, made with
  ``git worktree add /tmp/old_wt <commit>``): ``open_index`` concatenated every shard's codes, token counts,
  positions, source ids and docids; ``collect`` scored that whole array and kept a score per document;
- new: this tree: ``open_index`` keeps the shards' views and hidden rows; ``collect`` scores one shard at a
  time and merges histograms, groups, selection scores, the ranked curve and the docid-hash sample.

The report's selection is the first ``--selection-rows`` rows of ``--selection`` (a ``query``/``mix`` output
with its manifest), written to ``--workdir``, so the pool, not the selection, is what the figures measure.
Time is wall-clock; memory is the peak anonymous RSS of the arm's process (``RssAnon`` in /proc/<pid>/status,
sampled by this driver every 10 ms, so an arm killed for memory still has its peak) above its RssAnon once
nagindex is imported. Both report arms' pool figures (histogram counts, tokens per group, the selection's
scores) are hashed and must agree. An anchor whose ``open_index`` is killed is not run for the report (which
opens the index first).

    git worktree add /tmp/old_wt 58724a6
    python tools/bench_report.py --index /tmp/nagscale/<run>/eight --selection /tmp/nagscale/<run>/sel.parquet \\
        --anchor-tree /tmp/old_wt
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from _table import ResultTable, load_average, log  # noqa: E402


def rss_anon_kib(pid: int) -> int:
    """A process's anonymous resident memory now, KiB (0 once it has exited)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith("RssAnon:")), 0)


def pool_digest(data: Any) -> str:
    """A hash of the report's pool figures, from either side: the anchor's per-document scores are binned
    as its page bins them; the new side carries the merged figures."""
    if hasattr(data, "similarity"):
        sim = data.similarity
        counts = [np.histogram(s[np.isfinite(s)], bins=np.histogram_bin_edges(s[np.isfinite(s)], bins=40))[0]
                  for s in sim]
        labels, inverse = np.unique(data.pool_groups.astype(str), return_inverse=True)
        sums = np.bincount(inverse, weights=data.pool_tokens.astype(np.float64), minlength=len(labels))
        groups = dict(zip(labels.tolist(), sums.astype(np.int64).tolist()))
        selected = sim[:, data.sel_rows]
    else:
        counts, groups, selected = list(data.pool.hist_counts), data.pool.group_tokens, data.pool.sel_similarity
    h = hashlib.sha256()
    for c in counts:
        h.update(np.asarray(c, np.int64).tobytes())
    h.update(json.dumps(sorted(groups.items())).encode())
    h.update(np.ascontiguousarray(selected, np.float64).tobytes())
    return h.hexdigest()[:16]


def run_arm(what: str, index: str, selection: str) -> dict[str, Any]:
    """Time ``open_index`` or ``collect`` in this process, once the driver has read its baseline."""
    from nagindex.index.sharded import open_index
    from nagindex.query.report import collect

    print("ready", flush=True)
    sys.stdin.readline()  # the driver has read the baseline RssAnon
    start = time.perf_counter()
    if what == "open":
        view = open_index(index)
        figures = f"{len(view)}:{view.total_tokens}"
    else:
        figures = pool_digest(collect(selection, index))
    return {"seconds": time.perf_counter() - start, "figures": figures}


def measure(cmd: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run one arm, sampling its RssAnon from here; a killed arm reports its exit code and the seconds and
    peak until then."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd)
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"{cmd}: no ready line:\n{proc.stderr.read()[-3000:]}")
    Path(f"/proc/{proc.pid}/oom_score_adj").write_text("1000")  # out of memory, the arm goes first, no one else
    base = rss_anon_kib(proc.pid)
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss_anon_kib(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    result = {"returncode": proc.returncode, "seconds": seconds, "peak_mib": (peak[0] - base) / 1024}
    if proc.returncode == 0:
        result.update(json.loads(out.splitlines()[-1]))
    elif proc.returncode != -9:
        raise SystemExit(f"{cmd} failed ({proc.returncode}):\n{err[-3000:]}")
    return result


def write_selection(selection: Path, rows: int, out: Path) -> None:
    """The first ``rows`` rows of a selection, with its manifest beside them."""
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(selection).slice(0, rows), out)
    manifest = json.loads(selection.with_name(selection.name + ".manifest.json").read_text("utf-8"))
    out.with_name(out.name + ".manifest.json").write_text(json.dumps(manifest), "utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True, help="a sharded index (bench_scale's 'eight')")
    ap.add_argument("--selection", type=Path, required=True, help="a query/mix output on that index")
    ap.add_argument("--selection-rows", type=int, default=20_000)
    ap.add_argument("--anchor-tree", type=Path, required=True, help="a git worktree of the code before the change")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_report"))
    ap.add_argument("--arm", help=argparse.SUPPRESS)  # internal: open|report, run in this process
    args = ap.parse_args()
    selection = args.workdir / "selection.parquet"
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.index, str(selection))))
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    write_selection(args.selection, args.selection_rows, selection)
    table = ResultTable("seconds; peak RssAnon")
    log(f"{platform.node()}: {platform.processor() or platform.machine()}, load {load_average()}")
    trees = {"anchor": args.anchor_tree.resolve(), "new": REPO}
    killed = False
    for what, label in (("open", "open_index"), ("report", f"report.collect, {args.selection_rows:,}-row selection")):
        measured = {}
        for arm in ("anchor", "new"):
            if arm == "anchor" and killed:
                table.add(f"{label}: anchor", "not run: it opens the index first, killed above", "")
                continue
            log(f"{label}: {arm} (load {load_average()})")
            env = {**os.environ, "PYTHONPATH": str(trees[arm])}
            measured[arm] = measure([sys.executable, __file__, "--index", args.index, "--selection",
                                     str(args.selection), "--anchor-tree", str(args.anchor_tree), "--workdir",
                                     str(args.workdir), "--arm", what], env, trees[arm])
        anchor, new = measured.get("anchor"), measured["new"]
        value = f"{new['seconds']:.2f} s; {new['peak_mib']:,.0f} MiB"
        if anchor is None:
            table.add(f"{label}: new (shard by shard)", value, "")
        elif anchor["returncode"]:
            killed = True
            table.add(f"{label}: anchor (every shard's columns gathered)",
                      f"killed (SIGKILL: out of memory) after {anchor['seconds']:.0f} s at {anchor['peak_mib']:,.0f} MiB",
                      "1.00x")
            table.add(f"{label}: new (shard by shard)", value,
                      f"{new['peak_mib'] / anchor['peak_mib']:.4f}x the anchor's memory when it was killed")
        else:
            table.add(f"{label}: anchor (every shard's columns gathered)",
                      f"{anchor['seconds']:.2f} s; {anchor['peak_mib']:,.0f} MiB", "1.00x")
            table.add(f"{label}: new (shard by shard)", value,
                      f"{new['seconds'] / anchor['seconds']:.2f}x time, {new['peak_mib'] / anchor['peak_mib']:.4f}x "
                      f"memory; same figures: {'yes' if new['figures'] == anchor['figures'] else '**no**'}")
    print(f"load average at the end: {load_average()}")
    print(table.markdown())


if __name__ == "__main__":
    main()
