"""How apmae's modules reach each other: public names only, and no import cycle in a stage's package."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[ast.ImportFrom | ast.Import]:
    """Every import of a module, at its top and inside its functions."""
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_no_module_imports_another_modules_private_names():
    crossings = []
    for path in sorted((ROOT / "apmae").rglob("*.py")):
        for node in _imports(path):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("apmae"):
                crossings += [f"{_module_name(path)}: from {node.module} import {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert crossings == []


def test_demo_modules_import_each_other_without_a_cycle():
    modules = {_module_name(p): p for p in (ROOT / "apmae" / "demo").glob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in _imports(path):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            targets |= {n for n in names if n in modules and n != name}
        graph[name] = targets
    assert graph["apmae.demo.run"] >= {"apmae.demo.probe_report", "apmae.demo.overrides"}  # the graph is read
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join(path + (name,))}"
        if name not in done:
            for target in graph[name]:
                visit(target, path + (name,))
            done.add(name)

    for name in graph:
        visit(name, ())
