"""``tools/gpu_check.py``'s dry run (CI has no GPU): every step runs on tiny CPU shapes, the table has its
rows, and the torch scorer's selections equal the numba kernels'."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.py"


def test_dry_run_prints_the_table_and_selections_are_equal(tmp_path):
    out = tmp_path / "check.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    header, *table = run.stdout.strip().splitlines()
    assert "dry run" in header and "CPU" in header
    assert table[0] == "| measurement | value | ratio | goal | met |"
    result = json.loads(out.read_text())
    assert result["dry_run"] is True
    metrics = [row["metric"] for row in result["rows"]]
    assert len(table) == 2 + len(metrics)
    for start in ("extraction, batch 4 ", "extraction, batch 8 ", "extraction, best batch",
                  "memory bandwidth", "host-to-device copy", "GPU scoring, 1 profile", "GPU scoring, 8 profile",
                  "selections equal"):
        assert sum(m.startswith(start) for m in metrics) == 1, start
    rows = {row["metric"].split(" (")[0].split(",")[0]: row for row in result["rows"]}
    assert rows["selections equal"]["met"] is True and rows["selections equal"]["value"] == "8/8"
    assert all(result["details"]["selections_equal"].values())
    speed = [row for row in result["rows"] if row["goal"] and not row["metric"].startswith("selections")]
    assert len(speed) == 2 and all(row["met"] is None for row in speed)  # goals are judged on a GPU only
    assert all(rate > 0 for rate in result["details"]["extraction_docs_per_s"].values())


def test_checks_runs_only_the_named_ones(tmp_path):
    out = tmp_path / "check.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--checks", "selections", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [row["metric"].split(" (")[0].split(",")[0] for row in result["rows"]] == ["selections equal"]
    assert "lift weighting" in " ".join(result["details"]["selections_equal"])
    bad = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--checks", "selection"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown selection" in bad.stderr
