"""What a query asks for: its targets (``TargetRequest``) and a mixture's mode, from strings or mappings.

The CLI, mixture YAML files and the Python API all describe a target the same
way, so they share one parser: a string ``"arc_challenge"`` or
``"arc_challenge:2"`` names a registered target (with a mixture weight), and a
mapping gives exactly one of ``name``, ``file`` or ``features`` plus optional
``weight``, ``filter`` (``{column: value}``) and ``label``. Paths in mappings
are resolved by the caller's rule (``resolve_path``): as given for the Python
API, by ``config.config_path`` for YAML files.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from nagindex.errors import InputError, NagIndexError

MODES = ("paper", "union")
KINDS = ("name", "file", "features")
_ITEM_KEYS = {*KINDS, "weight", "filter", "label"}


@dataclass(frozen=True)
class TargetRequest:
    """One target of a query: a registry ``name``, a ``file`` of examples, or ``features`` of examples."""

    kind: str  # "name" | "file" | "features"
    value: str
    weight: float = 1.0
    filters: tuple[tuple[str, str], ...] = ()
    label: str = ""

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        if self.kind == "name":
            return self.value
        stem = Path(self.value).name.split(".")[0]
        return stem + "".join(f"[{k}={v}]" for k, v in self.filters)


#: what the Python API accepts as one target
TargetLike = Union[str, Mapping[str, Any], TargetRequest]


def parse_target(arg: str, kind: str = "name", filters: Sequence[str] = ()) -> TargetRequest:
    """``arc_challenge`` or ``arc_challenge:2`` (a mixture weight); filters are ``COL=VALUE``."""
    value, weight = arg, 1.0
    head, sep, tail = arg.rpartition(":")
    if sep and head and _is_number(tail):
        value, weight = head, float(tail)
    if weight <= 0:
        raise NagIndexError(f"target {arg!r}: weight must be > 0")
    pairs = []
    for f in filters:
        col, eq, val = f.partition("=")
        if not eq or not col:
            raise NagIndexError(f"--target-filter {f!r}: expected COL=VALUE")
        pairs.append((col, val))
    return TargetRequest(kind, value, weight, tuple(pairs))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def target_from_mapping(item: Any, where: str, field: str,
                        resolve_path: Callable[[str, str], Path | str] | None = None) -> TargetRequest:
    """A ``TargetRequest`` from ``{name|file|features: ..., weight, filter, label}``.

    ``where`` and ``field`` name the place in errors (``mix.yaml: field 'targets[2].weight': ...``);
    ``resolve_path(value, field)`` turns a file or features path into the one to read.
    """
    if not isinstance(item, Mapping):
        raise InputError(f"{where}: field '{field}': expected a mapping with one of {', '.join(KINDS)}")
    kinds = [k for k in KINDS if k in item]
    if len(kinds) != 1:
        raise InputError(f"{where}: field '{field}': give exactly one of {', '.join(KINDS)}")
    extra = sorted(map(str, set(item) - _ITEM_KEYS))
    if extra:
        raise InputError(f"{where}: field '{field}': unknown key(s) {', '.join(extra)}")
    kind = kinds[0]
    raw = item[kind]
    if not isinstance(raw, (str, os.PathLike)) or not str(raw).strip():
        raise InputError(f"{where}: field '{field}.{kind}': expected a non-empty string, got {raw!r}")
    value = str(raw)
    if kind != "name" and resolve_path is not None:
        value = str(resolve_path(value, f"{field}.{kind}"))
    weight = item.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        raise InputError(f"{where}: field '{field}.weight': expected a number > 0, got {weight!r}")
    filters = item.get("filter") or {}
    if not isinstance(filters, Mapping):
        raise InputError(f"{where}: field '{field}.filter': expected a mapping COLUMN: VALUE")
    return TargetRequest(kind, value, float(weight), tuple((str(k), str(v)) for k, v in filters.items()),
                         str(item.get("label") or ""))


def as_targets(targets: TargetLike | Sequence[TargetLike]) -> list[TargetRequest]:
    """The Python API's targets: one or a list of registry names, mappings or ``TargetRequest``s.

    A string is a registry name (``"mmlu:2"`` with a weight); files and features are
    mappings (``{"file": "mine.jsonl", "filter": {"dataset": "chem"}}``), their paths as given.
    """
    items = [targets] if isinstance(targets, (str, Mapping, TargetRequest)) else list(targets)
    out = []
    for i, item in enumerate(items):
        if isinstance(item, TargetRequest):
            out.append(item)
        elif isinstance(item, str):
            if os.sep in item or Path(item).suffix in (".jsonl", ".parquet", ".txt", ".json", ".gz"):
                raise NagIndexError(f"target {item!r}: a string names a registered target; for a file of "
                                    f"examples pass {{'file': {item!r}}} (or {{'features': ...}})")
            out.append(parse_target(item))
        else:
            out.append(target_from_mapping(item, "targets", f"[{i}]"))
    return out
