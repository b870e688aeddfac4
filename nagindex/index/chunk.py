"""One committed batch of an index as a single bytes value: the LMDB chunk layout.

A chunk holds everything the query side needs about its rows, so a reader gets
zero-copy numpy views over the value LMDB hands it.

Format, version 1 (all little-endian; every section starts at an offset that is
a multiple of 8, zero-padded; ``n`` rows, ``L`` layers, ``K`` neurons):

====================  ===========================  ==========================
section               dtype / shape                meaning
====================  ===========================  ==========================
header (24 bytes)     struct ``<4sHHIHHQ``         magic ``b"NAGC"``, version
                                                   1, header size 24, n, L, K,
                                                   docid bytes total
token_counts          ``<i8`` (n,)                 tokens per document
positions             ``<i8`` (n,)                 line/row in its source
codes                 ``<u2`` (n, L, K)            the NAG, layer-major
source_ids            ``<u4`` (n,)                 id in ``sources``
docid_offsets         ``<u4`` (n + 1,)             offsets into docid bytes
docid bytes           utf-8, concatenated          docid i = bytes[off[i]:off[i+1]]
====================  ===========================  ==========================
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nagindex.errors import NagIndexError

CHUNK_MAGIC = b"NAGC"
CHUNK_VERSION = 1
_HEADER = struct.Struct("<4sHHIHHQ")


def _pad8(n: int) -> int:
    return (n + 7) & ~7


@dataclass(frozen=True, slots=True)
class ChunkView:
    """The rows of one committed batch, as numpy views over one bytes object."""

    codes: np.ndarray  # (n, L, K) uint16
    token_counts: np.ndarray  # (n,) int64
    positions: np.ndarray  # (n,) int64
    source_ids: np.ndarray  # (n,) uint32
    docid_offsets: np.ndarray  # (n + 1,) uint32, relative to docid_bytes
    docid_bytes: memoryview

    def __len__(self) -> int:
        return len(self.token_counts)

    @property
    def docids(self) -> list[str]:
        off, raw = self.docid_offsets.tolist(), bytes(self.docid_bytes)
        return [raw[a:b].decode("utf-8") for a, b in zip(off[:-1], off[1:])]

    def slice(self, start: int) -> ChunkView:
        off = self.docid_offsets[start:]
        return ChunkView(self.codes[start:], self.token_counts[start:], self.positions[start:],
                         self.source_ids[start:], off - off[0], self.docid_bytes[int(off[0]):])


def encode_chunk(codes: np.ndarray, docids: Sequence[str], token_counts: np.ndarray,
                 positions: np.ndarray, source_ids: np.ndarray) -> bytearray:
    """Pack one batch in the version-1 chunk layout (see the module docstring), in one buffer."""
    n, num_layers, top_k = codes.shape
    encoded = [d.encode("utf-8") for d in docids]
    offsets = np.zeros(n + 1, dtype="<u4")
    np.cumsum(np.fromiter(map(len, encoded), np.int64, n), out=offsets[1:])
    sections = [(token_counts, "<i8"), (positions, "<i8"), (codes, "<u2"), (source_ids, "<u4"), (offsets, "<u4")]
    sizes = [_pad8(np.asarray(a).size * np.dtype(dt).itemsize) for a, dt in sections]
    out = bytearray(_HEADER.size + sum(sizes) + int(offsets[-1]))
    _HEADER.pack_into(out, 0, CHUNK_MAGIC, CHUNK_VERSION, _HEADER.size, n, num_layers, top_k, int(offsets[-1]))
    at = _HEADER.size
    for (arr, dtype), size in zip(sections, sizes):
        arr = np.asarray(arr)
        np.frombuffer(out, dtype, arr.size, at).reshape(arr.shape)[...] = arr
        at += size
    out[at:] = b"".join(encoded)
    return out


def decode_chunk(value: bytes) -> ChunkView:
    """Zero-copy numpy views over a version-1 chunk."""
    magic, version, header_size, n, num_layers, top_k, nbytes = _HEADER.unpack_from(value)
    if magic != CHUNK_MAGIC or version != CHUNK_VERSION:
        raise NagIndexError(f"unknown chunk format {magic!r} v{version}; this nagindex reads v{CHUNK_VERSION}")
    buf, at = memoryview(value), header_size
    arrays = []
    for dtype, shape in (("<i8", (n,)), ("<i8", (n,)), ("<u2", (n, num_layers, top_k)), ("<u4", (n,)), ("<u4", (n + 1,))):
        count = int(np.prod(shape))
        arrays.append(np.frombuffer(buf, dtype, count, at).reshape(shape))
        at += _pad8(count * np.dtype(dtype).itemsize)
    tokens, positions, codes, sources, offsets = arrays
    return ChunkView(codes, tokens, positions, sources, offsets, buf[at:at + nbytes])
