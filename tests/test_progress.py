"""Progress output where stderr is a log file: plain lines with counts, rate and ETA, flushed as they come."""
from __future__ import annotations

import pytest

from nagindex.progress import TokenRate, progress_bar


@pytest.fixture
def every_update(monkeypatch):
    """A line per update (the default waits seconds between lines)."""
    monkeypatch.setenv("NAGINDEX_PROGRESS_INTERVAL", "0")


def test_log_lines_when_stderr_is_not_a_terminal(every_update, capsys):
    bar = progress_bar(total=10, desc="ingest")
    rate = TokenRate(bar)
    for _ in range(3):
        rate.update(2, 100)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(", ")[0] for line in lines] == ["ingest: 2/10 doc (20.0%)", "ingest: 4/10 doc (40.0%)",
                                                      "ingest: 6/10 doc (60.0%)"]  # close repeats no line
    assert all(" doc/s" in line and " tok/s" in line and "ETA " in line for line in lines), lines


def test_lines_are_throttled_with_a_final_line_at_close(monkeypatch, capsys):
    monkeypatch.setenv("NAGINDEX_PROGRESS_INTERVAL", "3600")
    bar = progress_bar(total=10, desc="extract")
    for _ in range(3):
        bar.update(2)
    assert capsys.readouterr().err == ""
    bar.close()
    bar.close()
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("extract: 6/10 doc (60.0%), ") and " doc/s" in line


def test_unknown_total_has_no_percent_or_eta(every_update, capsys):
    bar = progress_bar(desc="ingest")
    bar.update(5)
    bar.close()
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("ingest: 5 doc, ") and "%" not in line and "ETA" not in line


def test_disabled_bar_is_silent(every_update, capsys):
    bar = progress_bar(total=10, desc="ingest", enabled=False)
    TokenRate(bar).update(4, 100)
    bar.close()
    assert capsys.readouterr().err == ""
