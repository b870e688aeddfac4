"""Corpus readers: files and folders -> a stream of ``Document`` or ``Reject``.

A user's bad data never raises: every bad record, and every unreadable file, is
yielded as a ``Reject`` (counted and saved by the driver) and reading goes on.
Only a path that does not exist at all raises ``InputError`` (a typo on the
command line should stop the run, not produce an empty index).

Formats are picked by a registry keyed on ``InputFile.kind``; each reader is a
generator ``(InputFile, Fields, start) -> Iterator[Document | Reject]`` that
streams (jsonl line by line, parquet by row group, arrow by record batch), so
memory stays flat whatever the file size.

Positions are 0-based line numbers (jsonl, blank lines counted and skipped) or
row numbers (parquet; for an HF ``save_to_disk`` folder, rows counted across its
``data-*.arrow`` files in order). ``start_positions[key] = p`` resumes at ``p``.
An input given with ``parts`` (a sharded ingest's split input, ``sources.split``) yields the
records of those parts only, each at its position in the whole file.
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from nagindex.data import Document, Reject
from nagindex.errors import InputError
from nagindex.sources.inputs import (READ_CHUNK, SUFFIX_KINDS, WHOLE, InputFile, input_files, network_error,
                                     parquet_file, transport_error)
from nagindex.sources.render import TEMPLATE_OPTION, compile_text_template

logger = logging.getLogger(__name__)


class FieldUsage:
    """What an ingest read its documents from: counts of the text and id fields used, and the
    id-like fields that records carried while their id came from the position (a likely mistake)."""

    def __init__(self) -> None:
        self.text: dict[str, int] = {}
        self.id: dict[str, int] = {}
        self.unused_ids: dict[str, int] = {}

    def note(self, text: str, id_field: str | None, names: Iterable[str], n: int = 1) -> None:
        self.text[text] = self.text.get(text, 0) + n
        used = id_field or POSITION_IDS
        self.id[used] = self.id.get(used, 0) + n
        if id_field is None:
            for name in names:
                if looks_like_id(name):
                    self.unused_ids[name] = self.unused_ids.get(name, 0) + n

    def summary(self) -> dict[str, dict[str, int]]:
        return {"text": dict(self.text), "id": dict(self.id)}

    def warnings(self) -> list[str]:
        """One line per id-like field that was present but not used."""
        return [f"{n:,} records carry the field {name!r}, which looks like an id, but their ids were made "
                f"from their position ({POSITION_IDS}): pass --id-field {name} to use it"
                for name, n in sorted(self.unused_ids.items())]


@dataclass(frozen=True, slots=True)
class Fields:
    """Which record fields hold the text, the id and (optionally) the token count.

    ``text="auto"`` takes the first of ``AUTO_TEXT_FIELDS`` that a file (or record) has,
    ``id="auto"`` the first of ``AUTO_ID_FIELDS`` (none: ids are ``<source>:<position>``).
    ``usage``, when given, counts which fields were used (the ingest summary reports it).
    ``template``, when given, is the Jinja source a record's text is rendered with, its fields as
    variables (``--text-template``, ``render``); ``text`` is then not read.
    """

    text: str
    id: str
    token: str | None
    usage: FieldUsage | None = field(default=None, compare=False)
    template: str | None = None

    def resolve(self, names: Iterable[str]) -> "Fields":
        """These fields with ``auto`` replaced by the fields found among ``names``."""
        if self.text != AUTO and self.id != AUTO:
            return self
        present = set(names)
        text = self.text if self.text != AUTO else next((f for f in AUTO_TEXT_FIELDS if f in present),
                                                        AUTO_TEXT_FIELDS[0])
        id_ = self.id if self.id != AUTO else next((f for f in AUTO_ID_FIELDS if f in present), AUTO_ID_FIELDS[0])
        return replace(self, text=text, id=id_)

    def note(self, names: Iterable[str], has_id: bool, n: int = 1) -> None:
        """Count ``n`` records read with these (resolved) fields; ``names`` are the record's fields."""
        if self.usage is not None:
            text = self.text if self.template is None else TEMPLATE_OPTION
            self.usage.note(text, self.id if has_id else None, names, n)


