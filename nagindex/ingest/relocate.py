"""An index's sources: whether each is still the file ingested, and re-attaching a moved or copied corpus
without ingesting it again (``nagindex sources``).

Texts are read back from the sources (``--with-text``, decontamination: ``sources/fetch.fetch_texts``) only
when provably the indexed documents: the file at the recorded path has the size and change stamp ingest
recorded (the store's progress records) and the record at each position has the indexed docid. A corpus
moved or copied elsewhere has other paths and stamps, so ``reattach_sources`` reads each new file once, in
order, and compares the docid of every indexed record at its position with the index's (never the stamps
alone); only when every file matches does it record the new paths and stamps: in each shard's store (the
``sources`` and ``progress`` records, one transaction), its derived ``sources.json`` and the catalog's
inputs. Ingest's resume then knows the files under their new paths too.

Records whose ids ingest made from the path and position (no id field) name the old path, so a moved
copy of them does not match and is refused: such a corpus is ingested again.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.errors import InputError, NagIndexError

logger = logging.getLogger(__name__)

#: what a source's state means (``source_states``)
STATES = {"unchanged": "the size and change stamp ingest recorded",
          "changed": "present, but its size or change stamp differ from what ingest recorded",
          "missing": "nothing there: moved or deleted",
          "unrecorded": "present; no ingest record to compare it with (an imported index, or its store is elsewhere)",
          "remote": "a URL, not checked"}
_BLOCK = 65536  # expected docids turned into Python strings at a time


@dataclass(frozen=True)
class SourceState:
    """One source of an index: its recorded path, the records indexed from it, and its state (``STATES``)."""

    path: str
    documents: int
    state: str


@dataclass(frozen=True)
class Reattached:
    """A source re-attached: every one of its ``documents`` was found with its docid at its position in ``new``.
    ``resized``: the new file's size differs from the ingested one's (re-compressed, re-written)."""

    old: str
    new: str
    documents: int
    resized: bool


def source_states(index_dir: str | os.PathLike) -> list[SourceState]:
    """Every source of the index (all shards), sorted by path, with its state: is the file there still the one
    ingested (size and change stamp as recorded)? Reads no records."""
    from nagindex.index.derived import open_shard
    from nagindex.index.sharded import shard_specs

    counts: dict[str, int] = {}
    recorded: dict[str, dict[str, Any]] = {}
    for spec in shard_specs(index_dir):
        view = open_shard(spec["path"], rows=spec["rows"])  # the rows a query serves
        per_source = np.bincount(np.asarray(view.source_ids), minlength=len(view.sources))
        for src, n in zip(view.sources, per_source.tolist()):
            counts[src] = counts.get(src, 0) + n
        recorded.update(_progress(Path(spec["path"])))
    return [SourceState(src, counts[src], _state(src, recorded.get(src))) for src in sorted(counts)]


def reattach_sources(index_dir: str | os.PathLike,
                     mapping: Mapping[str, str] | str | os.PathLike) -> list[Reattached]:
    """Re-attach moved or copied sources: ``mapping`` (or a YAML/JSON file of it) maps an old path, a source's
    file or a folder above it, to where that file or folder is now (``old == new`` re-checks files in place,
    after a copy changed their stamps). Each new file is read once and must hold every indexed record, with
    its docid, at its position; otherwise an ``InputError`` names the file and the first record that differs,
    and nothing is changed. Returns what was re-attached."""
    from nagindex.index.catalog import load_catalog
    from nagindex.index.sharded import shard_specs

    moves = _moves(load_moves(mapping) if not isinstance(mapping, Mapping) else mapping)
    shards = [_Shard(Path(spec["path"])) for spec in shard_specs(index_dir)]
    plan = {src: new for shard in shards for src in shard.sources if (new := _new_path(src, moves)) is not None}
    if not plan:
        raise NagIndexError(f"no source of the index {index_dir} is under {', '.join(old for old, _, _ in moves)} "
                            f"(`nagindex sources --index {index_dir}` lists them)")
    _check_targets(plan, {src for shard in shards for src in shard.sources})
    recorded: dict[str, dict[str, Any]] = {}
    for shard in shards:
        recorded.update(_progress(shard.path))
    fields = _fields(shards[0].view.manifest)
    states, done = {}, []
    for old, new in plan.items():
        positions, docids = _records(shards, old)
        states[old] = _verify(old, new, positions, docids, fields)
        size = recorded.get(old, {}).get("size")
        done.append(Reattached(old, new, len(positions), size is not None and states[old]["size"] != size))
    for shard in shards:
        moved = {old: (plan[old], states[old]) for old in shard.ids if old in plan}
        if moved:
            shard.record(moved)
    catalog = load_catalog(index_dir)
    if catalog is not None:
        for item in catalog.inputs:
            if item["key"] in plan:
                if "parts" not in item:  # a split input's entry records its parts' bytes (ingest.sharded), kept
                    item["size"] = states[item["key"]]["size"]
                item["key"] = plan[item["key"]]
        catalog.save()
    for r in done:
        logger.info("re-attached %s -> %s (%d records checked)", r.old, r.new, r.documents)
    return done


def load_moves(path: str | os.PathLike) -> dict[str, str]:
    """A YAML/JSON file mapping old paths to new ones (``/data/corpus: /mnt/corpus``)."""
    from nagindex.config import load_yaml

    raw = load_yaml(Path(path))
    if not isinstance(raw, Mapping) or not raw or not all(isinstance(v, str) for v in raw.values()):
        raise InputError(f"{path}: expected a mapping of old path -> new path")
    return {str(k): v for k, v in raw.items()}


def _moves(mapping: Mapping[str, str]) -> list[tuple[str, tuple[str, ...], str]]:
    """``(old as given, the forms a source path may have it in, new)``, longest old first (the most specific
    move wins). An old path is matched as given and resolved from here; new paths are made absolute, like
    the keys ingest records (``sources.inputs``)."""
    from nagindex.sources.inputs import is_url

    if not mapping:
        raise NagIndexError("nothing to re-attach: give --move OLD NEW (or a mapping file)")
    moves = []
    for old, new in mapping.items():
        old, new = str(old), str(new)
        resolved = old if is_url(old) else str(Path(old).expanduser().resolve())
        forms = tuple(dict.fromkeys([old.rstrip("/"), resolved.rstrip("/")]))
        moves.append((old, forms, new if is_url(new) else str(Path(new).expanduser().resolve())))
    return sorted(moves, key=lambda m: -len(m[1][-1]))


def _new_path(src: str, moves: list[tuple[str, tuple[str, ...], str]]) -> str | None:
    """Where ``src`` lies now: the first move whose old path is ``src`` or a folder above it, with the rest of
    ``src``'s path kept; None if no move covers it."""
    for _, forms, new in moves:
        for form in forms:
            if src == form:
                return new
            if src.startswith(form + "/"):
                return new + src[len(form):]
    return None


