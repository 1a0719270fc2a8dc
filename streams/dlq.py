"""Dead-lettering: park a poison record on the ``dlq`` topic, with its origin and error.

A record is poison when it cannot be decoded (malformed bytes, unknown schema fingerprint) or its
handler fails with a non-retryable error. Blocking the partition on it would stall every run
behind it, so it is moved aside instead: the DLQ record keeps the original key and value bytes
untouched plus topic/partition/offset, so it can be inspected and re-driven later.

The DLQ record is keyed by the original key (DESIGN.md section 3). Kafka headers repeat the
essentials (``reflux-error-class``, ``reflux-reason``, ``reflux-origin``, ``reflux-group``) so a
person can triage with a console consumer; the original headers ride along prefixed with
``reflux-original-``.

Publishing only queues the record: a loop's checkpoint flushes the DLQ producer before it commits
the poison record's offset (the commit order, :mod:`streams.checkpoint`), so a crash in between
re-delivers the record rather than losing it. :func:`poison_record` turns a consumed message into
what is dead-lettered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from confluent_kafka import Message

from schemas.models import DeadLetter
from streams.producer import Producer
from streams.topics import TopicSpec

__all__ = [
    "ERROR_CLASS_HEADER",
    "ORIGINAL_HEADER_PREFIX",
    "ORIGIN_HEADER",
    "REASON_HEADER",
    "DeadLetterPublisher",
    "PoisonRecord",
    "dead_letter_headers",
    "message_headers",
    "poison_record",
]

ERROR_CLASS_HEADER: Final = "reflux-error-class"
REASON_HEADER: Final = "reflux-reason"
ORIGIN_HEADER: Final = "reflux-origin"
GROUP_HEADER: Final = "reflux-group"
ORIGINAL_HEADER_PREFIX: Final = "reflux-original-"
# Headers are for triage; the full reason is in the record.
_MAX_HEADER_REASON: Final = 512


@dataclass(frozen=True, slots=True)
class PoisonRecord:
    """The raw coordinates and bytes of a record that is being given up on."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


def message_headers(message: Message) -> tuple[tuple[str, bytes], ...]:
    """A consumed message's headers as ``(name, bytes)`` pairs, in order.

    confluent-kafka hands them out as a list (or a dict) whose values may be ``str`` or ``None``.
    """
    headers = message.headers() or []
    items = headers.items() if isinstance(headers, dict) else headers
    return tuple(
        (name, value.encode() if isinstance(value, str) else (value or b""))
        for name, value in items
    )


def poison_record(message: Message) -> PoisonRecord:
    """The coordinates, original bytes and headers of a consumed message."""
    return PoisonRecord(
        message.topic() or "",
        message.partition() or 0,
        message.offset() or 0,
        message.key(),
        message.value(),
        message_headers(message),
    )


def dead_letter_headers(
    poison: PoisonRecord, error_class: str, reason: str, group: str
) -> list[tuple[str, bytes]]:
    headers = [
        (ERROR_CLASS_HEADER, error_class.encode()),
        (REASON_HEADER, reason[:_MAX_HEADER_REASON].encode()),
        (ORIGIN_HEADER, f"{poison.topic}/{poison.partition}/{poison.offset}".encode()),
        (GROUP_HEADER, group.encode()),
    ]
    headers.extend((ORIGINAL_HEADER_PREFIX + name, value) for name, value in poison.headers)
    return headers


class DeadLetterPublisher:
    """Queues DeadLetter records on the dlq topic through a (shared) producer."""

    def __init__(self, producer: Producer, dlq: TopicSpec | str, group: str) -> None:
        self.producer = producer
        self.topic = dlq.topic if isinstance(dlq, TopicSpec) else dlq
        self.group = group
        self.published = 0

    def publish(self, poison: PoisonRecord, error_class: str, reason: str) -> DeadLetter:
        record = DeadLetter(
            original_topic=poison.topic,
            partition=poison.partition,
            offset=poison.offset,
            key=poison.key,
            value=poison.value,
            error_class=error_class,
            reason=reason,
            consumer_group=self.group,
            failed_at=datetime.now(UTC),
        )
        self.producer.send(
            self.topic,
            poison.key,
            record,
            dead_letter_headers(poison, error_class, reason, self.group),
        )
        self.published += 1
        return record

    def flush(self, timeout: float = 30.0) -> None:
        """Must return before the poison records' offsets are committed."""
        self.producer.flush(timeout)
