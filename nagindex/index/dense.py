"""NAIT's dense features on disk: one raw ``(N, L, d)`` array per index folder, memory-mapped by queries.

Unlike ``codes.u16`` (a derived copy of the LMDB record), this file *is* the record of the dense
features: at 34,560 bytes a document (SmolLM2-135M, bfloat16) a second copy inside LMDB would double
an index that is already dominated by it. It stays crash-safe the way ``rejects.jsonl`` does: a
window's rows are appended and fsynced *before* the LMDB transaction that commits the window, and
the writer cuts the file back to the store's committed rows when it opens, so a window killed
between the two leaves no stray rows. Readers map only the first ``rows`` rows (``index_info.json``).

Rows are in the index's dtype (the manifest's ``dtype``): ``nait.f32`` (float32), ``nait.f16``
(float16), ``nait.bf16`` (bfloat16, stored as its raw 16 bits since numpy has no bfloat16; read back
by a 16-bit shift, exact). The manifest records ``"nait": {"site", "vector"}`` (``encode.dense``) and
``"nait_width"`` (d); an append with other features, or none, is refused (``store.FEATURE_SETTINGS``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError

#: the index dtype -> (file name, numpy dtype of the stored 16 or 32 bits)
DENSE_FILES = {"float32": ("nait.f32", "<f4"), "float16": ("nait.f16", "<f2"), "bfloat16": ("nait.bf16", "<u2")}


def dense_layout(manifest: dict[str, Any]) -> tuple[str, np.dtype, tuple[int, int]]:
    """(file name, stored dtype, per-row shape ``(L, d)``) of an index with NAIT features."""
    if not manifest.get("nait"):
        raise NagIndexError("this index holds no NAIT features: ingest it with --features nag,nait")
    dtype = manifest.get("dtype") or "float32"
    if dtype not in DENSE_FILES:
        raise NagIndexError(f"NAIT features in dtype {dtype!r} are not supported ({', '.join(DENSE_FILES)})")
    name, stored = DENSE_FILES[dtype]
    return name, np.dtype(stored), (int(manifest["num_layers"]), int(manifest["nait_width"]))


def bytes_per_document(num_layers: int, width: int, dtype: str) -> int:
    """Dense bytes per document: L x d x itemsize (SmolLM2-135M bfloat16: 30 x 576 x 2 = 34,560)."""
    return num_layers * width * np.dtype(DENSE_FILES[dtype][1]).itemsize


def to_stored(rows: np.ndarray, dtype: str) -> np.ndarray:
    """float32 ``(n, L, d)`` -> the stored representation, rounded to nearest (even) like torch's cast."""
    if dtype == "bfloat16":
        bits = np.ascontiguousarray(rows, dtype=np.float32).view(np.uint32)
        rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)  # round half to even on the dropped 16 bits
        return ((bits + rounding) >> 16).astype(np.uint16)
    return np.asarray(rows, dtype=DENSE_FILES[dtype][1])


def to_float32(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Stored rows -> float32, exact (every bfloat16/float16 value is a float32)."""
    if dtype == "bfloat16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return stored.astype(np.float32)


class DenseWriter:
    """Appends a folder's dense rows, each window fsynced before the store commits it."""

    def __init__(self, directory: Path, manifest: dict[str, Any], committed_rows: int) -> None:
        name, self.stored, self.shape = dense_layout(manifest)
        self.dtype = manifest.get("dtype") or "float32"
        self.path = Path(directory) / name
        self.row_bytes = self.stored.itemsize * self.shape[0] * self.shape[1]
        size = self.path.stat().st_size if self.path.is_file() else 0
        if size < committed_rows * self.row_bytes:
            raise NagIndexError(f"{self.path} holds {size // self.row_bytes} rows but the store has "
                                f"{committed_rows}: the dense features are lost; ingest into a new --index")
        with open(self.path, "ab") as fh:  # rows of a window killed before its commit are cut off
            fh.truncate(committed_rows * self.row_bytes)

    def append(self, rows: np.ndarray) -> None:
        """Write ``(n, L, d)`` float32 rows durably (call before the store commits them)."""
        if rows.shape[1:] != self.shape:
            raise NagIndexError(f"dense rows {rows.shape[1:]} do not match the index's {self.shape}")
        with open(self.path, "ab") as fh:
            fh.write(to_stored(rows, self.dtype).tobytes())
            fh.flush()
            os.fsync(fh.fileno())


def open_dense(directory: str | os.PathLike, manifest: dict[str, Any], rows: int) -> np.ndarray:
    """The first ``rows`` stored rows, memory-mapped read-only: ``(rows, L, d)`` in the stored dtype."""
    name, stored, shape = dense_layout(manifest)
    path = Path(directory) / name
    if rows == 0:
        return np.zeros((0, *shape), stored)
    need = rows * stored.itemsize * shape[0] * shape[1]
    if not path.is_file() or path.stat().st_size < need:
        raise NagIndexError(f"{path} is missing or shorter than the index's {rows} rows")
    return np.memmap(path, dtype=stored, mode="r", shape=(rows, *shape))


def take_dense(view: Any, rows: np.ndarray) -> np.ndarray:
    """The stored rows ``(len(rows), L, d)`` of a few global ``rows`` of any view ``open_index`` returns, read
    from the shards that hold them (``sharded.take_codes`` for the dense features)."""
    from nagindex.index.sharded import split_rows, view_parts

    _, stored, shape = dense_layout(view.manifest)
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros((len(rows), *shape), dtype=stored)
    for part, where, local in split_rows(view_parts(view), rows):
        out[where] = open_dense(part.view.directory, part.view.manifest, len(part.view))[local]
    return out
