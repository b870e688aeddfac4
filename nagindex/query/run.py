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
from nagindex.query.request import TargetLike, TargetRequest

if TYPE_CHECKING:
    from nagindex.query.spec import QuerySpec

log = logging.getLogger(__name__)

@dataclass
class QueryResult:
    """What a query selected: ``table`` holds the selection file's columns (rank, docid, score, ...),
    one row per selected document in selection order, whether or not a file was written."""

    out: Path | None
    targets: list[str]
    table: Any  # pyarrow.Table
    exhausted: bool
    tokens: int
    pool_docs: int
    pool_tokens: int
    notes: list[str] = field(default_factory=list)
    timings: str = ""
    layers: np.ndarray | None = None
    profiles: np.ndarray | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)  # per target: examples used / available
    contamination: Any = None  # pyarrow.Table of the documents decontamination removed, or None
    rows: int = 0  # documents selected
    #: a selection written by the shards (``-o DIR``): its part files in ``out``; ``table`` is then None
    parts: list[str] | None = None

    def __len__(self) -> int:
        return self.rows


def query(targets: TargetLike | Sequence[TargetLike], index_dir: str | os.PathLike = "idx",
          **options: Any) -> QueryResult:
    """Select documents of the index for one target or a mixture of targets.

    ``options`` are ``QuerySpec``'s fields (``spec.py`` documents each): one quota (``k``, ``tokens`` or
    ``fraction``), ``mode``/``dedup`` for several targets, ``out``, ``with_text``, scoring, quality,
    sampling, decontamination, group caps and ``one_per_cluster``. ``query(t, idx, k=10)`` is
    ``execute(QuerySpec.of(t, idx, k=10))``.

    The selection is exact at any number of shards (``query/rank.py``): the same rows, in the same
    order, as a one-shard index of the same documents, alone or with any number of queries at once.
    """
    from nagindex.query.spec import QuerySpec

    return execute(QuerySpec.of(targets, index_dir, **options))


def execute(spec: QuerySpec) -> QueryResult:
    """Run one validated selection request: target -> profile -> score -> select -> write."""
    from nagindex.query import rank
    from nagindex.query.fleet import open_fleet
    from nagindex.query.scan import QualitySpec, ScorePlan
    from nagindex.query.weighting import target_weights
    from nagindex.query.write import texts_needed_by
    from nagindex.sources.fetch import SourceTextError

    from nagindex.query.parts import check_parts_form, is_parts_output

    quota = spec.quota
    parts = spec.out is not None and is_parts_output(spec.out)
    if spec.out is not None:
        from nagindex.query.write import check_output

        check_output(spec.out, spec.input_paths(), folder=True)
        if parts:
            check_parts_form(spec)
    timer = StageTimer()
    notes: list[str] = []
    guard = guarded_benchmarks(spec.targets, spec.decontaminate, spec.decontaminate_against)
    caps, groups = _caps(spec)
    clusters = None
    if spec.one_per_cluster:
        from nagindex.index.clusters import require_clusters

        info = require_clusters(spec.index_dir)
        clusters = {"radius": info["radius"], "method": info["method"]}
    fleet = open_fleet(spec.index_dir, spec.ray_address, spec.device)
    try:
        manifest, visible, kept, profiles, encoded = profile_targets(fleet, spec, notes, timer)
        check, removed, decontamination = None, [], None
        if guard:
            from nagindex.query.decontam import load_benchmarks

            with timer("benchmarks"):
                benchmarks, read = load_benchmarks(guard, spec.ngram)
            check = _checker(fleet, benchmarks, removed)
            decontamination = {"benchmarks": guard, "read": read, "ngram": spec.ngram}
        with timer("score"):
            candidates = None
            if spec.approx:
                from nagindex.query.approx import approx_radii

                candidates = approx_radii(fleet, profiles, kept, quota, manifest, visible)
            quality = None if spec.quality_file is None else QualitySpec(
                str(spec.quality_file), spec.quality_col, spec.quality_id_field, spec.invert_quality)
            plan = ScorePlan(profiles, tuple(int(x) for x in kept), spec.power, spec.scoring_device, candidates,
                             quality, (float(spec.temperature), int(spec.seed)) if spec.sample else None, groups,
                             spec.one_per_cluster, target_weights(fleet, spec.weighting, profiles, kept, spec.power,
                                                                  visible),
                             profiles if spec.method == "nait" else None)
            names = [t.display for t in spec.targets]
            if parts:
                from nagindex.query.parts import write_parts

                written = write_parts(fleet, plan, spec, names, benchmarks if guard else None)
                removed[:] = written.removed
            else:
                picked, pool = rank.select(fleet, plan, quota, spec.weights, spec.mode, spec.dedup, check, caps)
        contamination = None
        if decontamination is not None:
            contamination = _contamination_table(removed, benchmarks)
            decontamination["removed"] = contamination.num_rows
            notes.append(f"decontamination: {contamination.num_rows:,} document(s) shared a {spec.ngram}-word run "
                         f"with the evaluation data of {', '.join(guard)} ({', '.join(read)}) and were left out")
        if parts:
            table, rows, tokens, exhausted, pool = None, sum(written.rows), sum(written.tokens), written.exhausted, \
                written.pool
        else:
            with timer("select"):
                table = _columns(fleet, picked, names, spec.with_text, quality is not None)
            rows, tokens = table.num_rows, int(table.column("token_count").to_numpy().sum())
            exhausted = picked.exhausted
        if exhausted:
            notes.append(_shortfall_note(quota, pool, spec.group_by is not None, spec.one_per_cluster, rows, tokens))
        result = QueryResult(out=None, targets=names, table=table, exhausted=exhausted, tokens=tokens,
                             pool_docs=pool.visible_rows, pool_tokens=pool.visible_tokens, notes=notes, layers=kept,
                             profiles=profiles, examples=[n for _, n in encoded], contamination=contamination,
                             rows=rows, parts=written.parts if parts else None)
        if spec.out is not None:
            with timer("write"):
                if contamination is not None:
                    from nagindex.query.decontam import contamination_path
                    from nagindex.query.write import write_table

                    write_table(contamination_path(spec.out), contamination)
                result.out = _write(result, spec, decontamination, caps, clusters)
    except SourceTextError as exc:  # say what needed the texts, and which switch does without them
        raise InputError(texts_needed_by(exc, spec.with_text, guard)) from None
    finally:
        fleet.close()
    result.timings = timer.summary()
    return result


