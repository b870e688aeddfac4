"""Mixture configs (``configs/mixtures/*.yaml``): several targets, weights, one quota.

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

Loaded with ``yaml.safe_load``; every error names the file and field. Relative
paths are resolved against the YAML's folder and may not climb out of it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nagindex.config import load_yaml
from nagindex.errors import InputError
from nagindex.query.run import MODES, TargetRequest
from nagindex.units import parse_count

_TOP = {"mode", "fraction", "k", "tokens", "dedup", "targets", "description"}
_KINDS = ("name", "file", "features")


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
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping with 'targets'")
    unknown = sorted(set(raw) - _TOP)
    if unknown:
        raise InputError(f"{path}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_TOP))})")
    mode = raw.get("mode", "paper")
    if mode not in MODES:
        raise InputError(f"{path}: field 'mode': {mode!r} is not one of {', '.join(MODES)}")
    quotas = [q for q in ("fraction", "k", "tokens") if raw.get(q) is not None]
    if len(quotas) != 1:
        raise InputError(f"{path}: give exactly one of fraction, k, tokens (got {quotas or 'none'})")
    items = raw.get("targets")
    if not isinstance(items, list) or not items:
        raise InputError(f"{path}: field 'targets': expected a non-empty list")
    targets = [_target(item, i, path) for i, item in enumerate(items)]
    try:
        k = parse_count(raw["k"]) if "k" in raw else None
        tokens = parse_count(raw["tokens"]) if "tokens" in raw else None
        fraction = float(raw["fraction"]) if "fraction" in raw else None
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: field '{quotas[0]}': {exc}") from None
    return Mixture(targets, mode, bool(raw.get("dedup", False)), k, tokens, fraction)


def _target(item: Any, i: int, path: Path) -> TargetRequest:
    field = f"targets[{i}]"
    if not isinstance(item, dict):
        raise InputError(f"{path}: field '{field}': expected a mapping")
    kinds = [k for k in _KINDS if k in item]
    if len(kinds) != 1:
        raise InputError(f"{path}: field '{field}': give exactly one of {', '.join(_KINDS)}")
    extra = sorted(set(item) - {*_KINDS, "weight", "filter", "label"})
    if extra:
        raise InputError(f"{path}: field '{field}': unknown key(s) {', '.join(extra)}")
    kind = kinds[0]
    value = str(item[kind])
    if kind != "name":
        value = str(_safe_path(path, value, f"{field}.{kind}"))
    weight = item.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        raise InputError(f"{path}: field '{field}.weight': expected a number > 0, got {weight!r}")
    filters = item.get("filter") or {}
    if not isinstance(filters, dict):
        raise InputError(f"{path}: field '{field}.filter': expected a mapping COLUMN: VALUE")
    return TargetRequest(kind, value, float(weight), tuple((str(k), str(v)) for k, v in filters.items()),
                         str(item.get("label", "")))


def _safe_path(config: Path, value: str, field: str) -> Path:
    """A path from a config: absolute as given; relative only inside the config's folder."""
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return candidate
    base = config.resolve().parent
    resolved = (base / candidate).resolve()
    if not resolved.is_relative_to(base):
        raise InputError(f"{config}: field '{field}': {value!r} points outside {base}")
    return resolved
