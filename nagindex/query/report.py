"""``nagindex report``: one self-contained HTML page that shows what a selection picked and why.

A selection file (``nagindex query`` / ``mix``) holds only the chosen rows, so
the report re-scores the whole pool from the index (no LLM pass: the target
NAGs come from the index's target cache or from reference-format features) to
show the selection against what it was chosen from, one shard at a time
(``report_pool``: every figure is a sum over shards, so memory stays one shard's):

1. score histogram of the pool vs the selected documents, per target;
2. source composition (share of tokens) of the pool vs the selection;
3. for a mixture, the Jaccard overlap of the targets' chosen documents (for a
   single target, the ranked pool's score against cumulative tokens, with the
   budget cut);
4. per-layer contribution to the scores of the top 20 documents
   (``layer_contributions``), next to the pool's average profile;

plus a summary table. This module computes what the page shows (``collect``);
``report_page`` draws it and writes the page (``write_report``).

Which target examples? The ones the query used: its manifest records
``max_examples`` and ``example_seed``, so the same sample is drawn again and its
NAGs are found in the index's target cache by content. The report checks that
they reproduce the selection file's own scores and says so on the page; only
when the cache was cleared are the examples encoded again (with the backbone).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nagindex.errors import InputError, NagIndexError
from nagindex.query.report_pool import PoolStats

GROUP_BY = ("source", "docid-prefix")
TOP_DOCS = 20  # documents in the per-layer plot
REPRODUCE_ROWS = 4096  # selection rows re-scored to check that the target examples still give its scores
_SCORE_ATOL = 1e-9


@dataclass
class TargetInfo:
    """One target of the selection as the report reconstructed it."""

    name: str
    request: Any  # TargetRequest
    codes: np.ndarray  # (T, L, K) target NAGs (none for --method nait)
    how: str  # where the codes came from, for the summary table
    matches: bool  # does its profile reproduce the selection's scores
    directions: np.ndarray | None = None  # (L', d) NAIT directions over the kept layers (--method nait)


@dataclass
class ReportData:
    """Everything the plots and the table need, computed once."""

    selection_path: Path
    manifest: dict[str, Any]
    targets: list[TargetInfo]
    pool: PoolStats  # the whole pool's histograms, groups, ranked curve and sample, merged over shards
    sel_rows: np.ndarray  # index row of every selection row (duplicates kept)
    sel_target: np.ndarray  # target number of every selection row
    sel_tokens: np.ndarray
    sel_groups: np.ndarray  # group label per selection row (object)
    contributions: np.ndarray  # (R, L') per-layer contributions of the top docs
    contrib_labels: list[str]
    contrib_target: np.ndarray  # (R,) the target each top doc is shown for
    pool_contrib: np.ndarray  # (P, L') mean per-layer contribution over a pool sample
    layers: np.ndarray
    notes: list[str] = field(default_factory=list)
    method: str = "nag"  # the selection's --method: scores are NAG similarities or NAIT scores


# ---------------------------------------------------------------- public API

def collect(selection_path: str | os.PathLike, index_dir: str | os.PathLike, *, group_by: str = "source",
            device: str = "auto", method: str | None = None) -> ReportData:
    """Read the selection, rebuild its targets' profiles and re-score the pool shard by shard (no plotting).

    ``method``: the selection's ``--method`` (its manifest's, by default; another is refused). With ``nait``
    every score is the NAIT score against the targets' directions (``query/nait.py``), read from the index's
    dense features, and the per-layer contributions are the terms A_l . v_l."""
    import tempfile

    from nagindex.index.sharded import open_index, take_codes
    from nagindex.query.profile import count_profile, resolve_layers
    from nagindex.query.report_pool import pool_stats
    from nagindex.query.score import layer_contributions
    from nagindex.query.weighting import pool_weigher

    sel_path = Path(selection_path)
    columns = _read_selection(sel_path)
    manifest = _read_manifest(sel_path)
    view = open_index(index_dir)
    if len(view) == 0:
        raise NagIndexError(f"index {index_dir} holds no documents")
    notes: list[str] = []
    if manifest.get("index_rows") not in (None, len(view)):
        notes.append(f"the selection was made on an index of {manifest['index_rows']:,} documents; this one "
                     f"holds {len(view):,}, so the pool plots describe the index as it is now")
    idx_manifest = view.manifest
    method = _method(manifest, method, idx_manifest, index_dir)
    layers = resolve_layers(manifest.get("layers"), idx_manifest["num_layers"])
    power = float(manifest.get("power", 1.0))
    # the selection's --weighting, so the report scores as the query did
    weigh = pool_weigher(manifest.get("weighting", "none"), index_dir, power, layers, pool_docs=len(view))

    sel_rows = _rows_of(view, columns["docid"], index_dir)
    requests = _requests(manifest)
    names = _target_names(columns, requests)
    if "target" in columns and len(names) > 1:
        import pyarrow as pa
        import pyarrow.compute as pc

        sel_target = pc.index_in(columns["target"], value_set=pa.array(names)).to_numpy(
            zero_copy_only=False).astype(np.int64)
    else:
        sel_target = np.zeros(len(sel_rows), dtype=np.int64)
    expected = [np.asarray(columns[f"score_{n}"] if f"score_{n}" in columns else columns["score"], dtype=np.float64)
                for n in names]

    if method == "nait":
        return _collect_nait(sel_path, manifest, view, columns, layers, sel_rows, sel_target, names, requests,
                             expected, group_by, device, notes)
    from nagindex.query.score import score_codes

    targets, each_profile = [], []
    for i, (name, req) in enumerate(zip(names, requests)):
        codes, how = _resolve_target(req, name, view, manifest, device)
        profile = count_profile(codes, idx_manifest["width"], layers)
        matches = _reproduces(name, lambda rows: score_codes(take_codes(view, rows), profile, layers, power=power,
                                                             weights=weigh(profile[None])).similarity[0],
                              sel_rows, expected[i], notes)
        targets.append(TargetInfo(name, req, codes, how, matches))
        each_profile.append(profile)
    profiles = np.stack(each_profile)
    weights = weigh(profiles)
    with tempfile.TemporaryDirectory(prefix="nagindex-report-") as spill:
        pool = pool_stats(view, profiles, layers, power, weights, sel_rows, group_by, Path(spill))

    top = _top_rows(sel_rows, sel_target, pool.sel_similarity, columns["docid"], len(targets))
    contributions, contrib_labels, contrib_target = _top_contributions(
        view, top, targets, len(layers), lambda rows, t: layer_contributions(
            take_codes(view, rows), np.arange(len(rows)), profiles[t:t + 1], layers, power,
            None if weights is None else weights[t:t + 1])[0])
    sample = pool.sample_rows
    pool_contrib = layer_contributions(take_codes(view, sample), np.arange(len(sample)), profiles, layers, power,
                                       weights).mean(axis=1)

    return ReportData(selection_path=sel_path, manifest=manifest, targets=targets, pool=pool,
                      sel_rows=sel_rows, sel_target=sel_target,
                      sel_tokens=np.asarray(columns["token_count"], dtype=np.int64),
                      sel_groups=_sel_groups(view, sel_rows, columns["docid"], group_by), contributions=contributions,
                      contrib_labels=contrib_labels, contrib_target=contrib_target,
                      pool_contrib=pool_contrib, layers=layers, notes=notes)


def _method(manifest: dict[str, Any], method: str | None, idx_manifest: dict[str, Any], index_dir: Any) -> str:
    """The selection's ``--method`` (its manifest's; an explicit other one is refused), checked against the index."""
    from nagindex.query.nait import METHODS, require_nait

    recorded = manifest.get("method", "nag")
    method = method or recorded
    if method not in METHODS:
        raise NagIndexError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if method != recorded:
        raise NagIndexError(f"--method {method}: the selection was made with --method {recorded} (its manifest); "
                            "report it with that method")
    if method == "nait":
        require_nait(idx_manifest, index_dir)
    return method


def _collect_nait(sel_path: Path, manifest: dict[str, Any], view: Any, columns: dict[str, Any], layers: np.ndarray,
                  sel_rows: np.ndarray, sel_target: np.ndarray, names: list[str], requests: list[Any],
                  expected: list[np.ndarray], group_by: str, device: str, notes: list[str]) -> ReportData:
    """``collect`` for a ``--method nait`` selection: the targets' directions (from the index's cache, drawn
    from the examples the query used), the pool's NAIT scores shard by shard, per-layer terms A_l . v_l."""
    import tempfile

    from nagindex.index.dense import take_dense
    from nagindex.query.nait import directions_key, layer_scores, nait_scores, target_directions
    from nagindex.query.report_pool import pool_stats
    from nagindex.query.target import load_examples

    dtype = view.manifest.get("dtype") or "float32"
    targets = []
    for i, (name, req) in enumerate(zip(names, requests)):
        ts = load_examples(req, manifest.get("max_examples"), int(manifest.get("example_seed") or 0))
        cached = (Path(view.directory) / "targets" / f"nait-{directions_key(ts.texts, view.manifest)}.npy").is_file()
        directions = target_directions(view.directory, view.manifest, ts.texts, name=name, device=device)[layers]
        matches = _reproduces(name, lambda rows: nait_scores(take_dense(view, rows)[:, layers], directions[None],
                                                             dtype)[:, 0], sel_rows, expected[i], notes)
        how = (f"{len(ts):,} of {ts.n_available or len(ts):,} examples from {ts.source}"
               + (" (cached NAIT directions)" if cached else " (encoded)"))
        empty = np.zeros((0, view.manifest["num_layers"], view.manifest["top_k"]), np.uint16)
        targets.append(TargetInfo(name, req, empty, how, matches, directions))
    directions = np.stack([t.directions for t in targets])
    with tempfile.TemporaryDirectory(prefix="nagindex-report-") as spill:
        pool = pool_stats(view, directions, layers, 1.0, None, sel_rows, group_by, Path(spill), nait=True)
    top = _top_rows(sel_rows, sel_target, pool.sel_similarity, columns["docid"], len(targets))
    contributions, labels, shown = _top_contributions(
        view, top, targets, len(layers),
        lambda rows, t: layer_scores(take_dense(view, rows)[:, layers], directions[t:t + 1], dtype)[0])
    sample = pool.sample_rows
    return ReportData(selection_path=sel_path, manifest=manifest, targets=targets, pool=pool,
                      sel_rows=sel_rows, sel_target=sel_target,
                      sel_tokens=np.asarray(columns["token_count"], dtype=np.int64),
                      sel_groups=_sel_groups(view, sel_rows, columns["docid"], group_by),
                      contributions=contributions, contrib_labels=labels, contrib_target=shown,
                      pool_contrib=layer_scores(take_dense(view, sample)[:, layers], directions, dtype).mean(axis=1),
                      layers=layers, notes=notes, method="nait")