AUTO = "auto"
AUTO_TEXT_FIELDS = ("doc", "text", "content")
AUTO_ID_FIELDS = ("docid", "id", "doc_id", "_id", "uuid")
POSITION_IDS = "<source>:<line or row>"
_ID_NAMES = {"id", "docid", "doc_id", "_id", "uuid", "uid", "guid", "url", "key", "idx", "document_id", "doc_key"}


def looks_like_id(name: str) -> bool:
    """Whether a field name suggests a document id (``id``, ``url``, ``doc_id``, ``page_uuid``...)."""
    low = name.lower()
    return low in _ID_NAMES or low.endswith(("_id", "-id", "uuid"))


def iter_records(
    paths: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[InputFile],
    *,
    text_field: str = "doc",
    id_field: str = "docid",
    token_field: str | None = None,
    text_template: str | None = None,
    start_positions: dict[str, int] | None = None,
) -> Iterator[Document | Reject]:
    """Stream every document of every input, yielding a ``Reject`` for each bad one."""
    if isinstance(paths, (list, tuple)) and paths and all(isinstance(p, InputFile) for p in paths):
        files: list[InputFile] = list(paths)  # type: ignore[arg-type]
    else:
        files = input_files(paths)  # type: ignore[arg-type]
    fields = Fields(text_field, id_field, token_field, template=text_template)
    starts = start_positions or {}
    for item in files:
        yield from read_input(item, fields=fields, start=starts.get(item.key, 0))


def read_input(item: InputFile, *, fields: Fields | None = None, start: int = 0,
               only: np.ndarray | None = None) -> Iterator[Document | Reject]:
    """Read one source from ``start``; any I/O or format error becomes a file-level ``Reject``.

    ``only``: sorted positions; the records elsewhere are skipped without being parsed or decoded (reading
    texts back for a sparse selection: a JSON line not wanted is never parsed, a row group with no wanted row
    never decoded), and their faults are not reported."""
    fields = fields or Fields("doc", "docid", None)
    reader = _READERS.get(item.kind)
    if reader is None:
        yield Reject(item.source, None, f"unsupported file type (expected one of: {_supported()})")
        return
    try:
        yield from reader(item, fields, start, only)
    except Exception as exc:  # noqa: BLE001 - sorted below, re-raised unless it is I/O
        if item.fs is not None and transport_error(exc):  # stop; what was committed stays, the rerun resumes
            raise InputError(f"{item.source}: cannot read: {exc}; run the same command again to resume") from exc
        if not isinstance(exc, OSError):
            raise
        # a local file: permission denied, vanished, I/O error while opening
        yield Reject(item.source, None, f"cannot read file: {exc.strerror or exc}")


def _supported() -> str:
    return ", ".join(s for s, _ in SUFFIX_KINDS) + ", HF save_to_disk folder"


