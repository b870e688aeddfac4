"""What to read: the concrete inputs behind the paths and URLs a user gives.

A path is a file, or a folder walked recursively in sorted order (dot-files
skipped; an HF ``save_to_disk`` folder is one input). Inputs may also be URLs
of any fsspec filesystem: ``hf://datasets/<repo>/<path>`` (the Hugging Face
Hub, e.g. the paper's RefinedWeb parquet shards), ``s3://``, ``gs://``...
They are read as streams (parquet by row group, through range
requests), resume like local files, and a network error stops the run (the
cursor is committed, so the same command goes on from there) instead of
turning the rest of a file into a reject.

Each input gets a stable ``key`` (absolute path or full URL) that the store's
progress table and the index's ``sources`` use, so resume and text read-back
work from any working folder. A sharded ingest may hand a worker only some
``parts`` of a big input (``sources.split``): its records keep the positions they
have in the whole file, so the index is the one a whole-file read gives.
"""
from __future__ import annotations

import gzip
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from nagindex.errors import InputError

SUFFIX_KINDS = (  # longest suffix first
    (".jsonl.gz", "jsonl.gz"),
    (".jsonl.zst", "jsonl.zst"),
    (".jsonl", "jsonl"),
    (".parquet", "parquet"),
    (".txt", "txt"),
)
_HF_MARKERS = ("state.json", "dataset_info.json")
READ_CHUNK = 1 << 20
_REMOTE_BLOCK = 8 << 20  # bytes per remote range request


@dataclass(frozen=True, slots=True)
class Part:
    """A contiguous piece of one input for one shard worker (``sources.split``): bytes ``[start, stop)`` of
    an uncompressed .jsonl (cut at line starts) or row groups ``[start, stop)`` of a .parquet.

    ``first`` is the position (line or row in the whole file) of its first record and ``end`` the position
    after its last, so a worker resuming at a position skips whole parts. The last part of a file is open
    (``stop`` and ``end`` None: to the end of the file), so lines appended to a .jsonl are still read.
    """

    start: int
    stop: int | None
    first: int
    end: int | None

    def to_json(self) -> list[int | None]:
        return [self.start, self.stop, self.first, self.end]


#: the one part of an input read whole
WHOLE = Part(0, None, 0, None)


