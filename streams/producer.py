"""A typed, idempotent producer that never loses a delivery failure silently.

Records are pydantic models encoded by :mod:`schemas.serde`; each message carries a
``reflux-type`` header with the record's Avro full name so tools can route without decoding.

Delivery is asynchronous (librdkafka batches per ``linger.ms``). Failures reported by delivery
callbacks are collected and raised as one :class:`DeliveryError` by the next :meth:`Producer.flush`
(or by :meth:`Producer.close`), so at-least-once code can rely on "flush returned, therefore
everything is on the broker" before it commits offsets.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka import Producer as _KafkaProducer

from foundation.closing import Closing
from foundation.errors import ConfigurationError, RefluxError
from foundation.settings import Settings, get_settings
from schemas import serde
from schemas.base import RefluxRecord
from streams.security import kafka_client_config
from streams.topics import TopicSpec
from streams.warmup import warm_up

log = logging.getLogger(__name__)

__all__ = [
    "TYPE_HEADER",
    "DeliveryError",
    "DeliveryFailure",
    "Headers",
    "Key",
    "Producer",
    "TransactionStuckError",
    "TransactionalProducer",
    "normalize_headers",
    "producer_config",
]

TYPE_HEADER: Final = "reflux-type"
_COMMIT_ATTEMPTS: Final = 3
STUCK_GRACE_S: Final = 10.0
"""How long past its own timeout a transactional call may block before it counts as stuck."""

Key = str | bytes | None
Headers = Mapping[str, str | bytes] | Sequence[tuple[str, str | bytes | None]] | None

# Defaults favour low latency for a workflow engine while still batching under load.
DEFAULT_CONFIG: Final[Mapping[str, Any]] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "batch.size": 256 * 1024,
    "compression.type": "lz4",
    # The Java client's partitioner (murmur2). librdkafka's default (CRC32) would put the same
    # run id on different partitions than faust/aiokafka or Java producers do, breaking the
    # co-partitioning of commands / runs / results across clients.
    "partitioner": "murmur2_random",
    # Bounded: a message that cannot be delivered in this time fails loudly (DeliveryError)
    # instead of hanging a flush forever.
    "delivery.timeout.ms": 30_000,
}


def producer_config(
    settings: Settings | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The librdkafka config; idempotence and ``acks=all`` cannot be weakened by overrides."""
    settings = settings or get_settings()
    config: dict[str, Any] = {**kafka_client_config(settings), **DEFAULT_CONFIG}
    config.update(overrides or {})
    if str(config.get("enable.idempotence")).lower() != "true" or str(config["acks"]) not in {
        "all",
        "-1",
    }:
        raise ConfigurationError(
            "Expected an idempotent producer with acks=all, but the overrides weaken it: "
            f"enable.idempotence={config.get('enable.idempotence')}, acks={config.get('acks')}"
        )
    return config


