"""The scheduler's view of the node catalog, read from the compacted ``nodes`` topic.

Every scheduler instance reads all partitions of ``nodes`` (any run may use any node), folds
them into a :class:`~processors.node_catalog.state.CatalogState` and resolves versions with
:func:`~processors.node_catalog.rollout.choose_version`. Same pattern as
:mod:`processors.scheduler.runtime.workflows`: an unassigned consumer that never commits and
always starts from the beginning of the topic.

Freshness: the view drains what has arrived at most every ``refresh_interval`` seconds, so a
weight change reaches new runs within about that time plus the broker's latency. When a step
cannot be resolved, the view first catches up to the high watermarks once (a version promoted or
registered a moment ago must not fail a run by a race) and only then lets the error through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from foundation.settings import Settings
from processors.node_catalog.rollout import NodeVersionUnavailableError
from processors.node_catalog.state import CatalogState
from schemas import decode
from schemas.errors import SchemaError
from schemas.models import NodeCatalogEntry
from streams.table import TopicTableReader
from streams.topics import TopicCatalog
from workflows.node_catalog import default_resolve_node_version

__all__ = ["CatalogResolver", "CatalogValidator", "NodeCatalogKafkaView"]

log = logging.getLogger(__name__)


class NodeCatalogKafkaView:
    """``nodes`` folded into a :class:`CatalogState`; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        catalog: TopicCatalog | None = None,
        *,
        refresh_interval: float = 0.05,
    ) -> None:
        self.catalog = catalog or TopicCatalog.from_settings(settings)
        self.topic = self.catalog.nodes.topic
        self.state = CatalogState()
        self.refresh_interval = refresh_interval
        self._last_poll = 0.0
        self._reader = TopicTableReader(settings, self.topic, self._apply, name="scheduler-nodes")

    def _apply(self, data: bytes | None) -> None:
        if data is None:
            return  # a tombstone: versions are never deleted from routing by compaction
        try:
            record = decode(data, NodeCatalogEntry)
        except SchemaError as exc:
            # The projector dead-letters these; the scheduler just cannot use them.
            log.warning("ignoring an unreadable nodes record: %s", exc)
            return
        self.state.apply(record)

    def poll(self, timeout: float = 0.0) -> int:
        count = self._reader.poll(timeout)
        self._last_poll = time.monotonic()
        return count

    def refresh(self) -> None:
        """Drain what has arrived, at most every ``refresh_interval`` seconds."""
        if time.monotonic() - self._last_poll >= self.refresh_interval:
            self._reader.drain()
            self._last_poll = time.monotonic()

    def catch_up(self, timeout: float = 10.0) -> None:
        """Reads until every partition reached the high watermark seen now."""
        self._reader.catch_up(timeout)

    def close(self) -> None:
        self._reader.close()


class CatalogResolver:
    """``DecisionContext.resolve_node_version`` backed by a catalog view.

    A node the catalog has never heard of resolves as before the catalog existed
    (:func:`~workflows.node_catalog.default_resolve_node_version`: the exact pin, else the
    constraint, whose major picks the invoke topic), so deployments without catalog entries keep
    working. A known node with no usable version raises
    :class:`~processors.node_catalog.rollout.NodeVersionUnavailableError` after one catch-up.
    """

    def __init__(self, view: NodeCatalogKafkaView) -> None:
        self.view = view

    def __call__(self, name: str, constraint: str, run_id: str) -> str:
        self.view.refresh()
        try:
            chosen = self.view.state.choose(name, constraint, run_id)
        except NodeVersionUnavailableError:
            self.view.catch_up()
            chosen = self.view.state.choose(name, constraint, run_id)
        if chosen is None:
            return default_resolve_node_version(name, constraint, run_id)
        return chosen


class CatalogValidator:
    """``DecisionContext.node_catalog`` backed by a catalog view: graph mutations that add a step
    or replace a node must name a node and version the catalog holds.

    Fresh like :class:`CatalogResolver`: a name the view does not know yet triggers one catch-up
    before it is reported unknown (a node registered a moment ago must not be refused by a race).
    An empty catalog (no worker has registered, no entry was ever published) checks nothing, as
    the resolver falls back to the constraint's major there: a deployment without catalog entries
    keeps accepting mutations, and a bad node fails its step at dispatch instead.
    """

    def __init__(self, view: NodeCatalogKafkaView) -> None:
        self.view = view

    def active(self) -> bool:
        """Whether the catalog holds any entry (else mutations are not checked against it)."""
        self.view.refresh()
        return len(self.view.state) > 0

    def versions(self, name: str) -> Sequence[str]:
        self.view.refresh()
        if name not in self.view.state:
            self.view.catch_up()
        return self.view.state.versions(name)

    def names(self) -> Sequence[str]:
        return self.view.state.names()

    def manifest(self, name: str, version: str) -> Mapping[str, Any] | None:
        """The version's manifest (description, input schema): what ai.meta shows its LLM."""
        return self.view.state.manifest(name, version)
