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

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from foundation.errors import ServiceUnavailableError
from foundation.settings import Settings
from streams.security import kafka_client_config
from streams.watermarks import WatermarkReader

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
        config = {
            **kafka_client_config(settings),
            # Required by librdkafka, never used to commit: positions live in this object.
            "group.id": f"{settings.topic_prefix}.{name}-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "allow.auto.create.topics": False,
        }
        self._consumer = Consumer(config)
        self._ends = WatermarkReader(config)
        try:
            metadata = self._consumer.list_topics(topic, timeout=metadata_timeout)
        except KafkaException as exc:
            self._consumer.close()
            raise ServiceUnavailableError(
                f"Kafka at {settings.kafka_bootstrap} is unavailable, so {topic!r} cannot be "
                f"read: {exc}"
            ) from exc
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            self._consumer.close()
            raise ServiceUnavailableError(
                f"Expected the topic {topic!r} on Kafka, but it does not exist yet "
                "(`reflux topics create` creates the catalog's topics)"
            )
        partitions = sorted(found.partitions)
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

    def behind(self, targets: dict[int, int]) -> list[int]:
        """Partitions whose position has not reached ``targets`` (0 = nothing to wait for)."""
        positions = self._consumer.position([TopicPartition(self.topic, p) for p in targets])
        return [
            tp.partition
            for tp in positions
            if targets[tp.partition] > 0 and tp.offset < targets[tp.partition]
        ]

    def high_watermarks(self, timeout: float = 5.0) -> dict[int, int]:
        """Each partition's end now; 0 for an empty one (or one emptied by retention)."""
        marks = self._ends.ends([(tp.topic, tp.partition) for tp in self._partitions], timeout)
        return {p: high if high > low else 0 for (_, p), (low, high) in marks.items()}

    def catch_up(self, timeout: float = 10.0) -> list[int]:
        """Reads until every partition reached the end it had now; returns the partitions still
        behind when ``timeout`` ran out (empty: caught up)."""
        targets = self.high_watermarks()
        deadline = time.monotonic() + timeout
        while True:
            behind = self.behind(targets)
            if not behind or time.monotonic() > deadline:
                return behind
            self.poll(timeout=0.1)

    def close(self) -> None:
        self._ends.close()
        self._consumer.close()
