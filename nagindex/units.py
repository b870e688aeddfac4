"""Human-friendly counts: ``30B`` tokens, ``50K`` documents.

Budgets and sizes in this domain span nine orders of magnitude (a 1K-doc target
set, a 150B-token pool), so the CLI and configs accept suffixed counts and the
summaries print them back the same way.
"""
from __future__ import annotations

import numbers
import re
from decimal import Decimal, InvalidOperation

from nagindex.errors import NagIndexError

_SUFFIXES = {"": 0, "K": 3, "M": 6, "B": 9, "T": 12}
_COUNT_RE = re.compile(r"^(?P<num>\d+(?:\.\d*)?|\.\d+)(?P<suffix>[KMBT]?)$", re.IGNORECASE)


def parse_count(value: str | int) -> int:
    """Parse ``1000``, ``50K``, ``1.5M``, ``30B``, ``2T`` (``1_000``/``1,000`` allowed) to an int.

    Suffixes are decimal (K = 1e3, M = 1e6, B = 1e9, T = 1e12), case-insensitive.
    Parsed with :class:`~decimal.Decimal`, so ``1.5M`` is exactly 1,500,000; a
    value that is not a whole number (``1.2345K``) or is negative is rejected
    rather than rounded, since a silently rounded budget is a wrong budget.
    """
    if isinstance(value, bool):  # bool is an int subclass; True is not a count
        raise NagIndexError(f"invalid count {value!r}: expected a number like 1000, 50K, 1.5M, 30B")
    if isinstance(value, numbers.Integral):  # int, numpy integers
        if value < 0:
            raise NagIndexError(f"invalid count {value}: must not be negative")
        return int(value)
    if not isinstance(value, str):
        raise NagIndexError(f"invalid count {value!r}: expected a number like 1000, 50K, 1.5M, 30B")
    text = value.strip().replace("_", "").replace(",", "")
    match = _COUNT_RE.match(text)
    if match is None:
        raise NagIndexError(
            f"invalid count {value!r}: expected a non-negative number with an optional "
            "K/M/B/T suffix, like 1000, 50K, 1.5M, 30B"
        )
    try:
        number = Decimal(match["num"]).scaleb(_SUFFIXES[match["suffix"].upper()])
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid decimals
        raise NagIndexError(f"invalid count {value!r}") from exc
    if number != number.to_integral_value():
        raise NagIndexError(f"invalid count {value!r}: {number.normalize():f} is not a whole number")
    return int(number)


def format_count(n: int | float) -> str:
    """Short form for summaries: 999 -> ``999``, 1_234_567 -> ``1.2M``, 30e9 -> ``30B``.

    One decimal at most, trailing ``.0`` dropped; a value that rounds up to 1000
    of one unit is shown in the next (999_960 -> ``1M``, not ``1000K``).
    """
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n < 1000:
        return f"{sign}{n:g}" if isinstance(n, float) else f"{sign}{n}"
    suffix, scaled = "", float(n)
    for suffix, exp in list(_SUFFIXES.items())[1:]:
        scaled = round(n / 10**exp, 1)
        if scaled < 1000:
            break
    return f"{sign}{scaled:.1f}".rstrip("0").rstrip(".") + suffix


_SIZE_RE = re.compile(r"^(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[KMGT]?)(?P<binary>i?)B?$", re.IGNORECASE)


def parse_size(value: str | int) -> int:
    """Parse a byte size: ``512MB``, ``1.5GB``, ``64KiB``, ``4096`` (decimal K/M/G/T, binary with ``i``).
    Rounded down to whole bytes: a file size target, unlike a budget, has no exactness to lose."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0:
        return int(value)
    match = _SIZE_RE.match(str(value).strip()) if not isinstance(value, bool) else None
    if match is None or not Decimal(match["num"]) > 0:
        raise NagIndexError(f"invalid size {value!r}: expected a positive number of bytes like 512MB, 1GB, 64KiB")
    power = "KMGT".find(match["unit"].upper()) + 1 if match["unit"] else 0
    return max(1, int(Decimal(match["num"]) * (1024 if match["binary"] else 1000) ** power))
