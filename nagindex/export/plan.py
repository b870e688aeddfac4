"""Which task writes which selected documents, planned without holding the selection.

A selection of 10^8-10^9 rows does not fit a coordinator (about 100 bytes a row as Python objects), so the
plan is two streamed passes over its ``SELECTION_COLUMNS``, a batch of ``PLAN_BATCH`` rows at a time:

1. per source: its best rank, its rows and its estimated bytes (from ``token_count``): memory is one entry per
   source file. The sources, ordered by best rank, are packed in that order into tasks of about one part.
2. every row goes to its task's rows file under ``<out>/.done/plan/`` (``task-<n>.rows``: source index in the
   task, position, rank and docid length, fixed width; ``task-<n>.ids``: the docids' UTF-8 bytes), appended
   from buffers of at most ``FLUSH_BYTES`` in all.

A ``Task`` is then a number, its sources and its file's name: what goes to a worker (a process or a Ray task)
is a few hundred bytes, and the worker reads its own rows (``Task.rows``), ordered by source then position.
The plan is written once (``plan.json`` last, atomically); a resumed run reuses it, and it is removed when
the run's manifest is written.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.fsio import atomic_path

SELECTION_COLUMNS = ("rank", "docid", "source", "position", "token_count")
PLAN = "plan"
#: selection rows read at a time
PLAN_BATCH = 1 << 18
#: rows buffered for the task files before they are appended (all tasks together)
FLUSH_BYTES = 64 << 20
ROW = np.dtype([("source", "<i4"), ("position", "<i8"), ("rank", "<i8"), ("idlen", "<i4")])


@dataclass(frozen=True)
class Task:
    """One unit of work: ``sources`` (ordered by best rank) and ``documents`` selected rows from them, held
    in the plan folder's files ``task-<number>``."""

    number: int
    sources: list[str]
    documents: int
    plan: str

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """The task's rows ordered by source, position, then rank: (source index into ``sources``, position,
        rank, docid)."""
        stem = Path(self.plan) / f"task-{self.number:05d}"
        rows = np.fromfile(f"{stem}.rows", dtype=ROW)
        blob = Path(f"{stem}.ids").read_bytes()
        ends = np.cumsum(rows["idlen"], dtype=np.int64)
        ids = [blob[e - n:e].decode("utf-8") for e, n in zip(ends.tolist(), rows["idlen"].tolist())]
        order = np.lexsort((rows["rank"], rows["position"], rows["source"]))
        return rows["source"][order], rows["position"][order], rows["rank"][order], [ids[i] for i in order]


def selection_batches(path: Path, columns: tuple[str, ...]) -> Iterator[Any]:
    """The selection's ``columns`` as Arrow record batches of at most ``PLAN_BATCH`` rows: one file, or the
    parts of a selection written by the shards (``query -o DIR``), one after another."""
    import pyarrow.parquet as pq
    from pyarrow import json as pa_json

    if path.is_file() and path.suffix != ".parquet":  # a JSONL selection: small by nature
        table = pa_json.read_json(path)
        _check_columns(path, table.column_names, columns)
        yield from table.select(list(columns)).to_batches(PLAN_BATCH)
        return
    for file in sorted(path.glob("*.parquet")) if path.is_dir() else [path]:
        pf = pq.ParquetFile(file)
        _check_columns(file, pf.schema_arrow.names, columns)
        yield from pf.iter_batches(batch_size=PLAN_BATCH, columns=list(columns))


def _check_columns(path: Path, names: list[str], columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise NagIndexError(f"selection {path}: no column {', '.join(missing)} (a file `nagindex query` wrote has them)")


def plan_tasks(selection: Path, out: Path, shard_bytes: int, bytes_per_token: float) -> list[Task]:
    """The tasks of ``selection`` (module docstring), planned under ``out/.done/plan`` or read from there."""
    folder = out / ".done" / PLAN
    done = folder / "plan.json"
    if done.is_file():
        return [Task(t["number"], t["sources"], t["documents"], str(folder))
                for t in json.loads(done.read_text("utf-8"))]
    shutil.rmtree(folder, ignore_errors=True)  # a plan a killed run left half written
    folder.mkdir(parents=True)
    names, best, count, estimate = _source_stats(selection, bytes_per_token)
    task_of = np.zeros(len(names), np.int64)
    local = np.zeros(len(names), np.int32)
    groups: list[list[int]] = []
    size = 0.0
    for s in np.argsort(best, kind="stable").tolist():
        if not groups or size >= shard_bytes:
            groups.append([])
            size = 0.0
        task_of[s], local[s] = len(groups) - 1, len(groups[-1])
        groups[-1].append(s)
        size += estimate[s]
    _partition(selection, folder, {n: i for i, n in enumerate(names)}, task_of, local)
    tasks = [Task(n, [names[s] for s in g], int(count[g].sum()), str(folder)) for n, g in enumerate(groups)]
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps([{"number": t.number, "sources": t.sources, "documents": t.documents}
                                   for t in tasks]), encoding="utf-8")
    return tasks


