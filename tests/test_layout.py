"""The package's house rules, read from its source with ``ast`` (no imports run).

Every import counts: module level, inside functions and under ``TYPE_CHECKING``,
because each is an arrow a reader follows and a circle through any of them is a
circle in the design (../shared/LAYOUT.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "flask_queue"
#: What store/ may import of the rest of the package: leaves only.
STORE_MAY_IMPORT = {"job", "scheduling", "crypto", "errors", "durations"}
#: Names of SQLAlchemy a module outside store/ may import: hooks and types, no SQL.
SQLALCHEMY_OUTSIDE_STORE = {"event", "Session", "scoped_session"}
MAX_MODULE_LINES, MAX_CLASS_LINES, MAX_FUNCTION_LINES = 700, 500, 120


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import statement."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [alias.name for alias in node.names]
            # `from . import signals` imports the module flask_queue.signals.
            subs = [n for n in names if f"{base}.{n}" in MODULES]
            out.extend((f"{base}.{n}", []) for n in subs)
            rest = [n for n in names if n not in subs]
            if rest or not subs:
                out.append((base, rest))
    return out


def _graph() -> dict[str, set[str]]:
    return {
        name: {target for target, _ in _imports(name, path) if target in MODULES and target != name}
        for name, path in MODULES.items()
    }


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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


def test_the_checker_sees_a_circle() -> None:
    # The rule below is only worth something if it can fail.
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []
    assert "flask_queue.store.claim.base" in _graph()["flask_queue.store.claim"]


def test_no_import_circle() -> None:
    assert _circles(_graph()) == []


def test_store_imports_only_leaves() -> None:
    upward = {
        (name, target)
        for name, path in MODULES.items()
        if name.startswith("flask_queue.store")
        for target, _ in _imports(name, path)
        if target.startswith("flask_queue.")
        and not target.startswith("flask_queue.store")
        and target.split(".")[1] not in STORE_MAY_IMPORT
    }
    assert not upward


def test_only_the_store_builds_sql() -> None:
    outside = {
        (name, taken)
        for name, path in MODULES.items()
        if not name.startswith("flask_queue.store")
        for target, names in _imports(name, path)
        if target == "sqlalchemy" or target.startswith("sqlalchemy.")
        for taken in names or [target]
        if taken not in SQLALCHEMY_OUTSIDE_STORE
    }
    assert not outside


def _sizes() -> list[tuple[str, str, int, int]]:
    """(module, what, lines, limit) for every module, class and function."""
    out = []
    for name, path in MODULES.items():
        text = path.read_text()
        out.append((name, "module", len(text.splitlines()), MAX_MODULE_LINES))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
                out.append((name, node.name, node.end_lineno - node.lineno + 1, limit))
    return out


def test_no_room_is_too_big() -> None:
    assert [s for s in _sizes() if s[2] > s[3]] == []


@pytest.mark.parametrize("module", ["cli", "dashboard", "views"])
def test_commands_and_views_reach_the_store_through_actions(module: str) -> None:
    """CLI commands and views call actions and the producer, never ``state.store``."""
    path = PACKAGE / f"{module}.py"
    reaches = [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "store"
    ]
    assert reaches == [], f"{module}.py reaches the store at lines {reaches}"
