"""nagindex: encode a corpus once into NAG fingerprints, then select data for any target fast.

Public functions are imported lazily so that ``import nagindex`` (and
``nagindex --help``) never loads torch, transformers or faiss.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "extract": "nagindex.ingest.extract:extract_files",
    "ingest": "nagindex.ingest.run:ingest",
    "open_index": "nagindex.ingest.index:open_index",
    "query": "nagindex.query.run:query",
    "mix": "nagindex.query.run:mix",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'nagindex' has no attribute {name!r}")
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)
