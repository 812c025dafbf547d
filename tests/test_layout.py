"""Data flows one way: no module of the suite imports, directly or through others, a module that imports it back."""
import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "zoo")


def import_graph(root: Path = ROOT) -> nx.DiGraph:
    """Module -> the suite's modules it imports anywhere in its file (also inside functions: a lazy import is still
    a dependency)."""
    mods = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            mods[name] = path
    graph = nx.DiGraph()
    for name, path in mods.items():
        graph.add_node(name)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            graph.add_edges_from((name, t) for t in targets if t in mods and t != name)
    return graph


def test_the_suite_has_no_import_circle():
    """zoo/recipes.py imported the loss registry from bench/training/schemes.py, which imported Recipe back."""
    graph = import_graph()
    assert graph.has_edge("zoo.recipes", "bench.training.schemes")  # the graph sees real imports
    assert list(nx.simple_cycles(graph)) == []
