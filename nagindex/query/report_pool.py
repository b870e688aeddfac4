"""The pool side of ``nagindex report``, read shard by shard: what the page shows of every document.

The page needs, per target, a histogram of the whole pool's scores, the score range, the tokens of
each group (source or docid prefix), the ranked pool against cumulative tokens (one target), and a
sample of documents for the pool's average per-layer profile. All of them merge exactly over shards,
so ``pool_stats`` scores one shard at a time (``score_codes`` on its memory-mapped codes, or
``--method nait``'s scorer on its dense rows; hidden rows left out) and keeps one shard's scores in
memory: the scores wait in a spill folder (8 bytes per document and target, on disk) for the second
pass, which bins them on the global range, known only once every shard is scored. Nothing here holds
a value per document of the whole pool.

The sample is the ``POOL_SAMPLE`` documents with the smallest docid hash (``dedup.docid_hashes``),
in hash order: the same documents, in the same order, however the index is sharded (the sample of
rows drawn by a seeded generator it replaces changed with the row order, i.e. with the layout).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HIST_BINS = 40  # bins of the score histogram
RANK_POINTS = 512  # thresholds drawn on the ranked-pool curve
POOL_SAMPLE = 2000  # pool docs averaged for the per-layer reference profile


@dataclass
class PoolStats:
    """What the report reads of the whole pool, merged over shards."""

    docs: int
    tokens: int
    group_tokens: dict[str, int]  # tokens per group label
    hist_edges: np.ndarray  # (P, HIST_BINS + 1): ``np.histogram_bin_edges`` of the finite scores
    hist_counts: np.ndarray  # (P, HIST_BINS) documents per bin
    score_range: np.ndarray  # (P, 2) min and max finite score (NaN where a target has none)
    sel_similarity: np.ndarray  # (P, S) every selection row's score against every target
    rank_scores: np.ndarray  # (R,) thresholds of target 0, best first
    rank_tokens: np.ndarray  # (R,) pool tokens scoring at least each threshold
    sel_rank_tokens: np.ndarray  # (S,) pool tokens scoring at least each selection row (target 0)
    sample_rows: np.ndarray  # global rows of the docid-hash sample, in hash order


@dataclass
class _Scored:
    """One shard after the first pass: where its scores wait, and its exact partial results."""

    spill: Path
    lo: np.ndarray
    hi: np.ndarray


def pool_stats(view: Any, profiles: np.ndarray, layers: np.ndarray, power: float, weights: np.ndarray | None,
               sel_rows: np.ndarray, group_by: str, spill_dir: Path, nait: bool = False) -> PoolStats:
    """Score the pool shard by shard against ``profiles`` and merge what the report shows. ``nait``: the
    profiles are ``(P, L', d)`` NAIT directions, and a shard's dense rows are scored instead of its codes."""
    from nagindex.index.sharded import split_rows, view_parts
    from nagindex.query.score import score_codes

    parts = view_parts(view)
    n_targets = len(profiles)
    sel_similarity = np.full((n_targets, len(sel_rows)), np.nan)
    groups: dict[str, int] = {}
    candidates: list[tuple[np.ndarray, np.ndarray]] = []
    scored: list[_Scored] = []
    where_sel = {id(p): (w, local) for p, w, local in split_rows(parts, sel_rows)}
    for i, part in enumerate(parts):
        kept = part.kept()
        if nait:
            from nagindex.query.nait import NaitScorer

            scorer = NaitScorer(part.view.directory, part.view.manifest, len(part.view), profiles, layers)
            similarity = scorer.sums(scorer.rows).T[:, kept]
        else:
            similarity = score_codes(part.view.codes, profiles, layers, power=power,
                                     weights=weights).similarity[:, kept]
        if id(part) in where_sel:
            where, local = where_sel[id(part)]
            sel_similarity[:, where] = similarity[:, np.searchsorted(kept, local)]
        tokens = np.asarray(part.view.token_counts)[kept].astype(np.int64)
        for label, n in _group_tokens(view, part, kept, tokens, group_by).items():
            groups[label] = groups.get(label, 0) + n
        candidates.append(_smallest_hashes(part, kept))
        finite = np.isfinite(similarity)
        lo = np.array([s[f].min() if f.any() else np.nan for s, f in zip(similarity, finite)])
        hi = np.array([s[f].max() if f.any() else np.nan for s, f in zip(similarity, finite)])
        spill = spill_dir / f"part-{i:05d}.npy"
        np.save(spill, similarity)
        scored.append(_Scored(spill, lo, hi))
    score_range = np.stack([np.fmin.reduce([s.lo for s in scored]), np.fmax.reduce([s.hi for s in scored])], axis=1)
    edges = np.stack([np.histogram_bin_edges(r if np.isfinite(r).all() else np.zeros(0), bins=HIST_BINS)
                      for r in score_range])
    rank_scores = (np.linspace(score_range[0, 1], score_range[0, 0], RANK_POINTS) if np.isfinite(score_range[0]).all()
                   else np.zeros(0))
    counts = np.zeros((n_targets, HIST_BINS), dtype=np.int64)
    rank_tokens = np.zeros(len(rank_scores), dtype=np.int64)
    sel_rank_tokens = np.zeros(len(sel_rows), dtype=np.int64)
    for part, s in zip(parts, scored):
        similarity = np.load(s.spill)
        for t in range(n_targets):
            values = similarity[t][np.isfinite(similarity[t])]
            counts[t] += np.histogram(values, bins=edges[t])[0]
        tokens = np.asarray(part.view.token_counts)[part.kept()].astype(np.int64)
        rank_tokens += _tokens_at_least(similarity[0], tokens, rank_scores)
        sel_rank_tokens += _tokens_at_least(similarity[0], tokens, sel_similarity[0])
        s.spill.unlink()
    return PoolStats(docs=sum(len(p) for p in parts), tokens=int(sum(groups.values())), group_tokens=groups,
                     hist_edges=edges, hist_counts=counts, score_range=score_range, sel_similarity=sel_similarity,
                     rank_scores=rank_scores, rank_tokens=rank_tokens, sel_rank_tokens=sel_rank_tokens,
                     sample_rows=_sample(candidates))


def _tokens_at_least(similarity: np.ndarray, tokens: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Tokens of the documents scoring at least each threshold (NaN scores and thresholds count none)."""
    finite = np.isfinite(similarity)
    order = np.argsort(similarity[finite], kind="stable")
    scores, cum = similarity[finite][order], np.concatenate([[0], np.cumsum(tokens[finite][order])])
    below = np.searchsorted(scores, np.nan_to_num(thresholds, nan=np.inf), side="left")
    return np.where(np.isnan(thresholds), 0, cum[-1] - cum[below])


def _group_tokens(view: Any, part: Any, kept: np.ndarray, tokens: np.ndarray, group_by: str) -> dict[str, int]:
    """Tokens per group label of one shard's visible rows."""
    if group_by == "docid-prefix":
        import pyarrow as pa
        import pyarrow.compute as pc

        ids = part.view.docids.arrow().take(pa.array(kept, pa.int64()))
        prefix = pc.replace_substring_regex(ids, pattern="-[^-]*$", replacement="")
        table = pa.table({"g": prefix, "t": pa.array(tokens)}).group_by("g").aggregate([("t", "sum")])
        return dict(zip(table.column("g").to_pylist(), table.column("t_sum").to_pylist()))
    names = short_names(view.sources)
    number = {src: i for i, src in enumerate(view.sources)}
    local = np.asarray(part.view.source_ids)[kept].astype(np.int64)
    size = len(part.view.sources)
    docs = np.bincount(local, minlength=size)
    sums = np.bincount(local, weights=tokens, minlength=size) if len(local) else np.zeros(size)
    out: dict[str, int] = {}
    for src, n_docs, n in zip(part.view.sources, docs.tolist(), sums.tolist()):
        if n_docs:  # a group of the pool even where its documents hold no tokens
            label = names[number[src]]
            out[label] = out.get(label, 0) + int(n)
    return out


def short_names(paths: Sequence[str]) -> list[str]:
    """The shortest path suffix (file name, then parent/file, ...) that tells the sources apart."""
    parts = [Path(p).parts or (p,) for p in paths]
    for depth in range(1, max((len(p) for p in parts), default=1) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return list(paths)


def _smallest_hashes(part: Any, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(hashes, global rows)`` of the shard's ``POOL_SAMPLE`` visible rows with the smallest docid hash."""
    from nagindex.index.dedup import docid_hashes

    hashes = docid_hashes(part.view, 0)[kept]
    take = np.argsort(hashes, kind="stable")[:POOL_SAMPLE]
    return hashes[take], part.start + take


def _sample(candidates: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The ``POOL_SAMPLE`` smallest hashes over all shards, in hash order (a 64-bit tie between two
    docids is broken by global row)."""
    hashes = np.concatenate([h for h, _ in candidates])
    rows = np.concatenate([r for _, r in candidates])
    order = np.lexsort((rows, hashes))[:POOL_SAMPLE]
    return rows[order]
