"""The node registry: built-in node versions by ``(name, major)``, and selection of node groups.

One binary serves the seed's three scaling modes: every node in one process (no filter), grouped
processes (``--nodes http,webhook`` / ``NODES_FILTER``), or one deployment per group. A filter
entry matches a node by name or by dotted name prefix (``http`` matches ``http.request`` but not
``httpx.get``); ``name@major`` pins one major version. An entry matching nothing is an error: a
typo must not start a worker that silently serves nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from foundation.errors import ConfigurationError
from node_workers.node import AnyNode
from node_workers.nodes import builtin_nodes

__all__ = ["NodeRegistry", "UnknownNodeError", "default_registry", "parse_filter"]


class UnknownNodeError(ConfigurationError):
    error_class = "UnknownNode"


def parse_filter(value: str | Sequence[str] | None) -> list[str] | None:
    """``"http, transform"`` -> ``["http", "transform"]``; empty, ``"*"`` or ``"all"`` -> ``None``
    (every node)."""
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else [p for v in value for p in v.split(",")]
    entries = [p.strip() for p in parts if p.strip()]
    if not entries or any(e in {"*", "all"} for e in entries):
        return None
    return entries


def _matches(entry: str, node: AnyNode) -> bool:
    name, _, major = entry.partition("@")
    if major and (not major.isdigit() or int(major) != node.major):
        return False
    return node.name == name or node.name.startswith(name + ".")


class NodeRegistry:
    """Node versions by ``(name, major)``; at most one version per major is served."""

    def __init__(self, nodes: Iterable[AnyNode]) -> None:
        self._nodes: dict[tuple[str, int], AnyNode] = {}
        for node in nodes:
            node.check()
            key = (node.name, node.major)
            if key in self._nodes:
                raise ConfigurationError(
                    f"Expected one version per node major, but {node.name} v{node.major} is "
                    f"served by both {self._nodes[key].version} and {node.version}"
                )
            self._nodes[key] = node

    def get(self, name: str, major: int) -> AnyNode:
        try:
            return self._nodes[(name, major)]
        except KeyError:
            raise UnknownNodeError(
                f"Expected a node of {self.names()}, but got {name!r} v{major}"
            ) from None

    def names(self) -> list[str]:
        """``["http.request@1.0.0", ...]``, sorted."""
        return sorted(node.key for node in self._nodes.values())

    def select(self, node_filter: str | Sequence[str] | None = None) -> NodeRegistry:
        """The registry restricted to the filter's groups; ``None`` keeps every node."""
        entries = parse_filter(node_filter)
        if entries is None:
            return NodeRegistry(self._nodes.values())
        unmatched = [e for e in entries if not any(_matches(e, n) for n in self._nodes.values())]
        if unmatched:
            raise UnknownNodeError(
                f"Expected node filter entries matching {self.names()}, but {unmatched} "
                "match nothing"
            )
        return NodeRegistry(n for n in self._nodes.values() if any(_matches(e, n) for e in entries))

    def __iter__(self) -> Iterator[AnyNode]:
        return iter(sorted(self._nodes.values(), key=lambda n: (n.name, n.major)))

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, key: object) -> bool:
        return key in self._nodes

    def __repr__(self) -> str:
        return f"NodeRegistry({self.names()})"


def default_registry() -> NodeRegistry:
    """Every built-in node (fresh instances)."""
    return NodeRegistry(builtin_nodes())
