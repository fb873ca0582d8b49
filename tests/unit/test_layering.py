"""The layout's rules, read from the source: dependencies point one way (cli -> app ->
dispatch/maintenance/rollout -> backends -> runtime/flags -> store), only the application layer
knows the Toolkit, no import cycle anywhere, only the store writes or asks which database it is
on; backends are transports that import neither the application, nor dispatch, nor SQLAlchemy.

Imports are read from the source (every ``import``, wherever it sits), so a cycle hidden under
``if TYPE_CHECKING:`` counts as one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "toolkit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}


def imports(module: str) -> set[str]:
    """Every module ``module`` names in an import statement: ``from a.b import c`` is
    ``a.b.c`` when that is a module of ours, else ``a.b``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


def backend_modules() -> list[str]:
    return sorted(m for m in MODULES if m.split(".")[:2] == ["toolkit", "backends"])


@pytest.mark.parametrize("module", backend_modules())
def test_a_backend_imports_no_application_dispatch_or_sqlalchemy(module: str) -> None:
    forbidden = ("toolkit.app", "toolkit.dispatch", "toolkit.cli", "sqlalchemy")
    bad = sorted(
        i for i in imports(module) if any(i == f or i.startswith(f + ".") for f in forbidden)
    )
    assert bad == [], f"{module} imports {bad}"


def test_handles_are_plain_values() -> None:
    bad = sorted(
        i
        for i in imports("toolkit.dispatch.handles")
        if i.startswith(("toolkit.backends", "toolkit.runtime", "toolkit.app", "toolkit.store"))
    )
    assert bad == []


def test_no_import_cycle_runs_through_a_backend() -> None:
    graph = {m: {i for i in imports(m) if i in MODULES} for m in MODULES}
    for start in backend_modules():
        # Depth-first from each backend module: reaching it again is a cycle.
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    pytest.fail("import cycle: " + " -> ".join([*path, start]))
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))


# --- the whole package ---------------------------------------------------------------------------

# Each top-level part and its layer: a module may import its own part and lower layers only.
LAYERS = {
    "errors": 0, "config": 0, "events": 0, "jobs": 0,
    "store": 1,
    "runtime": 2, "flags": 2,
    "backends": 3,
    "dispatch": 4,
    "maintenance": 5, "rollout": 5,
    "app": 6,
    "testing": 7, "web": 7,
    "cli": 8, "__init__": 8,
    "__main__": 9,
}  # fmt: skip


def part(module: str) -> str:
    names = module.split(".")
    return names[1] if len(names) > 1 else "__init__"


def test_every_module_belongs_to_a_layer() -> None:
    assert sorted({part(m) for m in MODULES} - set(LAYERS)) == []


def test_dependencies_point_one_way() -> None:
    upward = sorted(
        f"{m} -> {i}"
        for m in MODULES
        for i in imports(m)
        if i in MODULES and part(i) != part(m) and LAYERS[part(i)] >= LAYERS[part(m)]
        and LAYERS[part(m)] > 0  # the base modules (errors, config, jobs, events) share a layer
    )  # fmt: skip
    assert upward == []


def test_only_the_application_layer_knows_the_toolkit() -> None:
    knowing = sorted(m for m in MODULES if "toolkit.app" in imports(m))
    allowed = {"toolkit", "toolkit.testing", "toolkit.web"}
    assert [m for m in knowing if m not in allowed and part(m) not in ("app", "cli")] == []


def test_no_import_cycle_anywhere() -> None:
    graph = {m: sorted(i for i in imports(m) if i in MODULES) for m in MODULES}
    # Tarjan's strongly connected components: any component of two or more is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert cycles == []


def outside_store() -> list[str]:
    return sorted(m for m in MODULES if part(m) != "store")


@pytest.mark.parametrize("module", outside_store())
def test_only_the_store_asks_which_database_it_is_on(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text())
    asked = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in ("is_postgres", "dialect")
    ]
    assert asked == [], f"{module} asks for the dialect on lines {asked}"


WRITES = {"insert", "update", "delete"}


@pytest.mark.parametrize("module", outside_store())
def test_only_the_store_writes(module: str) -> None:
    """No statement that changes a table is built outside the store: no INSERT, UPDATE or
    DELETE construct imported from SQLAlchemy, no ORM ``add``/``delete`` on a session, no
    textual DML."""
    tree = ast.parse(MODULES[module].read_text())
    bad = [
        f"line {node.lineno}: {alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy")
        for alias in node.names
        if alias.name in WRITES
    ]
    bad += [
        f"line {call.lineno}: {sql[:30]!r}"
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "text"
        for sql in _strings(call.args[:1])
        if sql.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
    ]
    assert bad == [], f"{module} builds writes: {bad}"


def _strings(nodes: list[ast.expr]) -> list[str]:
    return [n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)]
