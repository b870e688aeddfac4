"""Progress on stderr with rates and ETA, and per-stage timers for run summaries.

On a terminal this is a tqdm bar. Where stderr is a file or a pipe (CI, batch
jobs, ``2> log``) a redrawn bar shows nothing useful, so progress becomes plain
lines, one every few seconds, flushed as written, which read well in a log.
"""
from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

#: seconds between two progress lines when stderr is not a terminal (0: a line per update)
INTERVAL_ENV = "NAGINDEX_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0


def notice(message: str) -> None:
    """One line for the user on stderr, flushed at once: the library does not depend on click,
    and a line announcing a long step must reach a log file before the step starts."""
    print(message, file=sys.stderr, flush=True)


def format_duration(seconds: float) -> str:
    """``45s``, ``28m10s``, ``2h05m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_bar(total: int | None = None, desc: str = "", unit: str = "doc", enabled: bool | None = None) -> Any:
    """A tqdm bar on stderr (rate and ETA built in) on a terminal, log lines (``LogProgress``)
    where stderr is not one; ``enabled=True`` forces the bar, ``enabled=False`` silences both."""
    if enabled is None and not sys.stderr.isatty():
        return LogProgress(total, desc, unit)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
                smoothing=0.1, disable=enabled is False, file=sys.stderr)


class LogProgress:
    """The part of tqdm's interface the callers use (``update``, ``set_postfix_str``, ``close``,
    ``total``), written as lines such as ``ingest: 1,234/10,042 doc (12.3%), 5.2 doc/s,
    1,234 tok/s, 3m57s elapsed, ETA 28m10s``: at most one every ``$NAGINDEX_PROGRESS_INTERVAL``
    seconds (default 10), and a last one at ``close`` unless the latest line already says it."""

    def __init__(self, total: int | None, desc: str, unit: str) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = 0
        self.postfix = ""
        try:
            self.interval = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL))
        except ValueError:
            self.interval = DEFAULT_INTERVAL
        self.start = self._last = time.perf_counter()
        self._shown = 0  # n at the latest line

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._line(now)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        if self.n != self._shown:
            self._line(time.perf_counter())

    def _line(self, now: float) -> None:
        self._last, self._shown = now, self.n
        elapsed = now - self.start
        rate = self.n / max(elapsed, 1e-9)
        parts = [f"{self.n:,}/{self.total:,} {self.unit} ({100 * self.n / self.total:.1f}%)" if self.total
                 else f"{self.n:,} {self.unit}", f"{rate:,.{1 if rate < 100 else 0}f} {self.unit}/s"]
        parts += [self.postfix] if self.postfix else []
        parts.append(f"{format_duration(elapsed)} elapsed")
        if self.total and self.n < self.total and self.n:
            parts.append(f"ETA {format_duration((self.total - self.n) / rate)}")
        notice(f"{self.desc}: {', '.join(parts)}")


class TokenRate:
    """Adds a tokens/s figure to a bar's postfix (the bar itself counts documents); works with
    both kinds of ``progress_bar``."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.tokens = 0
        self.start = time.perf_counter()

    def update(self, docs: int, tokens: int) -> None:
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.tokens / elapsed:,.0f} tok/s", refresh=False)
        self.bar.update(docs)


class StageTimer:
    """Wall time per named stage, accumulated across calls (``with timer("score"): ...``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start

    def summary(self) -> str:
        return ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items())
