"""``ingest()`` and ``extract_files()``: read -> tokenize -> extract -> store -> index.

Documents flow in *windows* (``commit_every`` documents). A window is tokenized,
its NAGs extracted in length-bucketed batches, and then committed to the store
in one LMDB transaction together with the resume cursor of its input. A crash
loses at most the window in flight, and the next run resumes from the cursor,
so an interrupted ingest ends with exactly the rows of an uninterrupted one, in
the same order (input order; the first occurrence of a docid wins).
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nagindex import __version__
from nagindex.data import Document, Reject
from nagindex.errors import InputError, NagIndexError
from nagindex.ingest.read import InputFile, Fields, input_files, read_input
from nagindex.progress import StageTimer, TokenRate, progress_bar

if TYPE_CHECKING:
    from nagindex.ingest.extract import NagExtractor

log = logging.getLogger(__name__)

REJECTS_FILE = "rejects.jsonl"


@dataclass
class Window:
    """A run of consecutive records of one input, encoded and ready to commit."""

    docs: list[Document]
    rejects: list[Reject]
    codes: dict[str, np.ndarray]
    token_counts: np.ndarray
    next_position: int


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


def build_extractor(
    backbone: str, neuron_types: Sequence[str], *, top_k: int, max_length: int, batch_size: int,
    device: str = "auto", dtype: str | None = None, trust_remote_code: bool = False,
) -> "NagExtractor":
    """Load the backbone and wrap it in an extractor (the one place a model is loaded)."""
    from nagindex.ingest.extract import NagExtractor
    from nagindex.models import load_backbone

    bb = load_backbone(backbone, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    return NagExtractor(bb, neuron_types, top_k=top_k, max_length=max_length, batch_size=batch_size)


def encode_windows(
    records: Iterable[Document | Reject], extractor: "NagExtractor", size: int, *, start: int = 0,
    screen: Callable[[list[Document]], tuple[list[Document], list[Reject]]] | None = None,
) -> Iterator[Window]:
    """Group records into windows of ``size`` documents and compute their NAGs.

    ``screen`` may reject documents of a window before any model work (duplicate
    ids); documents whose text has no tokens are rejected here: they never get a NAG.
    """
    docs: list[Document] = []
    rejects: list[Reject] = []
    position = start
    for rec in records:
        if rec.position is not None:
            position = rec.position + 1
        if isinstance(rec, Reject):
            rejects.append(rec)
            continue
        docs.append(rec)
        if len(docs) >= size:
            yield _encode(docs, rejects, extractor, position, screen)
            docs, rejects = [], []
    if docs or rejects:
        yield _encode(docs, rejects, extractor, position, screen)


def _encode(docs: list[Document], rejects: list[Reject], extractor: "NagExtractor", position: int,
            screen: Callable[[list[Document]], tuple[list[Document], list[Reject]]] | None) -> Window:
    if screen is not None:
        docs, screened = screen(docs)
        rejects = rejects + screened
    ids, counts = extractor.tokenize([d.text for d in docs])
    empty = [i for i, seq in enumerate(ids) if not seq]
    if empty:  # e.g. text of characters the tokenizer drops
        rejects = rejects + [Reject(docs[i].source, docs[i].position, "no tokens", docs[i].docid) for i in empty]
        keep = [i for i in range(len(docs)) if ids[i]]
        docs, ids, counts = [docs[i] for i in keep], [ids[i] for i in keep], [counts[i] for i in keep]
    tokens = np.array([d.token_count if d.token_count is not None else c for d, c in zip(docs, counts)],
                      dtype=np.int64)
    return Window(docs, rejects, extractor.codes(ids), tokens, position)


def _estimate_records(files: Sequence[InputFile], starts: dict[str, int]) -> int | None:
    """Cheap total for the progress bar's ETA (newline counts, parquet metadata); None if unknown."""
    total = 0
    for item in files:
        if item.kind == "jsonl":
            with open(item.path, "rb") as fh:
                n = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 24), b""))
        elif item.kind == "parquet":
            import pyarrow.parquet as pq

            try:
                n = pq.ParquetFile(item.path).metadata.num_rows
            except Exception:  # noqa: BLE001 - a broken file is reported by the reader
                n = 0
        elif item.kind == "txt":
            n = 1
        else:
            return None
        total += max(n - starts.get(item.key, 0), 0)
    return total


def _file_state(item: InputFile) -> dict[str, Any]:
    st = os.stat(item.path)
    return {"size": st.st_size, "mtime": st.st_mtime}


