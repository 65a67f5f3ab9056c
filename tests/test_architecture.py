"""The package tree is the architecture: arrows run one way, and the import graph has no cycle.

Read from the source with `ast` (module-level imports only: imports inside functions and under
`TYPE_CHECKING` are lazy by design), so the test sees what a reader of the code sees.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "eventd"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The eventd modules `name` imports when it loads."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                out.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - child.level + 1] \
                    if child.level else []
                module = ".".join([*base, child.module] if child.module else base)
                submodules = {f"{module}.{alias.name}" for alias in child.names} & MODULES.keys()
                # `from pkg import submodule` is an arrow to the submodule, not to pkg itself
                out.update(submodules or {module})
            visit(child)

    visit(ast.parse(path.read_text("utf-8")))
    return {m for m in out if m in MODULES}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_core_never_imports_commands_or_the_emulator():
    top = ("eventd.cli", "eventd.__main__")
    wrong = sorted((a, b) for a, targets in GRAPH.items() for b in targets
                   if a not in top and not _inside(a, "eventd.commands")
                   and (_inside(b, "eventd.commands")
                        or (_inside(b, "eventd.emulator") and not _inside(a, "eventd.emulator"))))
    assert wrong == []


def test_the_emulator_imports_nothing_from_the_daemon():
    wrong = sorted((a, b) for a, targets in GRAPH.items() if _inside(a, "eventd.emulator")
                   for b in targets if not _inside(b, "eventd.emulator") and b != "eventd")
    assert wrong == []


def test_the_import_graph_has_no_cycle():
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        order[v] = low[v] = len(order)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in order:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in order:
            connect(v)
    assert cycles == []


def test_every_subpackage_says_what_it_owns():
    for init in PACKAGE.rglob("__init__.py"):
        if "__pycache__" in init.parts:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text("utf-8")))
        assert doc and len(doc) > 40, f"{init} has no docstring saying what it owns"
