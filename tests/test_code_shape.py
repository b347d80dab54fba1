"""The code's shape, as the developers' guide asks: short signatures. No function in
src/attrscope takes more than 8 parameters, except the command-line commands and the public API
entry points exported by attrscope/__init__.py, whose settings are keyword-only."""

from __future__ import annotations

import ast
from pathlib import Path

import attrscope

PACKAGE = Path(attrscope.__file__).parent
MOST = 8


def long_signatures(root: Path, exported: set[str]) -> list[str]:
    """``file:line name (count)`` of every function over :data:`MOST` parameters that is not
    allowed to be: outside cli/, and not an exported entry point with keyword-only settings."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if "cli" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
            count = len(names) - (names[:1] in (["self"], ["cls"]))
            positional = len(a.posonlyargs) + len(a.args) - (names[:1] in (["self"], ["cls"]))
            entry = node.name in exported and positional <= MOST
            if count > MOST and not entry:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({count})")
    return found


def test_the_check_finds_a_long_signature(tmp_path):
    (tmp_path / "m.py").write_text("def f(a, b, c, d, e, f, g, h, i): pass\n"
                                   "def g(a, *, b, c, d, e, f, g, h, i): pass\n"
                                   "def h(a, b, c, d, e, f, g, h): pass\n")
    assert long_signatures(tmp_path, {"g"}) == ["m.py:1 f (9)"]
    assert long_signatures(tmp_path, set()) == ["m.py:1 f (9)", "m.py:2 g (9)"]


def test_no_function_takes_more_than_eight_parameters():
    assert long_signatures(PACKAGE, set(attrscope.__all__)) == []
