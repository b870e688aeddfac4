"""Seeded synthetic pools as reference feature files, imported as one-shard and sharded indexes.

Small widths make integer score ties common, so ties straddle every threshold and
shard boundary; docids mix short numeric-looking ids, 300-byte URLs and non-ASCII
text; token counts include zeros; a few ids repeat across files. Files have very different sizes, so shards are
uneven, and with more shards than files some shards stay empty.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nagindex.ingest.interop import import_features, write_features

SHAPE = {"num_layers": 4, "top_k": 6, "width": 48}


def _docid(i: int) -> str:
    kind = i % 7
    if kind == 0:
        return str(i)  # "10" < "9" as text
    if kind == 1:
        return "https://example.org/" + "x" * (200 + i * 37 % 100) + f"/{i}"
    if kind == 2:
        return f"réseau-{i:05d}-ü"
    return f"doc{i:06d}"


def codes_like(rng: np.random.Generator, n: int, topic: int) -> np.ndarray:
    """``(n, L, K)`` NAGs that prefer a topic's neurons (so targets and pool documents overlap)."""
    num_layers, top_k, width = SHAPE["num_layers"], SHAPE["top_k"], SHAPE["width"]
    pref = np.roll(1.0 / (np.arange(width) + 3.0), 7 * topic)
    noise = rng.random((n, num_layers, width)) * pref
    return np.argsort(-noise, axis=2)[:, :, :top_k].astype(np.uint16)


def write_pool(root: Path, sizes: tuple[int, ...] = (700, 60, 1500, 5, 240), seed: int = 0,
               texts: Callable[[str], str] | None = None) -> list[Path]:
    """Feature files of the given sizes plus ``payload.jsonl`` (token counts, some zero); returns the files.
    ``texts``: each record also carries ``texts(docid)`` as its ``doc`` field (``--with-text`` reads it back)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    files, payload, start = [], [], 0
    for f, n in enumerate(sizes):
        ids = [_docid(start + i) for i in range(n)]
        if f == 3:  # ids repeated from the first file: a sharded index hides these later copies
            ids[:3] = [_docid(i) for i in range(3)]
        codes = codes_like(rng, n, topic=f % 3)
        path = root / f"part{f}.jsonl"
        write_features(path, ids, codes)
        if texts is not None:
            rows = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
            path.write_text("".join(json.dumps({**r, "doc": texts(r["docid"])}, ensure_ascii=False) + "\n"
                                    for r in rows), "utf-8")
        tokens = rng.integers(0, 400, n)
        tokens[rng.random(n) < 0.05] = 0
        payload += [{"docid": d, "token_num": int(t)} for d, t in zip(ids, tokens)]
        files.append(path)
        start += n
    with open(root / "payload.jsonl", "w", encoding="utf-8") as fh:
        for rec in payload:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return files


def write_targets(root: Path, seed: int = 1) -> dict[str, Path]:
    """Three target feature files (12 examples each) leaning to different topics."""
    rng = np.random.default_rng(seed)
    out = {}
    for topic, name in enumerate(("alpha", "beta", "gamma")):
        path = root / f"{name}.jsonl"
        write_features(path, [f"{name}-{i}" for i in range(12)], codes_like(rng, 12, topic))
        out[name] = path
    return out


def write_quality(root: Path, files: list[Path], seed: int = 2) -> Path:
    """A quality score for about 80% of the pool's documents (the rest have none)."""
    rng = np.random.default_rng(seed)
    path = root / "quality.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for line in (root / "payload.jsonl").read_text("utf-8").splitlines():
            if rng.random() < 0.8:
                fh.write(json.dumps({"docid": json.loads(line)["docid"],
                                     "q": round(float(rng.random()), 3)}, ensure_ascii=False) + "\n")
    return path


def build_index(files: list[Path], index: Path, shards: int = 1) -> Path:
    import_features(files, index, **SHAPE, payload_paths=[files[0].parent / "payload.jsonl"],
                    token_field="token_num", shards=shards)
    return index
