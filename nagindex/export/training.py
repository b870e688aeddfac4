"""``nagindex write-training``: a selection's documents as training shards (parquet, ``jsonl.zst``, Megatron).

The work is split by source, not by rank. Rank order across output files would make every part read from
nearly every source (a selection takes a slice of each file), so a corpus would be read once per part;
grouped by source, each source is read once, in its own order, by one task. So: the selection's sources,
ordered by their best rank, are packed into tasks of about one part's size (``plan.plan_tasks``, two streamed
passes over the selection: the coordinator never holds its rows); a task reads its rows from the plan, then
only its sources, streaming, a batch of texts at a time, checks every text as ``--with-text`` does
(``sources.fetch.source_texts``) and writes its parts ``part-<task>-<k>`` of about ``shard_size`` bytes.
Within a part documents follow their source's order, each with its ``rank`` (parquet, JSONL); the manifest
lists the parts in task order. Tasks do not depend on the worker count, so 1, 3 or a Ray cluster of workers
write the same bytes.

Resume: a part is renamed into place whole, then marked done (``.done/<task>-<k>.json``, the rows it holds);
a rerun skips marked parts and restarts a task at its first unmarked part, and a finished task is skipped.
The run's options and the selection's hash (``.done/run.json``) must match for a rerun to reuse anything.
"""
from __future__ import annotations

import fcntl
import functools
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.export.plan import SELECTION_COLUMNS, Task, plan_tasks, remove_plan, selection_batches
from nagindex.export.writers import BATCH_BYTES, FORMATS, PartWriter, TokenEncoder, TrainingDoc
from nagindex.fsio import TMP_SUFFIX, atomic_path
from nagindex.progress import StageTimer, progress_bar

DONE = ".done"


@dataclass(frozen=True)
class TrainingSpec:
    """What to write: ``format`` (a ``writers.FORMATS`` name), parts of about ``shard_bytes`` each and,
    for Megatron, the ``tokenizer`` (a name ``models.load_tokenizer`` takes) and whether an end token
    follows each document (``eos``)."""

    format: str = "parquet"
    shard_bytes: int = 512_000_000
    tokenizer: str = "smollm2-135m"
    eos: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise NagIndexError(f"--format {self.format!r}: use one of {', '.join(FORMATS)}")
        if not (isinstance(self.shard_bytes, int) and self.shard_bytes > 0):
            raise NagIndexError(f"shard size {self.shard_bytes!r}: a positive number of bytes")

    @property
    def writer(self) -> type[PartWriter]:
        return FORMATS[self.format]

    def signature(self) -> dict[str, Any]:
        """The options the written bytes depend on (the tokenizer only where there are tokens)."""
        out: dict[str, Any] = {"format": self.format, "shard_bytes": self.shard_bytes}
        if self.writer.tokenized:
            out.update(tokenizer=self.tokenizer, eos=self.eos)
        return out


@dataclass
class TrainingOutput:
    """What ``write_training`` wrote: the parts in order (``manifest.json`` beside them lists them too)."""

    out: Path
    parts: list[dict[str, Any]]
    documents: int
    bytes: int
    timings: str = ""
    skipped_tasks: int = 0


def write_training(selection: str | os.PathLike, out: str | os.PathLike, *, index_dir: str | os.PathLike | None = None,
                   format: str = "parquet", shard_size: str | int = "512MB", tokenizer: str = "smollm2-135m",
                   eos: bool = True, workers: int = 1, ray_address: str | None = None) -> TrainingOutput:
    """Write the documents of ``selection`` (a file ``nagindex query`` wrote) into the folder ``out`` as
    training parts of about ``shard_size`` bytes (UTF-8 text, or token ids for Megatron). Texts are read back
    from the sources of ``index_dir`` (default: the index the selection's manifest names) and checked as
    ``--with-text`` checks them. ``workers`` local processes, or Ray tasks on ``ray_address`` (the sources
    and ``out`` must then be on storage every node sees). Resumable: run the same command again."""
    from nagindex.units import parse_size

    spec = TrainingSpec(format, parse_size(shard_size), tokenizer, eos)
    if workers < 1:
        raise NagIndexError(f"--workers {workers}: at least 1")
    timer = StageTimer()
    out = Path(out)
    with timer("plan"):
        index_dir = selection_index(Path(selection), index_dir)
        text_opts, states = index_sources(index_dir)
    with _writing(out):
        _claim(out, {**spec.signature(), "selection": _identity(Path(selection))})
        with timer("plan"):
            tasks = plan_tasks(Path(selection), out, spec.shard_bytes, spec.writer.bytes_per_token)
        return _run(tasks, spec, out, (text_opts, states), workers, ray_address, timer,
                    {"selection": str(Path(selection).resolve()), "index": str(Path(index_dir).resolve())})