def _top_contributions(view: Any, top: list[tuple[np.ndarray, np.ndarray]], targets: list[TargetInfo],
                       num_layers: int, contribute: Callable[[np.ndarray, int], np.ndarray],
                       ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The per-layer plot's rows: ``contribute(rows, t)`` ``(n, L')`` of each target's top documents (``_top_rows``),
    their labels (docid, score and, for a mixture, the target) and the target of each row."""
    from nagindex.index.sharded import take_docids

    labels: list[str] = []
    shown: list[int] = []
    parts = []
    for t, (rows, scores) in enumerate(top):
        if len(rows):
            parts.append(contribute(rows, t))
        for docid, score in zip(take_docids(view, rows), scores.tolist()):
            label = f"{docid}  {score:.4f}"
            labels.append(f"{label}  [{targets[t].name}]" if len(targets) > 1 else label)
            shown.append(t)
    return (np.concatenate(parts) if parts else np.zeros((0, num_layers)), labels,
            np.asarray(shown, dtype=np.int64))


def jaccard_matrix(sets: Sequence[set[Any]]) -> np.ndarray:
    """Pairwise Jaccard ``|A & B| / |A | B|`` of the targets' chosen docid sets (1 on the diagonal).

    Two empty sets count as identical (1.0), so a target that chose nothing does
    not read as a perfect disagreement.
    """
    n = len(sets)
    out = np.ones((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            union = len(sets[i] | sets[j])
            out[i, j] = out[j, i] = len(sets[i] & sets[j]) / union if union else 1.0
    return out


def shared_share(sets: Sequence[set[Any]]) -> float:
    """Share of the distinct chosen docs that two or more targets chose."""
    from collections import Counter

    counts = Counter(d for s in sets for d in s)
    return sum(1 for c in counts.values() if c >= 2) / len(counts) if counts else 0.0


# ---------------------------------------------------------------- reading

def _read_selection(path: Path) -> dict[str, Any]:
    """The selection's columns as arrays (docids an Arrow array, the rest numpy): a file, or the folder of
    parts the shards wrote (``query -o DIR``), in rank order."""
    import pyarrow as pa

    if path.is_dir() and any(path.glob("*.parquet")):
        import pyarrow.parquet as pq

        table = pq.read_table(sorted(path.glob("*.parquet"))).sort_by("rank")
    elif not path.is_file():
        raise InputError(f"{path}: no such selection file or folder of parts")
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    elif path.suffix == ".jsonl":
        from pyarrow import json as pa_json

        table = pa_json.read_json(path) if path.stat().st_size else pa.table({})
    else:
        raise InputError(f"{path}: a selection is a .parquet or .jsonl file, or a folder of parts, written by "
                         "nagindex query/mix")
    missing = {"docid", "score", "token_count"} - set(table.column_names)
    if table.num_columns and missing:
        raise InputError(f"{path}: not a nagindex selection (missing column(s) {', '.join(sorted(missing))})")
    if not table.num_rows:
        raise InputError(f"{path}: the selection is empty: nothing to report")
    columns: dict[str, Any] = {"docid": table.column("docid").combine_chunks().cast(pa.large_string())}
    for name in table.column_names:
        if name == "target":
            columns[name] = table.column(name).combine_chunks().cast(pa.string())
        elif name == "token_count" or name == "score" or name.startswith("score_"):
            columns[name] = table.column(name).to_numpy()
    return columns


def _read_manifest(path: Path) -> dict[str, Any]:
    side = path.with_name(path.name + ".manifest.json")
    if not side.is_file():
        raise InputError(f"{side}: missing; the report needs the manifest that nagindex query/mix writes "
                         "beside the selection (it names the targets)")
    return json.loads(side.read_text("utf-8"))


def _rows_of(view: Any, docids: Any, index_dir: Any) -> np.ndarray:
    """Global index row of each selected docid (an Arrow array; docids are unique in an index)."""
    from nagindex.index.sharded import locate, view_parts

    rows = locate(view_parts(view), docids)
    missing = np.flatnonzero(rows < 0)
    if len(missing):
        raise InputError(f"{len(missing):,} selected docids are not in index {index_dir} (first: "
                         f"{docids[int(missing[0])].as_py()!r}): is this the index the selection was made from?")
    return rows


def _requests(manifest: dict[str, Any]) -> list[Any]:
    from nagindex.query.request import TargetRequest

    raw = manifest.get("targets") or []
    if not raw:
        raise InputError("the selection manifest names no targets")
    return [TargetRequest(t["kind"], t["value"], float(t.get("weight", 1.0)),
                          tuple((str(k), str(v)) for k, v in (t.get("filters") or {}).items())) for t in raw]


def _target_names(columns: dict[str, list[Any]], requests: list[Any]) -> list[str]:
    """Display names in target order: a mixture's ``score_<name>`` columns (labels included), else the request's."""
    names = [c[len("score_"):] for c in columns if c.startswith("score_")]
    if len(requests) > 1:
        if len(names) != len(requests):
            raise InputError(f"the manifest names {len(requests)} targets but the selection has "
                             f"{len(names)} score_<target> columns")
        return names
    return [requests[0].display]


# ---------------------------------------------------------------- targets

def _resolve_target(req: Any, name: str, view: Any, sampling: dict[str, Any], device: str) -> tuple[np.ndarray, str]:
    """The target's codes and a note on where they came from.

    The examples are drawn as the query drew them (``max_examples`` and
    ``example_seed`` from the selection manifest), so their NAGs are usually in
    the index's target cache and no backbone is loaded.
    """
    from nagindex.query.run import feature_codes
    from nagindex.query.target import load_examples
    from nagindex.query.target_nags import cache_key, target_codes

    if req.kind == "features":
        if not Path(req.value).is_file():
            raise InputError(f"target {name}: features file {req.value} not found (run the report from the "
                             "folder the query ran in, or with the same paths)")
        codes = feature_codes(req, view.manifest)
        how = f"features {req.value} ({len(codes):,} examples)"
    else:
        ts = load_examples(req, sampling.get("max_examples"), int(sampling.get("example_seed") or 0))
        cached = (Path(view.directory) / "targets" / f"{cache_key(ts.texts, view.manifest)}.npy").is_file()
        codes = target_codes(view.directory, view.manifest, ts.texts, name=name, device=device)
        how = (f"{len(ts):,} of {ts.n_available or len(ts):,} examples from {ts.source}"
               + (" (cached NAGs)" if cached else " (encoded)"))
    return codes, how


def _reproduces(name: str, score_rows: Callable[[np.ndarray], np.ndarray], rows: np.ndarray,
                expected: np.ndarray, notes: list[str]) -> bool:
    """Whether a target still gives the selection file's scores ``expected`` (``score_rows(unique index rows)``:
    its NAG similarities or NAIT scores), checked on ``REPRODUCE_ROWS`` selection rows spread evenly over it
    (all of a smaller one): changed examples change nearly every score, and reading a large selection's every
    row would cost its codes or dense rows. If not, a note says so."""
    if len(rows) > REPRODUCE_ROWS:
        at = np.linspace(0, len(rows) - 1, REPRODUCE_ROWS).astype(np.int64)
        rows, expected = rows[at], expected[at]
    uniq, inverse = np.unique(rows, return_inverse=True)
    matches = bool(np.allclose(score_rows(uniq)[inverse], expected, rtol=0, atol=_SCORE_ATOL, equal_nan=True))
    if not matches:
        notes.append(f"{name}: its target examples no longer reproduce the selection file's scores "
                     "(were the examples or the index changed since the query?); the plots use them as they are now")
    return matches


# ---------------------------------------------------------------- derived data

def _sel_groups(view: Any, rows: np.ndarray, docids: Any, group_by: str) -> np.ndarray:
    """Group label of each selection row: its input file's short name, or its docid before the last ``-``."""
    if group_by == "docid-prefix":
        import pyarrow.compute as pc

        prefix = pc.replace_substring_regex(docids, pattern="-[^-]*$", replacement="").dictionary_encode()
        labels = np.asarray(prefix.dictionary.to_pylist(), dtype=object)  # one string per group, shared
        return labels[prefix.indices.to_numpy()]
    from nagindex.index.sharded import split_rows, view_parts
    from nagindex.query.report_pool import short_names

    names = dict(zip(view.sources, short_names(view.sources)))
    out = np.empty(len(rows), dtype=object)
    for part, where, local in split_rows(view_parts(view), rows):
        sources = part.view.sources
        out[where] = [names[sources[i]] for i in np.asarray(part.view.source_ids)[local].tolist()]
    return out


def _top_rows(sel_rows: np.ndarray, sel_target: np.ndarray, sel_similarity: np.ndarray, sel_docids: Any,
              n_targets: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per target, its best selected docs by its own score and those scores; ``TOP_DOCS`` in all, split evenly.
    Ties go by docid (as in a query), so the rows shown do not depend on the shard layout; docids are read
    for the rows scoring at least the last one shown only."""
    per = max(1, TOP_DOCS // n_targets)
    out = []
    for t in range(n_targets):
        mine = np.flatnonzero(sel_target == t)
        rows, first = np.unique(sel_rows[mine], return_index=True)
        scores = sel_similarity[t][mine][first]
        if len(scores) > per:
            cut = np.partition(-scores, per - 1)[per - 1]
            keep = np.flatnonzero(-scores <= cut)
            rows, first, scores = rows[keep], first[keep], scores[keep]
        docids = np.asarray(sel_docids.take(mine[first]).to_pylist(), dtype=object)
        order = np.lexsort((docids, -scores))[:per]
        out.append((rows[order], scores[order]))
    return out
