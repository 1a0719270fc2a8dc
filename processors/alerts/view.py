"""The latest state of every alert, read from the ``alerts`` topic.

The topic holds transitions keyed by rule id (see :mod:`streams.catalog`), so the view reads every
partition from the beginning and keeps the last record per (rule_id, subject). It never commits:
each process builds its own view (the API for ``GET /v1/alerts``, the evaluator at start-up to
know what is firing). :meth:`AlertsView.catch_up` reads up to the high watermarks seen when it is
called, so a caller sees everything published before it asked.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from types import TracebackType
from typing import Self

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from processors.alerts.records import from_record
from processors.alerts.rules import AlertEvent, AlertKey
from reflux.errors import ServiceUnavailableError
from reflux.settings import Settings
from schemas import decode
from schemas.errors import SchemaError
from schemas.models import Alert, AlertState
from streams.catalog import TopicCatalog

__all__ = ["AlertsView", "AlertsViewError"]

log = logging.getLogger(__name__)


class AlertsViewError(ServiceUnavailableError):
    error_class = "AlertsView"


class AlertsView:
    """Thread-safe: API requests call :meth:`catch_up` and read concurrently."""

    def __init__(
        self,
        settings: Settings,
        catalog: TopicCatalog | None = None,
        *,
        metadata_timeout_s: float = 10.0,
    ) -> None:
        self.catalog = catalog or TopicCatalog.from_settings(settings)
        self.topic = self.catalog.alerts.topic
        self._lock = threading.Lock()
        self._latest: dict[AlertKey, AlertEvent] = {}
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                # Never used to commit: every view reads the whole topic.
                "group.id": f"{settings.topic_prefix}.alerts-view-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "allow.auto.create.topics": False,
            }
        )
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=metadata_timeout_s)
        except KafkaException as exc:
            self._consumer.close()
            raise AlertsViewError(
                f"Kafka at {settings.kafka_bootstrap} is unavailable, so the alerts topic "
                f"{self.topic!r} cannot be read: {exc}"
            ) from exc
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            self._consumer.close()
            raise AlertsViewError(
                f"Expected the alerts topic {self.topic!r} on Kafka, but it does not exist yet "
                "(the alert evaluator, `reflux dev` and `reflux topics ensure` create it)"
            )
        self._partitions = [
            TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in sorted(topic.partitions)
        ]
        self._consumer.assign(self._partitions)

    def _apply(self, data: bytes | None) -> None:
        if data is None:
            return
        try:
            event = from_record(decode(data, Alert))
        except SchemaError as exc:
            log.warning("ignoring an unreadable alerts record: %s", exc)
            return
        self._latest[event.key] = event

    def _poll(self, timeout: float) -> int:
        messages = self._consumer.consume(num_messages=500, timeout=timeout)
        for message in messages:
            if message.error() is None:
                self._apply(message.value())
        return len(messages)

    def catch_up(self, timeout: float = 10.0) -> None:
        """Read until every partition reached the high watermark it had when this was called;
        raises :class:`AlertsViewError` if that takes longer than ``timeout``."""
        with self._lock:
            targets: dict[int, int] = {}
            try:
                for tp in self._partitions:
                    low, high = self._consumer.get_watermark_offsets(tp, timeout=timeout)
                    # An empty partition (or one emptied by retention) has nothing to wait for.
                    targets[tp.partition] = high if high > low else 0
            except KafkaException as exc:
                raise AlertsViewError(f"Kafka did not answer for {self.topic!r}: {exc}") from exc
            deadline = time.monotonic() + timeout
            while True:
                positions = self._consumer.position(
                    [TopicPartition(self.topic, p) for p in targets]
                )
                behind = [
                    tp.partition
                    for tp in positions
                    if targets[tp.partition] > 0 and tp.offset < targets[tp.partition]
                ]
                if not behind:
                    return
                if time.monotonic() > deadline:
                    raise AlertsViewError(
                        f"Expected to read {self.topic!r} up to its end within {timeout}s, but "
                        f"partitions {behind} are still behind"
                    )
                self._poll(timeout=0.1)

    def latest(self) -> list[AlertEvent]:
        """The last transition of every alert ever seen, by rule then subject."""
        with self._lock:
            return [self._latest[k] for k in sorted(self._latest)]

    def active(self) -> dict[AlertKey, AlertEvent]:
        """The firing event of every alert whose latest transition is ``firing``."""
        with self._lock:
            return {k: e for k, e in self._latest.items() if e.state is AlertState.FIRING}

    def close(self) -> None:
        with self._lock:
            self._consumer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
