"""What the scheduler runtime does with a failure, so that none can stop a partition.

The decision record is docs/decisions/0011-no-wedge.md. In short, a failure is either

- **transient** (:func:`classify_failure` says ``retryable``): a broker, Redis or the object
  store is unreachable or slow. The batch's transaction is aborted, the consumer rewinds to the
  batch's first offsets and the same batch is tried again after a capped exponential backoff
  (:class:`Backoff`). Nothing is rebuilt: the in-memory run states only ever hold committed
  decisions; or
- **deterministic** (anything else): the same input would fail the same way on every retry. If
  it happens while deciding one input, only that input is affected: its run is failed (or its
  command rejected) with the error class and message, or the input is dead-lettered, and the
  rest of the batch carries on in the same transaction. If it happens when the transaction is
  committed (the broker refused a record), nobody knows which input caused it: the batch is
  aborted and re-processed one input per transaction (:class:`Isolation`) until the input whose
  own transaction fails is found; that input alone is then failed, and if even its failure
  cannot be written, dead-lettered.

Error classes the runtime itself raises: :class:`PayloadTooLargeError` (a record over Kafka's
message limit) and :class:`NodeUnavailableError` (no invoke topic can carry a node's
invocations).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import redis
from botocore import exceptions as boto_errors
from confluent_kafka import KafkaError, KafkaException, Message

from foundation.errors import ErrorClassification, NonRetryableError, classify
from streams.producer import DeliveryError, TransactionStuckError

__all__ = [
    "Backoff",
    "Isolation",
    "NodeUnavailableError",
    "PayloadTooLargeError",
    "classify_failure",
    "is_fatal",
]

log = logging.getLogger(__name__)


class PayloadTooLargeError(NonRetryableError):
    """A record the scheduler would write is over Kafka's message limit."""

    error_class = "PayloadTooLarge"


class NodeUnavailableError(NonRetryableError):
    """A node version cannot be served at all: its invoke topic cannot be named or created."""

    error_class = "NodeUnavailable"


# librdkafka / broker errors that say "not now" rather than "never" (by name, as delivery
# reports carry them). A code missing here is treated as deterministic, so the list errs on the
# side of retrying: misreading an outage as a bad record would fail runs that were fine.
_TRANSIENT_CODES: Final = frozenset(
    {
        "_MSG_TIMED_OUT",
        "_TIMED_OUT",
        "_TIMED_OUT_QUEUE",
        "_TRANSPORT",
        "_ALL_BROKERS_DOWN",
        "_RESOLVE",
        "_WAIT_COORD",
        "_QUEUE_FULL",
        "_FLUSH_TIMEOUT",
        "_PURGE_QUEUE",
        "_PURGE_INFLIGHT",
        "REQUEST_TIMED_OUT",
        "NETWORK_EXCEPTION",
        "NOT_ENOUGH_REPLICAS",
        "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
        "LEADER_NOT_AVAILABLE",
        "NOT_LEADER_FOR_PARTITION",
        "NOT_COORDINATOR",
        "COORDINATOR_NOT_AVAILABLE",
        "COORDINATOR_LOAD_IN_PROGRESS",
        "CONCURRENT_TRANSACTIONS",
        "KAFKA_STORAGE_ERROR",
    }
)
_TOO_LARGE_CODES: Final = frozenset({"MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE"})
_MISSING_TOPIC_CODES: Final = frozenset({"UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC"})
_FATAL_CODES: Final = frozenset({"_FATAL", "_FENCED"})
"""Codes that say the producer itself is unusable. A ``produce`` refused because the producer
had a fatal error raises ``_FATAL`` without the error's fatal flag (seen when a fencing struck
while the scheduler wrote its snapshot checkpoint)."""


