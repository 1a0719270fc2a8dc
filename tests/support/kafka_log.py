"""Read a whole topic as committed: what a ``read_committed`` consumer may ever see of it."""

from __future__ import annotations

import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from foundation.settings import Settings
from streams.security import kafka_client_config
from tests.support.waiting import eventually

__all__ = ["read_log"]


def read_log(
    settings: Settings, topic: str, partitions: int, timeout: float = 30.0
) -> list[tuple[int, bytes | None, bytes | None]]:
    """Every committed record of ``topic`` up to its end offsets at the call: (partition, key,
    value), in offset order per partition."""
    return [(p, key, value) for p, _, key, value in _read(settings, topic, partitions, timeout)]


def record_offsets(
    settings: Settings, topic: str, partitions: int, timeout: float = 30.0
) -> list[tuple[int, int]]:
    """(partition, offset) of every committed record of ``topic`` up to its end offsets at the
    call (transaction markers take offsets too, and are not records)."""
    return [(p, offset) for p, offset, _, _ in _read(settings, topic, partitions, timeout)]


def _read(
    settings: Settings, topic: str, partitions: int, timeout: float
) -> list[tuple[int, int, bytes | None, bytes | None]]:
    reader = Consumer(
        {
            **kafka_client_config(settings),
            "group.id": f"{settings.topic_prefix}.test-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]

        def watermarks() -> dict[int, int]:
            try:
                return {tp.partition: reader.get_watermark_offsets(tp, 10)[1] for tp in parts}
            except KafkaException as exc:  # a topic created a moment ago: no leader known yet
                raise AssertionError(str(exc)) from exc

        ends = eventually(watermarks, 15, f"the end offsets of {topic}")
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        records: list[tuple[int, int, bytes | None, bytes | None]] = []

        def behind() -> list[int]:
            for message in reader.consume(1000, 0.2):
                if message.error() is None:
                    partition, offset = message.partition() or 0, message.offset() or 0
                    records.append((partition, offset, message.key(), message.value()))
            positions = reader.position(parts)
            return [tp.partition for tp in positions if ends[tp.partition] > max(tp.offset, 0)]

        eventually(
            behind, timeout, f"{topic} read to its end", until=lambda left: not left, interval=0
        )
        return records
    finally:
        reader.close()