def ingest(
    inputs: Sequence[str | os.PathLike],
    index_dir: str | os.PathLike = "idx",
    *,
    backbone: str = "smollm2-135m",
    neuron_type: str = "fwd_up",
    top_k: int = 20,
    max_length: int = 120,
    batch_size: int = 32,
    commit_every: int = 512,
    text_field: str = "doc",
    id_field: str = "docid",
    token_field: str | None = None,
    limit: int | None = None,
    strict: bool = False,
    device: str = "auto",
    dtype: str | None = None,
    trust_remote_code: bool = False,
    extractor: "NagExtractor | None" = None,
    show_progress: bool | None = None,
) -> IngestResult:
    """Encode every document of ``inputs`` once into the index at ``index_dir`` (created if absent).

    Re-running with the same inputs adds nothing; new inputs are appended; an
    interrupted run resumes where it stopped. Bad records are counted skips saved
    in ``rejects.jsonl`` (``strict`` makes the first one an error instead).
    """
    from nagindex.ingest.index import sync_derived
    from nagindex.ingest.store import IndexStore

    index_dir = Path(index_dir)
    if Path(backbone).expanduser().is_dir():  # a local model is recorded by absolute path
        backbone = str(Path(backbone).expanduser().resolve())
    files = input_files(inputs)
    timer = StageTimer()
    result = IngestResult(index_dir)
    requested = {"backbone": backbone, "neuron_type": neuron_type, "top_k": top_k, "max_length": max_length}
    store = IndexStore.open(index_dir, readonly=False) if (index_dir / "store.lmdb").exists() else None
    if store is not None:
        store.check_compatible(requested)  # fail fast, before loading any model
    progress = store.all_progress() if store is not None else {}
    todo = [f for f in files if not _is_done(progress.get(f.key), f)]
    result.skipped_inputs = len(files) - len(todo)
    if todo:
        with timer("load"):
            if extractor is None:
                extractor = build_extractor(backbone, [neuron_type], top_k=top_k, max_length=max_length,
                                            batch_size=batch_size, device=device, dtype=dtype,
                                            trust_remote_code=trust_remote_code)
        fields = Fields(text_field, id_field, token_field)
        manifest = _manifest(extractor, backbone, neuron_type, max_length, fields)
        if store is None:
            store = IndexStore.open_or_create(index_dir, manifest)
        store.check_compatible(manifest)
        _ingest_files(store, todo, extractor, neuron_type, result, timer, progress, commit_every,
                      fields, limit, strict, show_progress)
    if store is None:
        raise NagIndexError(f"no index at {index_dir} and nothing to ingest")
    with timer("index"):
        sync_derived(index_dir)
    _write_rejects(store, index_dir)
    result.rows = len(store)
    result.timings = timer.summary()
    store.close()
    return result


def _is_done(state: dict[str, Any] | None, item: InputFile) -> bool:
    if not state or not state.get("done"):
        return False
    now = _file_state(item)
    if (state.get("size"), state.get("mtime")) != (now["size"], now["mtime"]):
        log.warning("%s changed since it was ingested; its new records are read from the saved position",
                    item.source)
        return False
    return True


