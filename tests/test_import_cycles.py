"""The package's modules import downward only: no module reaches, through any chain of imports
(at module level or inside functions), back to itself."""

from __future__ import annotations

import ast
from pathlib import Path

import attrscope

PACKAGE = Path(attrscope.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["attrscope", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _targets(node: ast.AST, package: str, modules: dict) -> list[str]:
    """The attrscope modules one import statement names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in modules else target)
    return [t for t in out if t in modules]


def _with_packages(target: str) -> list[str]:
    """``target`` and the packages Python runs on the way to it (``attrscope.methods`` for
    ``attrscope.methods.atp_star``), the root excepted: it is the top layer, run first."""
    parts = target.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts) + 1)]


def import_graph() -> dict[str, set[str]]:
    """module -> the attrscope modules its imports run, anywhere in its source (module level and
    inside functions), with the packages on the way; TYPE_CHECKING blocks excepted (never run)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        skipped = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
        # its own packages run before it: importing through them adds no edge
        own = set(_with_packages(name))
        graph[name] = {p for node in ast.walk(tree) if id(node) not in skipped
                       for t in _targets(node, package, modules) for p in _with_packages(t)
                       if p in modules and (p not in own or p == t) and p != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_registry_imports_no_method():
    graph = import_graph()
    assert not {m for m in graph["attrscope.registry"] if m.startswith(("attrscope.methods", "attrscope.edges"))}
