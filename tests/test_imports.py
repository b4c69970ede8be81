"""How apmae's modules reach each other: public names only, and no import cycle in a stage's package."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


GLUE_FOLDERS = ("datamodules", "lit_models", "callbacks")  # top-level folders, imported as apmae.<folder>


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = ("apmae", *parts) if parts[0] in GLUE_FOLDERS else parts
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


PACKAGES = ("apmae", *GLUE_FOLDERS)


def _project_modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_the_projects_modules():
    """Counting imports inside functions too; a package's own ``__init__`` re-exporting its modules is no cycle."""
    modules = _project_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in _imports(path):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name and not t.startswith(name + ".")}
    assert sum(len(t) for t in graph.values()) > 150  # the graph was read
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]  # the check can fail


def test_an_import_inside_a_function_says_why():
    """The house rule: module headers show the dependencies; an import in a function carries a comment
    (an optional dependency or a measured import cost), on its line or the line above."""
    silent = []
    for name, path in _project_modules().items():
        lines = path.read_text().split("\n")
        tree = ast.parse("\n".join(lines))
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            body = [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
            for node in body:
                here, above = lines[node.lineno - 1], lines[node.lineno - 2].strip()
                # the first import of a group carries the comment; the ones right after it share it
                grouped = above.startswith(("import ", "from ")) or above.startswith(("matplotlib.use",))
                if "#" not in here and not above.startswith("#") and not grouped:
                    silent.append(f"{name}:{node.lineno}: {here.strip()}")
    assert silent == []


ENTRY_POINTS = ("apmae.cli", "apmae.__main__", "apmae.demo", "apmae.study.run")  # they run the LightningCLI
GLUE = ("lightning", *(f"apmae.{folder}" for folder in GLUE_FOLDERS))


def _core_modules() -> dict[str, Path]:
    return {name: path for name, path in _project_modules().items()
            if not name.startswith(ENTRY_POINTS + GLUE)}


def _is_glue(module: str) -> bool:
    return any(module == g or module.startswith(g + ".") for g in GLUE)


def test_the_glue_is_imported_by_its_namespaced_name_only():
    """``datamodules``, ``lit_models`` and ``callbacks`` are apmae's subpackages: an import of the bare
    top-level name would load a second copy of a module (or a user's own package of that name)."""
    bare = []
    for name, path in _project_modules().items():
        for node in _imports(path):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            bare += [f"{name}: {n}" for n in names if n.split(".")[0] in GLUE_FOLDERS and node.level == 0]
    assert len(_project_modules()) > 100  # the modules were read
    assert bare == []


def test_core_stages_never_import_lightning_or_the_glue():
    """Imports inside functions count too: a stage that reaches Lightning lazily is no plain-PyTorch stage."""
    reaching = []
    for name, path in _core_modules().items():
        for node in _imports(path):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            reaching += [f"{name}: {n}" for n in names if _is_glue(n) and node.level == 0]
    assert len(_core_modules()) > 80  # the modules were read
    assert reaching == []


def test_the_core_stage_packages_import_one_way():
    """The stage packages of ``apmae`` (cache, target, mining, ...) form no loop, counting each package as one."""
    graph: dict[str, set[str]] = {}
    for name, path in _core_modules().items():
        parts = name.split(".")
        package = parts[1] if len(parts) > 1 else parts[0]
        targets = graph.setdefault(package, set())
        for node in _imports(path):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for n in names:
                p = n.split(".")
                if p[0] == "apmae" and len(p) > 1 and p[1] != package and not n.startswith(ENTRY_POINTS):
                    targets.add(p[1])
    assert graph["cache"] >= {"target", "mining"} and "cache" not in graph["target"]  # the graph was read
    graph = {k: {t for t in v if t in graph} for k, v in graph.items()}
    assert _cycles(graph) == []


# Glue modules that import no Lightning, and why they are glue all the same.
GLUE_WITHOUT_LIGHTNING = {
    "apmae.lit_models.interfaces": "the members the callbacks read from a LightningModule, declared once",
}


def test_the_glue_holds_only_what_needs_lightning():
    """A glue module imports Lightning, torchmetrics (what the modules log with) or another glue module;
    code that needs none of them belongs in the core, where a notebook can import it without Lightning."""
    free = []
    for name, path in _project_modules().items():
        if not _is_glue(name) or name == "apmae" or name.endswith(GLUE_FOLDERS):
            continue  # the core, and the glue packages' own __init__ files
        names = [n for node in _imports(path) for n in
                 ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])]
        if not any(_is_glue(n) or n.split(".")[0] == "torchmetrics" for n in names):
            free.append(name)
    assert len([n for n in _project_modules() if _is_glue(n)]) > 15  # the glue was read
    assert sorted(free) == sorted(GLUE_WITHOUT_LIGHTNING)
