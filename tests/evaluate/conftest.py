"""Evaluation fixtures: a tiny multiple-choice target built in code, and two tiny indexes encoded with the
golden fixture's 4-layer model: a pool of unrelated prose, and the same kind of pool plus "oracle"
documents drawn from the target's own distribution (other examples of the same generator)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nagindex.evaluate.train import ProxyConfig

#: a proxy model small enough for the test suite (about 15K parameters)
TINY = ProxyConfig(vocab_size=320, width=32, layers=1, heads=2, context=32, batch_size=4, lr=1e-2, curve_points=2,
                   tokenizer_chars=200_000, eval_batch=64)

_VOCABULARY = ("river forest stone village market winter harbor lantern meadow garden bridge tower valley cloud "
               "morning evening traveler merchant farmer sailor painter teacher old quiet bright narrow distant warm "
               "walked carried watched opened followed remembered built crossed found left near under across behind "
               "slowly often never always again before after while the a of and to in on with")
WORDS = _VOCABULARY.split()


def arithmetic(rng: np.random.Generator, n: int, start: int = 0) -> list[dict]:
    """``n`` multiple-choice sums: question, four numeric answers, the right one's index."""
    out = []
    for i in range(n):
        a, b = (int(x) for x in rng.integers(2, 60, size=2))
        op, value = (("plus", a + b) if i % 2 else ("minus", a - b))
        answers = [value, value + 1, value - 2, value + 3]
        order = rng.permutation(4)
        choices = [str(answers[j]) for j in order]
        out.append({"id": f"q{start + i}", "question": f"Question: What is {a} {op} {b}?",
                    "choices": choices, "answer": int(np.flatnonzero(order == 0)[0])})
    return out


def text_of(example: dict) -> str:
    return f"{example['question']}\nAnswer: {example['choices'][example['answer']]}"


def prose(rng: np.random.Generator, words: int = 40) -> str:
    sentences, left = [], words
    while left > 0:
        n = int(min(left, rng.integers(6, 12)))
        sentences.append(" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), size=n)).capitalize() + ".")
        left -= n
    return " ".join(sentences)


@pytest.fixture(scope="session")
def arith_target(tmp_path_factory) -> Path:
    """A registry-style target YAML (multiple choice) over 60 arithmetic examples in a local JSONL."""
    root = tmp_path_factory.mktemp("target")
    rows = arithmetic(np.random.default_rng(1), 60)
    (root / "arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "arith.yaml").write_text(
        "task: arith\n"
        "sources:\n  - file: arith.jsonl\n"
        "doc_to_text: \"{{ question }}\\nAnswer: {{ choices[answer] }}\"\n"
        "doc_to_id: id\n"
        "doc_to_question: \"{{ question }}\\nAnswer:\"\n"
        "doc_to_choice: choices\n"
        "doc_to_target: answer\n")
    return root / "arith.yaml"


@pytest.fixture(scope="session")
def plain_target(tmp_path_factory) -> Path:
    """The same kind of examples as plain texts (no choices): a --target-file JSONL."""
    root = tmp_path_factory.mktemp("plain")
    rows = arithmetic(np.random.default_rng(2), 40)
    (root / "sums.jsonl").write_text("".join(json.dumps({"id": r["id"], "text": text_of(r)}) + "\n" for r in rows))
    return root / "sums.jsonl"


def _ingest(root: Path, docs: list[dict], tiny_backbone, golden_dir: Path) -> Path:
    from nagindex.encode.extract import NagExtractor
    from nagindex.ingest import run as ingest_run

    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    ingest_run.ingest([corpus], root / "idx", backbone=str(golden_dir / "model"), top_k=8, max_length=64,
                      extractor=NagExtractor(tiny_backbone, top_k=8, max_length=64))
    return root / "idx"


@pytest.fixture(scope="session")
def prose_index(tmp_path_factory, tiny_backbone, golden_dir) -> Path:
    """120 documents of prose, nothing like the target."""
    rng = np.random.default_rng(3)
    docs = [{"docid": f"prose-{i:03d}", "doc": prose(rng)} for i in range(120)]
    return _ingest(tmp_path_factory.mktemp("prose"), docs, tiny_backbone, golden_dir)


@pytest.fixture(scope="session")
def oracle_index(tmp_path_factory, tiny_backbone, golden_dir) -> Path:
    """200 documents of prose and 40 "oracle" documents, each six arithmetic examples of the target's generator
    (other examples than the target file's)."""
    rng = np.random.default_rng(4)
    docs = [{"docid": f"prose-{i:03d}", "doc": prose(rng)} for i in range(200)]
    extra = arithmetic(np.random.default_rng(5), 240, start=1000)
    docs += [{"docid": f"oracle-{i:03d}", "doc": "\n\n".join(text_of(e) for e in extra[6 * i:6 * i + 6])}
             for i in range(40)]
    return _ingest(tmp_path_factory.mktemp("oracle"), docs, tiny_backbone, golden_dir)


def write_selection(path: Path, docids: list[str], manifest: dict | None = None) -> Path:
    """A selection file of ``docids`` (parquet), with a manifest beside it when given."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"docid": docids}), path)
    if manifest is not None:
        path.with_name(path.name + ".manifest.json").write_text(json.dumps(manifest))
    return path


def index_docids(index: Path) -> list[str]:
    from nagindex.index.sharded import open_index

    return open_index(index).docids.arrow().to_pylist()
