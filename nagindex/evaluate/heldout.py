"""Held-out target examples: the ones no evaluated selection was profiled on.

A selection made toward a target resembles the examples that built its profile by
construction; scoring it on them would reward copying the profile, not moving toward the
target. The target's examples are therefore split in two: the profile part, which a query
draws with ``--max-examples N --example-seed S`` (``target.sample_indices``, recorded in the
selection's manifest), and the held-out part, everything else, of which a seeded sample of at
most ``limit`` examples is what ``evaluate`` measures. A selection without a manifest (a
user's list, another tool's output) cannot say which examples it used: the evaluation says so.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nagindex.errors import NagIndexError
from nagindex.evaluate.selections import SelectionFile
from nagindex.query.request import TargetRequest
from nagindex.query.target import TargetSet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldOut:
    """The held-out examples (``examples``), how many the target has, and how many profiles used."""

    examples: TargetSet
    available: int
    excluded: int
    notes: list[str] = field(default_factory=list)


def split_heldout(request: TargetRequest, selections: Sequence[SelectionFile], limit: int, seed: int) -> HeldOut:
    """Every example of the target that no selection's manifest shows in its profile, then a seeded
    random ``limit`` of them (``target.sample_indices`` with ``seed``), in file order."""
    from nagindex.query.target import load_examples
    from nagindex.query.target import sample_indices, take_examples

    if limit < 1:
        raise NagIndexError(f"held-out examples: need at least 1, got {limit}")
    full = load_examples(request)
    used: set[int] = set()
    notes: list[str] = []
    for sel in selections:
        if sel.manifest is None:
            notes.append(f"{sel.path} has no manifest: which examples built its profile is unknown; if they are "
                         f"examples of {request.display}, its scores here are optimistic")
            continue
        used.update(_profile_examples(sel, request, full))
    remaining = [i for i in range(len(full)) if i not in used]
    if not remaining:
        raise NagIndexError(f"every example of {request.display} built a selection's profile: none is left to "
                            "evaluate on")
    keep = [remaining[i] for i in sample_indices(len(remaining), limit, seed)]
    return HeldOut(examples=take_examples(full, keep), available=len(full), excluded=len(used), notes=notes)


def _profile_examples(sel: SelectionFile, request: TargetRequest, full: TargetSet) -> list[int]:
    """Positions in ``full`` of the examples that built ``sel``'s profile for this target (none where its
    manifest's targets are other ones)."""
    from nagindex.query.target import sample_indices

    manifest = sel.manifest or {}
    out: list[int] = []
    for entry in manifest.get("targets") or []:
        if not _same_target(entry, request):
            continue
        examples = entry.get("examples") or {}
        available = examples.get("available")
        if available is not None and available != len(full):
            raise NagIndexError(f"{sel.path}: its profile drew from {available} examples of {request.display}, but "
                                f"the target has {len(full)} now: which ones it used cannot be told")
        limit = manifest.get("max_examples")
        if limit is None or limit >= len(full):
            raise NagIndexError(f"{sel.path}: all {len(full)} examples of {request.display} built its profile (no "
                                "--max-examples), so none is left to evaluate it on honestly: make the selection with "
                                "--max-examples N (e.g. 200) and the rest are held out")
        out.extend(sample_indices(len(full), int(limit), int(manifest.get("example_seed") or 0)))
    return out


def _same_target(entry: dict[str, Any], request: TargetRequest) -> bool:
    """Whether a manifest's target entry is ``request``: the same registered name, or the same file and filters."""
    if entry.get("kind") != request.kind:
        return False
    if request.kind == "name":
        return entry.get("value") == request.value
    same_file = Path(str(entry.get("value"))).resolve() == Path(request.value).resolve()
    return same_file and dict(entry.get("filters") or {}) == dict(request.filters)
