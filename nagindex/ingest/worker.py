"""One index folder's ingest (``ingest_folder``): read -> tokenize -> extract -> store -> index.

Documents flow in *windows* (``commit_every`` documents). A window is tokenized,
its NAGs extracted in length-bucketed batches, and then committed to the store
in one LMDB transaction together with the resume cursor of its input. A crash
loses at most the window in flight, and the next run resumes from the cursor,
so an interrupted ingest ends with exactly the rows of an uninterrupted one, in
the same order (input order; the first occurrence of a docid wins).

``run.ingest`` calls it for a one-folder index, each shard worker (``sharded``) for its shard;
``run.extract_files`` reuses its windows and encoder to write feature files instead.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nagindex import __version__
from nagindex.data import Cursor, Document, Reject, Window
from nagindex.encode import encoder as enc
from nagindex.errors import InputError, NagIndexError
from nagindex.progress import StageTimer, TokenRate, progress_bar
from nagindex.sources.inputs import WHOLE, InputFile, input_files, parquet_file
from nagindex.sources.read import FieldUsage, Fields, read_input
from nagindex.sources.render import check_text_template

if TYPE_CHECKING:
    from nagindex.encode.dense import DenseSpec
    from nagindex.encode.extract import NagExtractor

log = logging.getLogger(__name__)

REJECTS_FILE = "rejects.jsonl"
DUPLICATE = "duplicate id"


@dataclass
class IngestResult:
    index_dir: Path
    added: int = 0
    tokens: int = 0
    rejects: int = 0
    skipped_inputs: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    timings: str = ""
    fields: dict[str, dict[str, int]] = field(default_factory=dict)  # {"text": {field: records}, "id": {...}}
    warnings: list[str] = field(default_factory=list)
    hidden: int = 0  # sharded ingests: documents left out as repeats of an id in an earlier shard's input


def group_windows(
    inputs: Iterable[tuple[str, str, int, Iterable[Document | Reject]]], size: int, *,
    screen: Callable[[list[Document]], tuple[list[Document], list[Reject]]] | None = None,
) -> Iterator[Window]:
    """Group the records of ``inputs`` (``(key, source, start, records)`` each, in order) into windows of
    ``size`` documents. Windows span inputs, so a folder of one-document files still encodes and commits
    in full batches; each window carries the cursor of every input it read from, ``done`` once read through.

    ``screen`` may reject documents of a window before any model work (duplicate ids).
    """
    docs: list[Document] = []
    rejects: list[Reject] = []
    cursors: dict[str, Cursor] = {}
    for key, source, start, records in inputs:
        cursors[source] = Cursor(key, start)
        try:
            for rec in records:
                if rec.position is not None:
                    cursors[source].next_position = rec.position + 1
                if isinstance(rec, Reject):
                    rejects.append(rec)
                    continue
                docs.append(rec)
                if len(docs) >= size:
                    yield _screened(Window(docs, rejects, cursors), screen)
                    docs, rejects = [], []
                    cursors = {source: Cursor(key, cursors[source].next_position)}
        except NagIndexError:  # reading must stop (a network error): what was read is committed first
            if docs or rejects:
                yield _screened(Window(docs, rejects, cursors), screen)
            raise
        cursors[source].done = True
    if docs or rejects or cursors:
        yield _screened(Window(docs, rejects, cursors), screen)


def _screened(window: Window, screen: Callable[[list[Document]], tuple[list[Document], list[Reject]]] | None
              ) -> Window:
    if screen is not None and window.docs:
        window.docs, dups = screen(window.docs)
        window.rejects = window.rejects + dups
    return window


class LocalEncoder:
    """Encodes windows in this process, one after the other."""

    def __init__(self, extractor: "NagExtractor") -> None:
        self.extractor = extractor

    def describe(self) -> dict[str, Any]:
        return enc.describe_extractor(self.extractor)

    def map(self, windows: Iterable[Window]) -> Iterator[Window]:
        for window in windows:
            yield enc.encode_window(window, self.extractor)


def estimate_records(files: Sequence[InputFile], starts: dict[str, int]) -> int | None:
    """Cheap total for the progress bar's ETA (parquet metadata, .jsonl sizes); None if unknown.

    A .jsonl is not read through (that would be a second pass over the corpus before any work): its
    lines are its size over the bytes per line of its first MiB, exact when it is no longer. A split
    input's parts count their own records (the last part's end is the file's estimate).
    """
    sample = 1 << 20
    total = 0
    for item in files:
        if item.kind == "jsonl" and item.fs is None:
            with open(item.path, "rb") as fh:
                head, size = fh.read(sample), os.fstat(fh.fileno()).st_size
            lines = head.count(b"\n")
            n = lines if len(head) == size else round(size * max(lines, 1) / len(head))
        elif item.kind == "parquet":
            try:
                with parquet_file(item) as pf:
                    n = pf.metadata.num_rows
            except Exception:  # noqa: BLE001 - a broken file is reported by the reader
                n = 0
        elif item.kind == "txt":
            n = 1
        else:
            return None
        start = starts.get(item.key, 0)  # a split input's parts: the records of each from there on
        total += sum(max((n if p.end is None else p.end) - max(p.first, start), 0) for p in item.parts or (WHOLE,))
    return total


def check_settings(index_dir: Path, backbone: str, neuron_type: str, top_k: int, max_length: int,
                   dtype: str | None, text_field: str, text_template: str | None,
                   nait: "DenseSpec | None" = None) -> tuple[str, dict[str, Any]]:
    """Check an ingest's index folder and text settings before any model loads. Returns the backbone as
    recorded (a local model by absolute path) and the settings the index's identity must match
    (an explicit ``dtype`` is checked here; auto (None) is checked via the full manifest)."""
    from nagindex.index.store import check_index_path
    from nagindex.models import canonical_dtype

    check_index_path(index_dir)
    if Path(backbone).expanduser().is_dir():  # a local model is recorded by absolute path
        backbone = str(Path(backbone).expanduser().resolve())
    check_text_template(text_template, text_field)
    return backbone, {"backbone": backbone, "neuron_type": neuron_type, "top_k": top_k, "max_length": max_length,
                      "dtype": canonical_dtype(dtype), "text_template": text_template,
                      "nait": nait.identity() if nait is not None else None}


def ingest_folder(
    inputs: Sequence[str | os.PathLike | InputFile],
    index_dir: str | os.PathLike,
    *,
    backbone: str,
    neuron_type: str,
    top_k: int,
    max_length: int,
    batch_size: int,
    commit_every: int,
    text_field: str,
    id_field: str,
    token_field: str | None,
    text_template: str | None,
    limit: int | None,
    strict: bool,
    device: str,
    dtype: str | None,
    trust_remote_code: bool,
    ray_address: str | None = None,
    ray_workers: int = 2,
    ray_gpus_per_worker: float | None = None,
    extractor: "NagExtractor | None" = None,
    show_progress: bool | None = None,
    nait: "DenseSpec | dict[str, str] | None" = None,
) -> IngestResult:
    """``ingest`` (``run.ingest``, which documents the arguments) into the one store at ``index_dir``."""
    from nagindex.encode.dense import as_spec
    from nagindex.index.store import IndexStore

    nait = as_spec(nait)

    index_dir = Path(index_dir)
    backbone, requested = check_settings(index_dir, backbone, neuron_type, top_k, max_length, dtype, text_field,
                                         text_template, nait)
    files = input_files(inputs)
    timer = StageTimer()
    result = IngestResult(index_dir)
    store = IndexStore.open(index_dir, readonly=False) if (index_dir / "store.lmdb").exists() else None
    try:
        if store is not None:
            store.check_compatible(requested)  # fail fast, before loading any model
        progress = store.all_progress() if store is not None else {}
        todo = [f for f in files if not _is_done(progress.get(f.key), f)]
        result.skipped_inputs = len(files) - len(todo)
        if todo:
            with timer("load"):
                model_kw = dict(top_k=top_k, max_length=max_length, batch_size=batch_size, device=device, dtype=dtype,
                                trust_remote_code=trust_remote_code, dense=nait)
                if ray_address is not None:
                    from nagindex.ingest.distributed import RayEncoder

                    encoder: Any = RayEncoder(backbone, [neuron_type], address=ray_address, workers=ray_workers,
                                              gpus_per_worker=ray_gpus_per_worker, **model_kw)
                else:
                    encoder = LocalEncoder(extractor or enc.build_extractor(backbone, [neuron_type], **model_kw))
            usage = FieldUsage()
            fields = Fields(text_field, id_field, token_field, usage, text_template)
            manifest = _manifest(encoder.describe(), backbone, neuron_type, max_length, fields)
            if nait is not None:
                manifest.update(nait=nait.identity(), nait_width=nait.dims or encoder.describe()["dense_width"])
            if store is None:
                store = IndexStore.open_or_create(index_dir, manifest)
            store.check_compatible(manifest)
            try:
                _ingest_files(store, todo, encoder, neuron_type, result, timer, progress, commit_every,
                              fields, limit, strict, show_progress, nait)
            except NagIndexError:  # --strict or a network error: what was committed stays usable, then stop
                _finish(store, index_dir, result, timer)
                raise
            finally:
                result.fields, result.warnings = usage.summary(), usage.warnings()
            for warning in result.warnings:
                log.warning("%s", warning)
        if store is None:
            raise NagIndexError(f"no index at {index_dir} and nothing to ingest")
        _finish(store, index_dir, result, timer)
        return result
    except BaseException:  # a refused append, Ctrl-C, a crash: release the write lock at once
        if store is not None:
            store.close()
        raise


def _finish(store: Any, index_dir: Path, result: IngestResult, timer: StageTimer) -> None:
    """Derive the committed rows (queryable at once), list the rejects, release the store."""
    from nagindex.index.derived import sync_derived

    with timer("index"):
        sync_derived(index_dir)
    _write_rejects(store, index_dir)
    result.rows = len(store)
    result.timings = timer.summary()
    store.close()


def _is_done(state: dict[str, Any] | None, item: InputFile) -> bool:
    if not state or not state.get("done"):
        return False
    now = item.state()
    if (state.get("size"), state.get("mtime")) != (now["size"], now["mtime"]):
        log.warning("%s changed since it was ingested; its new records are read from the saved position",
                    item.source)
        return False
    return True


def _manifest(model: dict[str, Any], backbone: str, neuron_type: str, max_length: int,
              fields: Fields) -> dict[str, Any]:
    import datetime

    return {
        "backbone": backbone,
        "weights_sha256": model["weights_sha256"],
        "neuron_type": neuron_type,
        "num_layers": model["num_layers"],
        "width": model["widths"][neuron_type],
        "top_k": model["top_k"],
        "max_length": max_length,
        "dtype": model["dtype"],  # compared on append: the NAGs depend on it
        "compute": model["device_kind"],  # provenance only (cpu/cuda), not compared
        "nagindex_version": __version__,
        "text_field": fields.text,  # to read texts back (--with-text); not compared on append
        "id_field": fields.id,
        "text_template": fields.template,  # compared on append (store.TEXT_SETTINGS); texts read back render it
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _ingest_files(store: Any, todo: list[InputFile], encoder: Any, neuron_type: str,
                  result: IngestResult, timer: StageTimer, progress: dict[str, dict[str, Any]],
                  commit_every: int, fields: Fields, limit: int | None, strict: bool,
                  show_progress: bool | None, nait: "DenseSpec | None" = None) -> None:
    from nagindex.encode.dense import FIRST, LAST, stored_vector
    from nagindex.index.dense import DenseWriter

    dense = DenseWriter(store.directory, store.manifest, len(store)) if nait is not None else None
    starts = {f.key: int(progress.get(f.key, {}).get("next_position", 0)) for f in todo}
    items = {f.key: f for f in todo}
    states: dict[str, dict[str, Any]] = {}  # size and stamp of each input, looked up once (remote: one request)
    bar = progress_bar(estimate_records(todo, starts), desc="ingest", enabled=show_progress)
    rate = TokenRate(bar)

    def screen(docs: list[Document]) -> tuple[list[Document], list[Reject]]:
        """Skip encoding documents whose id is already committed (a duplicate whatever happens next).

        Repeats among documents not committed yet are settled at commit time (``_drop_duplicates``):
        one of them may still be dropped for having no tokens, so which one wins is known only then.
        """
        known = store.contains([d.docid for d in docs])
        return ([d for d, k in zip(docs, known) if not k],
                [Reject(d.source, d.position, DUPLICATE, d.docid) for d, k in zip(docs, known) if k])

    def windows() -> Iterator[Window]:
        inputs = ((item.key, item.source, starts[item.key], read_input(item, fields=fields, start=starts[item.key]))
                  for item in todo)
        yield from group_windows(inputs, commit_every, screen=screen)

    encoded = encoder.map(windows())
    try:
        while True:
            with timer("extract"):
                window = next(encoded, None)
            if window is None:
                break
            _drop_duplicates(window, store)
            if strict and window.rejects:
                raise InputError(window.rejects[0].message())
            stop = limit is not None and result.added + len(window.docs) >= limit
            if stop:
                _truncate(window, limit - result.added)
            for c in window.cursors.values():
                if c.key not in states:
                    states[c.key] = items[c.key].state()
            progress = {c.key: {"next_position": c.next_position, "done": c.done, **states[c.key]}
                        for c in window.cursors.values()}
            with timer("store"):
                if dense is not None:  # durable before the commit that counts its rows (``index.dense``)
                    dense.append(stored_vector(window.codes[FIRST], window.codes[LAST], nait))
                store.append(window.codes.get(neuron_type, np.zeros(0)), [d.docid for d in window.docs],
                             window.token_counts, [window.cursors[d.source].key for d in window.docs],
                             [d.position for d in window.docs], progress=progress, rejects=window.rejects)
            _count(result, window)
            rate.update(len(window.docs) + len(window.rejects), int(window.token_counts.sum()))
            if stop:
                break
    finally:
        encoded.close()  # stops a parallel encoder's in-flight work
        bar.close()


def _drop_duplicates(window: Window, store: Any) -> None:
    """Reject documents whose id is committed or repeated earlier in the window, just before committing.

    Windows commit one after the other in input order, so the first document of an id that has a
    NAG wins, however many windows were encoding in parallel and wherever a previous run stopped. The
    window's rejects are put in input order, so the rejects table does not depend on timing either.
    """
    known = store.contains([d.docid for d in window.docs])
    seen: set[str] = set()
    keep: list[int] = []
    dups: list[Reject] = []
    for i, (doc, committed) in enumerate(zip(window.docs, known)):
        if committed or doc.docid in seen:
            dups.append(Reject(doc.source, doc.position, DUPLICATE, doc.docid))
        else:
            seen.add(doc.docid)
            keep.append(i)
    if dups:
        window.docs = [window.docs[i] for i in keep]
        window.codes = {t: c[keep] for t, c in window.codes.items()}
        window.token_counts = window.token_counts[keep]
    window.rejects = sorted(window.rejects + dups, key=lambda r: (window.input_order(r.source),
                                                                 -1 if r.position is None else r.position))


def _truncate(window: Window, n: int) -> None:
    """Keep the first ``n`` documents of a window (``--limit``); resume continues after them.

    The input of the first dropped document resumes at it; inputs after it in the window are left
    out of its cursors, so they resume where they stood before.
    """
    n = max(n, 0)
    if n >= len(window.docs):
        return
    cut = window.docs[n]
    rank = window.input_order(cut.source)
    sources = list(window.cursors)
    window.cursors = {s: window.cursors[s] for s in sources[:rank + 1]}
    window.cursors[cut.source].next_position, window.cursors[cut.source].done = cut.position, False
    window.docs = window.docs[:n]
    window.rejects = [r for r in window.rejects if window.input_order(r.source) < rank or (
        r.source == cut.source and (r.position is None or r.position < cut.position))]
    window.codes = {t: c[:n] for t, c in window.codes.items()}
    window.token_counts = window.token_counts[:n]


def _count(result: IngestResult, window: Window) -> None:
    result.added += len(window.docs)
    result.tokens += int(window.token_counts.sum())
    result.rejects += len(window.rejects)
    for r in window.rejects:
        reason = reject_kind(r.reason)
        result.reject_reasons[reason] = result.reject_reasons.get(reason, 0) + 1


def reject_kind(reason: str) -> str:
    """The kind of a reject for the summary: its reason without the details (``rejects.jsonl`` keeps them)."""
    return re.split(r":| \(| at byte ", reason, maxsplit=1)[0]


def _write_rejects(store: Any, index_dir: Path) -> None:
    """Append the rejects not exported yet to ``rejects.jsonl`` (the store's rejects table is the record).

    The store records how many rejects the file holds and its length then. The file is first cut back
    to that length, dropping lines of a run killed before it recorded them, so no line is written twice;
    a file shorter than that (removed by hand) is written again whole. Only the store's writer calls
    this; temporary files left by the whole-file export of earlier versions are stale.
    """
    from nagindex.fsio import disk_errors, remove_stale_temps

    remove_stale_temps(index_dir, [REJECTS_FILE])
    path = index_dir / REJECTS_FILE
    done, size = store.exported_rejects()
    if not path.is_file() or path.stat().st_size < size:
        done, size = 0, 0
    with disk_errors(path), open(path, "ab") as fh:
        fh.truncate(size)
        for r in store.rejects(done):
            fh.write(json.dumps({"source": r.source, "line_or_row": None if r.position is None else r.position + 1,
                                 "docid": r.docid, "reason": r.reason}).encode() + b"\n")
            done += 1
        fh.flush()
        os.fsync(fh.fileno())
        size = os.fstat(fh.fileno()).st_size
    store.set_exported_rejects(done, size)
