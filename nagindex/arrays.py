"""numpy and Python columns to Arrow without ``pa.array``.

``pa.array`` of an ndarray or a list imports pandas (when installed) to probe
the input's type: 0.2-0.3 s of a CLI call that otherwise needs none of it.
Numeric arrays and string lists are simple enough to hand to Arrow as buffers.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def numeric_array(values: np.ndarray) -> Any:
    """A zero-copy Arrow array over a 1-D numeric ndarray (NaN stays NaN, as with ``pa.array``)."""
    import pyarrow as pa

    arr = np.ascontiguousarray(values)
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        raise TypeError(f"numeric_array needs a 1-D int/uint/float array, got {arr.dtype} with shape {arr.shape}")
    return pa.Array.from_buffers(pa.from_numpy_dtype(arr.dtype), len(arr), [None, pa.py_buffer(arr)])


def string_array(values: Sequence[str | None]) -> Any:
    """An Arrow string array (nulls for None), large_string when the bytes outgrow 32-bit offsets."""
    import pyarrow as pa

    encoded = [b"" if v is None else v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
    kind = pa.string() if offsets[-1] < 2**31 else pa.large_string()
    offsets = offsets.astype(np.int32) if kind == pa.string() else offsets
    valid = np.fromiter((v is not None for v in values), bool, len(encoded))
    nulls = len(encoded) - int(valid.sum())
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(kind, len(encoded), [bitmap, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
                                 null_count=nulls)


def arrow_column(values: Any) -> Any:
    """Arrow array of a selection column: numeric ndarrays and string lists by buffers, the rest by pyarrow."""
    import pyarrow as pa

    if isinstance(values, pa.Array):
        return values
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "iuf":
        return numeric_array(values)
    items = list(values)
    if all(v is None or isinstance(v, str) for v in items) and any(isinstance(v, str) for v in items):
        return string_array(items)
    return pa.array(items)
