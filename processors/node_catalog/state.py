"""The node catalog folded from ``NodeCatalogEntry`` records: the latest entry per node@version.

The ``nodes`` topic is compacted and keyed by ``node@version``, so its last record per key is
the version's state; folding the log in order (later records win) gives exactly that. Pure:
the Kafka reader (:mod:`processors.node_catalog.runtime_view`) and tests feed it records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from processors.node_catalog.rollout import CatalogVersion, choose_version
from schemas.models import NodeCatalogEntry

__all__ = ["CatalogState", "catalog_key"]


def catalog_key(name: str, version: str) -> str:
    """The record key on ``nodes``: ``node@version`` (compaction keeps every version)."""
    return f"{name}@{version}"


class CatalogState:
    """Node versions by name; also a :class:`workflows.node_catalog.NodeCatalogView`."""

    def __init__(self, entries: Iterable[NodeCatalogEntry] = ()) -> None:
        self._nodes: dict[str, dict[str, NodeCatalogEntry]] = {}
        for entry in entries:
            self.apply(entry)

    def apply(self, entry: NodeCatalogEntry) -> None:
        self._nodes.setdefault(entry.name, {})[entry.version] = entry

    def entry(self, name: str, version: str) -> NodeCatalogEntry | None:
        return self._nodes.get(name, {}).get(version)

    def entries(self, name: str) -> list[NodeCatalogEntry]:
        return list(self._nodes.get(name, {}).values())

    def catalog_versions(self, name: str) -> list[CatalogVersion]:
        return [CatalogVersion(e.version, e.status, e.rollout_weight) for e in self.entries(name)]

    def manifest(self, name: str, version: str) -> Mapping[str, Any] | None:
        """The version's manifest (description, params schema); ai.meta shows it to the LLM."""
        entry = self.entry(name, version)
        return entry.manifest if entry is not None and isinstance(entry.manifest, Mapping) else None

    def versions(self, name: str) -> Sequence[str]:
        return list(self._nodes.get(name, {}))

    def names(self) -> Sequence[str]:
        return sorted(self._nodes)

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def __len__(self) -> int:
        return sum(len(v) for v in self._nodes.values())

    def choose(self, name: str, constraint: str, run_id: str) -> str | None:
        """The rollout's version, or ``None`` when the catalog knows nothing of ``name``.

        ``None`` lets the caller fall back to the pre-catalog behaviour (the constraint's major);
        a known node with no usable version raises :class:`NodeVersionUnavailableError`.
        """
        versions = self.catalog_versions(name)
        if not versions:
            return None
        return choose_version(name, constraint, versions, run_id)