def _manifest(extractor: "NagExtractor", backbone: str, neuron_type: str, max_length: int,
              fields: Fields) -> dict[str, Any]:
    import datetime

    return {
        "backbone": backbone,
        "weights_sha256": extractor.backbone.weights_sha256,
        "neuron_type": neuron_type,
        "num_layers": extractor.num_layers,
        "width": extractor.widths[neuron_type],
        "top_k": extractor.top_k,
        "max_length": max_length,
        "nagindex_version": __version__,
        "text_field": fields.text,  # to read texts back (--with-text); not compared on append
        "id_field": fields.id,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _ingest_files(store: Any, todo: list[InputFile], extractor: "NagExtractor", neuron_type: str,
                  result: IngestResult, timer: StageTimer, progress: dict[str, dict[str, Any]],
                  commit_every: int, fields: Fields, limit: int | None, strict: bool,
                  show_progress: bool | None) -> None:
    starts = {f.key: int(progress.get(f.key, {}).get("next_position", 0)) for f in todo}
    bar = progress_bar(_estimate_records(todo, starts), desc="ingest", enabled=show_progress)
    rate = TokenRate(bar)

    def screen(docs: list[Document]) -> tuple[list[Document], list[Reject]]:
        """Documents are deduplicated by id only (as in the reference): the first one wins."""
        known = store.contains([d.docid for d in docs])
        kept, dups, seen = [], [], set()
        for doc, in_index in zip(docs, known):
            if in_index or doc.docid in seen:
                dups.append(Reject(doc.source, doc.position, "duplicate id", doc.docid))
            else:
                seen.add(doc.docid)
                kept.append(doc)
        return kept, dups

    try:
        for item in todo:
            records = read_input(item, fields=fields, start=starts[item.key])
            windows = encode_windows(records, extractor, commit_every, start=starts[item.key], screen=screen)
            finished = True
            next_position = starts[item.key]
            while True:
                with timer("extract"):
                    window = next(windows, None)
                if window is None:
                    break
                if strict and window.rejects:
                    raise InputError(window.rejects[0].message())
                if limit is not None and result.added + len(window.docs) >= limit:
                    _truncate(window, limit - result.added)
                    finished = False
                next_position = window.next_position
                state = {"next_position": next_position, "done": False, **_file_state(item)}
                with timer("store"):
                    store.append(window.codes[neuron_type], [d.docid for d in window.docs], window.token_counts,
                                 [d.source for d in window.docs], [d.position for d in window.docs],
                                 progress={item.key: state}, rejects=window.rejects)
                _count(result, window)
                rate.update(len(window.docs) + len(window.rejects), int(window.token_counts.sum()))
                if not finished:
                    return
            state = {"next_position": next_position, "done": True, **_file_state(item)}
            store.append(np.zeros((0,)), [], [], [], [], progress={item.key: state})
    finally:
        bar.close()


def _truncate(window: Window, n: int) -> None:
    """Keep the first ``n`` documents of a window (``--limit``); resume continues after them."""
    n = max(n, 0)
    if n < len(window.docs):
        window.next_position = window.docs[n].position
        window.docs = window.docs[:n]
        window.rejects = [r for r in window.rejects if r.position is None or r.position < window.next_position]
        window.codes = {t: c[:n] for t, c in window.codes.items()}
        window.token_counts = window.token_counts[:n]


def _count(result: IngestResult, window: Window) -> None:
    result.added += len(window.docs)
    result.tokens += int(window.token_counts.sum())
    result.rejects += len(window.rejects)
    for r in window.rejects:
        reason = r.reason.split(":")[0]
        result.reject_reasons[reason] = result.reject_reasons.get(reason, 0) + 1


def _write_rejects(store: Any, index_dir: Path) -> None:
    """Export the store's rejects table as ``rejects.jsonl`` (the LMDB table is the record)."""
    tmp = index_dir / (REJECTS_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in store.rejects():
            fh.write(json.dumps({"source": r.source, "line_or_row": None if r.position is None else r.position + 1,
                                 "docid": r.docid, "reason": r.reason}) + "\n")
    os.replace(tmp, index_dir / REJECTS_FILE)


def extract_files(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    backbone: str = "smollm2-135m",
    neuron_types: Sequence[str] = ("fwd_up",),
    top_k: int = 20,
    max_length: int = 120,
    batch_size: int = 32,
    text_field: str = "doc",
    id_field: str = "docid",
    device: str = "auto",
    dtype: str | None = None,
    trust_remote_code: bool = False,
    extractor: "NagExtractor | None" = None,
    show_progress: bool | None = None,
) -> int:
    """Write the reference's feature JSONL for every document of ``inputs``, in input order.

    Unlike ``ingest``, any bad record (an empty document included) is an error
    naming its file, line and docid: a feature file must have a line per document.
    """
    from nagindex.ingest.features import write_feature_lines

    files = input_files(inputs)
    if extractor is None:
        extractor = build_extractor(backbone, neuron_types, top_k=top_k, max_length=max_length,
                                    batch_size=batch_size, device=device, dtype=dtype,
                                    trust_remote_code=trust_remote_code)
    fields = Fields(text_field, id_field, None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    written = 0
    bar = progress_bar(_estimate_records(files, {}), desc="extract", enabled=show_progress)
    rate = TokenRate(bar)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for item in files:
                for window in encode_windows(read_input(item, fields=fields), extractor, max(batch_size * 8, 64)):
                    if window.rejects:
                        raise InputError(window.rejects[0].message())
                    write_feature_lines(fh, [d.docid for d in window.docs], window.codes)
                    written += len(window.docs)
                    rate.update(len(window.docs), int(window.token_counts.sum()))
        os.replace(tmp, out)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    return written