def _run(tasks: list[Task], spec: TrainingSpec, out: Path, sources: tuple[dict[str, Any], dict[str, Any]],
         workers: int, ray_address: str | None, timer: StageTimer, inputs: dict[str, str]) -> TrainingOutput:
    """Run the tasks not done yet, then write the manifest of every part."""
    pending = [t for t in tasks if not (out / DONE / f"{t.number:05d}.json").is_file()]
    bar = progress_bar(total=sum(t.documents for t in tasks), desc="write-training", unit="doc")
    bar.update(sum(t.documents for t in tasks) - sum(t.documents for t in pending))
    try:
        with timer("write"):
            args = (spec, str(out), *sources)
            if ray_address is not None:
                _run_ray(pending, args, ray_address, bar)
            elif workers == 1 or len(pending) <= 1:
                for task in pending:
                    write_task(task, *args)
                    bar.update(task.documents)
            else:
                _run_local(pending, args, workers, bar)
    finally:
        bar.close()
    parts = [p for t in tasks for p in json.loads((out / DONE / f"{t.number:05d}.json").read_text("utf-8"))]
    manifest = {**inputs, **spec.signature(), "documents": sum(p["documents"] for p in parts),
                "bytes": sum(p["bytes"] for p in parts), "parts": parts}
    with atomic_path(out / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    remove_plan(out)
    return TrainingOutput(out, parts, manifest["documents"], manifest["bytes"], timer.summary(),
                          len(tasks) - len(pending))


def selection_index(path: Path, index_dir: str | os.PathLike | None) -> str:
    """The index to read the texts of the selection ``path`` from: ``index_dir``, else the one its manifest
    (``<selection>.manifest.json``) names."""
    if not path.exists():
        raise NagIndexError(f"selection {path}: no such file or folder")
    next(selection_batches(path, SELECTION_COLUMNS), None)  # its columns, checked before anything is written
    if index_dir is None:
        side = path.with_name(path.name + ".manifest.json")
        index_dir = json.loads(side.read_text("utf-8")).get("index") if side.is_file() else None
        if not index_dir:
            raise NagIndexError(f"selection {path}: its manifest names no index; pass --index")
    return str(index_dir)


def index_sources(index_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """How the index's texts are read back (``fetch.text_options``) and each source's ingest record (size,
    change stamp) from every shard's store, as ``--with-text`` checks them."""
    from nagindex.index.derived import open_shard
    from nagindex.index.sharded import shard_specs
    from nagindex.index.store import IndexStore
    from nagindex.sources.fetch import text_options

    specs = shard_specs(index_dir)
    states: dict[str, dict[str, Any]] = {}
    for spec in specs:
        try:
            with IndexStore.open(spec["path"]) as store:
                states.update(store.all_progress())
        except NagIndexError:  # derived files only: no ingest records to compare with
            continue
    return text_options(open_shard(specs[0]["path"], rows=specs[0]["rows"]).manifest), states


def write_task(task: Task, spec: TrainingSpec, out: str, text_opts: dict[str, Any],
               states: dict[str, dict[str, Any]]) -> None:
    """Write one task's parts, from its first part not yet marked done; then mark the task done."""
    out_dir = Path(out)
    done = out_dir / DONE
    parts = []
    while (marker := done / f"{task.number:05d}-{len(parts):05d}.json").is_file():
        parts.append(json.loads(marker.read_text("utf-8")))
    first = parts[-1]["rows"][1] if parts else 0
    source_ids, positions, ranks, docids = task.rows()
    encoder = _encoder(spec.tokenizer, spec.eos) if spec.writer.tokenized else None
    writer: PartWriter | None = None
    try:
        for batch in _text_batches(task.sources, source_ids, positions, docids, first, text_opts, states):
            tokens = encoder.encode([t for _, t in batch]) if encoder else [None] * len(batch)
            for (j, text), ids in zip(batch, tokens):
                size = ids.nbytes if ids is not None else len(text.encode("utf-8"))
                if writer is None:
                    writer = spec.writer(out_dir / f"part-{task.number:05d}-{len(parts):05d}",
                                         encoder.dtype if encoder else None)
                writer.add(TrainingDoc(docids[j], text, int(ranks[j]), ids, size))
                if writer.bytes >= spec.shard_bytes:
                    parts.append(_commit(writer, task.number, len(parts), first, j + 1, done))
                    writer, first = None, j + 1
        if writer is not None:
            parts.append(_commit(writer, task.number, len(parts), first, len(docids), done))
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    with atomic_path(done / f"{task.number:05d}.json") as tmp:
        tmp.write_text(json.dumps(parts), encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _encoder(name: str, eos: bool) -> TokenEncoder:
    """One tokenizer per worker process, whatever the number of tasks it runs (a GGUF's takes seconds)."""
    return TokenEncoder(name, eos)


def _text_batches(sources: list[str], source_ids: np.ndarray, positions: np.ndarray, docids: list[str], first: int,
                  text_opts: dict[str, Any], states: dict[str, dict[str, Any]]) -> Iterator[list[tuple[int, str]]]:
    """``(row, text)`` of a task's rows (``Task.rows``) from ``first`` on, in order, a batch of about
    ``BATCH_BYTES`` at a time; each source streamed once (``source_texts``), from the first position still
    wanted."""
    from nagindex.sources.fetch import source_texts

    batch: list[tuple[int, str]] = []
    size = 0
    bounds = np.searchsorted(source_ids, np.arange(len(sources) + 1))
    for s, src in enumerate(sources):
        lo, hi = max(bounds[s], first), bounds[s + 1]
        if lo >= hi:
            continue
        rows = {int(p): [j] for j, p in zip(range(lo, hi), positions[lo:hi].tolist())}
        for j, text in source_texts(src, rows, docids, recorded=states.get(src), **text_opts):
            batch.append((j, text))
            size += len(text)
            if size >= BATCH_BYTES:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _commit(writer: PartWriter, task: int, k: int, first: int, end: int, done: Path) -> dict[str, Any]:
    """Give a finished part its final names, then mark it done with the task rows ``[first, end)`` it holds."""
    files = writer.close()
    record = {"name": f"part-{task:05d}-{k:05d}", "files": files, "rows": [first, end], "documents": end - first,
              "bytes": writer.bytes}
    done.mkdir(exist_ok=True)
    with atomic_path(done / f"{task:05d}-{k:05d}.json") as tmp:
        tmp.write_text(json.dumps(record), encoding="utf-8")
    return record


@contextmanager
def _writing(out: Path) -> Iterator[None]:
    """Hold ``out`` for this run: a second run writing the same folder at once is an error, not a race."""
    (out / DONE).mkdir(parents=True, exist_ok=True)
    with open(out / DONE / "lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NagIndexError(f"{out}: another write-training is writing there now") from None
        yield


def _claim(out: Path, signature: dict[str, Any]) -> None:
    """Record this run's signature in ``out`` or check it equals the one there (a resumed run), and remove
    the temporary files a killed run left."""
    path = out / DONE / "run.json"
    if path.is_file():
        before = json.loads(path.read_text("utf-8"))
        if before != signature:
            diff = {k: (before.get(k), signature.get(k)) for k in {*before, *signature}
                    if before.get(k) != signature.get(k)}
            raise NagIndexError(f"{out} holds parts written with other options or another selection "
                                f"({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in sorted(diff.items()))}): "
                                "choose another -o, or remove it to start over")
    else:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(signature, indent=1), encoding="utf-8")
    for stale in [*out.glob(f".*{TMP_SUFFIX}"), *path.parent.glob(f".*{TMP_SUFFIX}")]:
        stale.unlink()


def _identity(path: Path) -> dict[str, Any]:
    """The selection a run reads: its path and content hash (a rerun on another selection must not resume)."""
    from nagindex.models import file_sha256

    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]  # a folder: the shards' parts
    return {"path": str(path.resolve()), "sha256": file_sha256(files)}


def _run_local(tasks: list[Task], args: tuple[Any, ...], workers: int, bar: Any) -> None:
    """The tasks on ``workers`` spawned processes; the first failed task (in task order) is raised."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(write_task, task, *args) for task in tasks]
        try:
            for task, future in zip(tasks, futures):
                future.result()
                bar.update(task.documents)
        finally:  # an error or Ctrl-C: start no queued task
            for future in futures:
                future.cancel()


def _run_ray(tasks: list[Task], args: tuple[Any, ...], address: str, bar: Any) -> None:
    """A Ray task per task; a dead worker's task is retried by Ray (it resumes at its first unmarked part)."""
    from nagindex.cluster import ClusterWatch, connect

    ray = connect(address)
    kept = "every part written is kept: run the same command again to resume"
    watch = ClusterWatch(ray, address, kept)
    remote = ray.remote(max_retries=3, retry_exceptions=False)(write_task)
    refs = [remote.remote(task, *args) for task in tasks]
    for task, ref in zip(tasks, refs):
        try:
            watch.get(ref)
        except ray.exceptions.RayError as exc:
            if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, NagIndexError):
                raise exc.cause from None
            if watch.gone():
                raise watch.lost(f"Ray says: {exc}") from exc
            raise NagIndexError(f"task {task.number} ({task.sources[0]}...) failed on Ray ({exc}); {kept}") from exc
        bar.update(task.documents)
