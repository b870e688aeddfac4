"""The HTML page of ``nagindex report``: four matplotlib figures and a summary table.

``write_report`` collects the data (``report.collect``), renders the page and writes it. The page is
drawn from a ``report.ReportData`` only (no index access here). The PNGs are
embedded as base64 so the page is one file that can be mailed or attached to an
experiment log. matplotlib (the ``report`` extra) is imported lazily and drawn
with the Agg canvas, never pyplot, so the report works headless and leaves no
global figure state behind.
"""
from __future__ import annotations

import base64
import html
import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.fsio import atomic_path
from nagindex.query.report import (
    GROUP_BY,
    ReportData,
    collect,
    jaccard_matrix,
    shared_share,
)
from nagindex.query.report_pool import POOL_SAMPLE

MAX_GROUPS = 12  # bars in the composition plot; the rest are summed as "other"


def write_report(selection_path: str | os.PathLike, index_dir: str | os.PathLike,
                 out_html: str | os.PathLike, group_by: str = "source", *,
                 device: str = "auto", sections: Sequence[Callable[[ReportData], str]] = (),
                 method: str | None = None) -> Path:
    """Write the HTML report of ``selection_path`` (a ``query``/``mix`` output) against ``index_dir``.

    ``group_by``: ``source`` (the input file each doc came from) or
    ``docid-prefix`` (the docid before its last ``-``: ``lambada-000123`` ->
    ``lambada``; the right grouping for the demo corpus, one file of many
    sources). Target NAGs come from the index's target cache; where they are
    missing they are encoded again with the index's backbone on ``device``. ``sections``: more HTML after
    the figures, each drawn from the report's data (``nagindex report`` adds ``explain.html.report_section``;
    the report does not import the layers above it). ``method``: the selection's ``--method`` (by default its
    manifest's); a ``nait`` selection's page scores by NAIT and leaves out the ``sections`` (they explain NAGs),
    saying so.
    """
    if group_by not in GROUP_BY:
        raise NagIndexError(f"group_by {group_by!r}: choose one of {', '.join(GROUP_BY)}")
    if Path(out_html).suffix.lower() not in (".html", ".htm"):
        raise NagIndexError(f"-o {out_html}: the report is one HTML page; use a .html file name")
    started = time.perf_counter()
    data = collect(selection_path, index_dir, group_by=group_by, device=device, method=method)
    if sections and data.method == "nait":
        data.notes.append("this selection was made with --method nait: the profile neurons and top-document "
                          "explanations (nagindex explain) are NAG-only and are not shown")
        sections = ()
    page = render_page(data, group_by, started)
    if sections:
        page = page.removesuffix("</body></html>") + "\n".join(s(data) for s in sections) + "\n</body></html>"
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out


def render_page(data: ReportData, group_by: str, started: float) -> str:
    """The whole page; ``started`` (a ``perf_counter`` value) times the report in its header."""
    figures = [
        ("Score distribution: pool vs selection", _plot_histograms(data),
         f"{_SCORE_TEXT[data.method]} of every pool document to each target; the selected documents "
         "are the right tail, cut at the token budget."),
        (f"Source composition (grouped by {group_by})", _plot_composition(data, group_by),
         "Share of tokens per group in the pool and in the selection: which groups the target pulls up or down."),
        (_overlap_title(data), _plot_overlap(data), _overlap_caption(data)),
        (f"Per-layer contribution, top {len(data.contrib_labels)} documents", _plot_layers(data),
         "Left: how much each layer adds to a document's score (a row sums to the score); below the line, the "
         f"pool's average over {min(POOL_SAMPLE, data.pool.docs):,} documents (those with the smallest docid hash). Right: the same minus "
         "that average, i.e. the layers where the top documents beat a typical one."),
    ]
    return _html_page(data, figures, group_by, time.perf_counter() - started)


# ---------------------------------------------------------------- plots

#: what a score is, per --method (captions); ``_score_axis`` labels the plots' axes
_SCORE_TEXT = {"nag": "NAG similarity (1 - nag_distance)",
               "nait": "NAIT score (sum over layers of the document's activation . the target's direction)"}


def _score_axis(d: ReportData) -> str:
    return "NAIT score against target" if d.method == "nait" else "NAG similarity to target"


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
        _, first = np.unique(d.sel_rows[d.sel_target == t], return_index=True)
        chosen = d.pool.sel_similarity[t][d.sel_target == t][first]
        bins = d.pool.hist_edges[t]
        ax.hist(bins[:-1], bins=bins, weights=d.pool.hist_counts[t], color=_POOL_COLOR,
                label=f"pool ({d.pool.docs:,} docs)")
        ax.hist(chosen, bins=bins, color=_COLORS[t % len(_COLORS)], alpha=0.85,
                label=f"selected ({len(chosen):,})")
        if len(chosen):
            ax.axvline(chosen.min(), color="black", linestyle="--", linewidth=1,
                       label=f"cut-off {chosen.min():.4f}")
        ax.set_title(f"{target.name}", fontsize=11)
        ax.set_xlabel(_score_axis(d))
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


