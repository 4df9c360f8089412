"""The planner does no I/O: it imports only the API models and a few pure standard modules."""

from __future__ import annotations

import ast
from pathlib import Path

import gpufleet.planner

ALLOWED = {
    "__future__",
    "collections",
    "dataclasses",
    "datetime",
    "enum",
    "functools",
    "heapq",
    "math",
    "types",
    "typing",
    "gpufleet.api",
    "gpufleet.planner",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_planner_imports_nothing_that_does_io() -> None:
    package = Path(gpufleet.planner.__file__).parent
    for path in sorted(package.glob("*.py")):
        for module in imported_modules(path):
            assert any(module == a or module.startswith(a + ".") for a in ALLOWED), (
                path.name,
                module,
            )
