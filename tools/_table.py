"""The result table every benchmark script prints: one markdown table, ratios to the anchor measured in the same run."""
from __future__ import annotations

import os
import sys


def load_average() -> str:
    """``"0.4 0.6 0.9"``: how busy the machine was, printed beside the figures."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def stage_seconds(timings: str) -> dict[str, float]:
    """``"target 0.10s, score 0.20s"`` (StageTimer.summary) -> {"target": 0.1, "score": 0.2}."""
    out = {}
    for part in timings.split(", "):
        name, _, value = part.rpartition(" ")
        if name:
            out[name] = float(value.rstrip("s"))
    return out


def log(msg: str) -> None:
    """Progress on stderr, so stdout holds only the table."""
    print(msg, file=sys.stderr, flush=True)


class ResultTable:
    """Rows of ``measurement | <value> | ratio | goal | met``; each added row is logged as it comes."""

    def __init__(self, value_header: str) -> None:
        self.value_header = value_header
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, name: str, value: float | str, ratio: str = "", goal: str = "", met: bool | None = None) -> None:
        shown = value if isinstance(value, str) else f"{value:.3f}"
        self.rows.append((name, shown, ratio, goal, "" if met is None else ("yes" if met else "**no**")))
        log(f"  {name}: {shown} {ratio} {goal}".rstrip())

    def markdown(self) -> str:
        lines = [f"| measurement | {self.value_header} | ratio | goal | met |", "|---|---|---|---|---|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in self.rows])