def _shortfall_note(quota: Any, pool: Any, group_caps: bool, one_per_cluster: bool, rows: int, tokens: int) -> str:
    """Why a selection falls short of its quota, by cause: the pool holds less than the quota asks, or the
    group caps and/or one document per cluster leave too little of it (every query form says so)."""
    held = f"the quota asks for more than the index holds ({pool.rows:,} documents, {pool.tokens:,} tokens)"
    got = f"{rows:,} document(s) ({tokens:,} tokens) are selected"
    causes = {"the group caps": "the groups allowed hold too little",
              "one document per cluster": "the pool holds too few clusters"}
    limits = [name for name, on in zip(causes, (group_caps, one_per_cluster)) if on]
    if not limits:  # a fraction exceeds the pool only once decontamination took documents out of it
        return f"{held}: all of it is selected"
    if (quota.k is not None and quota.k > pool.rows) or (quota.tokens is not None and quota.tokens > pool.tokens):
        return f"{held}, and {' and '.join(limits)} leave less of it: {got}"
    asked = f"{quota.k:,} documents" if quota.k is not None else \
        f"{quota.tokens:,} tokens" if quota.tokens is not None else f"{quota.fraction:g} of the tokens"
    verb = "leaves" if len(limits) == 1 and not group_caps else "leave"
    return (f"{' and '.join(limits)} {verb} the quota unmet ({'; '.join(causes[c] for c in limits)}): {got}, "
            f"of the {asked} asked")


def _caps(spec: QuerySpec) -> tuple[Any, Any]:
    """``(rank.Caps, scan.GroupSpec)`` of the group-cap options (``GroupSpec`` None without ``group_by``),
    or ``(None, None)`` with neither ``group_by`` nor ``one_per_cluster``. Quota keys are resolved to the
    index's groups here, before any scoring (``query/groups.py``)."""
    from nagindex.query.rank import Caps
    from nagindex.query.scan import GroupSpec

    if spec.group_by is None:
        return (Caps(one_per_cluster=True), None) if spec.one_per_cluster else (None, None)
    quotas = {} if spec.group_quota is None else _group_quota(spec.group_quota, spec.index_dir, spec.group_by,
                                                             spec.groups_file, spec.quality_id_field)
    groups = GroupSpec(spec.group_by, None if spec.groups_file is None else str(spec.groups_file),
                       spec.quality_id_field)
    return Caps(spec.max_group_share, quotas, spec.one_per_cluster), groups


