"""The library never imports its command line (`twotier/cli/`: CLI, demo, bench).

The command line is a thin face over the public API (STYLE.md 16); the library
must not depend on it, nor on typer, rich, or the benchmark's packages. And the
library's own modules import one another without a circle (DESIGN §3).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import twotier

PACKAGE = Path(twotier.__file__).parent
LIBRARY = sorted(
    [*PACKAGE.glob("_*.py"), PACKAGE / "__init__.py", *(PACKAGE / "testing").glob("*.py")],
)
#: The public modules of the integrations (FastAPI, Prometheus, …): the library too.
PUBLIC = sorted(path for path in PACKAGE.glob("[!_]*.py"))


def _imported_modules(path: Path) -> list[str]:
    """Every module an `import` or `from … import` in *path* names, made absolute."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "twotier" if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.append(module)
            # `from . import cli` names the subpackage as an imported name
            names.extend(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_library_modules_are_found() -> None:
    names = {str(path.relative_to(PACKAGE)) for path in LIBRARY}
    assert {"__init__.py", "_cache.py", "_redis.py", "testing/_cluster.py"} <= names
    assert not any(name.startswith("_bench") or name == "_demo.py" for name in names)


def test_no_library_module_imports_the_cli() -> None:
    offenders = {
        path.name: name
        for path in LIBRARY
        for name in _imported_modules(path)
        if name == "twotier.cli" or name.startswith("twotier.cli.")
    }
    assert offenders == {}


def test_importing_every_library_module_loads_no_cli_module() -> None:
    modules = [
        "twotier." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        for path in LIBRARY
        if path.name != "__init__.py"
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('twotier.cli')"
        " or m.split('.')[0] in ('typer', 'rich', 'click')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def _module_name(path: Path) -> str:
    parts = ("twotier", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(paths: list[Path]) -> dict[str, set[str]]:
    """Module → the library modules it imports, TYPE_CHECKING imports included.

    `from . import _batch` depends on `twotier._batch`, not on the package
    that every submodule is loaded from.
    """
    names = {_module_name(path): path for path in paths}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                for alias in node.names:
                    child = f"{module}.{alias.name}"
                    edges.add(child if child in names else module)
        graph[name] = {edge for edge in edges if edge in names and edge != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of *graph*, as a path that ends where it starts; [] if none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str]:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return []
        path.append(module)
        for edge in sorted(graph[module]):
            if found := visit(edge):
                return found
        path.pop()
        done.add(module)
        return []

    for module in sorted(graph):
        if found := visit(module):
            return found
    return []


def test_the_library_modules_import_no_circle() -> None:
    """DESIGN §3: dependencies only point down, never in a circle — the
    decorator and the sync view reach the cache through Protocols."""
    graph = _import_graph(LIBRARY + PUBLIC)
    assert graph["twotier._cache"] >= {"twotier._decorator", "twotier._sync"}
    assert _cycle(graph) == []


def test_the_cycle_check_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_import_graph_reads_type_checking_and_relative_imports() -> None:
    graph = _import_graph(LIBRARY)
    assert "twotier._decorator" in graph["twotier._sync"]  # under TYPE_CHECKING only
    assert "twotier._batch" in graph["twotier._redis"]  # `from . import _batch`
    assert "twotier" not in graph["twotier._redis"]
