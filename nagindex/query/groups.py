"""``--group-quota`` keys resolved to the groups a query caps, before the query runs.

A quota key that names no group would cap nothing, silently; so every key must name a group of the
index, and is replaced by that group's canonical string (what ``rank.Caps.quotas`` is looked up with):

- ``--group-by source``: a source's path as the index records it (absolute), the path as given at
  ingest (resolved from here, or any trailing part of it: ``corpus/part0.jsonl``), or its file name,
  when it names one source only;
- ``--group-by docid-prefix``: a prefix some document's docid has (before its last ``-``);
- a column of ``--group-file``: a value of that column in the file (``(none)``: documents without one).

A key that matches nothing is an error listing the groups, with the closest ones (``difflib``).
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path

from nagindex.errors import InputError

NO_GROUP = "(none)"  # the group of documents without a value in the group file (``scan.ShardScan._groups``)
LISTED = 12  # groups named in an error
COLLECTED = 10_000  # distinct docid prefixes kept to name in an error (membership is checked for all)
_BLOCK = 1 << 20  # docids per vectorised pass


def resolve_quotas(quotas: Mapping[str, float], where: str, index_dir: str | os.PathLike, group_by: str,
                   group_file: str | os.PathLike | None, id_field: str) -> dict[str, float]:
    """``quotas`` with each key replaced by the group it names (see the module docstring); ``where`` names
    the quota file in errors. Two keys naming one group are an error too."""
    if group_by == "source":
        sources = index_sources(index_dir)
        resolved = {key: source_group(key, sources, where) for key in quotas}
    else:
        if group_by == "docid-prefix":
            found, known = docid_prefixes(index_dir, list(quotas))
        else:
            known = column_values(Path(group_file), id_field, group_by)
            found = set(known)
        missing = [key for key in quotas if key not in found]
        if missing:
            raise InputError(_unknown(missing[0], sorted(known), where, group_by, len(known) >= COLLECTED))
        resolved = {key: key for key in quotas}
    seen: dict[str, str] = {}
    for key, group in resolved.items():
        if group in seen:
            raise InputError(f"{where}: {seen[group]!r} and {key!r} both name the group {group}")
        seen[group] = key
    return {resolved[key]: share for key, share in quotas.items()}


def index_sources(index_dir: str | os.PathLike) -> list[str]:
    """Every source path of the index (all shards), sorted: the groups of ``--group-by source``."""
    from nagindex.index.derived import open_shard
    from nagindex.index.sharded import shard_specs

    specs = shard_specs(index_dir)
    return sorted({src for spec in specs for src in open_shard(spec["path"], rows=spec["rows"]).sources})


def source_group(key: str, sources: list[str], where: str) -> str:
    """The source ``key`` names: itself, its resolved path, or the one source whose path ends with it."""
    if key in sources:
        return key
    if "://" not in key and str(Path(key).expanduser().resolve()) in sources:
        return str(Path(key).expanduser().resolve())
    tail = [part for part in key.split("/") if part not in ("", ".")]
    matches = [src for src in sources if tail and src.split("/")[-len(tail):] == tail]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise InputError(f"{where}: group {key!r} names {len(matches)} sources: {', '.join(matches[:LISTED])}; "
                         "give more of its path")
    raise InputError(_unknown(key, sources, where, "source"))


def docid_prefixes(index_dir: str | os.PathLike, keys: list[str]) -> tuple[set[str], set[str]]:
    """``(the keys that are docid prefixes of the index, up to COLLECTED prefixes to name in an error)``,
    computed shard by shard in blocks of docids; stops as soon as every key is found."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from nagindex.index.derived import open_shard
    from nagindex.index.sharded import shard_specs

    wanted = pa.array(keys, pa.large_string())
    found: set[str] = set()
    known: set[str] = set()
    for spec in shard_specs(index_dir):
        docids = open_shard(spec["path"], rows=spec["rows"]).docids.arrow()  # the rows a query serves
        for lo in range(0, len(docids), _BLOCK):
            prefixes = pc.unique(pc.replace_substring_regex(docids.slice(lo, _BLOCK), pattern="-[^-]*$",
                                                            replacement=""))
            found.update(wanted.filter(pc.is_in(wanted, value_set=prefixes)).to_pylist())
            if len(known) < COLLECTED:
                known.update(prefixes.slice(0, COLLECTED - len(known)).to_pylist())
            if len(found) == len(set(keys)):
                return found, known
    return found, known


def column_values(path: Path, id_field: str, column: str) -> list[str]:
    """The distinct values of ``column`` in a group file, and ``(none)``: the groups of ``--group-by COLUMN``
    (the file streamed in batches: memory of one batch and the distinct values)."""
    import pyarrow.compute as pc

    from nagindex.query.sidefile import keyed_batches

    seen: dict[str, None] = {}
    for _, values in keyed_batches(path, id_field, column, numeric=False):
        seen.update(dict.fromkeys(v for v in pc.unique(values).to_pylist() if v is not None))
    return [*seen, NO_GROUP]


def _unknown(key: str, groups: list[str], where: str, group_by: str, more: bool = False) -> str:
    """The error for a key that names no group: the closest groups (by full path or file name), then a list
    (``more``: ``groups`` are only some of them)."""
    names: dict[str, list[str]] = {g: [g] for g in groups}
    if group_by == "source":
        for g in groups:
            names.setdefault(g.rsplit("/", 1)[-1], []).append(g)
    close = [g for n in difflib.get_close_matches(key, list(names), n=1, cutoff=0.6) for g in names[n]]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    total = f"more than {len(groups):,}" if more else f"{len(groups):,}"
    listed = ", ".join(groups[:LISTED]) + (f", ... ({total} in all)" if len(groups) > LISTED else "")
    return f"{where}: group {key!r} is none of the groups of --group-by {group_by}{hint} (groups: {listed})"
