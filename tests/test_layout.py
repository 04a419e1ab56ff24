"""The package's shape: imports flow one way (tools -> deploy / training -> models / data -> config / errors),
with no cycles, and the deployed runtime never needs torch. Parsed with ast, so nothing is imported."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tinyseg"

# Rank of each module (a dotted prefix matches its submodules; the longest prefix wins). A module may import
# modules of its own rank or lower, never higher. docs/design.md draws the same picture.
RANKS = {
    "tinyseg.errors": 0,
    "tinyseg.config": 1,
    "tinyseg.io": 1,
    "tinyseg.data": 2,
    "tinyseg.models": 2,
    "tinyseg.viz": 2,
    "tinyseg.deploy.results": 3,
    "tinyseg.deploy.runtime": 3,
    "tinyseg.checkpoint": 3,
    "tinyseg.evaluation": 3,
    "tinyseg.report": 3,
    "tinyseg.training": 4,
    "tinyseg.deploy": 4,
    "tinyseg.tools": 5,
    "tinyseg.predict": 5,  # re-exports kept for the documented entry points
    "tinyseg.runtime": 5,
    "tinyseg.__main__": 5,
    "tinyseg": 5,
}
TORCH_FREE = ("tinyseg.deploy.runtime", "tinyseg.deploy.results", "tinyseg.tools.video")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}


def _rank(module: str) -> int:
    best = max((k for k in RANKS if module == k or module.startswith(k + ".")), key=len)
    return RANKS[best]


def test_every_module_has_a_rank():
    for m in _graph():
        assert any(m == k or m.startswith(k + ".") for k in RANKS), m


def test_imports_never_go_up():
    upward = [f"{m} -> {i}" for m, deps in _graph().items() for i in deps if _rank(i) > _rank(m)]
    assert not upward, upward


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d) :] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


@pytest.mark.parametrize("module", TORCH_FREE)
def test_torch_free_modules_reach_no_torch(module):
    """Everything the deployed runtime imports, transitively, imports neither torch nor pycocotools."""
    graph, seen, todo = _graph(), set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += graph[m]
    for m in seen:
        path = PACKAGE.parent / (m.replace(".", "/") + ".py")
        path = path if path.is_file() else PACKAGE.parent / m.replace(".", "/") / "__init__.py"
        heavy = {i.split(".")[0] for i in _imports(path)} & {"torch", "pycocotools"}
        assert not heavy, f"{module} reaches {m}, which imports {heavy}"
