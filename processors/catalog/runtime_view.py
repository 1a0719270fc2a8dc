"""The scheduler's view of the node catalog, read from the compacted ``nodes`` topic.

Every scheduler instance reads all partitions of ``nodes`` (any run may use any node), folds
them into a :class:`~processors.catalog.state.CatalogState` and resolves versions with
:func:`~processors.catalog.rollout.choose_version`. Same pattern as
:mod:`processors.scheduler.runtime_workflows`: an unassigned consumer that never commits and
always starts from the beginning of the topic.

Freshness: the view drains what has arrived at most every ``refresh_interval`` seconds, so a
weight change reaches new runs within about that time plus the broker's latency. When a step
cannot be resolved, the view first catches up to the high watermarks once (a version promoted or
registered a moment ago must not fail a run by a race) and only then lets the error through.
"""

from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from processors.catalog.rollout import NodeVersionUnavailableError
from processors.catalog.state import CatalogState
from processors.scheduler.decide import default_resolve_node_version
from reflux.settings import Settings
from schemas import decode
from schemas.errors import SchemaError
from schemas.models import NodeCatalogEntry
from streams.catalog import TopicCatalog

__all__ = ["CatalogResolver", "NodeCatalogKafkaView"]

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
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                # Never used to commit: the view always reads the compacted topic from the start.
                "group.id": f"{settings.topic_prefix}.scheduler-nodes-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        metadata = self._consumer.list_topics(self.topic, timeout=10)
        partitions = sorted(metadata.topics[self.topic].partitions)
        self._partitions = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions]
        self._consumer.assign(self._partitions)

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
        messages = self._consumer.consume(num_messages=500, timeout=timeout)
        for message in messages:
            if message.error() is None:
                self._apply(message.value())
        self._last_poll = time.monotonic()
        return len(messages)

    def refresh(self) -> None:
        """Drain what has arrived, at most every ``refresh_interval`` seconds."""
        if time.monotonic() - self._last_poll >= self.refresh_interval:
            while self.poll(timeout=0) >= 500:
                pass

    def catch_up(self, timeout: float = 10.0) -> None:
        """Reads until every partition reached the high watermark seen now."""
        targets = {}
        for tp in self._partitions:
            _, high = self._consumer.get_watermark_offsets(tp, timeout=5)
            targets[tp.partition] = high
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            positions = self._consumer.position([TopicPartition(self.topic, p) for p in targets])
            if all(
                tp.offset >= targets[tp.partition] or targets[tp.partition] == 0 for tp in positions
            ):
                return
            self.poll(timeout=0.1)

    def close(self) -> None:
        self._consumer.close()


class CatalogResolver:
    """``DecisionContext.resolve_node_version`` backed by a catalog view.

    A node the catalog has never heard of resolves as before the catalog existed
    (:func:`~processors.scheduler.decide.default_resolve_node_version`: the exact pin, else the
    constraint, whose major picks the invoke topic), so deployments without catalog entries keep
    working. A known node with no usable version raises
    :class:`~processors.catalog.rollout.NodeVersionUnavailableError` after one catch-up.
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
