"""The package's import graph has no cycle: each file can be read, imported and tested on its own.

A cycle hides as a function-level import that works only in the right import order, so both are refused here:
imports inside functions (type-only imports under ``if TYPE_CHECKING:`` aside), and cycles among top-level imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_adapters"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def our_imports(tree: ast.AST, top_level: bool):
    """(module, imported names) for each import of ours run at import time (``top_level``), or run later: inside a
    function or class body. Type-only imports under ``if TYPE_CHECKING:`` are neither."""
    def visit(node: ast.AST, late: bool):
        for child in ast.iter_child_nodes(node):
            if is_type_checking(child):
                continue
            if isinstance(child, ast.Import) and late != top_level:
                yield from ((a.name, []) for a in child.names if a.name.startswith("lightning_adapters"))
            elif (isinstance(child, ast.ImportFrom) and late != top_level and child.level == 0
                  and (child.module or "").startswith("lightning_adapters")):
                yield child.module, [a.name for a in child.names]
            yield from visit(child, late or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))
    yield from visit(tree, False)


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for module, imported in our_imports(ast.parse(path.read_text()), top_level=True):
            edges.update(f"{module}.{n}" for n in imported if f"{module}.{n}" in modules)
            if not imported or any(f"{module}.{n}" not in modules for n in imported):
                edges.add(module)  # a name defined in (or re-exported by) the module itself
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_our_modules():
    graph = import_graph()
    assert graph["lightning_adapters.module"] >= {"lightning_adapters.adapter_folder"}  # the graph sees our imports
    assert cycles(graph) == []


def test_no_function_level_import_of_our_own_modules():
    late = {f"{path.relative_to(PACKAGE.parent)}: {module}"
            for path in module_names().values()
            for module, _ in our_imports(ast.parse(path.read_text()), top_level=False)}
    assert late == set()


def test_the_package_and_its_cli_import_without_the_optional_extras():
    """`pip install -e ".[bundled]"` (the README's quickstart) has no LitServe, Starlette, ONNX or Optuna: the
    package, the CLI and its help must work without them (each extra is imported where it is used),
    and a command that needs one says which extra to install."""
    blocked = ("litserve", "starlette", "fastapi", "onnx", "onnxruntime", "onnxscript", "optuna",
               "optuna_integration")  # not matplotlib: torchmetrics imports it whenever it is installed
    code = (f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
            "import lightning_adapters.cli, lightning_adapters.serve, lightning_adapters.onnx_export\n"
            "lightning_adapters.cli.main(['tune', '--config', 'x.yaml', '--search', 'x.yaml', '--n-trials', '1'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2 and "pip install 'lightning-adapters[tune]'" in done.stderr, done.stderr[-2000:]
