"""The fedrec packages import each other without cycles, counting imports inside functions too: a
function-local import may keep a heavy dependency off the start-up path, never hide a cycle. And
``common`` is the bottom layer: it imports nothing from client, server or simulations.

The graph is built from the sources (ast), so an import that only runs in some command still counts.
Importing ``a.b.c`` also runs the package ``a.b``'s ``__init__``: that edge counts too. Imports under
``if TYPE_CHECKING:`` never run and are left out."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "client", "server", "simulations")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("fedrec", *parts))


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _imported(node: ast.AST, modules: dict[str, Path], package: str) -> set[str]:
    """The fedrec modules an import statement names (``from fedrec.x import y`` names fedrec.x.y when y is
    a module, else fedrec.x); relative imports resolve against ``package``."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    else:
        return set()
    out = set()
    for name in names:
        while name and name not in modules:  # ``import fedrec.a.b`` of a symbol: its module
            name = name.rpartition(".")[0]
        if name.startswith("fedrec."):
            out.add(name)
    return out


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        out.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return out


def _packages_run(target: str, importer: str, packages: set[str]) -> set[str]:
    """The packages whose ``__init__`` importing ``target`` runs, leaving out the importer's own (already
    running by the time the importer does)."""
    parts = target.split(".")
    prefixes = (".".join(parts[:i]) for i in range(2, len(parts)))
    return {p for p in prefixes if p in packages and not importer.startswith(p + ".")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the fedrec modules it imports anywhere in its source (module level or inside a function)."""
    modules = _sources()
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if name in packages else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            for target in _imported(node, modules, package):
                edges |= {target} | _packages_run(target, name, packages)
        graph[name] = edges - {name}
    return graph


def subpackage_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """``graph`` with each subpackage of simulations (arms, audit, retention, synth) as one node: a
    subpackage is one unit, so one of its modules importing X while X imports another of them is a cycle."""
    packages = {m for m in graph if m.count(".") == 2 and any(n.startswith(m + ".") for n in graph)}

    def unit(module: str) -> str:
        return next((p for p in packages if module.startswith(p + ".")), module)

    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        out.setdefault(unit(module), set()).update(unit(t) for t in targets)
    return {node: targets - {node} for node, targets in out.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_function_local_imports() -> None:
    graph = import_graph()
    # simulations/cli.py imports its commands inside them (start-up speed): the edges must still be seen
    assert "fedrec.simulations.api" in graph["fedrec.simulations.cli"]
    assert "fedrec.common.errors" in graph["fedrec.common.config"]


def test_cycle_detection_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_fedrec_modules() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles (function-local imports included):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_import_cycle_between_simulation_stages() -> None:
    found = cycles(subpackage_graph(import_graph()))
    assert not found, "import cycles between subpackages:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_common_imports_nothing_above_it() -> None:
    upward = {
        (module, target)
        for module, targets in import_graph().items()
        if module.startswith("fedrec.common.")
        for target in targets
        if not target.startswith("fedrec.common")
    }
    assert not upward, f"common imports from client/server/simulations: {sorted(upward)}"