def _group_quota(quota: Any, index_dir: str | os.PathLike, group_by: str, group_file: Any,
                 id_field: str) -> dict[str, float]:
    """The shares of a ``--group-quota`` mapping or file, keyed by the groups they name (an unknown key is
    an error: it would cap nothing)."""
    from nagindex.config import load_yaml
    from nagindex.query.groups import resolve_quotas

    where = "group quota" if isinstance(quota, Mapping) else str(quota)
    raw = quota if isinstance(quota, Mapping) else load_yaml(Path(quota))
    if not isinstance(raw, Mapping) or not raw:
        raise InputError(f"{where}: expected a mapping of group -> share (e.g. wiki: 0.3)")
    out = {}
    for group, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise InputError(f"{where}: field {group!r}: a share in [0, 1], got {value!r}")
        out[str(group)] = float(value)
    return resolve_quotas(out, where, index_dir, group_by, group_file, id_field)


def guarded_benchmarks(targets: Sequence[TargetRequest], decontaminate: bool | None,
                       against: str | Sequence[str] | None) -> list[str]:
    """The registered benchmarks a selection is decontaminated against: each registry target's own
    (unless ``decontaminate`` is False) and ``against`` (which ``decontaminate=False`` also turns off)."""
    from nagindex.query.target import get_target

    if decontaminate is False:
        return []
    extra = [a.strip() for a in (against.split(",") if isinstance(against, str) else against or []) if a.strip()]
    names = [t.value for t in targets if t.kind == "name"] + extra
    for name in extra:
        get_target(name)  # an unknown name is an error now, naming the registry's targets
    return list(dict.fromkeys(get_target(n).name for n in names))


def _checker(fleet: Any, benchmarks: Any, removed: list[Any]) -> Any:
    """``rank.select``'s ``check``: each shard reads the texts of its new selected rows and matches them;
    what matches is appended to ``removed`` as ``(docid, example index, words)``."""
    from nagindex.query.rank import ROW_BITS

    def check(ids: np.ndarray) -> list[int]:
        parts, rows = ids >> ROW_BITS, ids & ((1 << ROW_BITS) - 1)
        answers = fleet.contamination([rows[parts == spec["part"]] for spec in fleet.specs], benchmarks)
        bad = []
        for spec, found in zip(fleet.specs, answers):
            for row, docid, example, words in found:
                bad.append((spec["part"] << ROW_BITS) | row)
                removed.append((docid, example, words))
        return bad

    return check


def _contamination_table(removed: list[Any], benchmarks: Any) -> Any:
    import pyarrow as pa

    examples = [benchmarks.examples[i] for _, i, _ in removed]
    return pa.table({"docid": pa.array([d for d, _, _ in removed], pa.string()),
                     "benchmark": pa.array([e.benchmark for e in examples], pa.string()),
                     "split": pa.array([e.split for e in examples], pa.string()),
                     "example_id": pa.array([e.example_id for e in examples], pa.string()),
                     "ngram": pa.array([w for _, _, w in removed], pa.string())})


def profile_targets(fleet: Any, spec: QuerySpec, notes: list[str],
                    timer: StageTimer) -> tuple[dict[str, Any], int, np.ndarray, np.ndarray, list[Any]]:
    """The index's manifest and visible documents, the kept layers, the targets' count profiles
    ``(P, L', width)`` and, per target, ``(codes, examples used)``: what every scoring needs."""
    from nagindex.query.profile import count_profile, resolve_layers

    described = fleet.describe()
    manifest = described[0]["manifest"]
    visible = sum(d["visible_rows"] for d in described)
    if visible == 0:
        raise NagIndexError(f"index {spec.index_dir} holds no documents")
    kept = resolve_layers(spec.layers, manifest["num_layers"])
    if spec.method == "nait":  # directions (L, d) per target instead of NAGs (query/nait.py)
        with timer("target"):
            encoded = [target_example_codes(t, Path(spec.index_dir), manifest, spec.max_examples,
                                            spec.example_seed, spec.device, notes, "nait") for t in spec.targets]
        return manifest, visible, kept, np.stack([d[kept] for d, _ in encoded]), encoded
    with timer("target"):
        encoded = [target_example_codes(t, Path(spec.index_dir), manifest, spec.max_examples, spec.example_seed,
                                        spec.device, notes) for t in spec.targets]
    with timer("profile"):
        profiles = np.stack([count_profile(c, manifest["width"], kept) for c, _ in encoded])
    return manifest, visible, kept, profiles, encoded


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


def default_output(targets: Sequence[TargetRequest], stem: str | None = None) -> str:
    """``<targets>.parquet`` in the working folder (``arc_challenge.parquet``), or
    ``<targets>.selection.parquet`` where the plain name is a target file of the query itself."""
    stem = stem or "+".join(t.display for t in targets) or "selection"
    from nagindex.query.spec import input_paths

    inputs = {Path(p).resolve() for p in input_paths(targets)}
    return f"{stem}.parquet" if Path(f"{stem}.parquet").resolve() not in inputs else f"{stem}.selection.parquet"


