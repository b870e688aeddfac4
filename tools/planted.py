"""Planted copies of real passages, for measuring how well NAG clusters find near-duplicates.

Each planted document copies one pool passage (its ``original``) in one of five ways (``kind``), all
deterministic for a seed:

- ``exact``: the same text.
- ``lowercased``: the same words, lowercased, re-punctuated and re-spaced (what a scraper's normaliser does).
- ``mixed-case``: the same words, each randomly upper-, lower- or title-cased (an adversarial case: NAGs
  come from a cased tokenizer, so this changes most tokens).
- ``boilerplate``: the passage between a web page's header and footer lines.
- ``edited``: about one word in eight dropped, one in twenty repeated (a sloppy re-post).
- ``reordered``: the same sentences in another order, and about one word in sixteen dropped (a light
  paraphrase, without a language model).

None of these is a paraphrase by a model; they are the copies web data is full of.
"""
from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence

KINDS = ("exact", "lowercased", "mixed-case", "boilerplate", "edited", "reordered")
_HEADERS = ("Home > Articles > Reading", "Posted by admin on March 3, 2021 | 4 comments",
            "Skip to main content. Menu. Search.", "Share this page: Facebook Twitter Email")
_FOOTERS = ("Copyright 2021. All rights reserved.", "Related posts: click here to read more.",
            "Was this article helpful? Yes / No", "Terms of use | Privacy policy | Contact")


def _repunctuate(text: str, rng: random.Random) -> str:
    return re.sub(r"[,;]", lambda m: rng.choice([",", ";", " -", ""]), text)


def _mixed_case(text: str, rng: random.Random) -> str:
    return " ".join(w.upper() if rng.random() < 0.15 else (w.lower() if rng.random() < 0.5 else w.capitalize())
                    for w in text.split())


def _edit(words: Sequence[str], rng: random.Random, drop: float, repeat: float) -> list[str]:
    out: list[str] = []
    for w in words:
        r = rng.random()
        if r < drop:
            continue
        out.append(w)
        if r > 1 - repeat:
            out.append(w)
    return out or list(words[:1])


def variant(text: str, kind: str, rng: random.Random) -> str:
    """``text`` copied the ``kind`` way (``KINDS``)."""
    if kind == "exact":
        return text
    if kind == "lowercased":
        return _repunctuate("  ".join(text.lower().split()), rng)
    if kind == "mixed-case":
        return _mixed_case(text, rng)
    if kind == "boilerplate":
        return f"{rng.choice(_HEADERS)}\n\n{text}\n\n{rng.choice(_FOOTERS)}"
    if kind == "edited":
        return " ".join(_edit(text.split(), rng, drop=1 / 8, repeat=1 / 20))
    if kind == "reordered":
        sentences = re.split(r"(?<=[.!?])\s+", text)
        rng.shuffle(sentences)
        return " ".join(_edit(" ".join(sentences).split(), rng, drop=1 / 16, repeat=0.0))
    raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")


def plant(records: Iterable[dict], per_kind: int, seed: int = 0) -> list[dict]:
    """``per_kind`` copies of each kind, of distinct passages drawn (seeded) from ``records``
    (``docid``, ``text``); each planted record has ``docid`` ``planted-<kind>-<n>``, ``text``,
    ``original`` and ``kind``."""
    pool = list(records)
    rng = random.Random(f"nagindex-planted:{seed}")
    chosen = rng.sample(range(len(pool)), per_kind * len(KINDS))
    out = []
    for i, row in enumerate(chosen):
        kind = KINDS[i // per_kind]
        original = pool[row]
        out.append({"docid": f"planted-{kind}-{i % per_kind:04d}", "text": variant(original["text"], kind, rng),
                    "original": original["docid"], "kind": kind})
    return out
