"""A typed consumer with manual commits and dead-lettering of poison records.

Positions, the commit order and rebalance handling are :mod:`streams.checkpoint`'s, with a
synchronous consumer-offset commit as the target: :meth:`Consumer.commit` flushes the caller's
producers (``commit(flush=[...])``), then the dead-letter producer, then commits. Processing is
at-least-once.

Poison records never block a partition: a record that cannot be decoded (``MalformedRecordError``,
``UnknownSchemaError``, any ``SchemaError``) or whose handler raises a non-retryable error is
published to ``dlq`` (:mod:`streams.dlq`) and processing continues with the next record. A handler
that raises a *retryable* error (:class:`foundation.errors.RetryableError`) makes :meth:`process`
rewind that partition to the failed record; the rest of the batch goes on.

Positions: a record counts as consumed once it was handed to the caller (``poll_batch`` /
iteration) or dead-lettered; :meth:`Consumer.commit` without arguments commits those positions.
That matches a single-threaded loop, where the caller is done with the previous records when it
asks for more. On a rebalance, revoked partitions commit their positions before they go and lost
ones are dropped (see :mod:`streams.checkpoint`).

The ``range`` assignor is used on purpose: it gives one member the same partition numbers of
every subscribed topic, which is what co-partitioned topics (``commands``/``runs``/``results``)
need.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from confluent_kafka import Consumer as _KafkaConsumer
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from foundation.closing import Closing
from foundation.errors import NonRetryableError, ServiceUnavailableError, classify
from foundation.settings import Settings, get_settings
from schemas import serde
from schemas.base import RefluxRecord
from schemas.errors import SchemaError
from streams.checkpoint import Checkpoint, ConsumerCommit, RebalanceHook
from streams.dlq import DeadLetterPublisher, PoisonRecord, message_headers, poison_record
from streams.metrics import consumer_statistics
from streams.producer import TYPE_HEADER, Producer
from streams.security import kafka_client_config
from streams.topics import TopicCatalog, TopicSpec

T = TypeVar("T")

__all__ = [
    "LOOP_POLL_S",
    "BatchResult",
    "ConsumedRecord",
    "Consumer",
    "RebalanceHook",
    "consumer_config",
    "error_class_of",
    "is_retryable",
]

log = logging.getLogger(__name__)

LOOP_POLL_S: Final = 0.1
"""How long a component's loop waits for records before it looks at its stop event again: the
bound on how long stopping it takes. A wait returns as soon as records arrive, so this only
sets the idle wake-ups (10 a second, ~1 ms of CPU); at 0.5 s, stopping a `DevEngine` took
0.5 s (every integration test pays it in its teardown)."""

Decoder = Callable[[bytes], RefluxRecord]

DEFAULT_CONFIG: Final[Mapping[str, Any]] = {
    "enable.auto.commit": False,
    # Positions are tracked here, not by librdkafka's store, so nothing advances by accident.
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "range",
    "isolation.level": "read_committed",
    # A member that dies without leaving (kill -9, lost host) holds its partitions until the
    # session times out; 10 s instead of librdkafka's 45 s bounds that stall for every run.
    "session.timeout.ms": 10_000,
    "heartbeat.interval.ms": 2_000,
}
_FORCED: Final[Mapping[str, Any]] = {"enable.auto.commit": False}


def consumer_config(
    group_id: str, settings: Settings | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    settings = settings or get_settings()
    config: dict[str, Any] = {
        **kafka_client_config(settings),
        "group.id": group_id,
        **DEFAULT_CONFIG,
        # Lag per partition for /metrics, only while this process serves them (ADR 0060).
        **consumer_statistics(group_id, settings.metrics_lag_interval_ms),
    }
    config.update(overrides or {})
    config.update(_FORCED)
    return config


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    """One decoded record and where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: RefluxRecord | None
    """The decoded record; ``None`` for a tombstone (compacted topics) or a ``raw`` consumer."""
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int | None
    raw: bytes | None

    def header(self, name: str) -> bytes | None:
        """The last value of a header, or ``None``."""
        for header_name, value in reversed(self.headers):
            if header_name == name:
                return value
        return None

    @property
    def record_type(self) -> str | None:
        value = self.header(TYPE_HEADER)
        return value.decode() if value is not None else None

    def poison(self) -> PoisonRecord:
        return PoisonRecord(
            self.topic, self.partition, self.offset, self.key, self.raw, self.headers
        )


