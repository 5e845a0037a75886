"""The house's layering: dependencies point one way and the import graph has no circle.

Read from the source (every ``import`` statement, those inside functions included), so a
lazy import cannot hide a circle or a step the wrong way.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("config", "shared", "producer", "workers")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules ``path`` imports (``from a.b import c`` names ``a.b.c`` when that is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        # A package's __init__ is imported with each of its modules; an edge to one's own
        # package (or from a package to its modules) is not a circle between concerns.
        graph[name] = {dep for dep in _imports(path, modules)
                       if dep != name and not name.startswith(dep + ".") and not dep.startswith(name + ".")}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_circle():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_circle():
    # The check above is only worth something if it can fail.
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("side, forbidden", [
    ("producer", ("workers",)),
    ("shared", ("workers", "producer")),
    ("config", ("workers", "producer", "shared")),
])
def test_dependencies_point_one_way(side, forbidden):
    wrong = sorted(f"{name} -> {dep}" for name, deps in _graph().items() if name.split(".")[0] == side
                   for dep in deps if dep.split(".")[0] in forbidden)
    assert not wrong, wrong


def test_inside_workers_tasks_are_on_top():
    """Models, kernels and the residency pool never import the tasks or the Celery app."""
    below = ("workers.relations", "workers.editing", "workers.judging", "workers.endpoints", "workers.models",
             "workers.residency", "workers.errors", "workers.model_host", "workers.run_settings")
    wrong = sorted(f"{name} -> {dep}" for name, deps in _graph().items()
                   if name.startswith(below) for dep in deps
                   if dep.startswith(("workers.tasks", "workers.celery_app", "workers.runtime")))
    assert not wrong, wrong


def test_the_producer_never_imports_torch():
    heavy = ("torch", "transformers", "diffusers", "triton")
    wrong = []
    for path in (ROOT / "producer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            wrong += [f"{path.name}: {n}" for n in names if n.split(".")[0] in heavy]
    assert not wrong, wrong


def test_no_file_cites_a_document_the_repository_lacks():
    """Docs and code stand alone: the design notes the project started from are not in it."""
    cited = ("SPEC.md", "DESIGN.md", "../shared/")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    tracked = [ROOT / name for name in listed.decode().split("\0")
               if name and (ROOT / name).is_file() and not name.startswith("bench/results/")]
    wrong = sorted(f"{p.relative_to(ROOT)}: {name}" for p in tracked if p != Path(__file__).resolve()
                   for name in cited if name in p.read_text(encoding="utf-8", errors="replace"))
    assert not wrong, wrong


def test_only_a_job_itself_compares_its_name():
    """Everything else asks the job (``producer/jobs.py``): a new job needs no edit elsewhere."""
    names = {"relations", "editbench"}
    own = tuple(f"{side}/{name}/" for side in ("producer", "shared") for name in names)
    wrong = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if path.relative_to(ROOT).as_posix().startswith(own):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Compare):
                    constants = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
                    wrong += [f"{path.relative_to(ROOT)}:{node.lineno}" for c in constants if c in names]
    assert not wrong, wrong
