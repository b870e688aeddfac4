"""Explanations as HTML: a page of its own (``nagindex explain --html``) and a section of ``nagindex report``.

The figures are matplotlib PNGs embedded in the page, drawn as the report draws its own (Agg canvas, no
pyplot). In the report, the top documents of each target are listed with links to their explanations
further down the same page (``#explain-<target>-<rank>``), so the page stays one file.
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.explain.deactivate import DeactivationResult
from nagindex.explain.doc import DocExplanation
from nagindex.explain.profile import ProfileExplanation

#: top documents per target explained in the report
REPORT_DOCS = 10
_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;"
        "font-size:90%}img{max-width:100%}pre{white-space:pre-wrap;background:#f6f6f6;padding:1em}"
        ".muted{color:#777}")


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"


def plot_profile(p: ProfileExplanation) -> bytes:
    """Left: separation and concentration per layer. Right: the top neurons' lift (log2), layer by rank."""
    from nagindex.query.report_page import _figure, _png

    layers = [x.layer for x in p.layers]
    fig = _figure(11.0, 3.6)
    ax, heat = fig.subplots(1, 2, width_ratios=[1, 1.3])
    ax.bar(layers, [x.separation for x in p.layers], color="#1f77b4", label="separation from the pool (TV)")
    ax.plot(layers, [x.concentration for x in p.layers], color="#d62728", marker=".",
            label=f"share of slots in the top {p.top}")
    ax.set_xlabel("layer")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    lift = np.full((len(p.layers), p.top), np.nan)
    for i, x in enumerate(p.layers):
        lift[i, :len(x.neurons)] = [np.log2(s.lift) for s in x.neurons]
    limit = float(np.nanmax(np.abs(lift))) if np.isfinite(lift).any() else 1.0
    im = heat.imshow(lift.T, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    heat.set_xlabel("layer")
    heat.set_ylabel("neuron rank in the profile")
    fig.colorbar(im, ax=heat, label="log2 lift (target share / pool share)")
    return _png(fig)


def plot_deactivation(d: DeactivationResult) -> bytes:
    """Accuracy change per arm (points, with 95% intervals), vs the intact backbone."""
    from nagindex.query.report_page import _figure, _png

    arms = d.arms[1:]
    fig = _figure(6.0, 0.5 * len(arms) + 1.5)
    ax = fig.subplots()
    for i, arm in enumerate(arms):
        delta = arm.delta_accuracy
        mean = 100 * delta["mean"]
        lo, hi = (mean, mean) if delta["lo"] is None else (100 * delta["lo"], 100 * delta["hi"])
        ax.errorbar([mean], [i], xerr=[[mean - lo], [hi - mean]], fmt="o", color="#d62728" if i == 0 else "#555")
    ax.axvline(0, color="#999", linewidth=1)
    ax.set_yticks(range(len(arms)), [a.name for a in arms])
    ax.invert_yaxis()
    ax.set_xlabel(f"accuracy change, points (intact {100 * d.arms[0].accuracy:.1f})")
    return _png(fig)


def plot_doc(doc: DocExplanation) -> bytes:
    """Each layer's part of the document's score."""
    from nagindex.query.report_page import _figure, _png

    fig = _figure(8.0, 2.4)
    ax = fig.subplots()
    ax.bar([x.layer for x in doc.layers], [x.contribution for x in doc.layers], color="#1f77b4")
    ax.set_xlabel("layer")
    ax.set_ylabel("share of the score")
    return _png(fig)


def profile_html(p: ProfileExplanation) -> str:
    esc = html.escape
    rows = "".join(f"<tr><td>{x.layer}</td><td>{x.concentration:.3f}</td><td>{x.effective_neurons:.1f}</td>"
                   f"<td>{x.separation:.3f}</td><td>" + ", ".join(
                       f"{s.neuron} ({100 * s.target_share:.0f}% / {100 * s.pool_share:.0f}%, x{s.lift:.1f})"
                       for s in x.neurons[:5]) + "</td></tr>" for x in p.layers)
    return (f"<h3>Profile of {esc(p.target)}</h3><p class='muted'>{p.examples.get('used')} target examples, "
            f"{p.pool_docs:,} pool documents; most separating layers: "
            f"{esc(', '.join(map(str, p.separating_layers()[:5])))}</p>"
            + _img(plot_profile(p), f"profile of {p.target}")
            + "<table><tr><th>layer</th><th>concentration</th><th>effective neurons</th><th>separation</th>"
            f"<th>top neurons (target% / pool%, lift)</th></tr>{rows}</table>")


def deactivation_html(d: DeactivationResult) -> str:
    return (f"<h3>Deactivation test of {html.escape(d.target)}</h3>" + _img(plot_deactivation(d), "deactivation")
            + f"<pre>{html.escape(d.table())}</pre>")


def doc_html(doc: DocExplanation, anchor: str = "") -> str:
    esc = html.escape
    head = f"<h3 id='{esc(anchor)}'>" if anchor else "<h3>"
    text = f"<pre>{esc(doc.text)}</pre>" if doc.text is not None else ""
    return (f"{head}{esc(doc.docid)}: rank {doc.rank:,} of {doc.pool_docs:,}, score {doc.score:.6f}</h3>"
            + _img(plot_doc(doc), doc.docid) + f"<pre>{esc(doc.table().split(chr(10) + chr(10))[0])}</pre>" + text)


def write_page(explanation: Any, out: str | os.PathLike) -> Path:
    """The ``Explanation`` of ``explain`` as one HTML page."""
    from nagindex.fsio import atomic_path

    parts = [(f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>nagindex explain: "
              f"{html.escape(explanation.profile.target)}</title><style>{_CSS}</style></head><body>"),
             profile_html(explanation.profile)]
    if explanation.doc is not None:
        parts.append(doc_html(explanation.doc))
    if explanation.deactivation is not None:
        parts.append(deactivation_html(explanation.deactivation))
    parts.append("</body></html>")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(parts), encoding="utf-8")
    return path


