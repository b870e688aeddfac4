"""Why a document ranks where it does for a target: its score, rank and percentile in the pool, and per layer
the neurons its NAG shares with the target's profile, each with its share of the score.

The score is the query's (spec sec. 3): ``sim(d) = (1/L) sum_l sum_{n in NAG_l(d)} w_l[n]``, so a document's
score is exactly the sum of one term per (layer, shared neuron): with power 1 and no weighting the term is
the integer count ``c_l[n]`` over ``T x K x L`` (the score's exact integer numerator is the sum of the
counts), otherwise the float weight ``w_l[n]`` (``--power``, ``--weighting``) over ``L``. Neurons of the
NAG that the profile lacks add nothing and are not listed.

The rank is the query's order (score descending, then docid ascending) over the documents a query sees:
every shard's reconciled rows, cross-shard repeats left out, scored shard by shard in blocks (memory stays
one block, whatever the index's size).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError


@dataclass(frozen=True)
class SharedNeuron:
    """A neuron of the document's NAG that the profile holds."""

    neuron: int
    target_count: int  # target examples whose NAG holds it at this layer
    contribution: float  # its term of the score


@dataclass(frozen=True)
class LayerShare:
    """One layer's part of the document's score."""

    layer: int
    contribution: float
    shared: list[SharedNeuron]


@dataclass
class DocExplanation:
    """One document against one target's profile."""

    target: str
    docid: str
    score: float
    rank: int  # 1 = the first document a selection takes
    pool_docs: int
    layers: list[LayerShare]
    text: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def percentile(self) -> float:
        """Share of the pool ranked below the document, in percent."""
        return 100.0 * (self.pool_docs - self.rank) / self.pool_docs

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "percentile": self.percentile}

    def table(self, show: int = 6) -> str:
        """Text: the score line, one line per layer (its contribution, its ``show`` largest shared neurons as
        ``neuron:count``), then the text."""
        lines = [(f"{self.docid} for {self.target}: score {self.score:.6f}, rank {self.rank:,} of "
                  f"{self.pool_docs:,} (percentile {self.percentile:.1f})"),
                 f"{'layer':>5} {'contrib':>9} {'shared':>6}  largest shared neurons (neuron:target count)"]
        for p in self.layers:
            tops = "  ".join(f"{s.neuron}:{s.target_count}" for s in p.shared[:show])
            lines.append(f"{p.layer:>5} {p.contribution:>9.6f} {len(p.shared):>6}  {tops}")
        lines += [f"note: {n}" for n in self.notes]
        if self.text is not None:
            lines += ["", self.text]
        return "\n".join(lines)


def neuron_terms(counts: np.ndarray, power: float, weights: np.ndarray | None) -> tuple[np.ndarray, float]:
    """``(values, norm)``: each (layer, neuron)'s term of the score is ``values[l, n] / norm``, as the
    query's scorer sums them (``score.build_table``): counts over their total with power 1 and no weights,
    else the float weights over the number of layers."""
    from nagindex.query.profile import profile_weights

    if weights is None and float(power) == 1.0:
        return np.asarray(counts, np.int64), float(np.sum(counts))
    values = profile_weights(counts, power) if weights is None else np.asarray(weights, np.float64)
    return values, float(len(counts))


def explain_codes(nag: np.ndarray, counts: np.ndarray, power: float = 1.0,
                  weights: np.ndarray | None = None) -> list[LayerShare]:
    """Per layer, the neurons of one document's NAG ``(L, K)`` that the count profile ``(L, width)`` holds,
    largest term first (ties by neuron), with their terms of the score."""
    values, norm = neuron_terms(counts, power, weights)
    out = []
    for layer, row in enumerate(np.asarray(nag, np.int64)):
        held = row[counts[layer, row] > 0]
        terms = values[layer, held]
        order = np.lexsort((held, -terms))
        shared = [SharedNeuron(int(held[i]), int(counts[layer, held[i]]), float(terms[i] / norm)) for i in order]
        out.append(LayerShare(layer, float(terms.sum() / norm), shared))
    return out


def explain_doc(request: Any, index_dir: str | os.PathLike, docid: str, **options: Any) -> DocExplanation:
    """Explain ``docid``'s rank for one target (a ``TargetRequest``): ``explain_docs`` of one document."""
    return explain_docs(request, index_dir, [docid], **options)[0]


