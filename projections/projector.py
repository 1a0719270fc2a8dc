"""The Postgres projector: ``runs``, ``workflows``, ``nodes`` and ``mutations`` -> the read models.

Offsets of record live in Postgres (``projection_offsets``), written in the same transaction as
the rows (:mod:`projections.postgres.writer`). Kafka's committed offsets are only a hint for
tooling (lag dashboards): when partitions are assigned, the projector seeks each one to its stored
``next_offset`` (or the beginning), whatever Kafka says. One batch is:

1. poll up to ``batch_size`` messages;
2. decode them; undecodable ones (or types this topic must not carry) are published to the DLQ
   with the reason, and only their offset is kept;
3. in ONE Postgres transaction: apply the plans, then the projector's checkpoint commits the
   positions to :class:`~projections.postgres.writer.PostgresOffsets` in that transaction (the
   commit order is :mod:`streams.checkpoint`'s); a crash before the transaction commits leaves no
   trace: the batch is re-read from the stored offsets;
4. commit the offsets to Kafka asynchronously, as a hint.

If step 3 fails, the consumer has already moved past the batch: the next :meth:`Projector.step`
first rewinds every assigned partition to its stored offset (reconnecting to Postgres if the
session was lost). :meth:`Projector.run` retries transient failures (connection lost, DLQ
unreachable) with backoff and lets anything else crash the process; the state in Postgres is
consistent either way.

Assignment: ``"group"`` (default) subscribes with the consumer group
``{topic_prefix}.projector.{name}``, so several instances share the partitions; ``"manual"``
assigns every partition of the topics to this instance (rebuilds, catch-up in tests).

Locking: a projector holds a shared session-level advisory lock on ``(schema, name)``; a rebuild
holds it exclusively. So a rebuild refuses to start while a projector runs, and a projector
refuses to start during a rebuild -- either would interleave positions from before and after the
truncation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import psycopg
from confluent_kafka import OFFSET_BEGINNING, KafkaException, Message, TopicPartition
from confluent_kafka import Consumer as KafkaConsumer

from foundation.closing import Closing
from foundation.errors import (
    ConfigurationError,
    NonRetryableError,
    RefluxError,
    ServiceUnavailableError,
    classify,
)
from foundation.liveness import Heartbeat
from foundation.redact import redact_credentials
from foundation.settings import Settings, get_settings
from projections.postgres.appliers import (
    NODE_EVENT_TYPES,
    RUN_EVENT_TYPES,
    WORKFLOW_EVENT_TYPES,
    Plan,
    plan,
)
from projections.postgres.audit_appliers import AUDIT_EVENT_TYPES
from projections.postgres.identifiers import DEFAULT_SCHEMA, validate_schema
from projections.postgres.migrations import apply_migrations
from projections.postgres.mutation_appliers import MUTATION_EVENT_TYPES
from projections.postgres.writer import (
    BatchItem,
    BatchOutcome,
    PostgresOffsets,
    apply_batch,
    load_offsets,
    reset_read_models,
)
from schemas import serde
from schemas.base import RefluxRecord
from schemas.errors import SchemaError
from streams.checkpoint import Checkpoint
from streams.consumer import consume_messages, consumer_config
from streams.dlq import DeadLetterPublisher, PoisonRecord, poison_record
from streams.metrics import PROJECTOR
from streams.producer import Producer
from streams.topics import TopicCatalog
from streams.watermarks import WatermarkReader

__all__ = [
    "DEFAULT_NAME",
    "CatchUpTimeoutError",
    "Progress",
    "Projector",
    "ProjectorStats",
    "is_transient",
    "rebuild",
]

log = logging.getLogger(__name__)

DEFAULT_NAME: Final = "postgres-runs"
Assignment = Literal["group", "manual"]
TopicPartitionKey = tuple[str, int]
# OFFSET_INVALID: "no position yet" from librdkafka.
_NO_POSITION: Final = -1001


def postgres_transient(exc: BaseException) -> bool:
    """A lost or refused Postgres connection (the projector's
    :data:`~foundation.errors.TransientRule`)."""
    return isinstance(exc, psycopg.OperationalError)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the batch (reconnect + rewind) can succeed:
    :func:`foundation.errors.classify` with :func:`postgres_transient`."""
    return classify(exc, transient=postgres_transient).retryable


class CatchUpTimeoutError(RefluxError):
    error_class = "CatchUpTimeout"