def normalize_headers(headers: Headers) -> list[tuple[str, bytes]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: list[tuple[str, bytes]] = []
    for name, value in items:
        if value is None:
            out.append((name, b""))
        else:
            out.append((name, value.encode() if isinstance(value, str) else bytes(value)))
    return out


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    topic: str
    key: bytes | None
    code: str
    reason: str
    retriable: bool

    def __str__(self) -> str:
        return f"{self.topic} key={self.key!r}: {self.code} ({self.reason})"


class DeliveryError(RefluxError):
    """One or more messages did not reach the broker."""

    error_class = "Delivery"

    def __init__(self, failures: Sequence[DeliveryFailure], note: str = "") -> None:
        self.failures = tuple(failures)
        # Retrying helps only if every failure is transient (e.g. a timeout, not a size limit).
        self.retryable = bool(self.failures) and all(f.retriable for f in self.failures)
        shown = "\n".join(f"  - {f}" for f in self.failures[:10])
        more = f"\n  ... and {len(self.failures) - 10} more" if len(self.failures) > 10 else ""
        super().__init__(
            f"Expected every message to be delivered, but {len(self.failures)} failed"
            f"{note}:\n{shown}{more}"
        )


def _failure(topic: str, key: bytes | None, error: KafkaError) -> DeliveryFailure:
    return DeliveryFailure(
        topic=topic, key=key, code=error.name(), reason=error.str(), retriable=error.retriable()
    )


class Producer(Closing):
    """Sends records and raw bytes; see the module docstring for the failure contract."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        client_id: str = "reflux",
    ) -> None:
        self._config = producer_config(settings, {"client.id": client_id, **(config or {})})
        self._producer = _KafkaProducer(self._config)
        self._failures: list[DeliveryFailure] = []
        self._closed = False
        self._warm = False

    @property
    def config(self) -> Mapping[str, Any]:
        return dict(self._config)

    def _ensure_warm(self) -> None:
        """:func:`streams.warmup.warm_up`, once per producer."""
        if not self._warm:
            self._warm = True
            warm_up(self._producer)

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(_failure(message.topic() or "?", message.key(), error))

    def send(
        self,
        topic: str | TopicSpec,
        key: Key,
        value: RefluxRecord | bytes | None,
        headers: Headers = None,
        *,
        partition: int | None = None,
    ) -> None:
        """Queue one message. ``value`` is a schemas model (encoded with Avro), raw bytes, or
        ``None`` (a tombstone on compacted topics)."""
        if self._closed:
            raise RefluxError("Expected an open producer, but it was closed", error_class="State")
        # Before the first message, not at construction: a producer made while Kafka is down
        # (an API starting before it) does not wait then, and the first message waits ~55 ms
        # here instead of 0.5-1 s for its producer id (streams.warmup).
        self._ensure_warm()
        name = topic.topic if isinstance(topic, TopicSpec) else topic
        header_list = normalize_headers(headers)
        payload: bytes | None
        if isinstance(value, RefluxRecord):
            payload = serde.encode(value)
            header_list = [(n, v) for n, v in header_list if n != TYPE_HEADER]
            header_list.append((TYPE_HEADER, value.AVRO_NAME.encode()))
        else:
            payload = value
        key_bytes = key.encode() if isinstance(key, str) else key
        self._produce(name, key_bytes, payload, header_list, partition)

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        partition: int | None,
    ) -> None:
        kwargs: dict[str, Any] = {"partition": partition} if partition is not None else {}
        for _ in range(100):
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=headers,  # type: ignore[arg-type]  # bytes values are accepted
                    on_delivery=self._on_delivery,
                    **kwargs,
                )
                break
            except BufferError:
                # The local queue is full: serve delivery callbacks to make room.
                self._producer.poll(0.1)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError):
                    raise DeliveryError(
                        [_failure(topic, key, error)], " (refused locally)"
                    ) from exc
                raise
        else:
            raise DeliveryError(
                [DeliveryFailure(topic, key, "_QUEUE_FULL", "local queue stayed full", True)]
            )
        self._producer.poll(0)

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many were served."""
        return self._producer.poll(timeout)

    def __len__(self) -> int:
        """Messages not yet acknowledged by the broker."""
        return len(self._producer)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every queued message; raise :class:`DeliveryError` if any failed."""
        remaining = self._producer.flush(timeout)
        failures, self._failures = self._failures, []
        if remaining:
            failures.append(
                DeliveryFailure(
                    "*", None, "_FLUSH_TIMEOUT", f"{remaining} message(s) still in flight", True
                )
            )
            raise DeliveryError(failures, f" within {timeout}s")
        if failures:
            raise DeliveryError(failures)

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then release the client, within about ``timeout``. Raises
        :class:`DeliveryError` like :meth:`flush`."""
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            if len(self._producer):
                # Not delivered within the timeout (the error above says so): librdkafka's
                # close() would flush them again without a bound (measured: 30 s with the broker
                # down), so they are dropped first.
                self._producer.purge()
                self._producer.poll(0)
            self._producer.close()

    def close_after_error(self, error: BaseException) -> None:
        # Already failing: still try to deliver, but do not mask the original error.
        with contextlib.suppress(RefluxError):
            self.close()


class TransactionalProducer(Producer):
    """Exactly-once output: records and the consumed offsets commit in one Kafka transaction.

    The ``transactional_id`` must be stable across restarts of the same instance: initialising
    it aborts whatever transaction a crashed predecessor left open, so read_committed consumers
    are not held back until the transaction times out.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        transactional_id: str,
        client_id: str = "reflux",
        config: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
        stuck_grace_s: float = STUCK_GRACE_S,
    ) -> None:
        # A short transaction timeout bounds how long a dead instance can stall its partitions.
        base = {
            "transactional.id": transactional_id,
            "transaction.timeout.ms": 15_000,
            "delivery.timeout.ms": 15_000,
            # The coordinator answers CONCURRENT_TRANSACTIONS to a transaction that starts while
            # the previous one's commit markers are still being written (every back-to-back
            # commit: AddOffsetsToTxn right after EndTxn); librdkafka retries after this backoff.
            # Its default, 100 ms, added ~100 ms to a third of all steps (measured with
            # debug=eos: 48 retries in 10 runs; step overhead p50 59 -> 16 ms with 5 ms).
            "retry.backoff.ms": 5,
            # Records of a transaction are invisible until it commits, and committing flushes
            # at once whatever linger says: so they wait and travel in a few large requests
            # instead of one request per record (2.5 -> 0.3 produce requests per step under
            # load), at no cost to latency. docs/decisions/0021-engine-throughput.md
            "linger.ms": 100,
        }
        super().__init__(settings, config={**base, **(config or {})}, client_id=client_id)
        # Warmed first: init_transactions otherwise waited 0.5 s in 4 of 30 (streams.warmup).
        self._ensure_warm()
        self._producer.init_transactions(timeout)
        # The calls that talk to the coordinators run here, so a call that never returns
        # (TransactionStuckError) leaves the caller free: see _bounded.
        self._calls = ThreadPoolExecutor(1, thread_name_prefix="reflux-txn")
        self.stuck = False
        self.stuck_grace_s = stuck_grace_s

    def begin(self) -> None:
        self._producer.begin_transaction()

    def _bounded(self, call: Callable[[], None], timeout: float, what: str) -> None:
        """``call()``, raising :class:`TransactionStuckError` if it has not returned
        ``stuck_grace_s`` after its own ``timeout``.

        librdkafka's ``send_offsets_to_transaction`` can block far past its timeout when the
        group coordinator went away (confluentinc/librdkafka#5456, #5511): seen in the chaos
        test after a broker restart, the scheduler blocked in it for minutes with its consumer
        out of the group. A stuck producer cannot be aborted or closed (destroying a handle
        another thread is inside is unsafe), so it is abandoned: the caller replaces it with a
        new producer of the same transactional id, whose initialisation fences this one.
        """
        if self.stuck:
            raise TransactionStuckError(f"Expected a usable producer, but its {what} is stuck")
        future: Future[None] = self._calls.submit(call)
        try:
            future.result(timeout + self.stuck_grace_s)
        except FutureTimeout:
            self.stuck = True
            self._calls.shutdown(wait=False)
            raise TransactionStuckError(
                f"Expected {what} to return within {timeout + self.stuck_grace_s:.0f} s (its "
                "timeout plus a grace), but it is still blocked in librdkafka; abandoning "
                "this producer"
            ) from None

    def commit(
        self, offsets: Sequence[TopicPartition], group_metadata: Any, timeout: float = 30.0
    ) -> None:
        """Adds the consumer's offsets to the transaction and commits it.

        Returns: the transaction committed. Raises: it did not (abort it), or the producer is
        unusable (a fatal error, e.g. fenced). A commit whose outcome librdkafka reports as
        unknown (a retriable error) is retried, as librdkafka asks, so callers never have to
        guess: if any message of the transaction failed, librdkafka fails the commit itself.
        """
        producer = self._producer
        if offsets:
            self._bounded(
                lambda: producer.send_offsets_to_transaction(
                    list(offsets), group_metadata, timeout
                ),
                timeout,
                "send_offsets_to_transaction",
            )
        for attempt in range(1, _COMMIT_ATTEMPTS + 1):
            try:
                self._bounded(
                    lambda: producer.commit_transaction(timeout), timeout, "commit_transaction"
                )
                break
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if (
                    attempt < _COMMIT_ATTEMPTS
                    and isinstance(error, KafkaError)
                    and error.retriable()
                    and not error.txn_requires_abort()
                ):
                    continue
                fatal = isinstance(error, KafkaError) and error.fatal()
                failures = [] if fatal else self.take_failures(min(timeout, 5.0))
                if failures:
                    # The commit failed because messages did: say which and why (a record
                    # over the topic's limit is not the same as a broker that timed out).
                    raise DeliveryError(failures, f" (transaction not committed: {exc})") from exc
                raise
        failures, self._failures = self._failures, []
        if failures:
            # The transaction committed, so each of its messages was delivered: these reports
            # belong to an earlier transaction (see abort). Said loudly, not raised: raising
            # would make the caller treat a committed transaction as failed.
            log.warning(
                "%d delivery report(s) of an earlier transaction arrived late: %s",
                len(failures),
                "; ".join(str(f) for f in failures[:5]),
            )

    def take_failures(self, timeout: float = 5.0) -> list[DeliveryFailure]:
        """The failed deliveries of the current transaction, which just failed: serves the
        delivery reports still due (waiting up to ``timeout`` for messages in flight) and hands
        them over. A transaction that failed because a record did (over a topic's limit, to a
        missing topic) is then explained by that record, not by the error that surfaced later
        (e.g. ``_STATE`` from the next ``produce``)."""
        self._producer.flush(timeout)
        failures, self._failures = self._failures, []
        return failures

    def abort(self, timeout: float = 30.0) -> None:
        if self.stuck:
            raise TransactionStuckError("Expected a usable producer to abort with, but it is stuck")
        producer = self._producer
        try:
            self._bounded(lambda: producer.abort_transaction(timeout), timeout, "abort_transaction")
            # The aborted transaction's messages are purged; serve their (failed) delivery
            # reports now, so they are not mistaken for failures of the next transaction.
            self._producer.flush(min(timeout, 5.0))
        finally:
            self._failures = []

    def close(self, timeout: float = 30.0) -> None:
        if self._closed:
            return
        self._closed = True
        if self.stuck:
            # Never touch a handle a stuck call is inside; kept referenced (never destroyed).
            _ABANDONED.append(self._producer)
            return
        self._calls.shutdown(wait=False)
        self._producer.flush(timeout)


_ABANDONED: list[_KafkaProducer] = []
"""Producers abandoned with a call stuck inside librdkafka: never garbage-collected, since
destroying one would race that call."""


class TransactionStuckError(RefluxError):
    """A transactional call blocked past its timeout; the producer must be replaced."""

    error_class = "TransactionStuck"
