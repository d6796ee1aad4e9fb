"""The package's import graph: no module imports itself back, however lazily, and the two stages
meet only at storage."""

from __future__ import annotations

import ast
from pathlib import Path

import linkedout

ROOT = Path(linkedout.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (never run)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def import_graph(runtime: bool = False) -> dict[str, set[str]]:
    """module -> the linkedout modules it imports anywhere in its body (lazy ones included;
    with `runtime`, not those only type checkers read)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        skipped = _type_checking_only(tree) if runtime else set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                # `from pkg import sub` imports the submodule `pkg.sub` when there is one.
                targets = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                targets = targets or [base]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle_even_through_lazy_imports():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_sees_a_cycle_through_a_lazy_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]


def test_extract_and_recommend_meet_only_at_storage():
    graph = import_graph()
    for name, targets in graph.items():
        for stage, other in (("extract", "recommend"), ("recommend", "extract")):
            if name.startswith(f"linkedout.{stage}"):
                crossing = {t for t in targets if t.startswith(f"linkedout.{other}")}
                assert not crossing, f"{name} imports {crossing}"
        if name.startswith(("linkedout.storage", "linkedout.settings", "linkedout.errors")):
            upward = {
                t
                for t in targets
                if t.startswith(("linkedout.extract", "linkedout.recommend", "linkedout.cli"))
            }
            assert not upward, f"{name} imports {upward}"


def service_violations(graph: dict[str, set[str]]) -> list[str]:
    """The service sits on the recommender: it may import recommend/ and storage/, never
    extract/, and only the CLI imports it."""
    found = []
    for name, targets in graph.items():
        if name.startswith("linkedout.service"):
            found += [f"{name} imports {t}" for t in targets if t.startswith("linkedout.extract")]
        elif name != "linkedout.cli":
            found += [f"{name} imports {t}" for t in targets if t.startswith("linkedout.service")]
    return sorted(found)


def test_the_service_sits_on_the_recommender_and_only_the_cli_imports_it():
    assert service_violations(import_graph()) == []


def test_the_service_rule_sees_a_crossing():
    graph = {
        "linkedout.service.app": {"linkedout.extract.pipeline", "linkedout.recommend.model"},
        "linkedout.recommend.train": {"linkedout.service.ranker"},
        "linkedout.cli": {"linkedout.service.server"},
    }
    assert service_violations(graph) == [
        "linkedout.recommend.train imports linkedout.service.ranker",
        "linkedout.service.app imports linkedout.extract.pipeline",
    ]


def importers(package: str) -> set[str]:
    """The linkedout modules that import the outside package `package` (lazily or not)."""
    found = set()
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(n == package or n.startswith(package + ".") for n in names):
                found.add(module_name(path))
    return found


def test_only_storage_and_the_catalog_dataset_open_lance():
    """Each Lance dataset has one owner: feature datasets storage/, catalog.lance
    recommend/catalog_dataset.py."""
    outside = {o for o in importers("lance") if not o.startswith("linkedout.storage")}
    assert outside == {"linkedout.recommend.catalog_dataset"}


def reach(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every linkedout module `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += graph.get(name, ())
    return seen


def test_ranking_and_serving_do_not_import_lightning():
    """Lightning costs seconds to import: the paths that only rank never reach it."""
    graph, lightning = import_graph(runtime=True), importers("lightning")
    assert "linkedout.recommend.module" in lightning  # the finder finds what it looks for
    for start in (
        "linkedout.recommend.evaluate",
        "linkedout.service.app",
        "linkedout.service.catalog_changes",
    ):
        assert reach(graph, start) & lightning == set(), start