@dataclass(slots=True)
class ProjectorStats:
    """Counters since the projector started."""

    batches: int = 0
    records: int = 0
    applied: int = 0
    duplicates: int = 0
    stale: int = 0
    dead_lettered: int = 0

    def add(self, outcome: BatchOutcome, records: int, dead_lettered: int) -> None:
        self.batches += 1
        self.records += records
        self.applied += outcome.applied
        self.duplicates += outcome.duplicates
        self.stale += outcome.stale
        self.dead_lettered += outcome.dead_lettered + dead_lettered


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a catch-up stands: ``done`` of ``total`` records since the catch-up began."""

    done: int
    total: int
    stats: ProjectorStats


class Projector(Closing):
    """Consumes ``runs`` + ``workflows`` + ``nodes`` into Postgres; see the module docstring."""

    def __init__(
        self,
        settings: Settings | None = None,
        schema: str = DEFAULT_SCHEMA,
        name: str = DEFAULT_NAME,
        *,
        assignment: Assignment = "group",
        batch_size: int = 500,
        poll_timeout: float = 1.0,
        exclusive: bool = False,
        migrate: bool = True,
        consumer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        if assignment not in ("group", "manual"):
            raise ConfigurationError(
                f"Expected assignment 'group' or 'manual', but got {assignment!r}"
            )
        if batch_size < 1:
            raise ConfigurationError(f"Expected batch_size >= 1, but got {batch_size}")
        self.settings = settings or get_settings()
        self.schema = validate_schema(schema)
        self.name = name
        self.assignment = assignment
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.exclusive = exclusive
        self.migrate = migrate
        catalog = TopicCatalog.from_settings(self.settings)
        self.runs_topic = catalog.runs.topic
        self.workflows_topic = catalog.workflows.topic
        self.nodes_topic = catalog.nodes.topic
        self.mutations_topic = catalog.mutations.topic
        self.audit_topic = catalog.audit.topic
        self.group_id = f"{self.settings.topic_prefix}.projector.{name}"
        self._expected: dict[str, tuple[type[RefluxRecord], ...]] = {
            self.runs_topic: RUN_EVENT_TYPES,
            self.workflows_topic: WORKFLOW_EVENT_TYPES,
            self.nodes_topic: NODE_EVENT_TYPES,
            self.mutations_topic: MUTATION_EVENT_TYPES,
            self.audit_topic: AUDIT_EVENT_TYPES,
        }
        self._dlq_topic = catalog.dlq
        self._consumer_overrides = dict(consumer_overrides or {})
        self.stats = ProjectorStats()
        self._conn: psycopg.Connection | None = None
        self._consumer: KafkaConsumer | None = None
        self._ends = WatermarkReader(
            consumer_config(self.group_id, self.settings, self._consumer_overrides)
        )
        self._producer: Producer | None = None
        self._dead_letters: DeadLetterPublisher | None = None
        # Positions of the assigned partitions: always committed ones (stored at assignment, or
        # committed with a batch's rows), so a revoke has nothing left to commit.
        self.checkpoint = Checkpoint(
            PostgresOffsets(self._session, self.schema, name),
            name=f"projector {name}",
            on_assign=self._on_assign,
        )
        self._needs_rewind = False
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def topics(self) -> tuple[str, ...]:
        return (
            self.runs_topic,
            self.workflows_topic,
            self.nodes_topic,
            self.mutations_topic,
            self.audit_topic,
        )

    @property
    def application_name(self) -> str:
        return f"reflux-projector {self.schema}/{self.name}"[:63]

    def _lock_key(self) -> str:
        return f"reflux-projector:{self.schema}:{self.name}"

    def _connect(self) -> psycopg.Connection:
        if self._closed:
            raise RefluxError("Expected an open projector, but it was closed", error_class="State")
        if self._conn is not None:
            if not (self._conn.closed or self._conn.broken):
                return self._conn
            # A lost session also lost its advisory lock: take it again with the new one.
            self._conn.close()
            self._conn = None
        try:
            conn = psycopg.connect(
                self.settings.postgres_dsn,
                autocommit=True,
                # Lets operators (and tests) find the projector's session in pg_stat_activity.
                application_name=self.application_name,
            )
        except psycopg.OperationalError as exc:
            raise ServiceUnavailableError(
                redact_credentials(f"Expected Postgres at {self.settings.postgres_dsn}, but: {exc}")
            ) from exc
        try:
            mode = "" if self.exclusive else "_shared"
            row = conn.execute(
                f"SELECT pg_try_advisory_lock{mode}(hashtextextended(%s, 0))",
                (self._lock_key(),),
            ).fetchone()
            if not (row and row[0]):
                holder = "a projector is running" if self.exclusive else "a rebuild is running"
                raise ConfigurationError(
                    f"Expected the read models {self.schema}/{self.name} to be free, but "
                    f"{holder} (advisory lock {self._lock_key()!r} is held); stop it first"
                )
            if self.migrate:
                apply_migrations(conn, self.schema)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _session(self) -> psycopg.Connection:
        """The session of the batch in progress: never a new one, which would not hold the
        batch's rows (the offsets target then refuses to write)."""
        if self._conn is None:
            raise RefluxError("Expected a Postgres session, but there is none", error_class="State")
        return self._conn

    def _ensure_consumer(self) -> KafkaConsumer:
        if self._consumer is not None:
            return self._consumer
        self._connect()
        if self._producer is None:
            self._producer = Producer(self.settings, client_id=f"{self.group_id}-dlq")
            self._dead_letters = DeadLetterPublisher(self._producer, self._dlq_topic, self.group_id)
            self.checkpoint.dead_letters = self._dead_letters
        consumer = KafkaConsumer(
            consumer_config(self.group_id, self.settings, self._consumer_overrides)
        )
        try:
            if self.assignment == "group":
                self.checkpoint.subscribe(consumer, self.topics)
            else:
                self._assign(consumer, self._all_partitions(consumer))
        except BaseException:
            consumer.close()
            raise
        self._consumer = consumer
        return consumer

    def start(self) -> None:
        """Connect to Postgres (migrating unless ``migrate=False``) and Kafka; idempotent.

        Called on first use; call it explicitly to fail fast on configuration errors.
        """
        self._ensure_consumer()

    def close(self) -> None:
        """Leave the group and release clients; everything projected is already committed."""
        if self._closed:
            return
        self._closed = True
        try:
            self._ends.close()
            if self._consumer is not None:
                self._consumer.close()
        finally:
            try:
                if self._producer is not None:
                    self._producer.close()
            finally:
                if self._conn is not None:
                    self._release(self._conn)

    @staticmethod
    def _release(conn: psycopg.Connection) -> None:
        # Unlock explicitly: a closed session's locks go only when its backend has exited,
        # which a rebuild started right after could race.
        try:
            if not (conn.closed or conn.broken):
                conn.execute("SELECT pg_advisory_unlock_all()")
        except psycopg.Error as exc:
            log.debug("could not release advisory locks: %s", exc)
        finally:
            conn.close()

    # -- assignment ----------------------------------------------------------------------------

    def _all_partitions(self, consumer: KafkaConsumer) -> list[TopicPartition]:
        partitions: list[TopicPartition] = []
        for topic in self.topics:
            try:
                metadata = consumer.list_topics(topic, timeout=10)
            except KafkaException as exc:
                raise ServiceUnavailableError(
                    f"Expected Kafka at {self.settings.kafka_bootstrap}, but: {exc}"
                ) from exc
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise ConfigurationError(
                    f"Expected topic {topic!r} to exist, but it does not "
                    "(create it with `reflux topics create`)"
                )
            partitions.extend(TopicPartition(topic, p) for p in sorted(meta.partitions))
        return partitions

    def _assign(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        """Start every partition at its stored offset: Postgres, not Kafka, is the record."""
        stored = load_offsets(self._connect(), self.schema, self.name, self.topics)
        keys = [(tp.topic, tp.partition) for tp in partitions]
        for tp, key in zip(partitions, keys, strict=True):
            tp.offset = stored.get(key, OFFSET_BEGINNING)
        self.checkpoint.restore({key: stored.get(key, 0) for key in keys})
        consumer.assign(partitions)
        log.info(
            "projector %s: assigned %s",
            self.name,
            ", ".join(f"{tp.topic}/{tp.partition}@{tp.offset}" for tp in partitions) or "nothing",
        )

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        consumer = self._ensure_consumer()
        try:
            self._assign(consumer, partitions)
        except (psycopg.Error, RefluxError) as exc:
            # Raising here would leave the partitions owned but never fetched. Take them paused
            # instead; the next step() loads the offsets (retrying) and resumes them.
            log.warning("projector %s: cannot load offsets on assignment: %s", self.name, exc)
            consumer.assign(partitions)
            consumer.pause(partitions)
            self._needs_rewind = True

    def _rewind(self) -> None:
        """After a failed batch: start every assigned partition again at its stored offset.

        Re-assigning (rather than seeking) also works for partitions that are not fetching yet
        or were paused by a failed assignment.
        """
        consumer = self._ensure_consumer()
        assigned = [TopicPartition(tp.topic, tp.partition) for tp in consumer.assignment()]
        if assigned:
            self._assign(consumer, assigned)
            consumer.resume(assigned)

    # -- one batch -----------------------------------------------------------------------------

    def poll(self, timeout: float | None = None) -> list[Message]:
        """Up to ``batch_size`` messages (errors other than end-of-partition raise)."""
        consumer = self._ensure_consumer()
        return consume_messages(
            consumer,
            self.batch_size,
            self.poll_timeout if timeout is None else timeout,
            what=f"{self.topics} (projector {self.name})",
            logger=log,
        )

    def decode(self, messages: Sequence[Message]) -> tuple[list[BatchItem], int]:
        """Batch items for ``messages``; poison ones are dead-lettered (queued) and counted."""
        items: list[BatchItem] = []
        dead = 0
        for message in messages:
            record = poison_record(message)
            try:
                items.append(BatchItem(record, self._plan(record)))
            except (SchemaError, NonRetryableError) as exc:
                error_class = classify(exc).error_class
                log.warning(
                    "projector %s: dead-lettering %s/%s@%s: %s",
                    self.name,
                    record.topic,
                    record.partition,
                    record.offset,
                    exc,
                )
                self._dlq().publish(record, error_class, str(exc))
                items.append(BatchItem(record, None))
                dead += 1
        return items, dead

    def _plan(self, record: PoisonRecord) -> Plan | None:
        if record.value is None:
            return None  # a tombstone (compaction of `workflows`/`nodes`): nothing to project
        event = serde.decode(record.value, self._expected[record.topic])
        return plan(event, self.schema)

    def _dlq(self) -> DeadLetterPublisher:
        self._ensure_consumer()
        assert self._dead_letters is not None
        return self._dead_letters

    def process(self, messages: Sequence[Message]) -> BatchOutcome:
        """Decode, apply in one transaction with the offsets, then hint Kafka."""
        if not messages:
            return BatchOutcome()
        try:
            items, dead = self.decode(messages)
            outcome = apply_batch(
                self._connect(),
                items,
                schema=self.schema,
                projector=self.name,
                dead_letters=self._dlq(),
                checkpoint=self.checkpoint,
            )
        except BaseException:
            # The consumer is past this batch but Postgres is not: go back before going on.
            self._needs_rewind = True
            raise
        self.stats.add(outcome, len(messages), dead)
        self.checkpoint.restore(outcome.offsets)
        self._commit_hint(outcome.offsets)
        return outcome

    def _commit_hint(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        if not offsets or self._consumer is None:
            return
        try:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())],
                asynchronous=True,
            )
        except KafkaException as exc:
            # Only a hint (lag tooling); the offsets of record are committed already.
            log.debug("projector %s: Kafka offset hint failed: %s", self.name, exc)

    def step(self, timeout: float | None = None) -> BatchOutcome:
        """Poll one batch and process it (rewinding first if the previous batch failed)."""
        if self._needs_rewind:
            self._rewind()
            self._needs_rewind = False
        stats = self.stats
        before = (stats.records, stats.applied, stats.duplicates, stats.dead_lettered)
        started = time.perf_counter()
        outcome = self.process(self.poll(timeout))
        records, applied, duplicates, dead = before
        if stats.records != records:
            # Counted only for batches that carried records: an idle poll is no batch.
            name = self.name
            PROJECTOR.records.labels(name).inc(stats.records - records)
            PROJECTOR.applied.labels(name).inc(stats.applied - applied)
            PROJECTOR.duplicates.labels(name).inc(stats.duplicates - duplicates)
            PROJECTOR.dead_letters.labels(name).inc(stats.dead_lettered - dead)
            PROJECTOR.batch.labels(name).observe(time.perf_counter() - started)
        return outcome

    # -- loops ---------------------------------------------------------------------------------

    def run(
        self,
        stop_event: threading.Event,
        *,
        progress_interval: float = 30.0,
        max_backoff: float = 30.0,
    ) -> ProjectorStats:
        """Project until ``stop_event`` is set; transient failures reconnect and rewind."""
        self.start()
        log.info("projector %s: running on schema %s", self.name, self.schema)
        last_report = time.monotonic()
        reported = 0
        backoff = 0.5
        heartbeat = Heartbeat.from_settings(self.settings)
        while not stop_event.is_set():
            heartbeat.beat()
            try:
                self.step()
                backoff = 0.5
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning(
                    "projector %s: batch failed (%s); retrying in %.1fs", self.name, exc, backoff
                )
                if stop_event.wait(backoff):
                    break
                backoff = min(backoff * 2, max_backoff)
                continue
            now = time.monotonic()
            if now - last_report >= progress_interval:
                rate = (self.stats.records - reported) / (now - last_report)
                log.info(
                    "projector %s: %d records (%.0f/s), %d applied, %d duplicates, "
                    "%d dead-lettered, lag %s",
                    self.name,
                    self.stats.records,
                    rate,
                    self.stats.applied,
                    self.stats.duplicates,
                    self.stats.dead_lettered,
                    self._lag_text(),
                )
                last_report, reported = now, self.stats.records
        log.info(
            "projector %s: stopped after %d records in %d batches",
            self.name,
            self.stats.records,
            self.stats.batches,
        )
        return self.stats

    def _watermarks(self, timeout: float = 10.0) -> dict[TopicPartitionKey, tuple[int, int]]:
        # On a client of their own: the fetching consumer's requests queue behind its long-poll
        # fetches (0.5 s each, streams.watermarks).
        consumer = self._ensure_consumer()
        partitions = [(tp.topic, tp.partition) for tp in self._all_partitions(consumer)]
        return self._ends.ends(partitions, timeout)

    def _positions(self) -> dict[TopicPartitionKey, int]:
        """How far each assigned partition got, including control records Kafka skipped."""
        consumer = self._ensure_consumer()
        assigned = consumer.assignment()
        positions = {
            (tp.topic, tp.partition): self.checkpoint.next_offset((tp.topic, tp.partition)) or 0
            for tp in assigned
        }
        if assigned:
            for tp in consumer.position(assigned):
                key = (tp.topic, tp.partition)
                if tp.offset != _NO_POSITION:
                    positions[key] = max(positions[key], tp.offset)
        return positions

    def _lag_text(self) -> str:
        try:
            marks = self._watermarks(timeout=2.0)
        except RefluxError:
            return "unknown"
        positions = self._positions()
        lag = sum(
            max(high - max(positions[key], low), 0)
            for key, (low, high) in marks.items()
            if key in positions
        )
        return str(lag)

    def run_until_caught_up(
        self,
        timeout: float | None = 60.0,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        progress_interval: float = 2.0,
    ) -> ProjectorStats:
        """Project until every assigned partition reaches the high watermark seen at the start.

        With ``assignment="manual"`` that is every partition of every topic; in group mode only
        the partitions this member owns (it waits for an assignment first).
        """
        self.start()
        targets = self._watermarks()
        deadline = None if timeout is None else time.monotonic() + timeout
        start_positions: dict[TopicPartitionKey, int] | None = None
        last_report = 0.0
        while True:
            positions = self._positions()
            if positions and start_positions is None:
                start_positions = {k: max(v, targets[k][0]) for k, v in positions.items()}
            remaining = {
                key: high - max(positions[key], low)
                for key, (low, high) in targets.items()
                if key in positions and max(positions[key], low) < high
            }
            if on_progress is not None and start_positions is not None:
                now = time.monotonic()
                if not remaining or now - last_report >= progress_interval:
                    total = sum(max(targets[k][1] - s, 0) for k, s in start_positions.items())
                    done = total - sum(remaining.values())
                    on_progress(Progress(done=done, total=total, stats=self.stats))
                    last_report = now
            if positions and not remaining:
                return self.stats
            if deadline is not None and time.monotonic() > deadline:
                raise CatchUpTimeoutError(
                    f"Expected projector {self.name} to catch up within {timeout}s, but "
                    f"{sum(remaining.values()) if positions else 'all'} record(s) remain"
                    + ("" if positions else " (no partitions assigned)")
                )
            self.step(timeout=0.5)

    # -- rebuild -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Truncate the read models and delete this projector's offsets (one transaction)."""
        if not self.exclusive:
            raise ConfigurationError(
                "Expected an exclusive projector (Projector(..., exclusive=True)) to reset the "
                "read models, but this one shares them with other projectors"
            )
        if self._consumer is not None:
            raise ConfigurationError(
                "Expected reset() before the projector consumes, but it already assigned "
                "partitions from the old offsets"
            )
        reset_read_models(self._connect(), self.schema, self.name)


def rebuild(
    settings: Settings | None = None,
    schema: str = DEFAULT_SCHEMA,
    *,
    name: str = DEFAULT_NAME,
    timeout: float | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    batch_size: int = 2000,
) -> ProjectorStats:
    """Rebuild the read models from the beginning of the topics.

    Truncates the tables and deletes the offsets in one transaction, then replays every partition
    up to the high watermarks seen when the replay starts. Refuses to run while a projector of the
    same ``(schema, name)`` runs; start the projectors again afterwards.
    """
    with Projector(
        settings, schema, name, assignment="manual", exclusive=True, batch_size=batch_size
    ) as projector:
        projector.reset()
        return projector.run_until_caught_up(timeout, on_progress=on_progress)