def explain_docs(request: Any, index_dir: str | os.PathLike, docids: list[str], *, max_examples: int | None = None,
                 example_seed: int = 0, power: float = 1.0, weighting: str = "none", with_text: bool = True,
                 device: str = "auto") -> list[DocExplanation]:
    """Explain the ranks of ``docids`` for one target (a ``TargetRequest``) on the index at ``index_dir``, its
    profile drawn as a query's (``max_examples``, ``example_seed``) and scored with the query's ``power`` and
    ``weighting``, all ranked in one pass over the index. ``with_text``: read each document's text back from
    its source (a note says why not where it cannot)."""
    import pyarrow as pa

    from nagindex.explain.profile import target_profile_codes
    from nagindex.index.sharded import locate, open_index, split_rows, view_parts
    from nagindex.query.profile import count_profile
    from nagindex.query.score import BlockScorer
    from nagindex.query.weighting import pool_weigher

    codes, _, manifest, notes = target_profile_codes(request, index_dir, max_examples, example_seed, device)
    counts = count_profile(codes, manifest["width"])
    weights = pool_weigher(weighting, index_dir, power, top_k=manifest["top_k"])(counts[None])
    weights = None if weights is None else weights[0]  # the --weighting table, None for the paper's score
    parts = view_parts(open_index(index_dir))
    rows = locate(parts, pa.array(docids, pa.large_string()))
    if (rows < 0).any():
        raise NagIndexError(f"docid {docids[int(np.flatnonzero(rows < 0)[0])]!r} is not in index {index_dir}")
    found: list[tuple[Any, int]] = [(None, -1)] * len(docids)  # (shard view, local row) of each docid
    for part, where, local in split_rows(parts, rows):
        for i, row in zip(where.tolist(), local.tolist()):
            found[i] = (part.view, row)
    nags = np.stack([np.asarray(view.codes[row]) for view, row in found])
    scorer = BlockScorer(nags.shape, counts, None, power, None if weights is None else weights[None])
    keys = scorer.sums(nags)[:, 0]
    above, pool_docs = _rank_among(parts, scorer, keys, docids)
    out = []
    for docid, (view, row), nag, key, ahead in zip(docids, found, nags, keys, above):
        text, doc_notes = None, list(notes)
        if with_text:
            text, note = _text(view, row, docid)
            doc_notes += [note] if note else []
        out.append(DocExplanation(target=request.display, docid=docid, score=float(key / scorer.norm[0]),
                                  rank=int(ahead) + 1, pool_docs=pool_docs,
                                  layers=explain_codes(nag, counts, power, weights), text=text, notes=doc_notes))
    return out


def _rank_among(parts: list[Any], scorer: Any, keys: np.ndarray, docids: list[str]) -> tuple[np.ndarray, int]:
    """``(documents ranked before each of ``docids`` scoring ``keys``, documents)``: those scoring more, and those
    scoring the same with a smaller docid (the query's tie-break), over the ``parts``' visible rows."""
    from nagindex.query.score import BLOCK_ROWS

    above, total = np.zeros(len(keys), np.int64), 0
    for part in parts:
        view = part.view
        visible = np.ones(len(view), dtype=bool)
        visible[part.hidden] = False
        total += len(part)
        for lo in range(0, len(view), BLOCK_ROWS):
            sums = scorer.sums(view.codes[lo:lo + BLOCK_ROWS], lo)[:, 0]
            seen = visible[lo:lo + len(sums)]
            for j, (key, docid) in enumerate(zip(keys, docids)):
                above[j] += np.count_nonzero((sums > key) & seen)
                tied = np.flatnonzero((sums == key) & seen) + lo
                above[j] += sum(1 for other in view.docids.take(tied) if other < docid)
    return above, total


def _text(view: Any, row: int, docid: str) -> tuple[str | None, str | None]:
    """The document's text read back from its source (``row`` in its shard's ``view``), or None and why not."""
    from nagindex.index.store import IndexStore
    from nagindex.sources.fetch import SourceTextError, fetch_texts, text_options

    try:
        with IndexStore.open(Path(view.directory)) as store:
            states = store.all_progress()
    except NagIndexError:
        states = {}
    source = view.sources[int(view.source_ids[row])]
    try:
        return fetch_texts([source], np.asarray([view.positions[row]]), [docid], **text_options(view.manifest),
                           states=states)[0], None
    except SourceTextError as exc:
        return None, f"no text: {exc}"
