"""``query()`` and ``mix()``: target -> profile -> score -> select -> write.

No LLM pass over the corpus: the corpus NAGs come from the index. Target NAGs
come from the target cache (``target_nags.py``), from reference-format features, or,
the first time a target is seen, from one small pass of the index's backbone
over the target examples only. All targets are scored in one pass over the codes.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from nagindex.errors import InputError, NagIndexError
from nagindex.progress import StageTimer
from nagindex.query.request import MODES, TargetLike, TargetRequest, as_targets

if TYPE_CHECKING:
    from nagindex.query.target import TargetSet

log = logging.getLogger(__name__)

@dataclass
class QueryResult:
    """What a query selected, with everything needed to write or report it."""

    out: Path | None
    targets: list[str]
    rows: np.ndarray
    chosen_by: np.ndarray | None
    similarity: np.ndarray  # (P, N) float64
    exhausted: bool
    tokens: int
    pool_docs: int
    pool_tokens: int
    notes: list[str] = field(default_factory=list)
    timings: str = ""
    layers: np.ndarray | None = None
    profiles: np.ndarray | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)  # per target: examples used / available


def query(
    targets: TargetLike | Sequence[TargetLike],
    index_dir: str | os.PathLike = "idx",
    *,
    k: int | None = None,
    fraction: float | None = None,
    tokens: int | None = None,
    mode: str = "paper",
    dedup: bool = False,
    layers: Any = None,
    power: float = 1.0,
    quality_file: str | os.PathLike | None = None,
    quality_col: str | None = None,
    quality_id_field: str = "docid",
    invert_quality: bool = False,
    approx: bool = False,
    out: str | os.PathLike | None = None,
    with_text: bool = False,
    max_examples: int | None = None,
    example_seed: int = 0,
    device: str = "auto",
) -> QueryResult:
    """Select documents of the index for one target or a mixture of targets.

    ``targets``: a registered name (``"arc_challenge"``, ``"mmlu:2"`` with a weight), a
    mapping (``{"file": "mine.jsonl", "filter": {"dataset": "chem"}, "weight": 2}``,
    ``{"features": "target_features.jsonl"}``), a ``TargetRequest``, or a list of them.

    One target: rank by NAG distance (ties by docid) and keep the top ``k``, or
    the ranked prefix within a token budget (``tokens``, or ``fraction`` of the
    index's tokens). Several targets: ``mode="paper"`` gives each its weighted
    share and concatenates (duplicates kept unless ``dedup``); ``mode="union"``
    takes turns with no duplicates. ``quality_file`` adds a quality column to
    the distance (spec sec. 4); ``approx`` scores only FAISS binary candidates.
    ``max_examples`` profiles a random sample of each target's examples drawn
    with ``example_seed`` (``target.sample_examples``); the manifest records both.
    """
    from nagindex.index.derived import open_index
    from nagindex.query import select as sel
    from nagindex.query.profile import count_profile, resolve_layers

    targets = as_targets(targets)
    if mode not in MODES:
        raise NagIndexError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
    if not targets:
        raise NagIndexError("no target: give --target NAME, --target-file PATH or --target-features PATH")
    quota = sel.Quota(k=k, tokens=tokens, fraction=fraction)
    if out is not None:
        from nagindex.query.write import check_output

        check_output(out, _input_paths(targets, quality_file))
    timer = StageTimer()
    view = open_index(index_dir)
    if len(view) == 0:
        raise NagIndexError(f"index {index_dir} holds no documents")
    manifest = view.manifest
    notes: list[str] = []
    with timer("target"):
        encoded = [_target_codes(t, view, max_examples, example_seed, device, notes) for t in targets]
        target_sets = [codes for codes, _ in encoded]
    kept = resolve_layers(layers, manifest["num_layers"])
    with timer("profile"):
        profiles = np.stack([count_profile(c, manifest["width"], kept) for c in target_sets])
    with timer("score"):
        candidates = _approx_candidates(view, profiles, kept, quota, len(targets)) if approx else None
        codes = view.codes if candidates is None else view.codes[candidates]
        scores = _score(codes, profiles, kept, power)
    with timer("select"):
        # the lazy column: select reads the docids of tied rows only, from their bytes
        docids = view.docids if candidates is None else np.asarray(view.docids.take(candidates), dtype=object)
        token_counts = np.asarray(view.token_counts if candidates is None else view.token_counts[candidates])
        keys = scores.nag_distance
        quality = None
        if quality_file is not None:
            quality = _quality(quality_file, quality_col, quality_id_field,
                               view.docids.arrow() if candidates is None else docids)
        selection, combined = _select(keys, quality, docids, token_counts, quota, targets, mode, dedup,
                                      invert_quality)
    rows = selection.rows if candidates is None else candidates[selection.rows]
    if selection.exhausted:
        notes.append(f"the quota asks for more than the index holds ({len(view):,} documents, "
                     f"{view.total_tokens:,} tokens): all of it is selected")
    similarity = scores.similarity
    if candidates is not None:
        full = np.full((len(targets), len(view)), np.nan)
        full[:, candidates] = similarity
        similarity = full
    result = QueryResult(out=None, targets=[t.display for t in targets], rows=rows, chosen_by=selection.target,
                         similarity=similarity, exhausted=selection.exhausted,
                         tokens=int(np.asarray(view.token_counts)[rows].sum()), pool_docs=len(view),
                         pool_tokens=view.total_tokens, notes=notes, layers=kept, profiles=profiles,
                         examples=[n for _, n in encoded])
    if out is not None:
        with timer("write"):
            sampling = {"max_examples": max_examples, "example_seed": example_seed}
            result.out = _write(result, view, combined, candidates, out, with_text, quota, mode, dedup, power,
                                approx, targets, sampling)
    result.timings = timer.summary()
    return result


def mix(mixture: str | os.PathLike | Mapping[str, Any] | Any, index_dir: str | os.PathLike = "idx",
        **options: Any) -> QueryResult:
    """``query`` for a mixture: a YAML file (``configs/mixtures/paper6.yaml``), or the same as a mapping
    (``{"mode": "paper", "fraction": 0.2, "targets": [{"name": "arc_challenge"}, ...]}``), or a
    ``Mixture``. The mixture gives the targets, mode, dedup and quota; ``options`` are the rest of
    ``query``'s keywords (``out``, ``max_examples``, ``with_text``...).
    """
    from nagindex.query.mixture import Mixture, load_mixture, mixture_from_mapping

    if isinstance(mixture, Mapping):
        mixture = mixture_from_mapping(mixture)
    elif not isinstance(mixture, Mixture):
        mixture = load_mixture(mixture)
    clash = sorted(set(options) & {"targets", "k", "tokens", "fraction", "mode", "dedup"})
    if clash:
        raise NagIndexError(f"mix: {', '.join(clash)}: set by the mixture itself, not as options")
    return query(mixture.targets, index_dir, k=mixture.k, tokens=mixture.tokens, fraction=mixture.fraction,
                 mode=mixture.mode, dedup=mixture.dedup, **options)


def _input_paths(targets: Sequence[TargetRequest], quality_file: Any = None) -> list[str]:
    """The files a query reads besides the index: target files, feature files, the quality file."""
    return [t.value for t in targets if t.kind != "name"] + ([str(quality_file)] if quality_file else [])


def default_output(targets: Sequence[TargetRequest], stem: str | None = None) -> str:
    """``<targets>.parquet`` in the working folder (``arc_challenge.parquet``), or
    ``<targets>.selection.parquet`` where the plain name is a target file of the query itself."""
    stem = stem or "+".join(t.display for t in targets) or "selection"
    inputs = {Path(p).resolve() for p in _input_paths(targets)}
    return f"{stem}.parquet" if Path(f"{stem}.parquet").resolve() not in inputs else f"{stem}.selection.parquet"


def _target_codes(t: TargetRequest, view: Any, max_examples: int | None, seed: int, device: str,
                  notes: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """The target's example NAGs and how many examples they are (of how many available)."""
    from nagindex.query.target_nags import target_codes

    manifest = view.manifest
    if t.kind == "features":
        codes = feature_codes(t, manifest)
        return codes, {"used": len(codes), "available": len(codes)}
    ts = load_examples(t, max_examples, seed)
    if ts.note:
        notes.append(f"{t.display}: {ts.note}")
    log.info("target %s: %d examples from %s", t.display, len(ts.texts), ts.source)
    codes = target_codes(view.directory, manifest, ts.texts, name=t.display, device=device)
    return codes, {"used": len(ts), "available": ts.n_available or len(ts), "source": ts.source}


def load_examples(t: TargetRequest, max_examples: int | None = None, seed: int = 0) -> TargetSet:
    """The ``TargetSet`` of a ``name`` or ``file`` request (features requests have no texts)."""
    if t.kind == "name":
        from nagindex.query.target import load_target

        return load_target(t.value, limit=max_examples, seed=seed)
    if t.kind == "file":
        from nagindex.query.target import load_target_file

        if not Path(t.value).is_file():
            raise InputError(f"target file {t.value} not found")
        return load_target_file(t.value, limit=max_examples, seed=seed, filters=dict(t.filters) or None)
    raise NagIndexError(f"{t.kind!r} targets have no example texts")


def feature_codes(t: TargetRequest, manifest: dict[str, Any]) -> np.ndarray:
    from nagindex.data import Reject
    from nagindex.ingest.features import read_features

    codes = []
    for rec in read_features([t.value], manifest["neuron_type"], num_layers=manifest["num_layers"],
                             top_k=manifest["top_k"], width=manifest["width"]):
        if isinstance(rec, Reject):
            raise InputError(rec.message())
        codes.append(rec[1])
    if not codes:
        raise InputError(f"{t.value}: no target features")
    return np.stack(codes)


def _score(codes: np.ndarray, profiles: np.ndarray, kept: np.ndarray, power: float) -> Any:
    from nagindex.query.score import score_codes

    return score_codes(codes, profiles, kept, power=power)


def _approx_candidates(view: Any, profiles: np.ndarray, kept: np.ndarray, quota: Any, n_targets: int) -> np.ndarray | None:
    from nagindex.query.approx import faiss_candidates

    return faiss_candidates(view, profiles, kept, quota, n_targets)


def _quality(path: str | os.PathLike, column: str | None, id_field: str, docids: Any) -> np.ndarray:
    """Quality per index doc (NaN where the quality file has none), joined on docid."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from nagindex.query.sources import read_records

    if not column:
        raise NagIndexError("--quality-file needs --quality-col")
    rows = read_records(Path(path))
    if rows and (id_field not in rows[0] or column not in rows[0]):
        raise InputError(f"{path}: needs columns {id_field!r} and {column!r} (has {', '.join(rows[0])})")
    ids = pa.array([str(r[id_field]) for r in rows], pa.string())
    values = np.array([np.nan if r[column] is None else float(r[column]) for r in rows], dtype=np.float64)
    docids = pc.cast(docids, pa.string()) if isinstance(docids, pa.Array) else pa.array(docids, pa.string())
    where = pc.index_in(docids, value_set=ids).to_numpy(zero_copy_only=False)
    quality = np.full(len(docids), np.nan)
    hit = ~np.isnan(where.astype(np.float64))
    quality[hit] = values[where[hit].astype(np.int64)]
    return quality


def _select(keys: np.ndarray, quality: np.ndarray | None, docids: Any, token_counts: np.ndarray,
            quota: Any, targets: Sequence[TargetRequest], mode: str, dedup: bool,
            invert_quality: bool) -> tuple[Any, np.ndarray | None]:
    from nagindex.query import select as sel

    combined = None
    if quality is not None:
        combined = np.stack([sel.combine_quality(k, quality, higher_is_better=invert_quality) for k in keys])
        keep = np.flatnonzero(~np.isnan(quality))
        if len(keep) == 0:
            raise NagIndexError("no index document has a quality value (check --quality-file ids)")
        sub = _select(combined[:, keep], None, sel.take_ids(docids, keep), token_counts[keep], quota, targets, mode,
                      dedup, invert_quality)[0]
        return sel.Selection(rows=keep[sub.rows], target=sub.target, exhausted=sub.exhausted), combined
    if len(targets) == 1:
        return sel.select(keys[0], docids, quota, token_counts), None
    weights = [t.weight for t in targets]
    if mode == "paper":
        return sel.paper_mixture(keys, docids, quota, weights, token_counts, dedup=dedup), None
    return sel.union_mixture(keys, docids, quota, weights, token_counts), None


def _write(result: QueryResult, view: Any, combined: np.ndarray | None, candidates: np.ndarray | None,
           out: str | os.PathLike, with_text: bool, quota: Any, mode: str, dedup: bool, power: float,
           approx: bool, targets: Sequence[TargetRequest], sampling: dict[str, Any]) -> Path:
    from nagindex import __version__
    from nagindex.query.write import fetch_texts, write_selection

    rows = result.rows
    target_idx = result.chosen_by if result.chosen_by is not None else np.zeros(len(rows), dtype=np.int64)
    sim = result.similarity[target_idx, rows]
    sources = [view.sources[i] for i in np.asarray(view.source_ids)[rows]]
    columns: dict[str, Any] = {
        "rank": np.arange(1, len(rows) + 1, dtype=np.int64),
        "docid": view.docids.take(rows),
        "score": sim,
        "nag_distance": 1.0 - sim,
        "token_count": np.asarray(view.token_counts)[rows],
        "source": sources,
        "position": np.asarray(view.positions)[rows],
    }
    if combined is not None:
        full = combined if candidates is None else _scatter(combined, candidates, len(view))
        columns["combined_score"] = full[target_idx, rows]
    if len(targets) > 1:
        columns["target"] = [result.targets[i] for i in target_idx]
        for i, name in enumerate(result.targets):
            columns[f"score_{name}"] = result.similarity[i, rows]
    if with_text:
        manifest = view.manifest
        columns["text"] = fetch_texts(sources, np.asarray(view.positions)[rows],
                                      text_field=manifest.get("text_field", "doc"),
                                      id_field=manifest.get("id_field", "docid"))
    manifest = {
        "nagindex_version": __version__, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "index": str(Path(view.directory).resolve()), "index_rows": len(view),
        "targets": [{"kind": t.kind, "value": t.value, "weight": t.weight, "filters": dict(t.filters),
                     "label": t.display, "examples": n} for t, n in zip(targets, result.examples)],
        **sampling,
        "quota": {k: v for k, v in vars(quota).items() if v is not None}, "mode": mode, "dedup": dedup,
        "power": power, "layers": [int(x) for x in result.layers], "approx": approx,
        "rows": len(rows), "tokens": result.tokens, "notes": result.notes,
    }
    return write_selection(out, columns, manifest)


def _scatter(values: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    full = np.full((values.shape[0], n), np.nan)
    full[:, rows] = values
    return full
