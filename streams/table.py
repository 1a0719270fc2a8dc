"""Reading a (compacted) topic as a table: every partition, from the beginning, never committed.

Views that must see a whole topic wherever they run (registered workflow versions, the node
catalog, alert states) use one of these instead of a consumer group: a group would split the
partitions between instances, and a committed position would skip the history a new instance
needs to rebuild its view.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from reflux.settings import Settings

__all__ = ["TopicTableReader"]

BATCH = 500


class TopicTableReader:
    """Feeds every record of ``topic`` (all partitions, from offset 0) to ``apply``."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        apply: Callable[[bytes | None], None],
        *,
        name: str,
        metadata_timeout: float = 10.0,
    ) -> None:
        self.topic = topic
        self._apply = apply
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                # Required by librdkafka, never used to commit: positions live in this object.
                "group.id": f"{settings.topic_prefix}.{name}-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "allow.auto.create.topics": False,
            }
        )
        metadata = self._consumer.list_topics(topic, timeout=metadata_timeout)
        partitions = sorted(metadata.topics[topic].partitions)
        self._partitions = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
        self._consumer.assign(self._partitions)

    def poll(self, timeout: float = 0.0) -> int:
        """Applies what has arrived (waiting up to ``timeout`` for the first record)."""
        first = self._consumer.poll(timeout)
        if first is None:
            return 0
        messages = [first, *self._consumer.consume(BATCH - 1, 0)]
        for message in messages:
            if message.error() is None:
                self._apply(message.value())
        return len(messages)

    def drain(self) -> None:
        """Applies everything already fetched, without waiting."""
        while self.poll(timeout=0) >= BATCH:
            pass

    def catch_up(self, timeout: float = 10.0) -> bool:
        """Reads until every partition reached the high watermark seen now; False on timeout."""
        targets = {
            tp.partition: self._consumer.get_watermark_offsets(tp, timeout=5)[1]
            for tp in self._partitions
        }
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            positions = self._consumer.position([TopicPartition(self.topic, p) for p in targets])
            if all(
                tp.offset >= targets[tp.partition] or targets[tp.partition] == 0 for tp in positions
            ):
                return True
            self.poll(timeout=0.1)
        return False

    def close(self) -> None:
        self._consumer.close()