def _kafka_error(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def is_fatal(exc: BaseException) -> bool:
    """The transactional producer is unusable (fenced by a newer instance...): only a restart
    helps, so the runtime lets the error end its loop."""
    if isinstance(exc, TransactionStuckError):
        return True
    error = _kafka_error(exc)
    if error is not None:
        return bool(error.fatal()) or error.name() in _FATAL_CODES
    if isinstance(exc, DeliveryError):
        return any(f.code in _FATAL_CODES for f in exc.failures)
    return False


def _transient(exc: BaseException) -> bool:
    error = _kafka_error(exc)
    if error is not None:
        local = error.code() < 0 and error.name() not in _TOO_LARGE_CODES | _MISSING_TOPIC_CODES
        return (
            error.retriable()
            or error.txn_requires_abort()
            or error.name() in _TRANSIENT_CODES
            or local
        )
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return True
    if isinstance(
        exc,
        boto_errors.EndpointConnectionError
        | boto_errors.ConnectionClosedError
        | boto_errors.ConnectTimeoutError
        | boto_errors.ReadTimeoutError,
    ):
        return True
    return isinstance(exc, ConnectionError | TimeoutError)


def classify_failure(exc: BaseException) -> ErrorClassification:
    """:func:`foundation.errors.classify` with the scheduler's view of its libraries.

    A :class:`~streams.producer.DeliveryError` is classed by its worst report: a record over the
    limit is ``PayloadTooLarge``, a missing topic ``NodeUnavailable`` (an invoke topic deleted
    after the scheduler checked it), and it is transient only if every report is.
    """
    if isinstance(exc, DeliveryError):
        codes = {f.code for f in exc.failures}
        if codes & _TOO_LARGE_CODES:
            return ErrorClassification(PayloadTooLargeError.error_class, False)
        if codes & _MISSING_TOPIC_CODES:
            return ErrorClassification(NodeUnavailableError.error_class, False)
        retryable = bool(codes) and all(
            f.retriable or f.code in _TRANSIENT_CODES for f in exc.failures
        )
        return ErrorClassification(exc.error_class, retryable)
    error = _kafka_error(exc)
    if error is not None and error.name() in _TOO_LARGE_CODES:
        return ErrorClassification(PayloadTooLargeError.error_class, False)
    return classify(exc, transient=_transient)


class Backoff:
    """Delays between tries of a batch that failed transiently: 0.1 s doubling to 5 s, jittered,
    back to the start after a commit."""

    def __init__(self, initial: float = 0.1, cap: float = 5.0) -> None:
        self.initial = initial
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        base = min(self.cap, self.initial * 2.0 ** (self.failures - 1))
        return base * (0.5 + random.random() / 2)  # jitter

    def reset(self) -> None:
        self.failures = 0


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, DeliveryError) and exc.failures:
        return "; ".join(str(f) for f in exc.failures[:3])
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


Coordinates = tuple[str, int, int]
"""(topic, partition, offset) of a consumed input."""


def coordinates(message: Message) -> Coordinates:
    return (message.topic() or "", message.partition() or 0, message.offset() or 0)


@dataclass
class Strike:
    """An input whose own transaction failed deterministically (see :class:`Isolation`)."""

    error_class: str
    message: str
    topics: frozenset[str] = frozenset()
    """Topics the broker refused records on (from the delivery reports), when known."""
    level: int = 1
    """1: fail the records bound for ``topics`` (or else the whole input) on the run;
    2: even that was refused, dead-letter the input only."""


class Isolation:
    """Finds the one input a failed transaction was about, by trying inputs one by one.

    After a deterministic failure of a batch's commit (a batch of one input included), every
    partition of the batch is marked up to the batch's last offset; while marks remain the
    runtime consumes one input per transaction. An input that fails alone within a marked batch
    gets a :class:`Strike` (so every input is tried alone once before it is blamed); its next try
    writes the failure instead of the decision (level 1), then only a dead letter (level 2).
    """

    def __init__(self) -> None:
        self.marks: dict[tuple[str, int], int] = {}
        self.strikes: dict[Coordinates, Strike] = {}

    @property
    def active(self) -> bool:
        return bool(self.marks)

    def isolate(self, messages: Iterable[Message]) -> None:
        for message in messages:
            topic, partition, offset = coordinates(message)
            key = (topic, partition)
            self.marks[key] = max(self.marks.get(key, -1), offset)

    def covers(self, message: Message) -> bool:
        """Whether ``message`` belongs to a batch being narrowed down."""
        topic, partition, offset = coordinates(message)
        mark = self.marks.get((topic, partition))
        return mark is not None and offset <= mark

    def strike(self, message: Message, failure: ErrorClassification, exc: BaseException) -> Strike:
        key = coordinates(message)
        strike = self.strikes.get(key)
        if strike is None:
            topics = (
                frozenset(f.topic for f in exc.failures if f.topic != "*")
                if isinstance(exc, DeliveryError)
                else frozenset()
            )
            strike = self.strikes[key] = Strike(failure.error_class, _first_line(exc), topics)
        else:
            strike.level += 1
        return strike

    def committed(self, messages: Iterable[Message]) -> None:
        """These inputs committed: their strikes are done, and marks they reach are lifted."""
        for message in messages:
            topic, partition, offset = coordinates(message)
            self.strikes.pop((topic, partition, offset), None)
            mark = self.marks.get((topic, partition))
            if mark is not None and offset >= mark:
                del self.marks[(topic, partition)]

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Partitions revoked or lost: the next owner starts over from the committed offsets."""
        gone = set(partitions)
        for key in gone:
            self.marks.pop(key, None)
        for coords in [c for c in self.strikes if (c[0], c[1]) in gone]:
            del self.strikes[coords]