def _group_shares(group_tokens: dict[str, int], order: list[str], with_other: bool) -> np.ndarray:
    """``_token_shares`` of tokens already summed per group (the pool's, merged over shards)."""
    total = float(sum(group_tokens.values())) or 1.0
    known = {g: i for i, g in enumerate(order)}
    out = np.zeros(len(order) + int(with_other))
    for label, n in group_tokens.items():
        i = known.get(label, len(order) if with_other else None)
        if i is not None:
            out[i] += n
    return out / total


def _pct(v: float) -> str:
    """Bar label: whole percents, one decimal below 1% so a small share does not read as zero."""
    return "" if v <= 0 else f"{v:.1%}" if v < 0.01 else f"{v:.0%}"


def _plot_composition(d: ReportData, group_by: str) -> bytes:
    labels = np.array(sorted(d.pool.group_tokens), dtype=str)
    pool_share = np.array([d.pool.group_tokens[g] for g in labels.tolist()], dtype=np.float64)
    pool_share /= max(pool_share.sum(), 1.0)
    sel_share = _token_shares(d.sel_groups.astype(str), d.sel_tokens, labels.tolist())
    # the groups that matter most to either side first; the tail is summed as "other"
    rank = [labels[i] for i in np.lexsort((labels, -np.maximum(pool_share, sel_share)))]
    shown, tail = rank[:MAX_GROUPS], len(rank) > MAX_GROUPS
    order = shown + (["(other groups)"] if tail else [])
    sel_groups = d.sel_groups.astype(str)
    series = [("pool", _group_shares(d.pool.group_tokens, shown, tail), _POOL_COLOR)]
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
    pool, total = d.pool, max(float(d.pool.tokens), 1.0)
    cum = pool.rank_tokens / total * 100
    selected_tokens = float(d.sel_tokens.sum()) / total * 100
    fig = _figure(7.5, 3.6)
    ax = fig.subplots()
    ax.step(np.concatenate([[0.0], cum]), np.concatenate([pool.rank_scores[:1], pool.rank_scores]), where="pre",
            color=_POOL_COLOR, linewidth=1.5, label="pool, best first")
    _, first = np.unique(d.sel_rows, return_index=True)
    ax.scatter(pool.sel_rank_tokens[first] / total * 100, pool.sel_similarity[0][first], s=6, color=_COLORS[0],
               label=f"selected ({len(first):,})", zorder=3)
    ax.axvline(selected_tokens, color="black", linestyle="--", linewidth=1,
               label=f"selected: {selected_tokens:.1f}% of pool tokens")
    budget = _budget_share(d.manifest.get("quota", {}), float(pool.tokens))
    if budget is not None and abs(budget - selected_tokens) > 0.05:
        ax.axvline(budget, color="#d62728", linestyle=":", linewidth=1.2,
                   label=f"budget: {budget:.1f}% (the prefix stops at the first doc that overflows)")
    ax.set_xlabel("cumulative share of the pool's tokens (%)")
    ax.set_ylabel(_score_axis(d))
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
    ax_abs.set_title(f"{'Score' if d.method == 'nait' else 'Similarity'} from each layer (a row sums to the score)",
                     fontsize=10)
    ax_ex.set_title("Same, minus the pool mean: where the top docs win", fontsize=10)
    fig.colorbar(im, ax=ax_abs, label=f"{'A_l . v_l' if d.method == 'nait' else 'similarity'} from this layer",
                 pad=0.01, shrink=0.9)
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
    pool_tokens = d.pool.tokens
    sel_tokens = int(d.sel_tokens.sum())
    sel_scores = d.pool.sel_similarity[d.sel_target, np.arange(len(d.sel_rows))]
    rows = [
        ("selection", f"{d.selection_path.name} ({m.get('created_at', '?')}, nagindex {m.get('nagindex_version', '?')})"),
        ("rows", f"{len(d.sel_rows):,} ({len(np.unique(d.sel_rows)):,} distinct documents)"),
        ("tokens", f"{sel_tokens:,} ({sel_tokens / max(pool_tokens, 1):.1%} of the pool)"),
        ("pool", f"{d.pool.docs:,} documents, {pool_tokens:,} tokens ({m.get('index', '?')})"),
        ("quota", _quota_text(m.get("quota", {})) + (f"; mode {m.get('mode')}, dedup {m.get('dedup')}"
                                                      if len(d.targets) > 1 else "")),
        ("layers", f"{len(d.layers)} ({_layer_text(d.layers)}), power {m.get('power', 1.0)}"),
        ("score range (selected)", f"{np.nanmin(sel_scores):.4f} .. {np.nanmax(sel_scores):.4f}"),
        ("score range (pool)", f"{np.nanmin(d.pool.score_range):.4f} .. {np.nanmax(d.pool.score_range):.4f}"),
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
