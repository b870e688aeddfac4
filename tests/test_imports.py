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