@dataclass(frozen=True, slots=True)
class BatchResult:
    processed: int = 0
    dead_lettered: int = 0
    retried: int = 0
    """Partitions rewound because a handler raised a retryable error."""

    @property
    def empty(self) -> bool:
        return not (self.processed or self.dead_lettered or self.retried)


def kafka_transient(exc: BaseException) -> bool:
    """A ``KafkaException`` whose ``KafkaError`` says retriable (the streams layer's
    :data:`~foundation.errors.TransientRule`)."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return bool(exc.args[0].retriable())
    return False


def retry_transient(
    call: Callable[[], T],
    timeout: float,
    *,
    refresh: Callable[[], object] | None = None,
    backoff_s: float = 0.1,
    transient: Callable[[BaseException], bool] | None = None,
) -> T:
    """``call()``, again while it raises a retriable ``KafkaException`` (:func:`kafka_transient`:
    NOT_LEADER_FOR_PARTITION on a topic created moments ago or a partition whose leader just
    moved) and ``timeout`` seconds have not passed; then the last error propagates.

    ``refresh``: called before each retry, e.g. a metadata request for the topic: a client does
    not refresh the leaders it cached on such an error by itself soon enough (seen: still
    NOT_LEADER_FOR_PARTITION after 10 s of retries in ``make test``).

    ``transient``: which errors are retried, instead of :func:`kafka_transient`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except KafkaException as exc:
            if not (transient or kafka_transient)(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(backoff_s)
            if refresh is not None:
                with contextlib.suppress(KafkaException):
                    refresh()


def is_retryable(exc: BaseException) -> bool:
    """Whether a handler failure should be retried (rewind) rather than dead-lettered:
    :func:`foundation.errors.classify` with :func:`kafka_transient`.

    Only errors that say so are retried; anything else (bugs included) would block the
    partition forever if retried, so it is dead-lettered with its original bytes instead.
    Wrap transient I/O failures in :class:`foundation.errors.RetryableError`.
    """
    return classify(exc, transient=kafka_transient).retryable


def error_class_of(exc: BaseException) -> str:
    """The dead letter's error class: :func:`foundation.errors.classify`'s."""
    return classify(exc).error_class


def consume_available(consumer: _KafkaConsumer, max_messages: int, timeout: float) -> list[Message]:
    """Up to ``max_messages`` messages, returning as soon as at least one is there.

    librdkafka's ``consume(n, timeout)`` waits for the full ``n`` or the whole ``timeout`` (1 record
    with ``consume(500, 1.0)`` takes 1 s here), which would put the poll timeout on every hop of a
    run. So: block in ``poll`` for the first message, then drain what is already fetched.
    """
    first = consumer.poll(timeout)
    if first is None:
        return []
    if max_messages <= 1:
        return [first]
    return [first, *consumer.consume(max_messages - 1, 0)]


def consume_messages(
    consumer: _KafkaConsumer,
    max_messages: int,
    timeout: float,
    *,
    what: str,
    logger: logging.Logger | None = None,
) -> list[Message]:
    """:func:`consume_available` minus error events: an unreachable broker raises
    :class:`ServiceUnavailableError` (retryable), a fatal client error raises a non-retryable
    ``KafkaFatal``, end-of-partition events are dropped and other errors are logged."""
    try:
        messages = consume_available(consumer, max_messages, timeout)
    except KafkaException as exc:
        raise ServiceUnavailableError(f"Expected to consume {what}: {exc}") from exc
    good: list[Message] = []
    for message in messages:
        error = message.error()
        if error is None:
            good.append(message)
        elif error.fatal():
            raise NonRetryableError(
                f"Expected to consume {what}, but the client failed: {error}",
                error_class="KafkaFatal",
            )
        elif error.code() != KafkaError._PARTITION_EOF:
            (logger or log).warning("%s: %s", what, error)
    return good


class Consumer(Closing):
    """Subscribes to topics in a consumer group; see the module docstring for the contract."""

    def __init__(
        self,
        topics: Sequence[str | TopicSpec],
        group_id: str,
        settings: Settings | None = None,
        *,
        catalog: TopicCatalog | None = None,
        dead_letters: DeadLetterPublisher | None = None,
        config: Mapping[str, Any] | None = None,
        expected: type[RefluxRecord] | tuple[type[RefluxRecord], ...] | None = None,
        decoder: Decoder | None = None,
        raw: bool = False,
        on_assign: RebalanceHook | None = None,
        on_revoke: RebalanceHook | None = None,
        on_lost: RebalanceHook | None = None,
    ) -> None:
        settings = settings or get_settings()
        self.group_id = group_id
        self.topics = [t.topic if isinstance(t, TopicSpec) else t for t in topics]
        if decoder is None:
            # A record of a type this consumer cannot handle is poison too (dead-lettered).
            def decoder(data: bytes) -> RefluxRecord:
                return serde.decode(data, expected)

        self._decoder: Decoder = decoder
        # raw: records are handed over undecoded (``value`` None, the bytes in ``raw``) for a
        # topic that takes more than REFLUX Avro; the handler decodes, and what it raises is
        # dead-lettered like a record that does not decode (the trigger router, ADR 0053).
        self._raw = raw
        self._owned_producer: Producer | None = None
        if dead_letters is None:
            catalog = catalog or TopicCatalog.from_settings(settings)
            self._owned_producer = Producer(settings, client_id=f"{group_id}-dlq")
            dead_letters = DeadLetterPublisher(self._owned_producer, catalog.dlq, group_id)
        self.dead_letters = dead_letters
        self._consumer = _KafkaConsumer(consumer_config(group_id, settings, config))
        self.checkpoint = Checkpoint(
            ConsumerCommit(self._consumer, group_id),
            dead_letters=dead_letters,
            name=group_id,
            on_assign=on_assign,
            on_revoke=on_revoke,
            on_lost=on_lost,
        )
        self.checkpoint.subscribe(self._consumer, self.topics)
        self._closed = False

    # -- reading -------------------------------------------------------------------------------

    def _consume(self, max_records: int, timeout: float) -> list[Message]:
        return consume_messages(
            self._consumer, max_records, timeout, what=f"{self.topics} ({self.group_id})"
        )

    def _decode(self, message: Message) -> ConsumedRecord | None:
        """The decoded record, or ``None`` after dead-lettering a record that cannot be decoded."""
        value = message.value()
        try:
            decoded = None if value is None or self._raw else self._decoder(value)
        except SchemaError as exc:
            self.dead_letters.publish(poison_record(message), exc.error_class, str(exc))
            return None
        timestamp_type, timestamp = message.timestamp()
        return ConsumedRecord(
            topic=message.topic() or "",
            partition=message.partition() or 0,
            offset=message.offset() or 0,
            key=message.key(),
            value=decoded,
            headers=message_headers(message),
            timestamp_ms=timestamp if timestamp_type else None,
            raw=value,
        )

    def poll_batch(self, max_records: int = 500, timeout: float = 1.0) -> list[ConsumedRecord]:
        """Up to ``max_records`` decoded records; poison ones are dead-lettered and left out."""
        records: list[ConsumedRecord] = []
        for message in self._consume(max_records, timeout):
            record = self._decode(message)
            self.checkpoint.advance(
                (message.topic() or "", message.partition() or 0), message.offset() or 0
            )
            if record is not None:
                records.append(record)
        return records

    def records(
        self, poll_timeout: float = 1.0, *, idle_timeout: float | None = None
    ) -> Iterator[ConsumedRecord]:
        """Records one by one; ends after ``idle_timeout`` seconds without any (never if None)."""
        last_seen = time.monotonic()
        while not self._closed:
            messages = self._consume(500, poll_timeout)
            if messages:
                last_seen = time.monotonic()
            elif idle_timeout is not None and time.monotonic() - last_seen >= idle_timeout:
                return
            for message in messages:
                record = self._decode(message)
                # Advance before yielding: a caller that breaks out after processing this
                # record must still commit it.
                self.checkpoint.advance(
                    (message.topic() or "", message.partition() or 0), message.offset() or 0
                )
                if record is not None:
                    yield record

    def __iter__(self) -> Iterator[ConsumedRecord]:
        return self.records()

    def process(
        self,
        handler: Callable[[ConsumedRecord], None],
        *,
        max_records: int = 500,
        timeout: float = 1.0,
        flush: Sequence[Producer] = (),
        retry_backoff: float = 0.2,
    ) -> BatchResult:
        """Poll one batch, run ``handler`` on each record, then flush and commit.

        A record whose handler raises a retryable error is re-delivered by rewinding its
        partition (the following records of that partition wait); any other failure
        dead-letters the record and processing goes on.
        """
        processed = dead = retried = 0
        rewound: set[tuple[str, int]] = set()
        for message in self._consume(max_records, timeout):
            tp = (message.topic() or "", message.partition() or 0)
            offset = message.offset() or 0
            if tp in rewound:
                continue
            record = self._decode(message)
            if record is None:
                dead += 1
            else:
                try:
                    handler(record)
                    processed += 1
                except Exception as exc:
                    if is_retryable(exc):
                        log.info("retrying %s/%s@%s: %s", tp[0], tp[1], offset, exc)
                        self._consumer.seek(TopicPartition(tp[0], tp[1], offset))
                        rewound.add(tp)
                        retried += 1
                        continue
                    log.warning("dead-lettering %s/%s@%s: %s", tp[0], tp[1], offset, exc)
                    reason = str(exc) or repr(exc)
                    self.dead_letters.publish(record.poison(), error_class_of(exc), reason)
                    dead += 1
            self.checkpoint.advance(tp, offset)
        self.commit(flush=flush)
        if rewound and retry_backoff > 0:
            time.sleep(retry_backoff)
        return BatchResult(processed=processed, dead_lettered=dead, retried=retried)

    # -- committing ----------------------------------------------------------------------------

    def commit(
        self,
        records: Iterable[ConsumedRecord] | None = None,
        *,
        flush: Sequence[Producer] = (),
        timeout: float = 30.0,
    ) -> dict[tuple[str, int], int]:
        """Flush ``flush`` and the DLQ, then commit; returns the committed positions.

        Without ``records``, commits everything handed out or dead-lettered so far; with them,
        the position just after the last given record of each partition.
        """
        positions: dict[tuple[str, int], int] | None = None
        if records is not None:
            positions = {}
            for r in records:
                key = (r.topic, r.partition)
                positions[key] = max(positions.get(key, 0), r.offset + 1)
        return self.checkpoint.commit(positions=positions, flush=flush, timeout=timeout)

    def committed(self, timeout: float = 10.0) -> dict[tuple[str, int], int]:
        """The group's committed offsets for the assigned partitions (for tests and tooling)."""
        assigned = self._consumer.assignment()
        if not assigned:
            return {}
        return {
            (tp.topic, tp.partition): tp.offset
            for tp in self._consumer.committed(assigned, timeout=timeout)
        }

    def assignment(self) -> list[TopicPartition]:
        return self._consumer.assignment()

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self, *, commit: bool = True) -> None:
        """Commit what was consumed (DLQ flushed first), leave the group, release clients."""
        if self._closed:
            return
        self._closed = True
        try:
            if commit:
                self.commit()
        finally:
            # Leaving the group revokes the partitions; the revoke callback must not commit
            # what the caller chose not to (or failed to) commit.
            self.checkpoint.clear()
            try:
                self._consumer.close()
            finally:
                if self._owned_producer is not None:
                    self._owned_producer.close()

    def close_after_error(self, error: BaseException) -> None:
        # Do not commit: the records were possibly not processed.
        self.close(commit=False)
