"""Arrow columns built from buffers equal what ``pa.array`` builds, without importing pandas."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from nagindex.arrays import arrow_column, numeric_array, string_array


@pytest.mark.parametrize("values", [np.arange(5, dtype=np.int64), np.array([1.5, np.nan, -0.0]),
                                    np.arange(4, dtype=np.uint32)[::2], np.array([], dtype=np.float64)])
def test_numeric_equals_pa_array(values):
    got, ref = numeric_array(values), pa.array(values)
    assert got.type == ref.type == pa.from_numpy_dtype(values.dtype) and got.null_count == ref.null_count == 0
    np.testing.assert_array_equal(got.to_numpy(), ref.to_numpy())  # NaN stays NaN (not null), as in pa.array


def test_strings_with_nulls_and_unicode():
    values = ["a", None, "", "é ✓ 漢字", None, "z" * 300]
    got = string_array(values)
    assert got.type == pa.string() and got.null_count == 2
    assert got.to_pylist() == values and got.equals(pa.array(values, pa.string()))


def test_arrow_column_dispatch():
    assert arrow_column(np.array([3, 1])).to_pylist() == [3, 1]
    assert arrow_column(["x", "y"]).type == pa.string()
    assert arrow_column([True, False]).type == pa.bool_()  # anything else: pyarrow's inference
    assert arrow_column([None, None]).null_count == 2
    with pytest.raises(TypeError, match="1-D int/uint/float"):
        numeric_array(np.zeros((2, 2)))


def test_no_pandas_import():
    code = ("import sys, numpy as np; from nagindex.arrays import arrow_column as c; "
            "c(np.arange(3)); c(['a', None]); print('pandas' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