def target_example_codes(t: TargetRequest, index_dir: Path, manifest: dict[str, Any], max_examples: int | None,
                         seed: int, device: str, notes: list[str],
                         method: str = "nag") -> tuple[np.ndarray, dict[str, Any]]:
    """The target's example NAGs and how many examples they are (of how many available): ``max_examples`` of
    them drawn with ``seed`` (``target.sample_indices``), as every query, report and explanation draws them.
    ``method="nait"``: the ``(L, d)`` NAIT directions of the same examples instead (``query/nait.py``)."""
    from nagindex.query.nait import target_directions
    from nagindex.query.target import load_examples
    from nagindex.query.target_nags import target_codes

    if t.kind == "features":
        codes = feature_codes(t, manifest)
        return codes, {"used": len(codes), "available": len(codes)}
    ts = load_examples(t, max_examples, seed)
    if ts.note:
        notes.append(f"{t.display}: {ts.note}")
    log.info("target %s: %d examples from %s", t.display, len(ts.texts), ts.source)
    encode = target_directions if method == "nait" else target_codes
    codes = encode(index_dir, manifest, ts.texts, name=t.display, device=device)
    return codes, {"used": len(ts), "available": ts.n_available or len(ts), "source": ts.source}


def feature_codes(t: TargetRequest, manifest: dict[str, Any]) -> np.ndarray:
    from nagindex.data import Reject
    from nagindex.sources.features import read_features

    codes = []
    for rec in read_features([t.value], manifest["neuron_type"], num_layers=manifest["num_layers"],
                             top_k=manifest["top_k"], width=manifest["width"]):
        if isinstance(rec, Reject):
            raise InputError(rec.message())
        codes.append(rec[1])
    if not codes:
        raise InputError(f"{t.value}: no target features")
    return np.stack(codes)


def _columns(fleet: Any, picked: Any, names: list[str], with_text: bool, quality: bool) -> Any:
    """The selection file's table, in selection order: each shard fetches its selected rows, which are
    then put in order with one Arrow ``take`` (no Python object per row but the texts)."""
    from nagindex.query.columns import selection_table

    n = len(picked)
    by_part = np.argsort(picked.part, kind="stable")  # selection positions grouped by part, in part order
    bounds = np.searchsorted(picked.part[by_part], [spec["part"] for spec in fleet.specs] + [np.iinfo(np.int64).max])
    answers = fleet.fetch([picked.row[by_part[bounds[i]:bounds[i + 1]]] for i in range(len(fleet.specs))], with_text)
    to_order = np.empty(n, np.int64)
    to_order[by_part] = np.arange(n)  # selection position -> position in the parts' concatenation
    return selection_table(answers, to_order, np.arange(1, n + 1, dtype=np.int64), picked.target, names, with_text,
                           quality)


def _write(result: QueryResult, spec: QuerySpec, decontamination: dict[str, Any] | None, caps: Any,
           clusters: dict[str, Any] | None) -> Path:
    from nagindex import __version__
    from nagindex.query.write import write_selection

    manifest = {
        "nagindex_version": __version__, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "index": str(Path(spec.index_dir).resolve()), "index_rows": result.pool_docs,
        "targets": [{"kind": t.kind, "value": t.value, "weight": t.weight, "filters": dict(t.filters),
                     "label": t.display, "examples": n} for t, n in zip(spec.targets, result.examples)],
        "max_examples": spec.max_examples, "example_seed": spec.example_seed,
        "sample": {"temperature": spec.temperature, "seed": spec.seed} if spec.sample else None,
        "decontamination": decontamination,
        "group_caps": None if spec.group_by is None else {"group_by": spec.group_by,
                                                          "max_group_share": spec.max_group_share,
                                                          "quotas": dict(caps.quotas)},
        "one_per_cluster": clusters,
        "quota": {k: v for k, v in vars(spec.quota).items() if v is not None}, "mode": spec.mode,
        "dedup": spec.dedup, "power": spec.power, "weighting": spec.weighting,
        **({"method": spec.method} if spec.method != "nag" else {}),
        "layers": [int(x) for x in result.layers], "approx": spec.approx,
        "rows": len(result), "tokens": result.tokens, "notes": result.notes,
    }
    if result.parts is not None:  # the shards wrote the rows: the manifest goes beside their folder
        from nagindex.query.write import write_manifest

        write_manifest(spec.out, {**manifest, "parts": result.parts})
        return Path(spec.out)
    return write_selection(spec.out, result.table, manifest)
