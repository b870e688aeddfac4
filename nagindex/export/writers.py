"""Training data parts, one writer class per output format, picked by name (``FORMATS``).

A part is written under temporary names beside its final ones, fsynced, then renamed (``fsio``): after a
crash a final name holds a whole part or nothing. Documents are buffered up to ``BATCH_BYTES`` and written
as one row group, one compressed run of lines or one token array; the buffer counts from the part's first
document, so a part's bytes depend on its documents only and a resumed run writes what an uninterrupted
one would.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.fsio import disk_errors, fsync_path, temp_name

#: bytes of documents buffered before a part writes them out (one row group / block / token array)
BATCH_BYTES = 32 << 20

#: Megatron-LM's index header and dtype codes (``megatron/core/datasets/indexed_dataset.py``: ``_INDEX_HEADER``,
#: ``DType``; ``_IndexWriter.write``)
MEGATRON_HEADER = b"MMIDIDX\x00\x00"
MEGATRON_DTYPES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}


@dataclass
class TrainingDoc:
    """One selected document on its way out: ``tokens`` (with the end token) for tokenized formats;
    ``size``: the bytes it adds to a part (UTF-8 text, or token ids), what the target shard size counts."""

    docid: str
    text: str
    rank: int
    tokens: np.ndarray | None
    size: int


class PartWriter:
    """One output part at ``stem`` + each of ``suffixes``. Subclasses implement ``_write`` (a batch of
    documents into the open temporary files ``self.tmp``) and, where a file needs a closing step, ``_finish``."""

    suffixes: tuple[str, ...] = ()
    #: whether documents need token ids (``TokenEncoder``)
    tokenized = False
    #: rough output bytes per indexed token, to group sources into tasks of about one part
    bytes_per_token = 4.0

    def __init__(self, stem: Path, dtype: np.dtype | None = None) -> None:
        self.final = [stem.with_name(stem.name + s) for s in self.suffixes]
        self.tmp = [temp_name(p) for p in self.final]
        self.dtype = dtype
        self.documents = 0
        self.bytes = 0
        self._buffer: list[TrainingDoc] = []
        self._buffered = 0

    def add(self, doc: TrainingDoc) -> None:
        self._buffer.append(doc)
        self._buffered += doc.size
        self.documents += 1
        self.bytes += doc.size
        if self._buffered >= BATCH_BYTES:
            self._flush()

    def close(self) -> list[str]:
        """Write what is buffered, make the files durable and give them their final names (listed)."""
        with disk_errors(self.final[0]):
            self._flush()
            self._finish()
            for tmp in self.tmp:
                fsync_path(tmp)
            for tmp, final in zip(self.tmp, self.final):
                os.replace(tmp, final)
        return [p.name for p in self.final]

    def abort(self) -> None:
        """Drop the temporary files (an error while writing): the part is written again on the next run."""
        with suppress(Exception):  # the error being handled is the one to report
            self._finish()
        for tmp in self.tmp:
            tmp.unlink(missing_ok=True)

    def _flush(self) -> None:
        if self._buffer:
            with disk_errors(self.final[0]):
                self._write(self._buffer)
        self._buffer, self._buffered = [], 0

    def _write(self, docs: Sequence[TrainingDoc]) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()


class ParquetPart(PartWriter):
    """``docid, text, rank`` as parquet, a row group per batch."""

    suffixes = (".parquet",)

    def _write(self, docs: Sequence[TrainingDoc]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"docid": pa.array([d.docid for d in docs], pa.string()),
                          "text": pa.array([d.text for d in docs], pa.string()),
                          "rank": pa.array([d.rank for d in docs], pa.int64())})
        if getattr(self, "_fh", None) is None:
            self._fh = pq.ParquetWriter(self.tmp[0], table.schema)
        self._fh.write_table(table)


class JsonlZstPart(PartWriter):
    """One ``{"docid", "text", "rank"}`` JSON object a line, zstandard-compressed (``zstd -d`` or
    ``datasets``' json loader read it)."""

    suffixes = (".jsonl.zst",)

    def __init__(self, stem: Path, dtype: np.dtype | None = None) -> None:
        import zstandard

        super().__init__(stem, dtype)
        self._raw: BinaryIO = open(self.tmp[0], "wb")
        self._fh = zstandard.ZstdCompressor(level=3).stream_writer(self._raw)

    def _write(self, docs: Sequence[TrainingDoc]) -> None:
        self._fh.write("".join(json.dumps({"docid": d.docid, "text": d.text, "rank": d.rank}, ensure_ascii=False)
                               + "\n" for d in docs).encode("utf-8"))


class MegatronPart(PartWriter):
    """A Megatron-LM ``MMapIndexedDataset``: ``.bin``, every document's token ids back to back (``dtype``:
    uint16 below 65,500 ids, else int32); ``.idx``, Megatron's index as ``_IndexWriter.write`` in
    ``megatron/core/datasets/indexed_dataset.py`` (NVIDIA/Megatron-LM) lays it out: the 9-byte header
    ``MMIDIDX\\0\\0``, version ``<Q`` 1, dtype code ``<B`` (uint16 8, int32 4), sequence count ``<Q``, document
    index count ``<Q`` (documents + 1), sequence lengths int32, byte offsets int64, document indices int64
    ``0..documents``: one sequence per document."""

    suffixes = (".bin", ".idx")
    tokenized = True
    bytes_per_token = 2.0

    def __init__(self, stem: Path, dtype: np.dtype | None = None) -> None:
        if dtype not in MEGATRON_DTYPES:
            raise NagIndexError(f"Megatron token ids are uint16 or int32, not {dtype}")
        super().__init__(stem, dtype)
        self._fh: BinaryIO = open(self.tmp[0], "wb")
        self._lengths: list[int] = []

    def _write(self, docs: Sequence[TrainingDoc]) -> None:
        for d in docs:
            self._fh.write(np.ascontiguousarray(d.tokens, dtype=self.dtype).tobytes())
            self._lengths.append(len(d.tokens))

    def _finish(self) -> None:
        super()._finish()
        lengths = np.asarray(self._lengths, np.int32)
        pointers = np.zeros(len(lengths), np.int64)
        np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        with open(self.tmp[1], "wb") as fh:
            fh.write(MEGATRON_HEADER + struct.pack("<Q", 1) + struct.pack("<B", MEGATRON_DTYPES[self.dtype])
                     + struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(lengths) + 1))
            fh.write(lengths.tobytes(order="C"))
            fh.write(pointers.tobytes(order="C"))
            fh.write(np.arange(len(lengths) + 1, dtype=np.int64).tobytes(order="C"))


FORMATS: dict[str, type[PartWriter]] = {"parquet": ParquetPart, "jsonl.zst": JsonlZstPart, "megatron": MegatronPart}


class TokenEncoder:
    """Texts to token id arrays with a tokenizer by name (``models.load_tokenizer``), each followed by the
    end-of-sequence token unless ``eos`` is off; ``dtype`` is Megatron's choice for the vocabulary size."""

    def __init__(self, name: str, eos: bool = True) -> None:
        from nagindex.models import load_tokenizer

        self._tok = load_tokenizer(name)
        self.eos: list[int] = []
        if eos:
            if self._tok.eos_token_id is None:
                raise NagIndexError(f"the tokenizer {name!r} has no end-of-sequence token: pass --no-eos")
            self.eos = [int(self._tok.eos_token_id)]
        self.dtype = np.dtype(np.uint16) if len(self._tok) < 65500 else np.dtype(np.int32)

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        ids: list[list[int]] = self._tok(list(texts), verbose=False)["input_ids"]
        return [np.asarray(x + self.eos, dtype=self.dtype) for x in ids]