def _check_targets(plan: dict[str, str], sources: set[str]) -> None:
    """Refuse two sources moved onto one path, or a source moved onto another source that stays."""
    seen: dict[str, str] = {}
    for old, new in plan.items():
        if new in seen:
            raise NagIndexError(f"{seen[new]} and {old} would both be re-attached as {new}")
        if new != old and new in sources and new not in plan:
            raise NagIndexError(f"{new} is already a source of the index: {old} cannot be re-attached there")
        seen[new] = old


def _records(shards: list[_Shard], source: str) -> tuple[np.ndarray, Any]:
    """Positions (ascending) and docids of every record indexed from ``source``, over all shards."""
    import pyarrow as pa

    from nagindex.arrays import numeric_array

    parts = [shard.records(source) for shard in shards if source in shard.ids]
    if len(parts) == 1:
        return parts[0]
    position = np.concatenate([p for p, _ in parts])  # one input is one shard's, but not in a hand-made catalog
    order = np.argsort(position, kind="stable")
    return position[order], pa.concat_arrays([d for _, d in parts]).take(numeric_array(order))


def _verify(old: str, new: str, positions: np.ndarray, docids: Any, fields: Any) -> dict[str, Any]:
    """Read ``new`` once, in order, from its first indexed position: every record indexed from ``old`` must be
    there, with its docid. Returns the new file's state (size, change stamp)."""
    from nagindex.data import Document
    from nagindex.sources.inputs import input_files
    from nagindex.sources.read import read_input

    try:
        items = input_files([new])
    except InputError as exc:
        raise InputError(f"{exc}: {old} cannot be re-attached there; nothing was re-attached") from None
    if len(items) != 1:
        raise InputError(f"{new} is a folder of {len(items)} files, not the one file {old} was; nothing was "
                         "re-attached")
    state = items[0].state()
    wanted = _pairs(positions, docids)
    pos, docid = next(wanted)
    for rec in read_input(items[0], fields=fields, start=pos):
        if rec.position is None:
            raise InputError(f"{new}: {rec.reason}; nothing was re-attached")
        if rec.position < pos:
            continue
        if rec.position > pos:
            raise InputError(_differs(old, new, pos, docid, "is missing"))
        if not isinstance(rec, Document):
            raise InputError(_differs(old, new, pos, docid, f"is not a document ({rec.reason})"))
        if rec.docid != docid:
            raise InputError(_differs(old, new, pos, docid, f"is {rec.docid!r}", rec.docid))
        following = next(wanted, None)
        if following is None:
            return state
        pos, docid = following
    raise InputError(_differs(old, new, pos, docid, "is missing (the file ends before it)"))


