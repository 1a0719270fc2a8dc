"""Bounded parsing of untrusted YAML and JSON, and what storage can hold.

Every place that parses a workflow definition, a request body or a file a user hands us goes
through here, so the limits are the same everywhere (API, ``reflux`` CLI, trigger router):

- YAML: at most :data:`MAX_YAML_ALIASES` aliases, at most :data:`MAX_EXPANDED_NODES` nodes once
  every alias is expanded (a 515-byte "billion laughs" document expands to tens of megabytes;
  it is refused while composing, before anything is built), no recursive aliases, and nesting
  at most :data:`MAX_DEPTH` deep.
- JSON: nesting at most :data:`MAX_DEPTH` deep (``json.loads`` itself raises ``RecursionError``
  near depth 1000, and everything that walks the value later recurses too).
- Storable: strings and keys without NUL characters (Postgres ``text`` and ``jsonb`` cannot hold
  ``\\u0000``), numbers finite (``NaN``/``Infinity`` are not JSON and ``jsonb`` refuses them).

Errors are :class:`ParseLimitError` (a ``ValueError``) naming the limit and where it was hit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import yaml
from yaml.events import AliasEvent, CollectionStartEvent, NodeEvent

from foundation.errors import NonRetryableError

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPANDED_NODES",
    "MAX_YAML_ALIASES",
    "ParseLimitError",
    "StorageIssue",
    "check_depth",
    "load_json",
    "load_yaml",
    "storage_issues",
]

MAX_DEPTH: Final = 64
"""Deepest nesting of objects/arrays accepted anywhere (a workflow definition needs ~10)."""

MAX_YAML_ALIASES: Final = 100
"""Aliases (``*name``) one YAML document may use."""

MAX_EXPANDED_NODES: Final = 100_000
"""Nodes a YAML document may hold once its aliases are expanded."""


class ParseLimitError(NonRetryableError, ValueError):
    """The input exceeds a parse limit; the message names the limit. A ``ValueError`` too, so
    callers that already catch bad input as one keep working."""

    error_class = "ParseLimit"

    def __init__(self, message: str, *, kind: str = "parse_limit") -> None:
        super().__init__(message)
        self.kind = kind


class _LimitedLoader(yaml.SafeLoader):
    """A ``SafeLoader`` whose composer counts aliases, expanded nodes and depth.

    The composer builds the node graph; a billion-laughs document is cheap as a graph (aliases
    share nodes) and explodes only when walked, so the expanded size is counted here: each anchor
    remembers how many nodes it stands for, and each alias adds that many.
    """

    def __init__(
        self, stream: str | bytes, *, max_depth: int, max_aliases: int, max_nodes: int
    ) -> None:
        super().__init__(stream)
        self._max_depth = max_depth
        self._max_aliases = max_aliases
        self._max_nodes = max_nodes
        self._depth = 0
        self._aliases = 0
        self._expanded = 0
        self._anchor_sizes: dict[str, int] = {}

    def _where(self, event: Any) -> str:
        mark = getattr(event, "start_mark", None)
        return "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"

    def _count(self, nodes: int, event: Any) -> None:
        self._expanded += nodes
        if self._expanded > self._max_nodes:
            raise ParseLimitError(
                f"YAML document expands to more than {self._max_nodes} nodes{self._where(event)}"
                " (alias expansion limit)",
                kind="yaml_too_large",
            )

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent):
            self._aliases += 1
            if self._aliases > self._max_aliases:
                raise ParseLimitError(
                    f"YAML document uses more than {self._max_aliases} aliases{self._where(event)}",
                    kind="yaml_aliases",
                )
            size = self._anchor_sizes.get(str(event.anchor))
            if size is None:  # undefined (the composer says so) or still open: recursive
                if event.anchor in self.anchors:
                    raise ParseLimitError(
                        f"YAML alias *{event.anchor} refers to its own anchor"
                        f"{self._where(event)} (recursive structures are not accepted)",
                        kind="yaml_recursive",
                    )
            else:
                self._count(size, event)
            return super().compose_node(parent, index)
        anchor = event.anchor if isinstance(event, NodeEvent) else None
        nested = isinstance(event, CollectionStartEvent)
        if nested:
            self._depth += 1
            if self._depth > self._max_depth:
                raise ParseLimitError(
                    f"YAML document nests deeper than {self._max_depth} levels{self._where(event)}",
                    kind="too_deep",
                )
        start = self._expanded
        self._count(1, event)
        try:
            node = super().compose_node(parent, index)
        finally:
            if nested:
                self._depth -= 1
        if anchor is not None:
            self._anchor_sizes[anchor] = self._expanded - start
        return node


def load_yaml(
    text: str | bytes,
    *,
    max_depth: int = MAX_DEPTH,
    max_aliases: int = MAX_YAML_ALIASES,
    max_nodes: int = MAX_EXPANDED_NODES,
) -> Any:
    """``yaml.safe_load`` within the limits: :class:`ParseLimitError` beyond them, ``YAMLError``
    for YAML that does not parse."""
    loader = _LimitedLoader(text, max_depth=max_depth, max_aliases=max_aliases, max_nodes=max_nodes)
    try:
        return loader.get_single_data()
    except RecursionError as exc:  # a scalar-level recursion the depth count did not see
        raise ParseLimitError(
            f"YAML document nests deeper than {max_depth} levels", kind="too_deep"
        ) from exc
    finally:
        loader.dispose()


def load_json(raw: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` within the depth limit (:class:`ParseLimitError`); ``ValueError`` for
    JSON that does not parse. ``NaN``/``Infinity`` are refused: they are not JSON."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise ParseLimitError(
            f"JSON nests deeper than {max_depth} levels", kind="too_deep"
        ) from exc
    check_depth(value, max_depth=max_depth)
    return value


def _refuse_constant(name: str) -> Any:
    raise ParseLimitError(
        f"{name} is not a JSON number (only finite numbers can be stored)", kind="not_finite"
    )


def _walk(value: Any) -> Iterator[tuple[str, int, Any]]:
    """(path, depth, value) of every value inside ``value``, iteratively (no recursion)."""
    stack: list[tuple[str, int, Any]] = [("", 0, value)]
    while stack:
        path, depth, item = stack.pop()
        yield path, depth, item
        if isinstance(item, dict):
            for key, child in item.items():
                stack.append((f"{path}.{key}" if path else str(key), depth + 1, child))
        elif isinstance(item, list | tuple):
            for i, child in enumerate(item):
                stack.append((f"{path}[{i}]", depth + 1, child))


def check_depth(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """:class:`ParseLimitError` naming the path where ``value`` nests deeper than allowed."""
    for path, depth, item in _walk(value):
        # The outermost object or array is level 1, as in the YAML count.
        if isinstance(item, dict | list | tuple) and depth + 1 > max_depth:
            where = path if len(path) <= 80 else f"{path[:80]}..."
            raise ParseLimitError(
                f"nests deeper than {max_depth} levels (at {where})", kind="too_deep"
            )


@dataclass(frozen=True, slots=True)
class StorageIssue:
    """A value storage cannot hold; ``path`` is dotted (``steps[0].params.url``)."""

    path: str
    message: str
    type: str


def storage_issues(value: Any, *, limit: int = 20) -> list[StorageIssue]:
    """Strings or keys with NUL characters and non-finite floats inside ``value`` (at most
    ``limit`` of them): Postgres ``text``/``jsonb`` cannot hold either, so a write carrying one
    would be accepted and then lost by the projector."""
    issues: list[StorageIssue] = []
    for raw_path, _depth, item in _walk(value):
        path = raw_path.replace("\x00", "\\u0000")
        if isinstance(item, dict):
            for key in item:
                if isinstance(key, str) and "\x00" in key:
                    shown = key.replace("\x00", "\\u0000")
                    where = f"{path}.{shown}" if path else shown
                    issues.append(
                        StorageIssue(where, "Expected a key without NUL (\\u0000)", "nul_character")
                    )
        elif isinstance(item, str):
            if "\x00" in item:
                issues.append(
                    StorageIssue(
                        path, "Expected text without NUL (\\u0000) characters", "nul_character"
                    )
                )
            elif not _utf8(item):
                issues.append(
                    StorageIssue(
                        path, "Expected valid Unicode text (a lone surrogate?)", "invalid_unicode"
                    )
                )
        elif isinstance(item, float) and not math.isfinite(item):
            issues.append(StorageIssue(path, f"Expected a finite number, got {item}", "not_finite"))
        if len(issues) >= limit:
            break
    return issues


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
