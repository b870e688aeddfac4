"""``QuerySpec``: one selection request, validated once, carried from the CLI and the Python API
(``query``, ``mix``) to the engine (``run.execute``) instead of thirty keywords threaded through each.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.query.quota import Quota
from nagindex.query.request import MODES, TargetLike, TargetRequest, as_targets
from nagindex.query.weighting import check_weighting


@dataclass(frozen=True)
class QuerySpec:
    """What to select, from which index, and how.

    ``targets``: registered names (``"arc_challenge"``, ``"mmlu:2"`` with a weight), mappings
    (``{"file": "mine.jsonl", "filter": {"dataset": "chem"}, "weight": 2}``, ``{"features": "f.jsonl"}``)
    or ``TargetRequest``s; kept as a tuple of ``TargetRequest``.

    Quota (exactly one): ``k`` documents, ``tokens``, or ``fraction`` of the index's tokens; a token
    budget takes the ranked prefix. Several targets: ``mode="paper"`` gives each its weighted share and
    concatenates (duplicates kept unless ``dedup``); ``mode="union"`` takes turns with no duplicates.

    Scoring: ``layers`` (all, last, first, or a list like ``"0,5,-1"``), ``power`` (profile weights
    ``c^p / sum c^p``), ``weighting`` (``none``, the paper's score; ``lift`` or ``idf``: each neuron
    weighted by its specificity to the target, ``weighting.py``), ``approx`` (only FAISS binary candidates), ``device`` (``cuda``/``cuda:N`` scores
    on that GPU too), ``ray_address`` (one Ray actor per shard: ``local``, ``auto``, ``host:port``).
    ``quality_file``/``quality_col`` add a quality column to the distance (spec sec. 4; joined on
    ``quality_id_field``; ``invert_quality`` when higher is better). ``max_examples`` profiles a sample of
    each target's examples drawn with ``example_seed``.

    ``sample``: Gumbel-top-k with probability ``exp(z / temperature)``, noise hashed from (``seed``,
    target, docid) (``sample.py``). Decontamination (``decontam.py``): on by default for registry
    targets (``decontaminate=False`` turns it off); ``decontaminate_against`` adds benchmarks (names, or
    one comma-separated string); ``ngram`` words make a shared run.

    Group caps: ``group_by`` (``source``, ``docid-prefix`` or a column of ``group_file``, default the
    quality file) with ``max_group_share`` and/or ``group_quota`` (a mapping, or a YAML/JSON file, of
    group -> share). ``one_per_cluster``: only the best document of each near-duplicate cluster.

    Output: ``out`` (``.parquet`` or ``.jsonl``, with a manifest beside it; None: no file), ``with_text``.

    ``method``: ``nag`` (the profiles above) or ``nait`` (each target a direction per layer, documents scored
    by their dense activations, ``query/nait.py``; needs an index ingested with ``--features nag,nait``).
    """

    targets: tuple[TargetRequest, ...]
    index_dir: str | os.PathLike = "idx"
    k: int | None = None
    fraction: float | None = None
    tokens: int | None = None
    mode: str = "paper"
    dedup: bool = False
    layers: Any = None
    power: float = 1.0
    weighting: str = "none"
    quality_file: str | os.PathLike | None = None
    quality_col: str | None = None
    quality_id_field: str = "docid"
    invert_quality: bool = False
    approx: bool = False
    out: str | os.PathLike | None = None
    with_text: bool = False
    max_examples: int | None = None
    example_seed: int = 0
    device: str = "auto"
    ray_address: str | None = None
    sample: bool = False
    temperature: float = 1.0
    seed: int = 0
    decontaminate: bool | None = None
    decontaminate_against: str | Sequence[str] | None = None
    ngram: int = 13
    group_by: str | None = None
    group_file: str | os.PathLike | None = None
    max_group_share: float | None = None
    group_quota: str | os.PathLike | Mapping[str, float] | None = None
    one_per_cluster: bool = False
    method: str = "nag"

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(as_targets(list(self.targets))))
        if not self.targets:
            raise NagIndexError("no target: give --target NAME, --target-file PATH or --target-features PATH")
        check_weighting(self.weighting)
        if self.mode not in MODES:
            raise NagIndexError(f"mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.sample and not (np.isfinite(self.temperature) and self.temperature > 0):
            raise NagIndexError(f"--temperature must be a positive number, got {self.temperature}")
        if self.quality_file is not None and not self.quality_col:
            raise NagIndexError("--quality-file needs --quality-col")
        self._check_caps()
        from nagindex.query.nait import check_method

        check_method(self)

    @classmethod
    def of(cls, targets: TargetLike | Sequence[TargetLike], index_dir: str | os.PathLike = "idx",
           **options: Any) -> QuerySpec:
        """The spec of ``query(targets, index_dir, **options)``: an unknown option is an error naming it."""
        known = {f for f in cls.__dataclass_fields__ if f not in ("targets", "index_dir")}
        unknown = sorted(set(options) - known)
        if unknown:
            raise NagIndexError(f"unknown query option(s): {', '.join(unknown)}")
        return cls(tuple(as_targets(targets)), index_dir, **options)

    def _check_caps(self) -> None:
        """The group-cap options that make sense together (their keys are checked against the index later)."""
        if self.group_by is None:
            if self.max_group_share is not None or self.group_quota is not None:
                raise NagIndexError("--max-group-share / --group-quota need --group-by source|docid-prefix|COLUMN")
            return
        if self.max_group_share is None and self.group_quota is None:
            raise NagIndexError("--group-by needs --max-group-share F or --group-quota FILE")
        if self.mode == "union" and len(self.targets) > 1:
            raise NagIndexError("group caps apply to single targets and paper mixtures, not --mode union")
        if self.max_group_share is not None and not 0 < self.max_group_share <= 1:
            raise NagIndexError(f"--max-group-share must be in (0, 1], got {self.max_group_share}")
        if self.group_by not in ("source", "docid-prefix") and self.groups_file is None:
            raise NagIndexError(f"--group-by {self.group_by}: a column needs --group-file (or --quality-file) "
                                "holding it")

    @property
    def quota(self) -> Quota:
        """How much to select; asked only where something is selected (``nagindex score`` selects nothing)."""
        return Quota(k=self.k, tokens=self.tokens, fraction=self.fraction)

    @property
    def groups_file(self) -> str | os.PathLike | None:
        """Where a ``group_by`` column is read: ``group_file``, else the quality file."""
        return self.group_file or self.quality_file

    @property
    def scoring_device(self) -> str:
        """Where the index is scored: the GPU a ``cuda`` device names, else the CPU (``auto`` included)."""
        return self.device if str(self.device).startswith("cuda") else "cpu"

    @property
    def weights(self) -> list[float]:
        return [t.weight for t in self.targets]

    def input_paths(self) -> list[str]:
        return input_paths(self.targets, self.quality_file)


def input_paths(targets: Sequence[TargetRequest], quality_file: str | os.PathLike | None = None) -> list[str]:
    """The files a query reads besides the index: target files, feature files, the quality file (an output
    must not overwrite one of them)."""
    return [t.value for t in targets if t.kind != "name"] + ([str(quality_file)] if quality_file else [])
