"""Big inputs cut into parts, so that the workers of a sharded ingest share one large file.

A part (``inputs.Part``) is what one worker reads of a file, its records at the positions they have
in the whole file, so a split ingest gives the index of a whole-file one:

- uncompressed local .jsonl: byte ranges of about ``size`` bytes, each boundary moved forward to the
  next line start (a range owns the lines that start inside it). A line's position is its line number
  in the file, so the line number at each boundary is counted once, here, by one pass over the file
  that counts newlines range by range in threads (``COUNT_THREADS``; reading and numpy's compare run
  without the GIL);
- .parquet (local or remote): runs of whole row groups of about ``size`` compressed bytes; the row
  numbers come from the footer, nothing else is read;
- everything else is one part: gzip and zstd streams cannot be entered mid-way (the zstd seekable
  format would need a seek table that ordinary .zst files lack, and the line numbers would still take
  a full decompression), a remote .jsonl would be downloaded whole to count its lines, and .txt files
  and HF folders are read whole anyway.

The plan is made once per input, when it is first assigned, and recorded in the catalog
(``ingest.sharded``): a resumed or appended ingest reads the parts it recorded.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import numpy as np

from nagindex.errors import InputError
from nagindex.sources.inputs import WHOLE, InputFile, Part, network_error, parquet_file

#: inputs bigger than this are split by default: minutes of encoding per part, and few parts per worker
DEFAULT_SPLIT_SIZE = 64 << 20
#: threads counting newlines at once (one range each)
COUNT_THREADS = 8
_COUNT_CHUNK = 8 << 20


def can_split(item: InputFile) -> bool:
    """Whether ``item``'s kind and place allow parts (see the module docstring for the others)."""
    return item.kind == "parquet" or (item.kind == "jsonl" and item.fs is None)


def split_input(item: InputFile, size: int, file_size: int) -> list[tuple[Part, int]]:
    """``item`` cut into parts of about ``size`` bytes, each with its bytes (for balancing the shards);
    one part (``inputs.WHOLE``) when it is no bigger than ``size`` or cannot be split."""
    if file_size > size and can_split(item):
        parts = _jsonl_parts(item, size, file_size) if item.kind == "jsonl" else _parquet_parts(item, size)
        if parts is not None:
            return parts
    return [(WHOLE, file_size)]


def _jsonl_parts(item: InputFile, size: int, file_size: int) -> list[tuple[Part, int]] | None:
    """Byte ranges cut at line starts, with the line number of each range's first line; None when the
    file is one line (no cut falls at a line start)."""
    with open(item.path, "rb") as fh:
        cuts = sorted({0, *(_line_start(fh, b, file_size) for b in range(size, file_size, size))} - {file_size})
    if len(cuts) < 2:
        return None
    bounds = cuts + [file_size]
    with ThreadPoolExecutor(min(COUNT_THREADS, len(cuts))) as pool:  # the last range's lines are never needed
        lines = list(pool.map(lambda i: _count_newlines(item.path, bounds[i], bounds[i + 1]), range(len(cuts) - 1)))
    firsts = np.cumsum([0, *lines]).tolist()
    parts = [(Part(a, b, first, end), b - a) for a, b, first, end in zip(bounds, bounds[1:-1], firsts, firsts[1:])]
    return [*parts, (Part(bounds[-2], None, firsts[-1], None), file_size - bounds[-2])]


def _line_start(fh: BinaryIO, at: int, file_size: int) -> int:
    """The first line start at or after byte ``at`` (``file_size`` if none): just past the first newline
    at or after byte ``at - 1``."""
    fh.seek(at - 1)
    pos = at - 1
    while chunk := fh.read(1 << 16):
        found = chunk.find(b"\n")
        if found >= 0:
            return pos + found + 1
        pos += len(chunk)
    return file_size


def _count_newlines(path: os.PathLike | str, start: int, stop: int) -> int:
    """Newlines in bytes ``[start, stop)`` of the file at ``path`` (its own handle: threads share none)."""
    buf = bytearray(_COUNT_CHUNK)
    view = memoryview(buf)
    count = 0
    with open(path, "rb", buffering=0) as fh:
        fh.seek(start)
        left = stop - start
        while left > 0:
            n = fh.readinto(view[:min(left, _COUNT_CHUNK)])
            if not n:
                break
            count += int(np.count_nonzero(np.frombuffer(buf, np.uint8, n) == 10))
            left -= n
    return count


def _parquet_parts(item: InputFile, size: int) -> list[tuple[Part, int]] | None:
    """Runs of whole row groups of about ``size`` compressed bytes, with the row number of each run's first
    row; None for a file that is no readable parquet (its reader reports it) or has one row group."""
    import pyarrow as pa

    try:
        with parquet_file(item) as pf:
            meta = pf.metadata
            groups = [(meta.row_group(g).num_rows,
                       sum(meta.row_group(g).column(c).total_compressed_size for c in range(meta.num_columns)))
                      for g in range(meta.num_row_groups)]
    except (pa.ArrowException, OSError, ValueError) as exc:
        if network_error(item, exc):
            raise InputError(f"{item.source}: cannot read its footer: {exc}; run the same command again") from exc
        return None
    if len(groups) < 2:
        return None
    parts: list[tuple[Part, int]] = []
    start, first, rows, nbytes = 0, 0, 0, 0
    for g, (n, b) in enumerate(groups):
        rows, nbytes = rows + n, nbytes + b
        if nbytes >= size and g + 1 < len(groups):
            parts.append((Part(start, g + 1, first, first + rows), nbytes))
            start, first, rows, nbytes = g + 1, first + rows, 0, 0
    parts.append((Part(start, None, first, None), nbytes))
    return parts if len(parts) > 1 else None
