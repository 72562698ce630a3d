"""The layout shows the architecture, and stays so (issue 21).

Imports are read with ``ast`` (every ``import`` in a module, at any depth, ``TYPE_CHECKING`` ones
included: a type-only arrow is still an arrow), and the graph of ``nncd_ray`` modules must:

- have no circle;
- point one way through the layers: ``errors`` → ``ncd``/``embedded`` → ``data`` → ``scorers`` →
  ``matrix``/``codec``/``training`` → ``knn`` → ``study``/``testing``/``serve`` →
  ``cli``/``bench``; a module imports only from its own subpackage or from a lower layer;
- keep the pure math (NCD, k-NN, tiling) free of Ray, torch, Zarr, transformers and fsspec, also
  through what it imports.

And no module is longer than 500 lines, and at most 6 modules sit loose at the package's top.

The package root re-exports the public names lazily (PEP 562): it imports ``errors`` and nothing
else when run, and its ``TYPE_CHECKING`` block (names for type checkers only) is no arrow.
Modules may take ``__version__`` from the root.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from paths import ROOT

PACKAGE = ROOT / "nncd_ray"
MAX_LINES = 500
MAX_TOP_LEVEL_MODULES = 6
# component (first name below nncd_ray) -> layer; imports go only to lower layers
LAYERS = {
    "errors": 0,
    "ncd": 1,
    "embedded": 1,
    "data": 2,
    "scorers": 3,
    "matrix": 4,
    "codec": 4,
    "training": 4,
    "knn": 5,
    "study": 6,
    "testing": 6,
    "serve": 6,
    "cli": 7,
    "bench": 7,
}
# pure math: neither these packages nor anything that imports them
PURE = (
    "nncd_ray.ncd",
    "nncd_ray.matrix.tiling",
    "nncd_ray.knn.labels",
    "nncd_ray.knn.neighbours",
    "nncd_ray.knn.statistics",
    "nncd_ray.knn.mutual_proximity",
    "nncd_ray.knn.accumulator",
)
HEAVY = ("ray", "torch", "zarr", "transformers", "fsspec")
# names a module may import from the package root (the root imports nothing back)
ROOT_NAMES = {"__version__", "NNCDError"}


def module_files() -> dict[str, Path]:
    """``nncd_ray.a.b`` -> its file, for every module and package of the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = module_files()


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
    )


def _walk(tree: ast.AST, *, skip_type_checking: bool) -> list[ast.AST]:
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        if skip_type_checking and _is_type_checking_block(node):
            continue
        nodes.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def imports_of(module: str) -> tuple[set[str], set[str]]:
    """``(nncd_ray modules, other top-level packages)`` that ``module`` imports."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own, other = set(), set()
    for node in _walk(tree, skip_type_checking=module == "nncd_ray"):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
            own |= {n for n in names if n.split(".")[0] == "nncd_ray"}
            other |= {n.split(".")[0] for n in names if n.split(".")[0] != "nncd_ray"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "nncd_ray":
                other.add(target.split(".")[0])
                continue
            for alias in node.names:
                child = f"{target}.{alias.name}"
                if child in MODULES:
                    own.add(child)
                elif target == "nncd_ray" and alias.name in ROOT_NAMES:
                    own.add("nncd_ray")
                else:
                    own.add(target)
    own.discard(module)
    return own, other


GRAPH = {module: imports_of(module)[0] for module in MODULES}


def component(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def closure(start: str) -> set[str]:
    """``start``, what it imports, transitively, and every package on the way (running
    ``import a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first)."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        todo.extend([*GRAPH.get(module, ()), *parents])
    return seen


def test_the_graph_is_read() -> None:
    """The parser sees the arrows it must see (guards the test itself)."""
    assert "nncd_ray.matrix.store.matrix_store" in GRAPH["nncd_ray.matrix.dense_job"]
    assert "nncd_ray.matrix.config" in GRAPH["nncd_ray.matrix.cluster.executor"]  # TYPE_CHECKING
    assert "nncd_ray.knn.evaluate" in GRAPH["nncd_ray.knn.classifier"]  # inside a function
    assert GRAPH["nncd_ray"] == {"nncd_ray.errors"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_circles() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_imports_point_down_the_layers() -> None:
    unknown = sorted({c for m in MODULES if (c := component(m)) and c not in LAYERS})
    assert not unknown, f"components without a layer in LAYERS: {unknown}"
    wrong = []
    for module, targets in GRAPH.items():
        source = component(module)
        if source is None:
            continue
        for target in targets:
            goal = component(target)
            if goal is None:  # the root: only __version__ / NNCDError (checked by imports_of)
                continue
            if goal != source and LAYERS[goal] >= LAYERS[source]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


@pytest.mark.parametrize("module", PURE)
def test_pure_math_imports_no_heavy_package(module: str) -> None:
    heavy = {
        f"{inner} imports {name}"
        for inner in closure(module)
        for name in imports_of(inner)[1]
        if name in HEAVY
    }
    assert not heavy, sorted(heavy)


def test_pure_math_runs_without_heavy_packages() -> None:
    """What the static check says, measured: importing the pure modules loads none of them."""
    code = (
        "import sys\n"
        f"for name in {list(PURE)!r}:\n"
        "    __import__(name)\n"
        f"loaded = [m for m in {list(HEAVY)!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT)


def test_no_module_is_over_500_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in MODULES.values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_few_modules_loose_at_the_top() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= MAX_TOP_LEVEL_MODULES, loose


def test_public_names_import_from_the_root_lazily() -> None:
    """``from nncd_ray import compute_matrix, …`` works, and ``import nncd_ray`` stays light."""
    code = (
        "import sys\n"
        "import nncd_ray\n"
        f"assert not [m for m in {list(HEAVY)!r} if m in sys.modules]\n"
        "from nncd_ray import (Corpus, EvaluationConfig, MatrixConfig, NCDKNNClassifier,\n"
        "    ScorerSpec, compute_matrix, evaluate_store, load_corpus, load_protocol, make_scorer)\n"
        "assert set(nncd_ray.__all__) == {*nncd_ray._PUBLIC, 'NNCDError', '__version__'}\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT)
