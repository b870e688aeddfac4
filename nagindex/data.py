"""Records passed between pipeline stages.

Ingest: read -> tokenize -> extract -> store -> index, each stage consuming and
yielding these. Codes (a document's NAG) are a ``(L, K)`` uint16 array: row ``l``
holds layer ``l``'s K strongest neurons in descending impact order; flattened it
is the reference's layer-major ``layer_topk_value_index`` list.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class Document:
    """One corpus document as read from its source.

    ``source`` is the input file (or HF dataset folder) it came from and
    ``position`` its 0-based line or row there, so that any record in the index
    points back to the exact text it was computed from.
    ``token_count`` is set only when the input carries it (``--token-field``).
    """

    docid: str
    text: str
    source: str
    position: int
    token_count: int | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """A skipped input record: where it was and why (written to ``rejects.jsonl``)."""

    source: str
    position: int | None
    reason: str
    docid: str | None = None

    def message(self) -> str:
        where = self.source if self.position is None else f"{self.source}:{self.position + 1}"
        who = f" (docid {self.docid!r})" if self.docid is not None else ""
        return f"{where}{who}: {self.reason}"


@dataclass
class Cursor:
    """Where reading one input stands after a window: committed with it, it is the resume point."""

    key: str  # the input's key (absolute path or URL), as in the store's progress table
    next_position: int
    done: bool = False


@dataclass
class Window:
    """Consecutive records of one or more inputs (small inputs share a window), the unit of encoding and
    of one commit.

    ``cursors`` holds, in input order, every input the window read from, by its ``source``
    (what ``Document.source`` and ``Reject.source`` say). ``codes`` (neuron type -> ``(n, L, K)``)
    and ``token_counts`` are filled in by ``encode.encoder.encode_window``.
    """

    docs: list[Document]
    rejects: list[Reject]
    cursors: dict[str, Cursor]
    codes: dict[str, np.ndarray] = field(default_factory=dict)
    token_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def input_order(self, source: str) -> int:
        """Rank of ``source`` among this window's inputs (records sort by it, then position)."""
        return list(self.cursors).index(source)