@dataclass(frozen=True, slots=True)
class InputFile:
    """One concrete source: a file, or an HF ``save_to_disk`` folder.

    ``key`` (resolved absolute path, or the full URL) identifies it in the store's progress table;
    ``source`` is the path as the user gave it (joined with the relative path
    inside a walked folder) and is what rejects and generated docids show.
    ``name`` is the path relative to the walked folder (the docid of a .txt doc).
    ``parts``: the pieces of it to read, in file order (a sharded ingest's split input); None: all of it.
    """

    key: str
    path: Path
    kind: str
    source: str
    name: str
    fs: Any = None  # the fsspec filesystem of a remote input (``path`` is then its path there); None: local
    parts: tuple[Part, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """This source as JSON, to hand it to a shard worker process as the driver found it."""
        return {"key": self.key, "path": self.path.as_posix(), "kind": self.kind, "source": self.source,
                "name": self.name, "remote": self.fs is not None,
                "parts": None if self.parts is None else [p.to_json() for p in self.parts]}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "InputFile":
        fs = None
        if value["remote"]:
            import fsspec

            fs = fsspec.core.url_to_fs(value["key"])[0]
        parts = value.get("parts")
        return cls(value["key"], Path(value["path"]), value["kind"], value["source"], value["name"], fs,
                   None if parts is None else tuple(Part(*p) for p in parts))

    def open(self) -> BinaryIO:
        """The file's raw bytes, local or remote."""
        if self.fs is None:
            return open(self.path, "rb", buffering=READ_CHUNK)
        return self.fs.open(self.path.as_posix(), "rb", block_size=_REMOTE_BLOCK)

    def state(self) -> dict[str, Any]:
        """Size and a change stamp (mtime; for remote files the blob id or etag when the store gives one)."""
        if self.fs is None:
            st = os.stat(self.path)
            return {"size": st.st_size, "mtime": st.st_mtime}
        try:
            info = self.fs.info(self.path.as_posix())
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is I/O
            if not transport_error(exc):
                raise
            raise InputError(f"{self.source}: cannot reach it: {exc}; run the same command again to resume") from exc
        stamp = next((info[k] for k in ("blob_id", "ETag", "etag", "mtime", "LastModified", "created") if info.get(k)),
                     None)
        return {"size": info.get("size"), "mtime": None if stamp is None else str(stamp)}


def _kind_of(path: Path) -> str:
    return "hf" if path.is_dir() else _kind_of_name(path.name)


def _kind_of_name(name: str) -> str:
    lower = name.lower()
    for suffix, kind in SUFFIX_KINDS:
        if lower.endswith(suffix):
            return kind
    return "unsupported"


def _is_hf_folder(path: Path) -> bool:
    return any((path / marker).is_file() for marker in _HF_MARKERS)


def _walk(root: Path, given: str) -> Iterator[InputFile]:
    """Sorted recursive walk; HF dataset folders are leaves, dot-files are skipped."""
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        rel = entry.relative_to(root).as_posix()
        source = f"{given.rstrip('/')}/{rel}"
        if entry.is_dir():
            if _is_hf_folder(entry):
                yield InputFile(str(entry.resolve()), entry, "hf", source, rel)
            else:
                for sub in _walk(entry, source):
                    yield InputFile(sub.key, sub.path, sub.kind, sub.source, f"{rel}/{sub.name}")
        elif entry.name == "dataset_dict.json" and any(p.is_dir() for p in root.iterdir()):
            continue  # HF DatasetDict: the splits are the subfolders
        else:
            yield InputFile(str(entry.resolve()), entry, _kind_of(entry), source, rel)


def input_files(paths: str | os.PathLike | Sequence[str | os.PathLike | InputFile]) -> list[InputFile]:
    """Expand files and folders into concrete sources, in a stable order, no duplicates.

    ``InputFile`` items pass through as they are (a shard worker gets the driver's, so
    the docids it makes from names and positions are the ones a one-shard ingest makes).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[InputFile] = []
    seen: set[str] = set()
    for given in paths:
        if isinstance(given, InputFile):
            found = [given]
        elif is_url(given) and not Path(given).exists():
            found = _remote_files(str(given))
        elif not Path(given).exists():
            raise InputError(f"input path {str(given)!r} does not exist")
        elif Path(given).is_dir() and not _is_hf_folder(Path(given)):
            found = list(_walk(Path(given), str(given)))
        else:
            path = Path(given)
            found = [InputFile(str(path.resolve()), path, _kind_of(path), str(given), path.name)]
        for item in found:
            if item.key not in seen:
                seen.add(item.key)
                out.append(item)
    return out


def is_url(given: str | os.PathLike) -> bool:
    """``hf://...``, ``s3://...``: a path for fsspec rather than the local filesystem."""
    return isinstance(given, str) and "://" in given and not given.startswith("file://")


def _remote_files(url: str) -> list[InputFile]:
    """The files at a remote URL (one file, or every file under a folder or glob, sorted; dot-files skipped)."""
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - huggingface_hub (a transformers dependency) brings it
        raise InputError(f"{url}: remote inputs need fsspec (pip install fsspec)") from exc
    try:
        fs, root = fsspec.core.url_to_fs(url)
        wildcard = min((root.find(c) for c in "*?[" if c in root), default=-1)
        if wildcard >= 0:
            paths, base = sorted(fs.glob(root)), root[:wildcard].rsplit("/", 1)[0]
        elif fs.isdir(root):
            paths, base = sorted(fs.find(root)), root.rstrip("/")
        else:
            paths, base = ([root] if fs.exists(root) else []), root.rsplit("/", 1)[0]
    except Exception as exc:  # noqa: BLE001 - unknown protocol, no network, no access
        if not isinstance(exc, ValueError) and not transport_error(exc):
            raise
        raise InputError(f"input path {url!r}: cannot list it: {exc}") from exc
    if not paths and wildcard < 0:
        raise InputError(f"input path {url!r} does not exist")
    out = []
    for p in paths:
        rel = p[len(base):].lstrip("/") if p.startswith(base) else ""
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        url_of_file = fs.unstrip_protocol(p)  # key and source alike: the file's full URL
        out.append(InputFile(url_of_file, Path(p), _kind_of_name(p), url_of_file, rel or p.rsplit("/", 1)[-1], fs))
    if not out:
        raise InputError(f"input path {url!r} holds no files")
    return out


@contextmanager
def parquet_file(item: InputFile) -> Iterator[Any]:
    """A ``pyarrow.parquet.ParquetFile`` on a local path (memory-mapped reads) or a remote file object."""
    import pyarrow.parquet as pq

    if item.fs is None:
        with pq.ParquetFile(item.path) as pf:
            yield pf
    else:
        with item.open() as raw, pq.ParquetFile(raw) as pf:
            yield pf


_TRANSPORT_PACKAGES = frozenset({"httpx", "httpx2", "requests", "urllib3", "aiohttp", "huggingface_hub", "botocore",
                                 "google"})


def transport_error(exc: BaseException) -> bool:
    """An error of the I/O or network stack under fsspec: an OSError, or an exception of the HTTP/cloud
    client libraries (httpx, requests, aiohttp, botocore...), most of which are not OSErrors."""
    if isinstance(exc, gzip.BadGzipFile):
        return False  # corrupt data, not transport
    return isinstance(exc, OSError) or any(c.__module__.split(".")[0] in _TRANSPORT_PACKAGES
                                           for c in type(exc).__mro__)


def network_error(item: InputFile, exc: BaseException) -> bool:
    """An I/O error reading a remote input (not corrupt data): the run stops and resumes later, no reject."""
    return item.fs is not None and transport_error(exc)