# ---------------------------------------------------------------- validation
def make_record(
    obj: dict[str, Any] | None, source: str, position: int, fields: Fields,
    *, text: Any = None, docid: Any = None, tokens: Any = None,
) -> Document | Reject:
    """Validate one record; ``obj`` (a JSON object or a whole table row) or the explicit column values.

    With a template, ``obj``'s text is the template rendered with its fields; whatever the template
    raises on this record (a missing field, a wrong type, a sandbox refusal) makes it a reject.
    """
    if obj is not None:
        fields = fields.resolve(obj)
        fields.note(obj, fields.id in obj)
        if fields.template is not None:
            template = compile_text_template(fields.template)  # a syntax error is the run's, not the record's
            try:
                text = template.render(obj)
            except Exception as exc:  # noqa: BLE001 - any error inside the template is this record's
                return Reject(source, position, f"text template failed: {type(exc).__name__}: {exc}",
                              _id_or_none(obj.get(fields.id)))
        elif fields.text not in obj:
            return Reject(source, position, f"missing text field {fields.text!r}", _id_or_none(obj.get(fields.id)))
        else:
            text = obj[fields.text]
        docid = obj.get(fields.id)
        tokens = obj.get(fields.token) if fields.token else None
    if docid is None:
        docid = f"{source}:{position}"
    elif isinstance(docid, bool) or not isinstance(docid, (str, int)):
        return Reject(source, position, f"id field {fields.id!r} is {type(docid).__name__}, not a string or integer")
    else:
        docid = str(docid)
        if not docid:
            return Reject(source, position, f"id field {fields.id!r} is empty")
    if text is None:
        return Reject(source, position, f"text field {fields.text!r} is null", docid)
    if not isinstance(text, str):
        return Reject(source, position, f"text field {fields.text!r} is {type(text).__name__}, not a string", docid)
    if not text.strip():
        return Reject(source, position, "empty document" if not text else "whitespace-only document", docid)
    count: int | None = None
    if tokens is not None:
        if isinstance(tokens, float) and tokens.is_integer():
            tokens = int(tokens)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            return Reject(source, position, f"token field {fields.token!r} is not a non-negative integer: {tokens!r}", docid)
        count = tokens
    return Document(docid, text, source, position, count)


def _id_or_none(value: Any) -> str | None:
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None


# ---------------------------------------------------------------- jsonl
class _ZstdRaw(io.RawIOBase):
    """A zstd stream that, unlike ``zstandard.stream_reader``, raises on truncation."""

    def __init__(self, fh: BinaryIO) -> None:
        import zstandard

        self._fh, self._zstd = fh, zstandard.ZstdDecompressor()
        self._dobj = self._zstd.decompressobj()
        self._buf = b""
        self._in_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, out: Any) -> int:
        while not self._buf:
            raw = self._fh.read(READ_CHUNK)
            if not raw:
                if self._in_frame:
                    raise EOFError("zstd stream ended before the end of its frame")
                return 0
            while raw:
                self._in_frame = True
                self._buf += self._dobj.decompress(raw)
                raw = b""
                if self._dobj.eof:  # frame finished; more frames may follow
                    raw, self._in_frame = self._dobj.unused_data, False
                    self._dobj = self._zstd.decompressobj()
        n = min(len(out), len(self._buf))
        out[:n], self._buf = self._buf[:n], self._buf[n:]
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


@contextmanager
def open_binary(item: InputFile) -> Iterator[BinaryIO]:
    """A (possibly compressed) jsonl file as a binary stream of its text, local or remote."""
    with item.open() as raw:
        if item.kind == "jsonl.gz":
            with gzip.GzipFile(fileobj=raw, mode="rb") as fh:
                yield fh  # type: ignore[misc]
        elif item.kind == "jsonl.zst":
            yield io.BufferedReader(_ZstdRaw(raw), READ_CHUNK)  # type: ignore[misc]
        else:
            yield raw


def stream_errors() -> tuple[type[BaseException], ...]:
    """Errors meaning "the compressed stream is corrupt or cut short" (BadGzipFile is an OSError)."""
    errors: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:  # pragma: no cover - zstandard is a declared dependency
        pass
    return errors


def _read_jsonl(item: InputFile, fields: Fields, start: int, only: np.ndarray | None) -> Iterator[Document | Reject]:
    """Lines of the whole file, or of its ``parts`` (byte ranges of an uncompressed file, each sought to)."""
    wanted = None if only is None else set(only.tolist())
    for part in item.parts or (WHOLE,):
        if part.end is not None and part.end <= start:
            continue  # read through before a resume: not even opened
        with open_binary(item) as fh:
            if part.start:
                fh.seek(part.start)
            offset, position = part.start, part.first
            try:
                for raw in fh:
                    if part.stop is not None and offset >= part.stop:
                        break
                    offset, position = offset + len(raw), position + 1
                    if position <= start or (wanted is not None and position - 1 not in wanted):
                        continue
                    line = raw.rstrip(b"\r\n")
                    if not line.strip():
                        continue
                    yield _parse_line(line, item.source, position - 1, fields)
            except stream_errors() as exc:
                if network_error(item, exc):
                    raise
                yield Reject(item.source, max(position, start), f"corrupt or truncated file from here on: {exc}")


