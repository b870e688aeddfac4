"""Every ``from nagindex... import name`` in the package, tools and tests names something that exists.

Most imports here are lazy (inside functions, to keep the CLI fast), so a
renamed function would only fail when that code path runs; this catches it
statically.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FILES = sorted(p for d in ("nagindex", "tools", "tests") for p in (REPO / d).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str, str]]:
    tree = ast.parse(path.read_text("utf-8"), str(path))
    return [(node.lineno, node.module, alias.name) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nagindex"
            for alias in node.names]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_nagindex_imports_resolve(path: Path) -> None:
    for line, module, name in _imports(path):
        mod = importlib.import_module(module)
        if not hasattr(mod, name):
            importlib.import_module(f"{module}.{name}")  # a submodule: raises if missing
        assert hasattr(importlib.import_module(module), name), f"{path}:{line}: {module} has no {name!r}"


def test_every_public_name_resolves_to_a_documented_callable() -> None:
    """``nagindex.<name>`` for every name in ``__all__``, however the subpackages of the same name
    (``nagindex.ingest``, ``nagindex.query``) were imported."""
    import inspect

    import nagindex
    import nagindex.ingest.run as ingest_run  # the `import a.b.c as x` form must keep working
    import nagindex.query.sources as sources
    from nagindex import ingest, mix, query  # and the `from` form finds the callables

    assert sources.read_hub and ingest_run.ingest
    for name in nagindex.__all__:
        value = getattr(nagindex, name)
        if name == "__version__":
            assert isinstance(value, str)
            continue
        assert callable(value), f"nagindex.{name} is {value!r}"
        assert inspect.unwrap(value).__doc__, f"nagindex.{name} has no docstring"
    assert query is nagindex.query and ingest is nagindex.ingest and callable(mix)
    assert list(inspect.signature(nagindex.query).parameters)[:2] == ["targets", "index_dir"]
    assert list(inspect.signature(nagindex.ingest).parameters)[:2] == ["inputs", "index_dir"]
