"""An evaluation shown: the terminal table, and the ``--report`` HTML page with its two plots.

Drawn from the JSON document only (``run.evaluate``'s ``data``), so a saved ``--json`` can be
shown again. The page reuses ``nagindex report``'s drawing helpers (``query/report_page.py``: Agg
canvas, embedded PNGs, one self-contained file); matplotlib is the ``report`` extra.
"""
from __future__ import annotations

import base64
import html
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError


def format_table(data: dict[str, Any]) -> str:
    """One line of figures per arm, means over seeds; deltas are arm minus ``random`` with a 95% interval."""
    head = (f"{data['target']}: {data['heldout_examples']:,} held-out examples (of {data['examples_available']:,}; "
            f"{data['profile_examples_excluded']:,} built a profile and are left out), {len(data['seeds'])} seed(s), "
            f"{data['train_tokens']:,} tokens per model ({data['proxy']['parameters']:,} parameters)")
    choice = data["multiple_choice"]
    nait = data.get("method", "nag") == "nait"  # JSON written before --method nait has no method: NAG
    score_key, score_label = ("nait_score", "NAIT score") if nait else ("nag_similarity", "NAG sim")
    columns = ["arm", "docs", "tokens", "KL red.", score_label, "bpb", "d bpb vs random [95%]"]
    columns += ["gold logprob", "d logprob vs random [95%]", "acc"] if choice else []
    rows = [columns]
    for arm in data["arms"]:
        row = [arm["name"], f"{arm['documents']:,}", f"{arm['tokens']:,}", f"{arm['kl_reduction']:+.4f}",
               f"{arm[score_key]:.4f}", f"{np.mean(arm['bpb']):.4f}",
               _interval(arm.get("delta_bpb_vs_random"), 4)]
        if choice:
            row += [f"{np.mean(arm['gold_logprob']):.3f}", _interval(arm.get("delta_gold_logprob_vs_random"), 3),
                    f"{np.mean(arm['accuracy']):.3f}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    scored = ("NAIT score: mean NAIT score (sum over layers of activation . direction) against the held-out "
              "examples' directions" if nait else "NAG sim: mean similarity to the held-out examples")
    foot = (f"KL red.: DSIR's KL reduction (nats, > 0: closer to the target than the pool); {scored}; "
            "bpb: held-out bits per byte (lower is better); d: arm - random per seed")
    return "\n".join([head, *lines, foot])


def _interval(delta: dict[str, Any] | None, digits: int) -> str:
    if delta is None:
        return "-"
    if delta["lo"] is None:
        return f"{delta['mean']:+.{digits}f} [n/a: 1 seed]"
    return f"{delta['mean']:+.{digits}f} [{delta['lo']:+.{digits}f}, {delta['hi']:+.{digits}f}]"


def check_report(path: str | os.PathLike[str]) -> None:
    """Before any work: the report is an ``.html`` file and matplotlib is there to draw it."""
    if Path(path).suffix.lower() not in (".html", ".htm"):
        raise NagIndexError(f"--report {path}: the report is one HTML page; use a .html file name")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise NagIndexError("--report draws with matplotlib: pip install -e '.[report]'") from None


def write_report(data: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """The HTML page: the table, the per-arm differences to random with their intervals, the learning curves."""
    from nagindex.fsio import atomic_path

    check_report(path)
    esc = html.escape
    scored = "NAIT score (--method nait)" if data.get("method") == "nait" else "NAG similarity"
    deltas = ("Held-out bits per byte of each arm's proxy models minus random's, seed by seed (below 0: the arm's "
              "data predicts the target better); and, for multiple-choice targets, the same for the gold answer's "
              "log-probability (above 0: better). Bars whose interval crosses 0 are not significant.")
    curves = "Held-out bits per byte as the proxy models read their tokens: mean over seeds, the band spanning the seeds."
    figures = [("Difference to random per arm (mean over seeds, 95% interval)", _plot_deltas(data), deltas),
               ("Learning curves", _plot_curves(data), curves)]
    from nagindex.query.report_page import _CSS

    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>nagindex evaluate: {esc(data['target'])}</title>", f"<style>{_CSS}</style></head><body>",
             f"<h1>Does the selection help? {esc(data['target'])}</h1>",
             (f"<p class='muted'>{esc(data['index'])} &middot; training-free score: {esc(scored)} &middot; "
              f"generated {time.strftime('%Y-%m-%d %H:%M:%S')}</p>")]
    parts += [f"<div class='note'>{esc(n)}</div>" for n in data["notes"]]
    parts.append(f"<h2>Summary</h2><pre>{esc(format_table(data))}</pre>")
    for i, (title, png, caption) in enumerate(figures, 1):
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{i}. {esc(title)}</h2><figure><img alt='{esc(title)}' "
                     f"src='data:image/png;base64,{b64}'><figcaption>{esc(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return out


def _plot_deltas(data: dict[str, Any]) -> bytes:
    from nagindex.query.report_page import _COLORS, _figure, _png

    arms = [a for a in data["arms"] if "delta_bpb_vs_random" in a]
    keys = [("delta_bpb_vs_random", "bits per byte")]
    if data["multiple_choice"]:
        keys.append(("delta_gold_logprob_vs_random", "gold answer log-probability (nats)"))
    fig = _figure(4.6 * len(keys) + 0.6, 3.4)
    for ax, (key, label) in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys):
        means = [a[key]["mean"] for a in arms]
        low = [a[key]["mean"] - a[key]["lo"] if a[key]["lo"] is not None else 0.0 for a in arms]
        high = [a[key]["hi"] - a[key]["mean"] if a[key]["hi"] is not None else 0.0 for a in arms]
        ax.bar(range(len(arms)), means, yerr=[low, high], capsize=4,
               color=[_COLORS[i % len(_COLORS)] for i in range(len(arms))])
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(arms)), [a["name"] for a in arms])
        ax.set_ylabel(f"arm - random: {label}")
    return _png(fig)


def _plot_curves(data: dict[str, Any]) -> bytes:
    from nagindex.query.report_page import _COLORS, _POOL_COLOR, _figure, _png

    fig = _figure(5.6, 3.6)
    ax = fig.subplots()
    x = np.asarray(data["curve_tokens"])
    for i, arm in enumerate(data["arms"]):
        curves = np.asarray(arm["curve_bpb"])
        color = _POOL_COLOR if arm["name"] == "random" else _COLORS[i % len(_COLORS)]
        ax.plot(x, curves.mean(axis=0), marker="o", color=color, label=arm["name"])
        ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=color, alpha=0.2)
    ax.set_xlabel("tokens read")
    ax.set_ylabel("held-out bits per byte")
    ax.legend()
    return _png(fig)
