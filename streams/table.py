"""Reading a (compacted) topic as a table: every partition, from the beginning, never committed.

Views that must see a whole topic wherever they run (registered workflow versions, the node
catalog, alert states) use one of these instead of a consumer group: a group would split the
partitions between instances, and a committed position would skip the history a new instance
needs to rebuild its view. :class:`KeyedTableReader` reads chosen partitions and hands over
each record's key (a tombstone has no value to say what it deletes): the schedule processor
reads the progress of the schedules it owns with it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from foundation.errors import ServiceUnavailableError
from foundation.settings import Settings
from streams.security import kafka_client_config
from streams.watermarks import WatermarkReader

__all__ = ["KeyedApply", "KeyedTableReader", "TopicTableReader"]

BATCH = 500

KeyedApply = Callable[[str, bytes | None, int], None]
"""``(key, value or None for a tombstone, partition)``."""


class _TableReader:
    """Reads ``partitions`` of ``topic`` (all: ``None``) from offset 0; subclasses say what a
    record is handed to."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        *,
        name: str,
        partitions: Collection[int] | None = None,
        metadata_timeout: float = 10.0,
    ) -> None:
        self.topic = topic
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
        """Applies what has arrived (waiting up to ``timeout`` for the first record)."""
        first = self._consumer.poll(timeout)
        if first is None:
            return 0
        messages = [first, *self._consumer.consume(BATCH - 1, 0)]
        for message in messages:
            if message.error() is None:
                self._deliver(message)
        return len(messages)

    def _deliver(self, message: Message) -> None:
        raise NotImplementedError

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
        if not self._partitions:
            return []
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


class TopicTableReader(_TableReader):
    """Feeds every record's value of ``topic`` (all partitions, from offset 0) to ``apply``."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        apply: Callable[[bytes | None], None],
        *,
        name: str,
        metadata_timeout: float = 10.0,
    ) -> None:
        self._apply = apply
        super().__init__(settings, topic, name=name, metadata_timeout=metadata_timeout)

    def _deliver(self, message: Message) -> None:
        self._apply(message.value())


class KeyedTableReader(_TableReader):
    """Feeds ``(key, value, partition)`` of every record of ``partitions`` (all: ``None``)."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        apply: KeyedApply,
        *,
        name: str,
        partitions: Collection[int] | None = None,
        metadata_timeout: float = 10.0,
    ) -> None:
        self._apply_keyed = apply
        super().__init__(
            settings, topic, name=name, partitions=partitions, metadata_timeout=metadata_timeout
        )

    def _deliver(self, message: Message) -> None:
        raw_key = message.key()
        key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key or "")
        self._apply_keyed(key, message.value(), message.partition() or 0)
