"""The library never imports its command line (`twotier/cli/`: CLI, demo, bench).

The command line is a thin face over the public API (STYLE.md 16); the library
must not depend on it, nor on typer, rich, or the benchmark's packages.
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