def _parse_line(line: bytes, source: str, position: int, fields: Fields) -> Document | Reject:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Reject(source, position, f"invalid UTF-8 at byte {exc.start}")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return Reject(source, position, f"malformed JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(obj, dict):
        return Reject(source, position, f"line is a JSON {type(obj).__name__}, not an object")
    return make_record(obj, source, position, fields)


# ---------------------------------------------------------------- txt
def _read_txt(item: InputFile, fields: Fields, start: int, only: np.ndarray | None) -> Iterator[Document | Reject]:
    if start > 0 or (only is not None and 0 not in only):
        return
    if fields.template is not None:
        yield Reject(item.source, None, f"a .txt file is one plain text, with no fields for {TEMPLATE_OPTION}")
        return
    with item.open() as fh:
        data = fh.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield Reject(item.source, 0, f"invalid UTF-8 at byte {exc.start}", item.name)
        return
    if fields.usage is not None:
        fields.usage.note("(whole file)", "(file name)", (), 1)
    yield make_record(None, item.source, 0, fields, text=text, docid=item.name)


# ---------------------------------------------------------------- parquet / arrow
def _columns(names: Iterable[str], fields: Fields) -> tuple[list[str], bool]:
    """The columns to decode (a template may use any field: all of them) and whether the id column is there."""
    present = set(names)
    if fields.template is not None:
        return list(names), fields.id in present
    wanted = [c for c in (fields.text, fields.id, fields.token) if c and c in present]
    return wanted, fields.id in present


def _rows_of_batch(batch: Any, item: InputFile, first: int, fields: Fields, has_id: bool,
                   schema: Sequence[str], only: np.ndarray | None) -> Iterator[Document | Reject]:
    """Documents of a record batch read with only the wanted columns; ``schema`` names all of the file's;
    ``only``: the positions wanted (``read_input``)."""
    positions: Sequence[int] = range(first, first + batch.num_rows)
    if only is not None:
        lo, hi = np.searchsorted(only, [first, first + batch.num_rows])
        keep = only[lo:hi] - first
        batch, positions = batch.take(keep), (keep + first).tolist()
    if fields.template is not None:  # whole rows as Python dicts, to render; the column path below is untouched
        for pos, row in zip(positions, batch.to_pylist()):
            yield make_record(row, item.source, pos, fields)
        return
    names = batch.schema.names
    n = batch.num_rows
    text = batch.column(names.index(fields.text)).to_pylist()
    ids = batch.column(names.index(fields.id)).to_pylist() if has_id else [None] * n
    toks = batch.column(names.index(fields.token)).to_pylist() if fields.token in names else [None] * n
    fields.note(schema, has_id, n)
    for i, pos in enumerate(positions):
        yield make_record(None, item.source, pos, fields, text=text[i], docid=ids[i], tokens=toks[i])


def open_parquet(item: InputFile, stack: ExitStack) -> tuple[Any, str | None]:
    """``(ParquetFile, None)`` kept open by ``stack``, or ``(None, why)`` for a file that is no readable
    parquet (a reject for the caller); network errors on a remote file raise."""
    import pyarrow as pa

    try:
        return stack.enter_context(parquet_file(item)), None
    except (pa.ArrowException, OSError, ValueError) as exc:
        if network_error(item, exc):
            raise
        return None, f"not a readable parquet file: {exc}"


def _read_parquet(item: InputFile, fields: Fields, start: int, only: np.ndarray | None) -> Iterator[Document | Reject]:
    import pyarrow as pa

    with ExitStack() as stack:
        pf, why = open_parquet(item, stack)
        if why:
            yield Reject(item.source, None, why)
            return
        fields = fields.resolve(pf.schema_arrow.names)
        columns, has_id = _columns(pf.schema_arrow.names, fields)
        if fields.template is None and fields.text not in columns:
            yield Reject(item.source, None, f"missing text field {fields.text!r} (columns: {pf.schema_arrow.names})")
            return
        for part in item.parts or (WHOLE,):
            first = part.first
            for group in range(part.start, pf.num_row_groups if part.stop is None else part.stop):
                rows = pf.metadata.row_group(group).num_rows
                if first + rows <= start or not _wants(only, first, first + rows):  # skipped, never decoded
                    first += rows
                    continue
                try:
                    for batch in pf.iter_batches(batch_size=8192, row_groups=[group], columns=columns):
                        skip = max(0, start - first)
                        yield from _rows_of_batch(batch.slice(skip), item, first + skip, fields, has_id,
                                                  pf.schema_arrow.names, only)
                        first += batch.num_rows
                except (pa.ArrowException, OSError, ValueError) as exc:
                    if network_error(item, exc):
                        raise
                    yield Reject(item.source, first, f"corrupt parquet data from here on: {exc}")
                    break  # the rest of this part; a file read whole has one part


def arrow_batches(path: Path) -> Iterator[Any]:
    """Record batches of an HF arrow file: IPC stream format, else IPC file format."""
    import pyarrow as pa

    source = pa.memory_map(str(path))
    try:
        reader = pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        file_reader = pa.ipc.open_file(source)
        for i in range(file_reader.num_record_batches):
            yield file_reader.get_batch(i)
        return
    yield from reader


def hf_data_files(folder: Path) -> list[Path]:
    state = folder / "state.json"
    if state.is_file():
        names = [Path(f["filename"]).name for f in json.loads(state.read_text("utf-8")).get("_data_files", [])]
        if names:
            return [folder / name for name in names]
    return sorted(folder.glob("data-*.arrow"))


def _read_hf(item: InputFile, fields: Fields, start: int, only: np.ndarray | None) -> Iterator[Document | Reject]:
    import pyarrow as pa

    try:
        files = hf_data_files(item.path)
    except (ValueError, KeyError, TypeError) as exc:
        yield Reject(item.source, None, f"unreadable state.json: {exc}")
        return
    if not files:
        yield Reject(item.source, None, "HF dataset folder has no data-*.arrow files")
        return
    first = 0
    for path in files:
        try:
            for batch in arrow_batches(path):
                n = batch.num_rows
                if first + n <= start or not _wants(only, first, first + n):  # memory-mapped: skipping is free
                    first += n
                    continue
                fields = fields.resolve(batch.schema.names)
                columns, has_id = _columns(batch.schema.names, fields)
                if fields.template is None and fields.text not in columns:
                    yield Reject(item.source, first, f"missing text field {fields.text!r} (in {path.name})")
                    return
                skip = max(0, start - first)
                yield from _rows_of_batch(batch.slice(skip), item, first + skip, fields, has_id, batch.schema.names,
                                          only)
                first += n
        except (pa.ArrowException, OSError, ValueError) as exc:
            yield Reject(item.source, first, f"unreadable arrow data from here on ({path.name}): {exc}")
            return


def _wants(only: np.ndarray | None, lo: int, hi: int) -> bool:
    """Whether positions ``lo:hi`` hold a wanted one (all do when there is no ``only``)."""
    if only is None:
        return True
    at = int(np.searchsorted(only, lo))
    return at < len(only) and only[at] < hi


_READERS: dict[str, Callable[[InputFile, Fields, int, np.ndarray | None], Iterator[Document | Reject]]] = {
    "jsonl": _read_jsonl,
    "jsonl.gz": _read_jsonl,
    "jsonl.zst": _read_jsonl,
    "txt": _read_txt,
    "parquet": _read_parquet,
    "hf": _read_hf,
}
