"""``nagindex report``: one self-contained HTML page that shows what a selection picked and why.

A selection file (``nagindex query`` / ``mix``) holds only the chosen rows, so
the report re-scores the whole pool from the index (no LLM pass: the target
NAGs come from the index's target cache or from reference-format features) to
show the selection against what it was chosen from:

1. score histogram of the pool vs the selected documents, per target;
2. source composition (share of tokens) of the pool vs the selection;
3. for a mixture, the Jaccard overlap of the targets' chosen documents (for a
   single target, the ranked pool's score against cumulative tokens, with the
   budget cut);
4. per-layer contribution to the scores of the top 20 documents
   (``layer_contributions``), next to the pool's average profile;

plus a summary table. The PNGs are embedded as base64 so the page is one file
that can be mailed or attached to an experiment log. matplotlib (the ``report``
extra) is imported lazily and drawn with the Agg canvas, never pyplot, so the
report works headless and leaves no global figure state behind.

Which target examples? The selection's manifest names its targets but not
``--max-examples``, and the target cache is keyed by the example texts. So for
registry and file targets the report looks for every cached prefix of the
target's examples (``query`` keeps the *first* N) and keeps the one whose
profile reproduces the selection file's own scores; only when nothing is cached
does it encode the examples (which needs the backbone).
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nagindex.errors import InputError, NagIndexError

log = logging.getLogger(__name__)

GROUP_BY = ("source", "docid-prefix")
TOP_DOCS = 20  # documents in the per-layer plot
MAX_GROUPS = 12  # bars in the composition plot; the rest are summed as "other"
POOL_SAMPLE = 2000  # pool docs averaged for the per-layer reference profile
_SCORE_ATOL = 1e-9


@dataclass
class TargetInfo:
    """One target of the selection as the report reconstructed it."""

    name: str
    request: Any  # TargetRequest
    codes: np.ndarray  # (T, L, K) target NAGs
    how: str  # where the codes came from, for the summary table
    matches: bool  # does its profile reproduce the selection's scores


@dataclass
class ReportData:
    """Everything the plots and the table need, computed once."""

    selection_path: Path
    manifest: dict[str, Any]
    targets: list[TargetInfo]
    similarity: np.ndarray  # (P, N) pool scores
    sel_rows: np.ndarray  # index row of every selection row (duplicates kept)
    sel_target: np.ndarray  # target number of every selection row
    sel_tokens: np.ndarray
    pool_tokens: np.ndarray
    pool_groups: np.ndarray  # group label per pool row (object)
    sel_groups: np.ndarray  # group label per selection row (object)
    contributions: np.ndarray  # (R, L') per-layer contributions of the top docs
    contrib_labels: list[str]
    contrib_target: np.ndarray  # (R,) the target each top doc is shown for
    pool_contrib: np.ndarray  # (P, L') mean per-layer contribution over a pool sample
    layers: np.ndarray
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- public API

def write_report(selection_path: str | os.PathLike, index_dir: str | os.PathLike,
                 out_html: str | os.PathLike, group_by: str = "source", *,
                 device: str = "auto") -> Path:
    """Write the HTML report of ``selection_path`` (a ``query``/``mix`` output) against ``index_dir``.

    ``group_by``: ``source`` (the input file each doc came from) or
    ``docid-prefix`` (the docid before its last ``-``: ``lambada-000123`` ->
    ``lambada``; the right grouping for the demo corpus, one file of many
    sources). Target NAGs come from the index's target cache; where they are
    missing they are encoded again with the index's backbone on ``device``.
    """
    if group_by not in GROUP_BY:
        raise NagIndexError(f"group_by {group_by!r}: choose one of {', '.join(GROUP_BY)}")
    started = time.perf_counter()
    data = collect(selection_path, index_dir, group_by=group_by, device=device)
    figures = [
        ("Score distribution: pool vs selection", _plot_histograms(data),
         "NAG similarity (1 - nag_distance) of every pool document to each target; the selected documents "
         "are the right tail, cut at the token budget."),
        (f"Source composition (grouped by {group_by})", _plot_composition(data, group_by),
         "Share of tokens per group in the pool and in the selection: which groups the target pulls up or down."),
        (_overlap_title(data), _plot_overlap(data), _overlap_caption(data)),
        (f"Per-layer contribution, top {len(data.contrib_labels)} documents", _plot_layers(data),
         "Left: how much each layer adds to a document's score (a row sums to the score); below the line, the "
         f"pool's average over {min(POOL_SAMPLE, data.similarity.shape[1]):,} documents. Right: the same minus "
         "that average, i.e. the layers where the top documents beat a typical one."),
    ]
    page = _html_page(data, figures, group_by, time.perf_counter() - started)
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


def collect(selection_path: str | os.PathLike, index_dir: str | os.PathLike, *, group_by: str = "source",
            device: str = "auto") -> ReportData:
    """Read the selection, rebuild its targets' profiles and re-score the pool (no plotting)."""
    from nagindex.ingest.index import open_index
    from nagindex.query.profile import count_profile, resolve_layers
    from nagindex.query.score import layer_contributions, score_codes

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
    layers = resolve_layers(manifest.get("layers"), idx_manifest["num_layers"])
    power = float(manifest.get("power", 1.0))

    sel_rows = _rows_of(view, columns["docid"], index_dir)
    requests = _requests(manifest)
    names = _target_names(columns, requests)
    if "target" in columns and len(names) > 1:
        lookup = {n: i for i, n in enumerate(names)}
        sel_target = np.array([lookup[t] for t in columns["target"]], dtype=np.int64)
    else:
        sel_target = np.zeros(len(sel_rows), dtype=np.int64)
    expected = [np.asarray(columns[f"score_{n}"] if f"score_{n}" in columns else columns["score"], dtype=np.float64)
                for n in names]

    targets = []
    for i, (name, req) in enumerate(zip(names, requests)):
        codes, how, matches = _resolve_target(req, name, view, layers, power, sel_rows, expected[i],
                                              manifest, device)
        if not matches:
            notes.append(f"{name}: its target examples no longer reproduce the selection file's scores "
                         "(were the examples or the index changed since the query?); the plots use them as they are now")
        targets.append(TargetInfo(name, req, codes, how, matches))
    profiles = np.stack([count_profile(t.codes, idx_manifest["width"], layers) for t in targets])
    similarity = score_codes(view.codes, profiles, layers, power=power).similarity

    token_counts = np.asarray(view.token_counts)
    pool_groups = _groups(view, np.arange(len(view)), group_by)
    sel_groups = pool_groups[sel_rows]

    top = _top_rows(sel_rows, sel_target, similarity, len(targets))
    contrib_labels: list[str] = []
    contrib_target: list[int] = []
    parts = []
    for t, rows in enumerate(top):
        if len(rows):
            parts.append(layer_contributions(view.codes, rows, profiles[t:t + 1], layers, power)[0])
        for row in rows:
            label = f"{view.docids.take([row])[0]}  {similarity[t, row]:.4f}"
            contrib_labels.append(f"{label}  [{targets[t].name}]" if len(targets) > 1 else label)
            contrib_target.append(t)
    contributions = np.concatenate(parts) if parts else np.zeros((0, len(layers)))
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(view), size=min(POOL_SAMPLE, len(view)), replace=False))
    pool_contrib = layer_contributions(view.codes, sample, profiles, layers, power).mean(axis=1)

    return ReportData(selection_path=sel_path, manifest=manifest, targets=targets, similarity=similarity,
                      sel_rows=sel_rows, sel_target=sel_target,
                      sel_tokens=np.asarray(columns["token_count"], dtype=np.int64), pool_tokens=token_counts,
                      pool_groups=pool_groups, sel_groups=sel_groups, contributions=contributions,
                      contrib_labels=contrib_labels, contrib_target=np.asarray(contrib_target, dtype=np.int64),
                      pool_contrib=pool_contrib, layers=layers, notes=notes)


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

