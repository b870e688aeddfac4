"""The catalog of a sharded index: its shards, where they live, which inputs each owns, their shared identity.

A sharded index is a folder holding ``catalog.json`` and one self-contained store
per shard (today's one-folder layout: ``store.lmdb`` plus derived files), by
default ``shard-00000/`` ... under the index folder, or anywhere else (a node's
local disk: the catalog records absolute paths for those). An index folder that
holds ``store.lmdb`` and no catalog is a one-shard index whose shard is the folder
itself: every index written before shards existed opens unchanged.

``catalog.json``::

    {"version": 1,
     "identity": {"backbone": ..., "weights_sha256": ..., "neuron_type": ..., "num_layers": ...,
                  "width": ..., "top_k": ..., "max_length": ..., "dtype": ..., "text_template": ...,
                  "nait": {"site": ..., "vector": ...} or null},
     "shards": [{"name": "shard-00000", "path": "shard-00000"}, ...],
     "inputs": [{"key": "/abs/path/a.jsonl", "shard": 0, "size": 1234}, ...],
     "dedup": {"rows": [n0, n1, ...], "hidden": 3, "generation": 2,
               "stamps": [[created_at, docid_bytes], ...]}}

``inputs`` is the global input order (first ingest first, then each append's new
inputs): an input, or each part of a big one split over several shards (an entry per
file and shard, with its ``parts``: ``sources.split``), keeps its shard for ever, so a
rerun after a crash resumes each shard where it stopped. A document id seen in two shards is kept where a one-shard
ingest would keep it, at its first occurrence in that order; the other copies are
listed in ``hidden-<shard>.<generation>.u64`` (sorted rows, written by
``dedup.reconcile``) and left out of every view. ``dedup.rows`` are the shard sizes
those files describe, and the only rows a query reads: while shards append, the
index answers from its last reconciled state (``stamps`` tell a rebuilt shard).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nagindex.errors import IndexMismatchError, NagIndexError
from nagindex.fsio import atomic_path
from nagindex.index.store import FEATURE_SETTINGS, TEXT_SETTINGS, feature_diff

CATALOG_FILE = "catalog.json"
VERSION = 1
#: the settings every shard of an index must share (``store.COMPARED_SETTINGS``, ``store.TEXT_SETTINGS`` and
#: ``store.FEATURE_SETTINGS``: the NAIT identity, None for NAG only)
IDENTITY = ("backbone", "weights_sha256", "neuron_type", "num_layers", "width", "top_k", "max_length", "dtype",
            "text_template", "nait")


@dataclass
class Catalog:
    """The parsed ``catalog.json`` of the index at ``root``."""

    root: Path
    shards: list[dict[str, str]]
    inputs: list[dict[str, Any]] = field(default_factory=list)
    identity: dict[str, Any] = field(default_factory=dict)
    dedup: dict[str, Any] = field(default_factory=dict)

    def shard_path(self, i: int) -> Path:
        path = Path(self.shards[i]["path"])
        return path if path.is_absolute() else self.root / path

    def shard_paths(self) -> list[Path]:
        return [self.shard_path(i) for i in range(len(self.shards))]

    def input_shards(self) -> dict[str, int]:
        return {item["key"]: int(item["shard"]) for item in self.inputs}

    def hidden_file(self, i: int, generation: int | None = None) -> Path:
        """Shard ``i``'s hidden rows as of reconcile ``generation`` (default: the catalog's)."""
        g = int(self.dedup.get("generation", 0)) if generation is None else generation
        return self.root / (f"hidden-{self.shards[i]['name']}.{g}.u64" if g else f"hidden-{self.shards[i]['name']}.u64")

    def save(self) -> None:
        value = {"version": VERSION, "identity": self.identity, "shards": self.shards, "inputs": self.inputs,
                 "dedup": self.dedup}
        with atomic_path(self.root / CATALOG_FILE) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            json.dump(value, fh, indent=1)

    def check_identity(self, manifest: dict[str, Any], where: str) -> None:
        """Refuse a shard (or an ingest's requested settings) that differs from the catalog, naming each
        setting; unknown ones (None) are skipped, except ``TEXT_SETTINGS`` and ``FEATURE_SETTINGS``, where None
        means "no template" and "NAG only" (a catalog written before ``nait`` was part of it has no such key)."""
        def differs(k: str) -> bool:
            if k in TEXT_SETTINGS:
                return k in manifest and self.identity.get(k) != manifest[k]
            if k in FEATURE_SETTINGS:
                return k in manifest and k in self.identity and self.identity[k] != manifest[k]
            return self.identity.get(k) is not None and manifest.get(k) is not None and self.identity[k] != manifest[k]

        diffs = [feature_diff(k, self.identity[k], manifest[k], f"{where} has") if k in FEATURE_SETTINGS
                 else f"{k}: index has {self.identity.get(k)!r}, {where} has {manifest[k]!r}" for k in IDENTITY
                 if differs(k)]
        if diffs:
            raise IndexMismatchError(f"index {self.root}: " + "; ".join(diffs))


def load_catalog(root: str | os.PathLike) -> Catalog | None:
    """The catalog of the index at ``root``, or None for a one-folder (one-shard) index."""
    root = Path(root)
    path = root / CATALOG_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise NagIndexError(f"{path}: unreadable catalog: {exc}") from None
    if not isinstance(raw, dict) or raw.get("version") != VERSION or not isinstance(raw.get("shards"), list):
        raise NagIndexError(f"{path}: not a version-{VERSION} nagindex catalog")
    return Catalog(root, raw["shards"], raw.get("inputs", []), raw.get("identity", {}), raw.get("dedup", {}))


def new_catalog(root: str | os.PathLike, shards: int, shard_root: str | os.PathLike | None = None) -> Catalog:
    """A catalog of ``shards`` empty shards under ``root`` (or under ``shard_root``, recorded absolute)."""
    if shards < 1:
        raise NagIndexError(f"--shards must be >= 1, got {shards}")
    root = Path(root)
    names = [f"shard-{i:05d}" for i in range(shards)]
    if shard_root is None:
        entries = [{"name": n, "path": n} for n in names]
    else:
        base = Path(shard_root).expanduser().resolve() / root.resolve().name
        entries = [{"name": n, "path": str(base / n)} for n in names]
    return Catalog(root, entries)


def shard_dirs(root: str | os.PathLike) -> list[Path]:
    """The store folders of the index at ``root``: the catalog's shards, or the folder itself."""
    catalog = load_catalog(root)
    return [Path(root)] if catalog is None else catalog.shard_paths()
