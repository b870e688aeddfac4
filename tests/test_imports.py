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
    import nagindex.sources.datasets as datasets
    from nagindex import ingest, mix, query  # and the `from` form finds the callables

    assert datasets.read_hub and ingest_run.ingest
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


# ---------------------------------------------------------------- layering: no import cycles
def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Every nagindex module -> the nagindex modules it imports, at module level or inside functions
    (a lazy import is still a dependency)."""
    paths = {_module_name(p): p for p in sorted((REPO / "nagindex").rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                deps.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base for alias in node.names)
        graph[name] = {d for d in deps if d in paths and d != name}
    return graph


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_no_import_cycle_between_nagindex_modules() -> None:
    from graphlib import CycleError, TopologicalSorter

    try:
        tuple(TopologicalSorter(_import_graph()).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


@pytest.mark.parametrize("layer, higher", [
    ("nagindex.query", ("nagindex.ingest",)),
    ("nagindex.sources", ("nagindex.ingest", "nagindex.query")),
    ("nagindex.index", ("nagindex.ingest", "nagindex.query")),
    ("nagindex.encode", ("nagindex.ingest", "nagindex.query")),
])
def test_a_lower_layer_never_imports_a_higher_one(layer: str, higher: tuple[str, ...]) -> None:
    bad = [f"{module} imports {dep}" for module, deps in sorted(_import_graph().items()) if _within(module, layer)
           for dep in sorted(deps) if any(_within(dep, h) for h in higher)]
    assert not bad, "\n".join(bad)