def _read_selection(path: Path) -> dict[str, list[Any]]:
    if not path.is_file():
        raise InputError(f"{path}: no such selection file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        columns = pq.read_table(path).to_pydict()
    elif path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
        columns = {k: [r.get(k) for r in rows] for k in (rows[0] if rows else {})}
    else:
        raise InputError(f"{path}: a selection is a .parquet or .jsonl file written by nagindex query/mix")
    missing = {"docid", "score", "token_count"} - set(columns)
    if columns and missing:
        raise InputError(f"{path}: not a nagindex selection (missing column(s) {', '.join(sorted(missing))})")
    if not columns or not columns["docid"]:
        raise InputError(f"{path}: the selection is empty: nothing to report")
    return columns


def _read_manifest(path: Path) -> dict[str, Any]:
    side = path.with_name(path.name + ".manifest.json")
    if not side.is_file():
        raise InputError(f"{side}: missing; the report needs the manifest that nagindex query/mix writes "
                         "beside the selection (it names the targets)")
    return json.loads(side.read_text("utf-8"))


def _rows_of(view: Any, docids: list[str], index_dir: Any) -> np.ndarray:
    """Index row of each selected docid (docids are unique in an index)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    where = pc.index_in(pa.array([str(d) for d in docids], pa.string()),
                        value_set=view.docids.arrow().cast(pa.string()))
    rows = where.to_numpy(zero_copy_only=False)
    missing = np.flatnonzero(np.isnan(rows.astype(np.float64)))
    if len(missing):
        raise InputError(f"{len(missing):,} selected docids are not in index {index_dir} (first: "
                         f"{docids[missing[0]]!r}): is this the index the selection was made from?")
    return rows.astype(np.int64)


def _requests(manifest: dict[str, Any]) -> list[Any]:
    from nagindex.query.run import TargetRequest

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

def _resolve_target(req: Any, name: str, view: Any, layers: np.ndarray, power: float, rows: np.ndarray,
                    expected: np.ndarray, sampling: dict[str, Any], device: str
                    ) -> tuple[np.ndarray, str, bool]:
    """The target's codes, a note on where they came from, and whether they reproduce ``expected``.

    The examples are drawn as the query drew them (``max_examples`` and
    ``example_seed`` from the selection manifest), so their NAGs are usually in
    the index's target cache and no backbone is loaded.
    """
    from nagindex.query.encode import cache_key, target_codes
    from nagindex.query.run import feature_codes, load_examples

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
    return codes, how, _reproduces(codes, view, layers, power, rows, expected)


def _reproduces(codes: np.ndarray, view: Any, layers: np.ndarray, power: float, rows: np.ndarray,
                expected: np.ndarray) -> bool:
    from nagindex.query.profile import count_profile
    from nagindex.query.score import score_codes

    uniq, inverse = np.unique(rows, return_inverse=True)
    profile = count_profile(codes, view.manifest["width"], layers)
    got = score_codes(np.asarray(view.codes[uniq]), profile, layers, power=power).similarity[0][inverse]
    return bool(np.allclose(got, expected, rtol=0, atol=_SCORE_ATOL, equal_nan=True))


# ---------------------------------------------------------------- derived data

def _groups(view: Any, rows: np.ndarray, group_by: str) -> np.ndarray:
    """Group label of each row: its input file's short name, or its docid before the last ``-``."""
    if group_by == "docid-prefix":
        import pyarrow.compute as pc

        prefix = pc.replace_substring_regex(view.docids.arrow(), pattern="-[^-]*$", replacement="")
        return np.asarray(prefix.to_numpy(zero_copy_only=False), dtype=object)[rows]
    names = _short_names(view.sources)
    return np.asarray(names, dtype=object)[np.asarray(view.source_ids)[rows].astype(np.int64)]


def _short_names(paths: Sequence[str]) -> list[str]:
    """The shortest path suffix (file name, then parent/file, ...) that tells the sources apart."""
    parts = [Path(p).parts or (p,) for p in paths]
    for depth in range(1, max((len(p) for p in parts), default=1) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return list(paths)


def _top_rows(sel_rows: np.ndarray, sel_target: np.ndarray, similarity: np.ndarray, n_targets: int) -> list[np.ndarray]:
    """Per target, its best selected docs by its own score; ``TOP_DOCS`` in all, split evenly."""
    per = max(1, TOP_DOCS // n_targets)
    out = []
    for t in range(n_targets):
        rows = np.unique(sel_rows[sel_target == t])
        order = np.argsort(-similarity[t, rows], kind="stable")
        out.append(rows[order[:per]])
    return out


# ---------------------------------------------------------------- plots

def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


_POOL_COLOR = "#9e9e9e"
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _plot_histograms(d: ReportData) -> bytes:
    from matplotlib.ticker import MaxNLocator

    p = len(d.targets)
    cols = min(p, 3)
    nrows = -(-p // cols)
    fig = _figure(4.6 * cols + 0.6, 3.4 * nrows)
    axes = fig.subplots(nrows, cols, squeeze=False)
    for t, target in enumerate(d.targets):
        ax = axes[t // cols][t % cols]
        pool = d.similarity[t]
        chosen = pool[np.unique(d.sel_rows[d.sel_target == t])]
        bins = np.histogram_bin_edges(pool[np.isfinite(pool)], bins=40)
        ax.hist(pool, bins=bins, color=_POOL_COLOR, label=f"pool ({len(pool):,} docs)")
        ax.hist(chosen, bins=bins, color=_COLORS[t % len(_COLORS)], alpha=0.85,
                label=f"selected ({len(chosen):,})")
        if len(chosen):
            ax.axvline(chosen.min(), color="black", linestyle="--", linewidth=1,
                       label=f"cut-off {chosen.min():.4f}")
        ax.set_title(f"{target.name}", fontsize=11)
        ax.set_xlabel("NAG similarity to target")
        ax.set_ylabel("documents")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8, loc="best")
    for k in range(p, nrows * cols):
        axes[k // cols][k % cols].set_visible(False)
    return _png(fig)


def _token_shares(groups: np.ndarray, tokens: np.ndarray, order: list[str], with_other: bool = False) -> np.ndarray:
    """Share of ``tokens`` per group in ``order``; with ``with_other`` a last slot sums every other group."""
    total = float(tokens.sum()) or 1.0
    out = np.zeros(len(order) + int(with_other))
    if len(groups) == 0:
        return out
    labels, inverse = np.unique(groups, return_inverse=True)
    sums = np.bincount(inverse.ravel(), weights=tokens.astype(np.float64), minlength=len(labels))
    known = {g: i for i, g in enumerate(order)}
    for label, n in zip(labels.tolist(), sums.tolist()):
        i = known.get(label, len(order) if with_other else None)
        if i is not None:
            out[i] += n
    return out / total


def _pct(v: float) -> str:
    """Bar label: whole percents, one decimal below 1% so a small share does not read as zero."""
    return "" if v <= 0 else f"{v:.1%}" if v < 0.01 else f"{v:.0%}"


def _plot_composition(d: ReportData, group_by: str) -> bytes:
    labels, inverse = np.unique(d.pool_groups.astype(str), return_inverse=True)
    pool_share = np.bincount(inverse, weights=d.pool_tokens.astype(np.float64), minlength=len(labels))
    pool_share /= max(pool_share.sum(), 1.0)
    sel_share = _token_shares(d.sel_groups.astype(str), d.sel_tokens, labels.tolist())
    # the groups that matter most to either side first; the tail is summed as "other"
    rank = [labels[i] for i in np.lexsort((labels, -np.maximum(pool_share, sel_share)))]
    shown, tail = rank[:MAX_GROUPS], len(rank) > MAX_GROUPS
    order = shown + (["(other groups)"] if tail else [])
    sel_groups = d.sel_groups.astype(str)
    series = [("pool", _token_shares(d.pool_groups.astype(str), d.pool_tokens, shown, tail), _POOL_COLOR)]
    series.append(("selection" if len(d.targets) == 1 else "selection (all targets)",
                   _token_shares(sel_groups, d.sel_tokens, shown, tail),
                   "#333333" if len(d.targets) > 1 else _COLORS[0]))
    if len(d.targets) > 1:
        for t, target in enumerate(d.targets):
            mask = d.sel_target == t
            series.append((f"chosen by {target.name}", _token_shares(sel_groups[mask], d.sel_tokens[mask], shown,
                                                                     tail), _COLORS[t % len(_COLORS)]))
    n_groups, n_series = len(order), len(series)
    fig = _figure(10.0, max(3.0, 0.42 * n_groups * max(1.0, n_series / 2.2) + 1.4))
    ax = fig.subplots()
    height = 0.8 / n_series
    y = np.arange(n_groups)
    for s, (label, shares, color) in enumerate(series):
        pos = y - 0.4 + height * (s + 0.5)
        bars = ax.barh(pos, shares * 100, height=height, color=color, label=label)
        if n_series <= 4:
            ax.bar_label(bars, labels=[_pct(v) for v in shares], fontsize=7, padding=2)
    ax.set_yticks(y, order)
    ax.invert_yaxis()
    ax.set_xlabel("share of tokens (%)")
    ax.set_ylabel(group_by)
    ax.set_xlim(0, max(float(np.max([s[1].max() for s in series])) * 100 * 1.15, 1.0))
    ax.set_title("Where the selected tokens come from, vs the pool")
    fig.legend(fontsize=8, loc="outside right upper")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _chosen_sets(d: ReportData) -> list[set[int]]:
    return [set(d.sel_rows[d.sel_target == t].tolist()) for t in range(len(d.targets))]


def _overlap_title(d: ReportData) -> str:
    if len(d.targets) > 1:
        return "Overlap between the targets' chosen documents"
    return "Ranked pool and the budget cut (single target: no overlap to show)"


def _overlap_table(d: ReportData) -> str:
    """The Jaccard matrix as an HTML table too: numbers to copy, and to test against."""
    if len(d.targets) < 2:
        return ""
    esc = html.escape
    names = [t.name for t in d.targets]
    matrix = jaccard_matrix(_chosen_sets(d))
    head = "".join(f"<th>{esc(n)}</th>" for n in names)
    body = "".join(f"<tr><th>{esc(a)}</th>" + "".join(f"<td class='jaccard'>{v:.4f}</td>" for v in row) + "</tr>"
                   for a, row in zip(names, matrix))
    return (f"<table class='overlap'><tr><th>Jaccard</th>{head}</tr>{body}</table>"
            f"<p>Chosen by 2+ targets: <span class='shared'>{shared_share(_chosen_sets(d)):.4f}</span> of the "
            "distinct selected documents.</p>")


def _overlap_caption(d: ReportData) -> str:
    if len(d.targets) == 1:
        return ("Pool documents ranked by score, against the cumulative share of the pool's tokens; the "
                "selection is the prefix left of the budget line. A steep drop means the target has a clear "
                "neighbourhood in the pool; a flat curve means the cut is close to arbitrary.")
    mode = d.manifest.get("mode", "paper")
    text = (f"Jaccard overlap of the document sets each target chose; {shared_share(_chosen_sets(d)):.1%} of "
            "the distinct selected documents were chosen by two or more targets.")
    if mode != "paper" or d.manifest.get("dedup"):
        text += (f" This selection was made with mode={mode}, dedup={d.manifest.get('dedup', False)}: each "
                 "document is credited to one target only, so overlaps are 0 by construction.")
    return text


def _plot_overlap(d: ReportData) -> bytes:
    if len(d.targets) == 1:
        return _plot_ranked(d)
    sets = _chosen_sets(d)
    matrix = jaccard_matrix(sets)
    names = [t.name for t in d.targets]
    n = len(names)
    fig = _figure(max(4.8, 1.0 * n + 3.2), max(3.8, 0.8 * n + 2.4))
    ax = fig.subplots()
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), names)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=9,
                    color="white" if matrix[i, j] > 0.6 else "black")
    ax.set_title(f"Jaccard overlap of chosen docs\n{shared_share(sets):.1%} of distinct docs chosen by 2+ targets",
                 fontsize=10)
    fig.colorbar(im, ax=ax, label="Jaccard |A∩B| / |A∪B|")
    return _png(fig)


def _plot_ranked(d: ReportData) -> bytes:
    sim = d.similarity[0]
    order = np.lexsort((np.arange(len(sim)), -np.nan_to_num(sim, nan=-1.0)))
    cum = np.cumsum(d.pool_tokens[order]) / max(float(d.pool_tokens.sum()), 1.0) * 100
    selected_tokens = float(d.sel_tokens.sum()) / max(float(d.pool_tokens.sum()), 1.0) * 100
    fig = _figure(7.5, 3.6)
    ax = fig.subplots()
    ax.step(np.concatenate([[0.0], cum]), np.concatenate([sim[order][:1], sim[order]]), where="pre",
            color=_POOL_COLOR, linewidth=1.5, label="pool, best first")
    chosen = np.isin(order, d.sel_rows)
    ax.scatter(cum[chosen], sim[order][chosen], s=6, color=_COLORS[0], label=f"selected ({int(chosen.sum()):,})",
               zorder=3)
    ax.axvline(selected_tokens, color="black", linestyle="--", linewidth=1,
               label=f"selected: {selected_tokens:.1f}% of pool tokens")
    budget = _budget_share(d.manifest.get("quota", {}), float(d.pool_tokens.sum()))
    if budget is not None and abs(budget - selected_tokens) > 0.05:
        ax.axvline(budget, color="#d62728", linestyle=":", linewidth=1.2,
                   label=f"budget: {budget:.1f}% (the prefix stops at the first doc that overflows)")
    ax.set_xlabel("cumulative share of the pool's tokens (%)")
    ax.set_ylabel("NAG similarity to target")
    ax.set_title(f"{d.targets[0].name}: score by rank")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def _budget_share(quota: dict[str, Any], pool_tokens: float) -> float | None:
    """The token budget as a percentage of the pool (None for a ``k`` quota)."""
    if "fraction" in quota:
        return float(quota["fraction"]) * 100
    if "tokens" in quota and pool_tokens:
        return min(100.0, float(quota["tokens"]) / pool_tokens * 100)
    return None


def _plot_layers(d: ReportData) -> bytes:
    """Left: each layer's share of the score (pool means below the line). Right: the same minus the pool mean.

    The absolute panel is dominated by layers whose common neurons every
    document shares; the excess panel shows which layers actually set the top
    documents apart from an average one.
    """
    from matplotlib.colors import TwoSlopeNorm

    rows = d.contributions
    ref = d.pool_contrib
    names = [t.name for t in d.targets]
    labels = list(d.contrib_labels)
    labels += [f"pool mean  {ref[i].sum():.4f}" + (f"  [{n}]" if len(names) > 1 else "") for i, n in enumerate(names)]
    matrix = np.vstack([rows, ref]) if len(rows) else ref
    excess = np.vstack([rows - ref[d.contrib_target], np.zeros_like(ref)]) if len(rows) else np.zeros_like(ref)
    n_rows, n_layers = matrix.shape
    fig = _figure(max(10.0, 0.3 * n_layers + 6.0), 0.3 * n_rows + 2.0)
    ax_abs, ax_ex = fig.subplots(1, 2, sharey=True)
    step = 1 if n_layers <= 32 else int(np.ceil(n_layers / 32))
    ticks = (range(0, n_layers, step), [str(int(x)) for x in d.layers[::step]])
    im = ax_abs.imshow(matrix, aspect="auto", cmap="viridis", interpolation="nearest")
    limit = float(np.max(np.abs(excess))) or 1e-12
    im_ex = ax_ex.imshow(excess, aspect="auto", cmap="RdBu_r", interpolation="nearest",
                         norm=TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit))
    for ax in (ax_abs, ax_ex):
        ax.axhline(len(rows) - 0.5, color="white" if ax is ax_abs else "black", linewidth=2)
        ax.set_xticks(*ticks, fontsize=7 if n_layers > 16 else 8)
        ax.set_xlabel("layer")
    ax_abs.set_yticks(range(n_rows), labels, fontsize=8)
    ax_abs.set_ylabel("document, score [target]" if len(names) > 1 else "document, score")
    ax_abs.set_title("Similarity from each layer (a row sums to the score)", fontsize=10)
    ax_ex.set_title("Same, minus the pool mean: where the top docs win", fontsize=10)
    fig.colorbar(im, ax=ax_abs, label="similarity from this layer", pad=0.01, shrink=0.9)
    fig.colorbar(im_ex, ax=ax_ex, label="above (+) / below (-) the pool mean", pad=0.01, shrink=0.9)
    return _png(fig)


# ---------------------------------------------------------------- HTML

def _quota_text(q: dict[str, Any]) -> str:
    if "fraction" in q:
        return f"fraction {q['fraction']:g} of pool tokens"
    if "tokens" in q:
        return f"{int(q['tokens']):,} tokens"
    if "k" in q:
        return f"top {int(q['k']):,} docs"
    return "?"


def _summary_rows(d: ReportData) -> list[tuple[str, str]]:
    m = d.manifest
    pool_tokens = int(d.pool_tokens.sum())
    sel_tokens = int(d.sel_tokens.sum())
    sel_scores = np.array([d.similarity[t, r] for t, r in zip(d.sel_target, d.sel_rows)])
    pool = d.similarity
    rows = [
        ("selection", f"{d.selection_path.name} ({m.get('created_at', '?')}, nagindex {m.get('nagindex_version', '?')})"),
        ("rows", f"{len(d.sel_rows):,} ({len(np.unique(d.sel_rows)):,} distinct documents)"),
        ("tokens", f"{sel_tokens:,} ({sel_tokens / max(pool_tokens, 1):.1%} of the pool)"),
        ("pool", f"{pool.shape[1]:,} documents, {pool_tokens:,} tokens ({m.get('index', '?')})"),
        ("quota", _quota_text(m.get("quota", {})) + (f"; mode {m.get('mode')}, dedup {m.get('dedup')}"
                                                      if len(d.targets) > 1 else "")),
        ("layers", f"{len(d.layers)} ({_layer_text(d.layers)}), power {m.get('power', 1.0)}"),
        ("score range (selected)", f"{np.nanmin(sel_scores):.4f} .. {np.nanmax(sel_scores):.4f}"),
        ("score range (pool)", f"{np.nanmin(pool):.4f} .. {np.nanmax(pool):.4f}"),
    ]
    for t, target in enumerate(d.targets):
        mask = d.sel_target == t
        check = "reproduces" if target.matches else "does NOT reproduce"
        check += " the selection's scores"
        rows.append((f"target {target.name}",
                     f"weight {target.request.weight:g}; {target.how}; chose {int(mask.sum()):,} rows, "
                     f"{int(d.sel_tokens[mask].sum()):,} tokens; {check}"))
    if m.get("notes"):
        rows.append(("query notes", " | ".join(str(n) for n in m["notes"])))
    return rows


def _layer_text(layers: np.ndarray) -> str:
    if len(layers) > 1 and np.all(np.diff(layers) == 1):
        return f"layers {layers[0]}..{layers[-1]}"
    return "layers " + ", ".join(str(int(x)) for x in layers)


_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; white-space: nowrap; }
figure { margin: 0.5em 0 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; margin-top: 0.3em; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 10px; margin: 0.5em 0; }
.muted { color: #777; font-size: 0.85em; }
"""


def _html_page(d: ReportData, figures: list[tuple[str, bytes, str]], group_by: str, seconds: float) -> str:
    esc = html.escape
    names = ", ".join(t.name for t in d.targets)
    parts = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>nagindex report: {esc(names)}</title>", f"<style>{_CSS}</style></head><body>",
        f"<h1>nagindex selection report: {esc(names)}</h1>",
        f"<p class='muted'>{esc(str(d.selection_path))} &middot; generated "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')} in {seconds:.1f} s &middot; composition grouped by {esc(group_by)}</p>",
    ]
    parts += [f"<div class='note'>{esc(n)}</div>" for n in d.notes]
    parts.append("<h2>Summary</h2><table>")
    parts += [f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in _summary_rows(d)]
    parts.append("</table>")
    for i, (title, png, caption) in enumerate(figures, 1):
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{i}. {esc(title)}</h2><figure><img alt='{esc(title)}' "
                     f"src='data:image/png;base64,{b64}'><figcaption>{esc(caption)}</figcaption></figure>")
        if i == 3:
            parts.append(_overlap_table(d))
    parts.append("</body></html>")
    return "\n".join(parts)
