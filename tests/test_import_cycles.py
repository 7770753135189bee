"""The package has no import cycle (every import statement counts, except those under `if TYPE_CHECKING:`), and the
leaf module `evolkit.types` imports nothing of evolkit."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "evolkit"


def _graph() -> dict[str, set[str]]:
    mods: dict[str, Path] = {}
    for p in PKG.rglob("*.py"):
        rel = ".".join(p.relative_to(PKG.parent).with_suffix("").parts)
        mods[rel.removesuffix(".__init__")] = p
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
                if node.level:
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    deps.add(name)
        graph[mod] = deps
    return graph


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for x in node.orelse:
                visit(x)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
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
            # a package __init__ importing its own submodule is a re-export, not a design cycle
            if len(comp) > 1 and not (len(comp) == 2 and (comp[0].startswith(comp[1] + ".")
                                                          or comp[1].startswith(comp[0] + "."))):
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_types_is_a_leaf() -> None:
    assert _graph()["evolkit.types"] == set()


def test_stages_do_not_import_the_pipeline_or_the_config() -> None:
    graph = _graph()
    for mod, deps in graph.items():
        if mod.startswith("evolkit.stages"):
            assert not deps & {"evolkit.pipeline", "evolkit.config", "evolkit.executors", "evolkit.cli"}, mod