def remove_plan(out: Path) -> None:
    shutil.rmtree(out / ".done" / PLAN, ignore_errors=True)


def _source_stats(selection: Path, bytes_per_token: float) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Pass 1: the selection's sources in order of first appearance, with each one's best rank, rows and
    estimated bytes."""
    where: dict[str, int] = {}
    best, count, estimate = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
    for batch in selection_batches(selection, ("source", "rank", "token_count")):
        src = _source_index(batch.column(0), where)
        if len(where) > len(best):
            grow = len(where) - len(best)
            best = np.concatenate([best, np.full(grow, np.iinfo(np.int64).max)])
            count, estimate = np.concatenate([count, np.zeros(grow, np.int64)]), np.concatenate([estimate, np.zeros(grow)])
        np.minimum.at(best, src, batch.column(1).to_numpy().astype(np.int64))
        count += np.bincount(src, minlength=len(best))
        estimate += np.bincount(src, batch.column(2).to_numpy().astype(np.float64) * bytes_per_token,
                                minlength=len(best))
    return list(where), best, count, estimate


def _partition(selection: Path, folder: Path, where: dict[str, int], task_of: np.ndarray, local: np.ndarray) -> None:
    """Pass 2: every selected row appended to its task's files, through buffers of ``FLUSH_BYTES`` in all."""
    buffers: dict[int, list[tuple[np.ndarray, bytes]]] = {}
    held = 0
    for batch in selection_batches(selection, ("source", "position", "rank", "docid")):
        src = _source_index(batch.column(0), where)
        ids = batch.column(3)
        rows = np.empty(len(src), ROW)
        rows["source"], rows["position"] = local[src], batch.column(1).to_numpy()
        rows["rank"] = batch.column(2).to_numpy()
        task = task_of[src]
        order = np.argsort(task, kind="stable")
        bounds = np.searchsorted(task[order], np.unique(task), side="right")
        lo = 0
        for hi in bounds.tolist():
            pick = order[lo:hi]
            part = rows[pick]
            part["idlen"], blob = _utf8(ids.take(pick))
            buffers.setdefault(int(task[pick[0]]), []).append((part, blob))
            held += part.nbytes + len(blob)
            lo = hi
        if held >= FLUSH_BYTES:
            _flush(folder, buffers)
            held = 0
    _flush(folder, buffers)


def _utf8(strings: Any) -> tuple[np.ndarray, bytes]:
    """Each string's UTF-8 length and all of them back to back, read from the Arrow buffers (no Python
    string per row)."""
    import pyarrow as pa

    if not pa.types.is_large_string(strings.type):
        strings = strings.cast(pa.large_string())
    _, offsets, data = strings.buffers()
    offs = np.frombuffer(offsets, np.int64)[strings.offset:strings.offset + len(strings) + 1]
    blob = memoryview(data)[offs[0]:offs[-1]].tobytes() if data is not None else b""
    return np.diff(offs), blob


def _flush(folder: Path, buffers: dict[int, list[tuple[np.ndarray, bytes]]]) -> None:
    for task, chunks in sorted(buffers.items()):
        stem = folder / f"task-{task:05d}"
        with open(f"{stem}.rows", "ab") as rows, open(f"{stem}.ids", "ab") as ids:
            for part, blob in chunks:
                rows.write(part.tobytes())
                ids.write(blob)
    buffers.clear()


def _source_index(column: Any, where: dict[str, int]) -> np.ndarray:
    """Each row's source as an index into ``where`` (sources seen first get the next index)."""
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(column)
    if hasattr(encoded, "combine_chunks"):
        encoded = encoded.combine_chunks()
    names = encoded.dictionary.to_pylist()
    for name in names:
        where.setdefault(name, len(where))
    lookup = np.array([where[n] for n in names], np.int64)
    return lookup[encoded.indices.to_numpy().astype(np.int64)] if len(names) else np.zeros(len(column), np.int64)

