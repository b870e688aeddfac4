"""Suffixed counts: parse what users type, print what summaries show."""
from __future__ import annotations

import numpy as np
import pytest

from nagindex.errors import NagIndexError
from nagindex.units import format_count, parse_count, parse_size


@pytest.mark.parametrize("text, expected", [
    ("1000", 1000), ("50K", 50_000), ("50k", 50_000), ("1M", 10**6), ("1.5M", 1_500_000),
    ("30B", 30 * 10**9), ("2T", 2 * 10**12), ("1_000_000", 10**6), ("1,000", 1000),
    (" 3k ", 3000), (".5K", 500), ("0", 0), (7, 7), (np.int64(9), 9),
])
def test_parse_count(text, expected):
    assert parse_count(text) == expected


@pytest.mark.parametrize("bad", ["", "K", "abc", "-5", "1e6", "1.2345K", "5X", "1.5.5M", -1, True, 1.5, None])
def test_parse_count_rejects(bad):
    with pytest.raises(NagIndexError, match="invalid count"):
        parse_count(bad)


@pytest.mark.parametrize("n, text", [
    (0, "0"), (999, "999"), (1000, "1K"), (1234, "1.2K"), (999_949, "999.9K"), (999_960, "1M"),
    (1_234_567, "1.2M"), (30 * 10**9, "30B"), (2 * 10**12, "2T"), (-1500, "-1.5K"),
])
def test_format_count(n, text):
    assert format_count(n) == text


def test_round_trip():
    for n in (1000, 50_000, 1_500_000, 30 * 10**9):
        assert parse_count(format_count(n)) == n


@pytest.mark.parametrize("text, expected", [
    ("512MB", 512_000_000), ("1.5GB", 1_500_000_000), ("64KiB", 65_536), ("4096", 4096), ("3kb", 3000),
    ("2 GiB", 2 * 1024**3), (7, 7), ("1.5", 1),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "0", "MB", "-1MB", "5XB", 0, -3, True])
def test_parse_size_rejects(bad):
    with pytest.raises(NagIndexError, match="invalid size"):
        parse_size(bad)
