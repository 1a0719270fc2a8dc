"""Reading partitions of a compacted schedules topic from the beginning, keys included.

Like :class:`streams.table.TopicTableReader`, but for chosen partitions (a processor reads the
progress of the schedules it owns) and with the key (a tombstone has no value to say what it
deletes). Never committed: positions live in this object.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from foundation.errors import ServiceUnavailableError
from foundation.settings import Settings
from streams.security import kafka_client_config
from streams.watermarks import WatermarkReader

__all__ = ["KeyedTableReader"]

BATCH = 500
Apply = Callable[[str, bytes | None, int], None]
"""(key, value or None for a tombstone, partition)."""


class KeyedTableReader:
    def __init__(
        self,
        settings: Settings,
        topic: str,
        apply: Apply,
        *,
        name: str,
        partitions: Collection[int] | None = None,
        metadata_timeout: float = 10.0,
    ) -> None:
        self.topic = topic
        self._apply = apply
        config = {
            **kafka_client_config(settings),
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
            self.close()
            raise ServiceUnavailableError(
                f"Kafka at {settings.kafka_bootstrap} is unavailable, so {topic!r} cannot be "
                f"read: {exc}"
            ) from exc
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            self.close()
            raise ServiceUnavailableError(
                f"Expected the topic {topic!r} on Kafka, but it does not exist yet "
                "(`reflux topics create` creates the catalog's topics)"
            )
        chosen = sorted(found.partitions) if partitions is None else sorted(partitions)
        self._partitions = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in chosen]
        self._consumer.assign(self._partitions)

    def poll(self, timeout: float = 0.0) -> int:
        first = self._consumer.poll(timeout)
        if first is None:
            return 0
        messages = [first, *self._consumer.consume(BATCH - 1, 0)]
        for message in messages:
            if message.error() is None:
                raw_key = message.key()
                key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key or "")
                self._apply(key, message.value(), message.partition() or 0)
        return len(messages)

    def catch_up(self, timeout: float = 10.0) -> list[int]:
        """Reads until every partition reached the end it had now; returns the partitions
        still behind when ``timeout`` ran out (empty: caught up)."""
        if not self._partitions:
            return []
        marks = self._ends.ends([(tp.topic, tp.partition) for tp in self._partitions], timeout)
        targets = {p: high if high > low else 0 for (_, p), (low, high) in marks.items()}
        deadline = time.monotonic() + timeout
        while True:
            positions = self._consumer.position([TopicPartition(self.topic, p) for p in targets])
            behind = [
                tp.partition
                for tp in positions
                if targets[tp.partition] > 0 and tp.offset < targets[tp.partition]
            ]
            if not behind or time.monotonic() > deadline:
                return behind
            self.poll(timeout=0.1)

    def close(self) -> None:
        self._ends.close()
        self._consumer.close()
