"""The package tree is the architecture: packages import each other without cycles, and every
exception they define has one root.

import-linter's layers contract (``make lint``) fixes the order of the top-level packages; this
test looks at every depth (``processors.scheduler`` vs ``processors.node_catalog``, then
``processors.scheduler.state`` vs ``processors.scheduler.timers``), where a cycle would mean two
parts that can only be understood together.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import tomllib
from collections import defaultdict
from pathlib import Path
from types import ModuleType

import grimp
import pytest

from foundation.errors import RefluxError

ROOT = Path(__file__).resolve().parents[2]


def root_packages() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages: list[str] = config["tool"]["importlinter"]["root_packages"]
    return packages


def import_graph(depth: int) -> dict[str, set[str]]:
    """Who imports whom, every module collapsed to its first ``depth`` name parts: depth 1 is
    the top-level packages, depth 2 their sub-packages and modules (``processors.scheduler``,
    ``node_workers.runtime``), and so on."""
    roots = root_packages()
    graph = grimp.build_graph(*roots)
    edges: dict[str, set[str]] = defaultdict(set)
    for module in graph.modules:
        source = ".".join(module.split(".")[:depth])
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.split(".")[0] not in roots:
                continue
            target = ".".join(imported.split(".")[:depth])
            if target != source:
                edges[source].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(set(edges) | {t for targets in edges.values() for t in targets}):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_the_import_graph_has_no_cycles(depth: int) -> None:
    edges = import_graph(depth)
    assert len(edges) >= 8, "the graph should cover every package of the project"
    assert cycles(edges) == []


def test_the_foundation_imports_no_other_package_of_the_project() -> None:
    edges = import_graph(1)
    assert edges.get("foundation", set()) == set()


# Installed only by `make bench` (pyproject's `bench` extra), or only in a benchmark peer's own
# venv (var/peers/<name>/venv, pinned in infra/peers/<name>-requirements.txt): modules that need
# them are skipped when they are missing, and only then. grpc: the LittleHorse SDK's transport,
# which the LittleHorse driver imports itself (for the status code of a NOT_FOUND answer).
OPTIONAL_DEPENDENCIES = {"temporalio", "restate", "hatchet_sdk", "littlehorse", "grpc"}


def project_modules() -> list[ModuleType]:
    """Every module of the project's packages (the import-linter roots and ``benchmarks``)."""
    modules: list[ModuleType] = []
    for root in [*root_packages(), "benchmarks"]:
        package = importlib.import_module(root)
        modules.append(package)
        for info in pkgutil.walk_packages(package.__path__, f"{root}."):
            try:
                modules.append(importlib.import_module(info.name))
            except ModuleNotFoundError as exc:
                if (exc.name or "").split(".")[0] not in OPTIONAL_DEPENDENCIES:
                    raise
    return modules


GUEST_PACKAGE = "node_workers.artifacts.guest"


def test_every_exception_of_the_project_derives_from_the_error_root() -> None:
    defined = [
        value
        for module in project_modules()
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
        # The artifact guest runs inside the sandbox with the standard library only.
        and not module.__name__.startswith(GUEST_PACKAGE)
    ]
    assert len(defined) >= 50, "the walk should find the exceptions of every package"
    strays = sorted(
        f"{error.__module__}.{error.__qualname__}"
        for error in defined
        if not issubclass(error, RefluxError)
    )
    assert strays == [], "derive these from foundation.errors.RefluxError"
