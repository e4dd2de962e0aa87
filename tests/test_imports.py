"""The import graph of ``seqjax/`` has no cycle, function-local imports included.

Every ``import``/``from ... import`` statement anywhere in a module (at the top,
inside functions, under ``if TYPE_CHECKING``) is an edge to the ``seqjax``
module it names: ``from a.b import c`` points at ``a.b.c`` when that is a
module, else at ``a.b``. Importing a submodule also runs its parent packages'
``__init__``; those implicit edges are not counted, as in every import
linter, since a package that re-exports its submodules would otherwise always
be "cyclic". A cycle is a strongly connected component of more than one
module (or a module importing itself).
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "seqjax"


def _module_names() -> dict[str, pathlib.Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def import_graph() -> dict[str, set[str]]:
    """``module -> {seqjax modules it imports}`` from the AST of every file."""
    modules = _module_names()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = _resolve_relative(name, is_package, node.level, node.module)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in modules else base)
            for target in targets:
                # The longest prefix that is a seqjax module (``import a.b.c`` of a
                # module a.b.c, or an attribute of one).
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
                elif target == name:
                    graph[name].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a self-import (Tarjan)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
            if len(component) > 1 or v in graph[v]:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles in seqjax/: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_checker_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_function_local_imports_count():
    graph = import_graph()
    # seqjax.experiment imports seqjax.train inside a function (flags parse
    # before JAX starts); the walk must see it.
    assert "seqjax.train" in graph["seqjax.experiment"]


def test_ops_never_import_flax_or_upper_layers():
    """``ops/`` is the bottom layer: no Flax, and nothing from mixers, models, train or parallel."""
    upper = ("seqjax.mixers", "seqjax.models", "seqjax.train", "seqjax.parallel", "seqjax.tasks", "seqjax.data")
    for path in (PACKAGE / "ops").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert not n.startswith("flax"), f"{path.name} imports {n}"
                assert not n.startswith(upper), f"{path.name} imports {n}"
