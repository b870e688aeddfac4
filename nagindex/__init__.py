"""nagindex: encode a corpus once into NAG fingerprints, then select data for any target fast.

The Python API (README, "Python API")::

    import nagindex
    nagindex.ingest(["corpus/"], "idx")                          # one LLM pass, resumable
    res = nagindex.query("arc_challenge", "idx", fraction=0.2, out="arc.parquet")
    res = nagindex.mix("configs/mixtures/offline4.yaml", "idx", out="mix.parquet")
    nagindex.score(["arc_challenge", "mmlu"], "idx", out="scores.parquet")  # every document's score
    view = nagindex.open_index("idx")
    nagindex.extract(["pool.parquet"], "pool_features.jsonl")   # reference-format features
    nagindex.evaluate(["arc.parquet"], "idx", target="arc_challenge")  # vs random, held-out, proxy LMs
    nagindex.explain("arc_easy", "idx", doc="wiki-000123", deactivate=True)  # profile neurons, a doc, deactivation
    nagindex.write_training("arc.parquet", "train/", format="megatron")  # training shards, resumable
    nagindex.reattach_sources("idx", {"/data/corpus": "/mnt/corpus"})  # a moved corpus, checked record by record

The functions are imported lazily so that ``import nagindex`` (and
``nagindex --help``) never loads torch, transformers or faiss.
"""
from __future__ import annotations

import importlib
import types
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "extract": "nagindex.ingest.run:extract_files",
    "ingest": "nagindex.ingest.run:ingest",
    "open_index": "nagindex.index.sharded:open_index",
    "query": "nagindex.query.run:query",
    "mix": "nagindex.query.run:mix",
    "score": "nagindex.query.export:score_all",
    "evaluate": "nagindex.evaluate.run:evaluate",
    "explain": "nagindex.explain.run:explain",
    "write_training": "nagindex.export.training:write_training",
    "source_states": "nagindex.ingest.relocate:source_states",
    "reattach_sources": "nagindex.ingest.relocate:reattach_sources",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'nagindex' has no attribute {name!r}")
    if name in _CALLABLE_PACKAGES:
        return importlib.import_module(f"nagindex.{name}")
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


#: subpackages that are also API functions: ``nagindex.query(...)`` runs ``nagindex.query.run.query``
_CALLABLE_PACKAGES = ("ingest", "query", "evaluate", "explain")


class CallablePackage(types.ModuleType):
    """A subpackage that can be called as the API function of the same name.

    ``nagindex.ingest`` and ``nagindex.query`` name both a subpackage and a function. A
    plain function there would be replaced by the subpackage as soon as any of its modules
    is imported (Python sets imported submodules as attributes of their parent), and
    ``import nagindex.query.run as r`` would stop working. Making the subpackage itself
    callable keeps both: the call is forwarded to the function (imported on first call),
    and ``inspect.signature``/``help`` see that function through ``__wrapped__``.
    """

    @property
    def __wrapped__(self) -> Any:
        module, attr = _LAZY[self.__name__.rpartition(".")[2]].split(":")
        return getattr(importlib.import_module(module), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)
