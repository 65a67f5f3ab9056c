"""The package tree is the architecture: layers point one way, and the import graph has no cycle.

Read from the source with `ast`, so the test sees what a reader of the code sees. The layer
order is CONTRIBUTING.md's, and every import counts for it, lazy ones too (an import inside a
function is still an arrow); the cycle check counts only module-level imports, since imports
inside functions and under `TYPE_CHECKING` are lazy by design.
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


def _imports(name: str, path: Path, lazy: bool = False) -> set[str]:
    """The eventd modules `name` imports when it loads (`lazy`: or ever, inside a function)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if not lazy and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if not lazy and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
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
EVERY_IMPORT = {name: _imports(name, path, lazy=True) for name, path in MODULES.items()}

#: CONTRIBUTING.md's layers, top first: a module imports only from its own layer or below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry points", ("eventd.cli", "eventd.__main__", "eventd.commands")),
    ("daemon", ("eventd.daemon",)),
    ("console", ("eventd.console",)),
    ("pipeline", ("eventd.pipeline",)),
    ("silences", ("eventd.silences",)),
    ("cluster", ("eventd.cluster",)),
    ("sources and engine", ("eventd.sources", "eventd.engine", "eventd.handoff", "eventd.dedupe",
                            "eventd.attachments")),
    ("alerts", ("eventd.alerts",)),
    ("ruleset", ("eventd.ruleset",)),
    ("delivery", ("eventd.delivery",)),
    ("actions", ("eventd.actions",)),
    ("guards", ("eventd.guards",)),
    ("clients", ("eventd.clients",)),
    ("stores", ("eventd.stores",)),
    ("ops", ("eventd.ops", "eventd.hooks", "eventd.files")),
    ("records", ("eventd", "eventd.errors", "eventd.records", "eventd.outbound", "eventd.events",
                 "eventd.fields", "eventd.settings", "eventd.backoff")),
]


def _layer(module: str) -> int:
    """The index in LAYERS of the most specific prefix that holds `module`."""
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "eventd" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS and CONTRIBUTING.md"
    return best[0]


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


def test_every_module_has_a_layer_and_imports_only_its_own_layer_or_below():
    wrong = []
    for a, targets in EVERY_IMPORT.items():
        if _inside(a, "eventd.emulator"):
            continue
        for b in targets:
            if not _inside(b, "eventd.emulator") and _layer(b) < _layer(a):
                wrong.append(f"{a} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]})")
    assert wrong == []


def test_the_plain_records_import_nothing_of_eventd():
    assert EVERY_IMPORT["eventd.records"] == set()
    assert EVERY_IMPORT["eventd.outbound"] == set()


def test_contributing_draws_every_module_and_layer():
    """The tree in CONTRIBUTING.md names every module, and its layer list is this test's."""
    text = (PACKAGE.parent / "CONTRIBUTING.md").read_text("utf-8")
    tree = text.split("## The tree is the architecture", 1)[1].split("```", 2)[1]
    missing = sorted(name for name in MODULES if not _inside(name, "eventd.emulator")
                     and name.rpartition(".")[2] not in tree)
    assert missing == [], "CONTRIBUTING.md's tree does not show these modules"
    for title, _ in LAYERS:
        assert title in text, f"CONTRIBUTING.md does not name the layer {title!r}"


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