def report_section(data: Any, index_dir: str | os.PathLike, *, device: str = "auto") -> str:
    """The report's "Explanation" section: each target's profile, then its top ``REPORT_DOCS`` selected
    documents linked to their explanations below. ``data`` is the report's ``ReportData``: its selection
    manifest gives the examples and scoring the query used, its selection file the documents."""
    from nagindex.explain.doc import explain_docs
    from nagindex.explain.profile import explain_profile

    manifest = data.manifest
    sampling = {"max_examples": manifest.get("max_examples"), "example_seed": int(manifest.get("example_seed") or 0)}
    top = _top_docids(data.selection_path, [t.name for t in data.targets])
    parts = ["<h2>Explanation: profile neurons and top documents</h2>"]
    for t, target in enumerate(data.targets):
        parts.append(profile_html(explain_profile(target.request, index_dir, device=device, **sampling)))
        docs = explain_docs(target.request, index_dir, top[t], power=float(manifest.get("power", 1.0)),
                            weighting=manifest.get("weighting") or "none", with_text=False, device=device,
                            **sampling)
        anchors = [f"explain-{t}-{i}" for i in range(len(docs))]
        parts.append("<table><tr><th>rank</th><th>document</th><th>score</th><th>percentile</th></tr>" + "".join(
            f"<tr><td>{d.rank:,}</td><td><a href='#{a}'>{html.escape(d.docid)}</a></td><td>{d.score:.6f}</td>"
            f"<td>{d.percentile:.1f}</td></tr>" for d, a in zip(docs, anchors)) + "</table>")
        parts += [doc_html(d, a) for d, a in zip(docs, anchors)]
    return "\n".join(parts)


def _top_docids(selection: str | os.PathLike, names: list[str]) -> list[list[str]]:
    """Per target, the docids of its first ``REPORT_DOCS`` rows of the selection (a file or a folder of parts,
    read as the report reads it; its ``target`` column for a mixture), in selection order; only those rows'
    docids become Python strings."""
    import pyarrow.compute as pc

    from nagindex.query.report import _read_selection

    columns = _read_selection(Path(selection))
    docids = columns["docid"]
    out: list[list[str]] = []
    for k, name in enumerate(names):
        mine = docids.filter(pc.equal(columns["target"], name)) if "target" in columns else docids if k == 0 \
            else docids.slice(0, 0)
        picked: list[str] = []
        for lo in range(0, len(mine), 4 * REPORT_DOCS):
            for docid in mine.slice(lo, 4 * REPORT_DOCS).to_pylist():
                if len(picked) < REPORT_DOCS and docid not in picked:
                    picked.append(docid)
            if len(picked) == REPORT_DOCS:
                break
        out.append(picked)
    return out
