"""Mixtures: several targets, weights, one quota; from a YAML file (``configs/mixtures/*.yaml``) or a mapping.

    mode: paper            # or: union
    fraction: 0.2          # or k: 1M, or tokens: 30B  (the total over all targets)
    dedup: false           # paper mode only: drop repeated docids, keeping the first
    targets:
      - name: arc_challenge
        weight: 1
      - file: my_targets.parquet      # relative to this YAML's folder
        filter: {dataset: chem_target}
        weight: 1
      - features: target_features.jsonl

Loaded with ``yaml.safe_load``; every error names the file and field. Paths in
a YAML follow ``config.config_path`` (relative to the YAML's folder, never out of
it); paths in a mapping given to the Python API are taken as given.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nagindex.config import config_path, load_yaml
from nagindex.errors import InputError
from nagindex.query.request import MODES, TargetRequest, target_from_mapping
from nagindex.units import parse_count

_TOP = {"mode", "fraction", "k", "tokens", "dedup", "targets", "description"}


@dataclass(frozen=True)
class Mixture:
    targets: list[TargetRequest]
    mode: str = "paper"
    dedup: bool = False
    k: int | None = None
    tokens: int | None = None
    fraction: float | None = None


def load_mixture(path: str | os.PathLike) -> Mixture:
    """Parse and validate a mixture YAML."""
    path = Path(path)
    return mixture_from_mapping(load_yaml(path), str(path),
                                lambda value, field: config_path(path, value, field))


def mixture_from_mapping(raw: Any, where: str = "mixture", resolve_path: Any = None) -> Mixture:
    """Validate a mixture given as a mapping (the YAML's content); ``where`` names it in errors."""
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}: expected a mapping with 'targets'")
    unknown = sorted(map(str, set(raw) - _TOP))
    if unknown:
        raise InputError(f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_TOP))})")
    mode = raw.get("mode", "paper")
    if mode not in MODES:
        raise InputError(f"{where}: field 'mode': {mode!r} is not one of {', '.join(MODES)}")
    quotas = [q for q in ("fraction", "k", "tokens") if raw.get(q) is not None]
    if len(quotas) != 1:
        raise InputError(f"{where}: give exactly one of fraction, k, tokens (got {quotas or 'none'})")
    items = raw.get("targets")
    if not isinstance(items, list) or not items:
        raise InputError(f"{where}: field 'targets': expected a non-empty list")
    targets = [target_from_mapping(item, where, f"targets[{i}]", resolve_path) for i, item in enumerate(items)]
    try:
        k = parse_count(raw["k"]) if "k" in raw else None
        tokens = parse_count(raw["tokens"]) if "tokens" in raw else None
        fraction = float(raw["fraction"]) if "fraction" in raw else None
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: field '{quotas[0]}': {exc}") from None
    dedup = raw.get("dedup", False)
    if not isinstance(dedup, bool):  # bool("false") is True: a quoted "false" must not turn dedup on
        raise InputError(f"{where}: field 'dedup': expected true or false, got {dedup!r}")
    return Mixture(targets, mode, dedup, k, tokens, fraction)
