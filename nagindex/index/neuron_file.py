"""The derived file ``neuron_counts.i64``: per layer, how many of a shard's NAGs hold each neuron (issue 23).

Little-endian int64: the number of rows counted, then the ``(L, width)`` counts of the shard's first
that many rows. ``sync_derived`` rewrites it (atomically) after each derive from the old counts plus
the new rows' (a derive costs its new rows, as for every derived file); ``prefix_counts`` gives the
counts of any prefix of the shard's rows from it. A file that does not fit (another shape, counts
that are not that many NAGs) is not trusted: the codes are counted instead. This module reads and
writes that file only, below the derived files that use it; ``neuron_stats.py`` merges shards.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from nagindex.errors import NagIndexError
from nagindex.fsio import atomic_path

logger = logging.getLogger(__name__)

COUNTS_FILE = "neuron_counts.i64"
CODES_FILE = "codes.u16"  # derived.ROW_FILES["codes"], named here: derived.py imports this module
#: rows of codes counted per step (64K x 28 x 20 uint16 is 72 MB, streamed from the page cache)
_BLOCK = 65536


@njit(cache=True, nogil=True)
def _add_counts(codes: np.ndarray, top_k: int, width: int, counts: np.ndarray) -> int:  # pragma: no cover - compiled
    """Add each code of ``codes`` ``(n, L * K)`` to ``counts[layer * width + code]``; return how many codes are
    >= ``width`` (not counted: a corrupt index, or a manifest of another width).

    Rows go in groups of 256 (their codes stay in L2) and each group one layer at a time, so only that
    layer's ``width`` counts are hot (48 KB at width 6144) instead of all ``L * width`` (1.4 MB at 28 layers).
    """
    bad = 0
    n, m = codes.shape
    for lo in range(0, n, 256):
        hi = min(n, lo + 256)
        for layer in range(m // top_k):
            base = layer * width
            for i in range(lo, hi):
                for q in range(layer * top_k, layer * top_k + top_k):
                    c = codes[i, q]
                    if c >= width:
                        bad += 1
                    else:
                        counts[base + c] += 1
    return bad


def count_neurons(codes: np.ndarray, width: int) -> np.ndarray:
    """Per layer, how many rows of ``codes`` ``(n, L, K)`` hold each neuron: int64 ``(L, width)``.

    Streamed in blocks, so a memory map is never copied whole; a compiled loop, one add per code
    (numpy's ``bincount`` over widened int64 indexes took 20x as long). A NAG's K neurons of a
    layer are distinct (a top-K), so each row adds at most 1 to a count: ``counts[l, n]`` is the
    number of documents whose layer-``l`` NAG holds neuron ``n``.
    """
    n, num_layers, top_k = codes.shape
    counts = np.zeros(num_layers * width, dtype=np.int64)
    for lo in range(0, n, _BLOCK):
        block = np.ascontiguousarray(codes[lo:lo + _BLOCK], dtype=np.uint16).reshape(-1, num_layers * top_k)
        if _add_counts(block, top_k, width, counts):
            raise NagIndexError(f"codes of rows {lo}..{lo + len(block)} hold a neuron >= width {width}")
    return counts.reshape(num_layers, width)


def _codes_file(directory: Path, manifest: dict[str, Any]) -> np.ndarray:
    """The shard's codes file, as many whole rows as it holds now (derived files only grow)."""
    shape = (manifest["num_layers"], manifest["top_k"])
    path = directory / CODES_FILE
    rows = path.stat().st_size // (2 * shape[0] * shape[1]) if path.is_file() else 0
    if rows == 0:
        return np.zeros((0, *shape), dtype="<u2")
    return np.memmap(path, dtype="<u2", mode="r", shape=(rows, *shape))


def read_counts(directory: str | os.PathLike, manifest: dict[str, Any]) -> tuple[int, np.ndarray] | None:
    """``(rows, counts)`` of a shard's ``neuron_counts.i64``, or None when it has none that fits ``manifest``
    (a file of other dimensions, or counts that are not ``rows`` NAGs of K neurons a layer)."""
    path = Path(directory) / COUNTS_FILE
    num_layers, width, top_k = manifest["num_layers"], manifest["width"], manifest["top_k"]
    if not path.is_file() or path.stat().st_size != 8 * (1 + num_layers * width):
        return None
    raw = np.fromfile(path, dtype="<i8")
    rows, counts = int(raw[0]), raw[1:].astype(np.int64).reshape(num_layers, width)
    if rows < 0 or not np.array_equal(counts.sum(axis=1), np.full(num_layers, rows * top_k)):
        return None
    return rows, counts


def write_counts(directory: str | os.PathLike, rows: int, counts: np.ndarray) -> None:
    """Store the counts of a shard's first ``rows`` rows (atomically: a reader sees the old file or this one)."""
    data = np.concatenate([np.array([rows], dtype="<i8"), np.asarray(counts, dtype="<i8").ravel()])
    with atomic_path(Path(directory) / COUNTS_FILE) as tmp:
        data.tofile(tmp)


def prefix_counts(directory: str | os.PathLike, manifest: dict[str, Any], rows: int) -> np.ndarray:
    """The neuron counts of a shard's first ``rows`` derived rows: the stored counts, adjusted by the codes
    between their rows and ``rows``; counted from the codes where no usable file is stored."""
    directory = Path(directory)
    codes, width = _codes_file(directory, manifest), manifest["width"]
    stored = read_counts(directory, manifest)
    if stored is not None and stored[0] <= len(codes) and abs(stored[0] - rows) < rows:
        counted, counts = stored
        if counted > rows:
            return counts - count_neurons(codes[rows:counted], width)
        return counts + count_neurons(codes[counted:rows], width)
    if stored is None and rows:
        logger.info("%s: no %s (derived before it): counting the neurons of its %d rows from the codes; the next "
                    "derive stores them", directory, COUNTS_FILE, rows)
    return count_neurons(codes[:rows], width)
