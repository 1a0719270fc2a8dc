"""Attempt timers wait until the scheduler has read the worker records they race with.

A step's queue timer decides that no worker started the attempt, its step-timeout timer that
the worker running it is lost. The start signal or the result may already be on ``results``,
merely unread: after a restart (the rebuilt runs' timers fall due before the partition's backlog
is read) or under load (the scheduler lags behind the results). Firing then would fail an
attempt that did start, or finish in time. So a due queue or step-timeout timer of a run on
partition *p* fires only once the scheduler has read results partition *p*

- to the end it had when *p* was assigned (a restart's backlog, from the committed offset), and
- up to the timer's due time: the last record read was created at or after it, or nothing is
  left to read (the position is at the high watermark the consumer last saw).

A lagging scheduler therefore fires these timers as late as it reads the results, never earlier.
Backoff and run-deadline timers are not held: no worker record can make them obsolete.
(docs/decisions/0013-execution-and-queue-timeouts.md)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)

from processors.scheduler.evolve import ATTEMPT_TIMER_KINDS
from schemas.models import FireTimer

__all__ = ["ResultsGate", "read_past"]

log = logging.getLogger(__name__)


def read_past(due_ms: int, *, read_until_ms: int | None, position: int, high: int | None) -> bool:
    """Whether a results partition has been read past ``due_ms``: a record created at or after
    it was read, or the position is at the high watermark (``None``: unknown, nothing fetched
    since the assignment, so nothing is waiting either)."""
    if read_until_ms is not None and read_until_ms >= due_ms:
        return True
    return high is None or high < 0 or position >= high


class ResultsGate:
    """Per assigned results partition: how far the scheduler has read (see the module doc)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._backlog: dict[int, int] = {}
        """Partition -> the end offset at assignment, until the position reaches it."""
        self._position: dict[int, int] = {}
        self._read_until: dict[int, int] = {}

    def assigned(self, consumer: Consumer, partitions: Iterable[TopicPartition]) -> None:
        """Remember where each newly assigned results partition starts and must get to."""
        tps = [
            TopicPartition(self.topic, tp.partition) for tp in partitions if tp.topic == self.topic
        ]
        if not tps:
            return
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
        for tp in tps:
            low, high = consumer.get_watermark_offsets(tp, timeout=10) or (0, 0)
            start = committed.get(tp.partition, -1)
            start = start if start >= 0 else low
            self._position[tp.partition] = start
            self._read_until.pop(tp.partition, None)
            if start < high:
                self._backlog[tp.partition] = high
            else:
                self._backlog.pop(tp.partition, None)
        log.info("results backlog to read before attempt timers fire: %s", self._backlog)

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            if tp.topic == self.topic:
                self._backlog.pop(tp.partition, None)
                self._position.pop(tp.partition, None)
                self._read_until.pop(tp.partition, None)

    def consumed(self, message: Message) -> None:
        if message.topic() != self.topic:
            return
        partition, offset = message.partition() or 0, message.offset() or 0
        self._position[partition] = max(self._position.get(partition, 0), offset + 1)
        kind, created_ms = message.timestamp()
        if kind != TIMESTAMP_NOT_AVAILABLE:
            self._read_until[partition] = max(
                self._read_until.get(partition, created_ms), created_ms
            )

    def allows(self, consumer: Consumer, partition: int, timer: FireTimer) -> bool:
        """Whether ``timer`` (of a run on ``partition``) may fire now."""
        if timer.kind not in ATTEMPT_TIMER_KINDS:
            return True
        position = self._position.get(partition, 0)
        end = self._backlog.get(partition)
        if end is not None:
            if position < end:
                return False
            del self._backlog[partition]
        high: int | None = None
        try:
            watermarks = consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), cached=True
            )
            high = watermarks[1] if watermarks else None
        except KafkaException:
            pass  # unknown: the recorded read time decides alone
        due_ms = int(timer.due_at.timestamp() * 1000)
        return read_past(
            due_ms, read_until_ms=self._read_until.get(partition), position=position, high=high
        )
