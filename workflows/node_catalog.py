"""What validation needs to know about the node catalog, and nothing more.

The real catalog lives on the compacted ``reflux.nodes`` topic (and its Postgres projection);
validation only asks which versions of a node exist, so any read model can implement this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from workflows.semver import VersionConstraint

__all__ = ["NodeCatalogView", "StaticNodeCatalog", "default_resolve_node_version"]


@runtime_checkable
class NodeCatalogView(Protocol):
    """Read-only view of registered node versions."""

    def versions(self, name: str) -> Sequence[str]:
        """Registered versions of a node (semver text); empty when the node is unknown."""
        ...

    def names(self) -> Sequence[str]:
        """Every known node name; used to suggest names in error messages."""
        ...


class StaticNodeCatalog:
    """An in-memory catalog: ``StaticNodeCatalog({"http.request": ["1.0.0", "1.2.0"]})``."""

    def __init__(self, nodes: Mapping[str, Iterable[str]]) -> None:
        self._nodes = {name: tuple(versions) for name, versions in nodes.items()}

    def versions(self, name: str) -> Sequence[str]:
        return self._nodes.get(name, ())

    def names(self) -> Sequence[str]:
        return sorted(self._nodes)


def default_resolve_node_version(name: str, constraint: str, run_id: str) -> str:
    """Without a catalog: an exact pin is the version; otherwise the constraint text itself.

    The invoke topic's major is derived from it (``invoke_major``), and the worker group of that
    major runs whatever version it has deployed. The catalog-backed resolver (rollout weights,
    deterministic by run id) replaces this in the runtime.
    """
    parsed = VersionConstraint.parse(constraint)
    return str(parsed.exact) if parsed.exact is not None else parsed.raw
