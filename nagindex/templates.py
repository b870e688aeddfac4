"""The one Jinja environment that renders data records: target configs' ``doc_to_text`` and ``ingest --text-template``.

Both render records of datasets and files that the user did not write, so both run in Jinja's
immutable sandbox (no access to internals such as ``__class__``, no mutating methods: data never runs
code) with ``StrictUndefined`` (a missing or misspelled field is an error, never a silently empty text).
One environment, so a template behaves the same wherever it is used. jinja2 is imported lazily to keep
``nagindex --help`` fast.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any


def _regex_replace(value: Any, pattern: str, repl: str = "", count: int = 0) -> str:
    """Jinja filter for lm-eval style preprocessing (e.g. HellaSwag's ``[title]`` tags)."""
    return re.sub(pattern, repl, str(value), count=count)


@lru_cache(maxsize=1)
def jinja_env() -> Any:
    """The sandboxed environment (built once per process)."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    env.filters["regex_replace"] = _regex_replace
    return env
