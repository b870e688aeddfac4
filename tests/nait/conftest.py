"""NAIT fixtures: the golden pool and target as JSONL, and the pool (three variants of each document) ingested
with NAIT features on one shard and on three."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from nagindex.encode.dense import DenseSpec
from nagindex.ingest.run import ingest

SETTINGS = {"top_k": 8, "max_length": 64}


def write_corpus(golden_dir: Path, path: Path, copies: int = 1) -> list[str]:
    """The golden pool as JSONL (``copies`` variants of each document: a suffix makes each one distinct)."""
    pool = pq.read_table(golden_dir / "data/pool/pool.parquet").to_pydict()
    texts = []
    with open(path, "w") as fh:
        for c in range(copies):
            for docid, doc in zip(pool["docid"], pool["doc"]):
                text = doc if c == 0 else f"{doc} variant {c}"
                fh.write(json.dumps({"id": f"{docid}-{c}", "text": text}) + "\n")
                texts.append(text)
    return texts


def write_targets(golden_dir: Path, path: Path) -> list[str]:
    target = pq.read_table(golden_dir / "data/target/target.parquet").to_pydict()
    with open(path, "w") as fh:
        fh.writelines(json.dumps({"text": doc}) + "\n" for doc in target["doc"])
    return target["doc"]


@pytest.fixture(scope="session")
def three_way(golden_dir, tmp_path_factory):
    """The pool (3 variants of each document, 45 in all) on one shard and on three, with NAIT features."""
    root = tmp_path_factory.mktemp("nait3")
    write_corpus(golden_dir, root / "pool.jsonl", copies=3)
    write_targets(golden_dir, root / "target.jsonl")
    spec = DenseSpec()
    # batch_size 1: each document's activations are the same bits in any window (batching moves the last
    # bits), so the two layouts hold the same rows and must select the same documents with the same scores
    kw = dict(backbone=str(golden_dir / "model"), nait=spec, dtype="float32", commit_every=7, batch_size=1,
              **SETTINGS)
    ingest([root / "pool.jsonl"], root / "one", **kw)
    ingest([root / "pool.jsonl"], root / "three", shards=3, split_size=2048, workers=1, **kw)
    return root