def _differs(old: str, new: str, pos: int, docid: str, found: str, got: str | None = None) -> str:
    """The refusal of a file whose record at ``pos`` is not the indexed ``docid`` (``found`` says what it is)."""
    hint = ""
    if got is not None and docid.endswith(f":{pos}") and got.endswith(f":{pos}"):
        hint = " (these ids were made from the file's path and position, so a moved copy cannot match them: " \
               "ingest it again)"
    return (f"{new}: the record at position {pos} {found}, not the indexed {docid!r}: it does not hold the records "
            f"indexed from {old}{hint}; nothing was re-attached")


def _pairs(positions: np.ndarray, docids: Any) -> Iterator[tuple[int, str]]:
    """``(position, docid)`` in order, a block of Python strings at a time."""
    for lo in range(0, len(positions), _BLOCK):
        yield from zip(positions[lo:lo + _BLOCK].tolist(), docids.slice(lo, _BLOCK).to_pylist())


def _fields(manifest: dict[str, Any]) -> Any:
    """How the index's ingest read its records (fields, text template): the records are read the same way."""
    from nagindex.sources.read import Fields

    return Fields(manifest.get("text_field", "doc"), manifest.get("id_field", "docid"), None,
                  template=manifest.get("text_template"))


class _Shard:
    """One store folder of the index: its derived view and its sources in id order (the store's, the record,
    when it is here; else the derived files'). A ``sources.json`` behind its store (a re-attach stopped
    between the two) is brought up to date on opening."""

    def __init__(self, path: Path) -> None:
        from nagindex.index.derived import open_shard
        from nagindex.index.store import IndexStore

        self.path, self.view = path, open_shard(path)
        if self.view.pending:
            raise NagIndexError(f"{path}: {self.view.pending:,} rows are in the store but not derived yet (an ingest "
                                "is running or was interrupted): let it finish, or run it again, first")
        self.sources = list(self.view.sources)
        if _has_store(path):
            with IndexStore.open(path) as store:
                recorded = store.sources()
            if recorded != self.sources:
                _write_sources(path, recorded)
                self.sources = recorded
        self.ids = {src: i for i, src in enumerate(self.sources)}
        self._by_source: tuple[np.ndarray, np.ndarray] | None = None

    def records(self, source: str) -> tuple[np.ndarray, Any]:
        """Positions (ascending) and docids (Arrow) of the rows indexed from ``source``; the rows are grouped
        by source once per shard (one sort), not scanned once per source."""
        import pyarrow as pa

        from nagindex.arrays import numeric_array

        if self._by_source is None:
            ids = np.asarray(self.view.source_ids)
            order = np.argsort(ids, kind="stable")
            self._by_source = order, np.searchsorted(ids[order], np.arange(len(self.sources) + 1))
        order, bounds = self._by_source
        sid = self.ids[source]
        rows = order[bounds[sid]:bounds[sid + 1]]
        positions = np.asarray(self.view.positions)[rows]
        by_position = np.argsort(positions, kind="stable")
        rows = rows[by_position]
        return positions[by_position], pa.array(self.view.docids.arrow().take(numeric_array(rows)), pa.large_string())

    def record(self, moved: dict[str, tuple[str, dict[str, Any]]]) -> None:
        """Record the moves (old path -> new path and state): in the store (when here), then ``sources.json``."""
        from nagindex.index.store import IndexStore

        if _has_store(self.path):
            with IndexStore.open(self.path, readonly=False) as store:
                store.move_sources(moved)
                self.sources = store.sources()
        else:
            self.sources = [moved[s][0] if s in moved else s for s in self.sources]
        _write_sources(self.path, self.sources)


def _write_sources(path: Path, sources: list[str]) -> None:
    """A shard's ``sources.json``, replaced atomically under its derive lock (no derive runs meanwhile); its
    ``index_info.json`` is touched, as a derive would, so snapshots held open elsewhere (a warm Ray actor's)
    are opened again with the new paths."""
    from nagindex.fsio import atomic_path
    from nagindex.index.derived import INFO_FILE, SOURCES_FILE

    with open(path / "derive.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with atomic_path(path / SOURCES_FILE) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            json.dump(sources, fh, indent=1)
        if (path / INFO_FILE).is_file():
            os.utime(path / INFO_FILE)


def _has_store(path: Path) -> bool:
    from nagindex.index.store import STORE_DIR

    return (path / STORE_DIR / "data.mdb").is_file()


def _progress(path: Path) -> dict[str, dict[str, Any]]:
    """A shard's ingest records (size and change stamp per source); empty without its store."""
    from nagindex.index.store import IndexStore

    if not _has_store(path):
        return {}
    with IndexStore.open(path) as store:
        return store.all_progress()


def _state(src: str, recorded: dict[str, Any] | None) -> str:
    """``src``'s state (``STATES``), from the file there and what ingest recorded of it."""
    from nagindex.sources.inputs import is_url

    if is_url(src):
        return "remote"
    if not os.path.exists(src):
        return "missing"
    if recorded is None or recorded.get("size") is None:
        return "unrecorded"
    st = os.stat(src)
    return "unchanged" if (recorded["size"], recorded["mtime"]) == (st.st_size, st.st_mtime) else "changed"
