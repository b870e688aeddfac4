"""The README's "Python API" example runs as written, with the real embedded SmolLM2-135M."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from nagindex.demo import build_demo_corpus

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_example() -> str:
    section = README.read_text("utf-8").split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section has one example"
    return blocks[0]


@pytest.mark.slow
def test_readme_python_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    build_demo_corpus(tmp_path / "corpus" / "passages.jsonl", n_docs=40)
    examples = ["Which gas do plants take in to make food? carbon dioxide",
                "What force pulls objects toward Earth? gravity",
                "Which organ pumps blood through the body? the heart"]
    (tmp_path / "my_examples.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in examples))
    exec(compile(python_api_example(), "README.md:Python API", "exec"), {})
    printed = capsys.readouterr().out
    assert "+40 documents, 40 in the index; fields: {'text': {'text': 40}, 'id': {'docid': 40}}" in printed
    arc = pq.read_table(tmp_path / "arc.parquet").to_pydict()
    mix = pq.read_table(tmp_path / "mix.parquet").to_pydict()
    assert arc["rank"][:3] == [1, 2, 3] and 0 < len(arc["docid"]) < 40
    assert set(mix["target"]) == {"arc_challenge", "my_examples"}
    assert "['arc_challenge', 'my_examples']" in printed
    features = (tmp_path / "my_examples.features.jsonl").read_text().splitlines()
    assert len(features) == 3 and len(json.loads(features[0])["fwd_up_feature"]["layer_topk_value_index"]) == 30 * 20
