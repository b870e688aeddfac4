"""Progress bars with rates and ETA, and per-stage timers for run summaries."""
from __future__ import annotations

import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterator


def progress_bar(total: int | None = None, desc: str = "", unit: str = "doc", enabled: bool | None = None) -> Any:
    """A tqdm bar on stderr (docs/s and ETA built in); silent when stderr is not a terminal
    unless ``enabled`` forces it, so logs and CI output stay readable."""
    from tqdm.auto import tqdm

    disable = not sys.stderr.isatty() if enabled is None else not enabled
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
                smoothing=0.1, disable=disable, file=sys.stderr)


class TokenRate:
    """Adds a tokens/s figure to a bar's postfix (tqdm itself counts documents)."""

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
