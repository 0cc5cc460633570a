"""The architecture holds: read from the source (ast, nothing imported), the package has no import
cycle, and the layers import only downwards (docs/architecture.md):

    numerics -> kernels -> probes -> fingerprint -> identify / reveal / trace -> report -> cli

Checked: zero cycles between modules (function-local imports included), ``numerics`` imports
only itself and the native core, ``kernels`` nothing above itself but ``platform``, no module but
``__main__`` imports the CLI. Negative controls feed the checkers a graph with a cycle and an
upward edge."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "hspi_kernels"

ALLOWED = {  # layer -> the top-level packages it may import (besides itself)
    "numerics": {"_native"},
    "kernels": {"numerics", "platform", "_native", "_build_info"},
}


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = ("hspi_kernels",) + p.relative_to(PKG).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _resolve(mods: dict[str, Path], here: str, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = here.split(".") if mods[here].name == "__init__.py" else here.split(".")[:-1]
            pkg = pkg[:len(pkg) - node.level + 1]
            base = ".".join(pkg + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    out = []
    for n in names:
        if not n.startswith("hspi_kernels"):
            continue
        while n not in mods and "." in n:
            n = n.rsplit(".", 1)[0]
        if n in mods:
            out.append(n)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name].update(t for t in _resolve(mods, name, node) if t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan). An import of a package
    by its own submodule does not count (``from hspi_kernels.x import y`` inside ``x.z`` loads
    ``x`` first, which is not a loop of the code)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def edges(v):
        return [w for w in graph[v] if not v.startswith(w + ".")]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges(v):
            if w not in index:
                visit(w)
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    bad = []
    for src, targets in graph.items():
        allowed = ALLOWED.get(_layer(src))
        if allowed is None:
            continue
        for t in targets:
            layer = _layer(t)
            if t != "hspi_kernels" and layer != _layer(src) and layer not in allowed:
                bad.append((src, t))
    cli_users = [(s, t) for s, ts in graph.items() for t in ts
                 if t == "hspi_kernels.cli" and s not in ("hspi_kernels.__main__",) and not s.startswith("hspi_kernels.cli")]
    return sorted(bad + cli_users)


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_layers_import_only_downwards():
    assert upward(import_graph()) == []


def test_checkers_reject_a_cycle_and_an_upward_import():
    graph = {"hspi_kernels.numerics.a": {"hspi_kernels.numerics.b"},
             "hspi_kernels.numerics.b": {"hspi_kernels.numerics.a", "hspi_kernels.kernels.cuda.x"},
             "hspi_kernels.kernels.cuda.x": {"hspi_kernels.probes.runner"},
             "hspi_kernels.probes.runner": set(), "hspi_kernels.report": {"hspi_kernels.cli"}, "hspi_kernels.cli": set()}
    assert cycles(graph) == [["hspi_kernels.numerics.a", "hspi_kernels.numerics.b"]]
    assert upward(graph) == [("hspi_kernels.kernels.cuda.x", "hspi_kernels.probes.runner"),
                             ("hspi_kernels.numerics.b", "hspi_kernels.kernels.cuda.x"),
                             ("hspi_kernels.report", "hspi_kernels.cli")]


def test_every_module_says_what_it_owns():
    missing = [name for name, path in modules().items()
               if ast.get_docstring(ast.parse(path.read_text())) is None and path.stat().st_size > 0]
    assert missing == []
