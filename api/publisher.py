"""Publishing the API's records to Kafka, confirmed before the HTTP answer.

A 202 promises the command is on the broker, so every publish waits for the acknowledgement
(``flush``). The shared :class:`streams.producer.Producer` reports delivery failures on the next
``flush`` of *any* caller, so publishes are serialised with a lock: otherwise one request could
receive another's failure and answer 202 for a lost command. ``linger.ms=0`` keeps the serialised
section to one broker round trip; a per-message delivery callback in ``Producer.send`` would
remove the lock.
"""

from __future__ import annotations

import threading
from typing import Any

from api.prometheus import ApiMetrics
from foundation.settings import Settings
from schemas.base import RefluxRecord
from schemas.models import Trace
from schemas.trace_json import TRACE_HEADERS, encode_trace
from streams.producer import Producer
from streams.topics import TopicCatalog, TopicSpec

__all__ = ["Publisher", "api_producer"]


def api_producer(settings: Settings, publish_timeout_s: float) -> Producer:
    timeout_ms = max(1000, int(publish_timeout_s * 1000))
    config: dict[str, Any] = {
        "linger.ms": 0,
        # A message not delivered within the publish timeout is dropped by librdkafka and
        # reported as failed, so a 503 answer is not followed by a late, surprising delivery.
        "delivery.timeout.ms": timeout_ms,
        "request.timeout.ms": min(timeout_ms, 30_000),
    }
    return Producer(settings, config=config, client_id="reflux-api")


class Publisher:
    def __init__(
        self,
        producer: Producer,
        catalog: TopicCatalog,
        metrics: ApiMetrics,
        timeout_s: float,
    ) -> None:
        self.producer = producer
        self.catalog = catalog
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._lock = threading.Lock()

    def publish(
        self,
        topic: TopicSpec,
        key: str,
        record: RefluxRecord,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send and wait for the broker; raises ``DeliveryError`` (-> 503) when not confirmed.
        ``headers``: e.g. the request's trace context (:func:`streams.tracing.trace_headers`)."""
        with self._lock:
            self.producer.send(topic, key, record, headers)
            # Slightly longer than delivery.timeout.ms, so the failure arrives as a callback.
            self.producer.flush(self._timeout_s + 1.0)
        self._metrics.published(type(record).__name__, topic.logical)

    def publish_tombstone(self, topic: TopicSpec, key: str) -> None:
        """Deletes ``key`` from a compacted topic (a null value), confirmed like :meth:`publish`."""
        with self._lock:
            self.producer.send(topic, key, None)
            self.producer.flush(self._timeout_s + 1.0)
        self._metrics.published("Tombstone", topic.logical)

    def publish_trace(self, trace: Trace) -> None:
        """A trace in the topic's JSON wire format (docs/traces.md), keyed by node like the
        workers' and the scheduler's; confirmed by the broker like :meth:`publish`."""
        with self._lock:
            self.producer.send(self.catalog.traces, trace.node, encode_trace(trace), TRACE_HEADERS)
            self.producer.flush(self._timeout_s + 1.0)
        self._metrics.published("Trace", self.catalog.traces.logical)
