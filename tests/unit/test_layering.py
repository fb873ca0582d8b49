"""Backends are transports below dispatch: they import neither the application object, nor
dispatch, nor SQLAlchemy, and no import cycle runs through them, not even under TYPE_CHECKING.

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
