"""The step scheduler's runtime: a transactional consume-decide-produce loop on confluent-kafka.

One consumer group reads ``commands`` and ``results`` (co-partitioned with ``runs`` by run id);
the instance that owns partition *p* owns every run on it and is the single writer of those runs'
events on ``runs`` partition *p*. A batch is ONE Kafka transaction:

1. each input is decided by the pure core (:func:`processors.scheduler.decide.decide`) against the
   run's state; cache lookups are answered from Redis right away and fed back into ``decide``;
2. the resulting events go to ``runs`` (same partition number), the node invocations to their
   invoke topics (params above the claim-check threshold go to the object store first), due
   timers become ``FireTimer`` commands on ``commands``, poison inputs go to ``dlq``;
3. the batch's checkpoint commits to a :class:`streams.checkpoint.KafkaTransaction`: the consumed
   positions join the transaction and it commits (the commit order is :mod:`streams.checkpoint`'s).

So an input's effects and its offset commit together or not at all (exactly-once within Kafka;
see docs/decisions/0006-scheduler-runtime.md). After the commit, ``cache_writes`` go to Redis
(a derived cache: losing one costs a recomputation, never correctness).

State is not kept in a separate changelog: on assignment, a partition's runs are rebuilt by
folding its ``runs`` log (:mod:`processors.scheduler.runtime.recovery`). If a transaction aborts,
the checkpoint forgets the batch's positions, the assigned partitions are rebuilt and the consumer
rewinds to the committed offsets.

Fencing (docs/decisions/0018-scheduler-restarts-and-supervision.md): a transaction left open
longer than ``transaction.timeout.ms`` -- the process paused or starved, a dependency hung -- is
rolled back by the transaction coordinator, which bumps the producer epoch: the producer is then
"fenced by a newer instance" although no other instance exists, and can neither commit nor
abort. The loop keeps its transactions short (a batch stops taking inputs after
``max_batch_seconds`` and leaves the rest for the next one) and, when the producer is fenced or
broken anyway, replaces it with a new one under the same transactional id (whose initialisation
aborts whatever the old one left open), rebuilds and rewinds like after any abort. Only repeated
fencing in a short time (another live process with this instance id) stops the scheduler.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from foundation.errors import RefluxError
from foundation.liveness import Heartbeat
from foundation.objectstore import S3BlobStore, content_key
from foundation.settings import Settings
from processors.node_catalog.runtime_view import CatalogResolver, NodeCatalogKafkaView
from processors.scheduler.decide import (
    CacheHit,
    CacheLookup,
    CacheMiss,
    Decision,
    DecisionContext,
    RegisteredWorkflow,
    SchedulerInput,
    decide,
)
from processors.scheduler.runtime.recovery import rebuild_partitions
from processors.scheduler.runtime.traces import traces_for
from processors.scheduler.runtime.workflows import WorkflowsView
from processors.scheduler.state import RunState
from processors.scheduler.timers import due_timers
from schemas import decode
from schemas.base import canonical_json
from schemas.errors import SchemaError
from schemas.models import (
    CancelRun,
    FireTimer,
    MutateGraph,
    NodeInvocation,
    NodeResult,
    PauseRun,
    PayloadRef,
    RedriveStep,
    ResumeRun,
    StartRun,
)
from schemas.trace_json import TRACE_HEADERS, encode_trace
from streams.checkpoint import Checkpoint, KafkaTransaction
from streams.consumer import consume_messages, consumer_config
from streams.dlq import DeadLetterPublisher, poison_record
from streams.producer import TransactionalProducer
from streams.topics import TopicCatalog
from workflows.model import WorkflowDefinition
from workflows.validation import WorkflowValidationError

log = logging.getLogger(__name__)

INPUT_TYPES = (
    StartRun,
    CancelRun,
    PauseRun,
    ResumeRun,
    RedriveStep,
    MutateGraph,
    FireTimer,
    NodeResult,
)


# Producer replacements tolerated within FENCING_WINDOW_S before the scheduler gives up: a
# transaction timed out now and then is recovered; a producer fenced again and again means
# another live process uses this instance id (two schedulers would take turns fencing).
MAX_FENCINGS = 3
FENCING_WINDOW_S = 300.0


class SchedulerFencedError(RefluxError):
    """The producer keeps being fenced: another process uses this scheduler's instance id."""

    error_class = "SchedulerFenced"


@dataclass
class RuntimeStats:
    batches: int = 0
    inputs: int = 0
    events: int = 0
    invocations: int = 0
    dead_lettered: int = 0
    timers_fired: int = 0
    cache_hits: int = 0
    aborted: int = 0
    # Producers replaced after they were fenced or broken (see the module docstring).
    producer_replaced: int = 0
    # Batches that stopped taking inputs at max_batch_seconds (the rest went to the next one).
    batches_cut: int = 0
    last_commit_ms: float = 0.0
    # run id -> seq of the last committed event (tests and progress output read it)
    committed_seq: dict[str, int] = field(default_factory=dict)


class SchedulerRuntime:
    def __init__(
        self,
        settings: Settings,
        *,
        instance_id: str | None = None,
        batch_size: int = 500,
        poll_timeout: float = 0.02,
        max_batch_seconds: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.catalog = TopicCatalog.from_settings(settings)
        self.group = f"{settings.topic_prefix}.scheduler"
        self.instance_id = instance_id or settings.scheduler_instance_id
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        # Well inside the producer's transaction.timeout.ms (15 s), so the commit has room too.
        self.max_batch_seconds = max_batch_seconds
        self.clock = clock
        self.stats = RuntimeStats()
        self.states: dict[int, dict[str, RunState]] = {}
        self._partition_of: dict[str, int] = {}
        # Timers already written as FireTimer and not yet answered: do not write them twice.
        self._fired: set[str] = set()
        self._redis = redis.Redis.from_url(settings.redis_url)
        # Namespaced like the topics, so environments sharing one Redis never share entries.
        self.cache_prefix = f"{settings.topic_prefix}:step-cache:"
        self._blobs = S3BlobStore(settings)
        self._workflows = WorkflowsView(settings, self.catalog)
        self._workflow_cache: dict[tuple[str, int], WorkflowDefinition] = {}
        # Node versions by catalog status and rollout weight (nodes topic, all partitions).
        self._nodes = NodeCatalogKafkaView(settings, self.catalog)
        self._resolve_node_version = CatalogResolver(self._nodes)
        self.transactional_id = f"{self.group}.{self.instance_id}"
        self.producer = self._new_producer()
        self._fencings: list[float] = []
        self._dead_letters = DeadLetterPublisher(self.producer, self.catalog.dlq, self.group)
        self.consumer = Consumer(
            consumer_config(
                self.group,
                settings,
                {
                    "fetch.wait.max.ms": 5,
                    "max.poll.interval.ms": 300_000,
                    "client.id": f"reflux-scheduler-{self.instance_id}",
                },
            )
        )
        # The transaction flushes the events, invocations and dead letters as it commits.
        self._transaction = KafkaTransaction(self.producer, self.consumer)
        self.checkpoint = Checkpoint(
            self._transaction,
            name=f"scheduler {self.group}",
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        self.checkpoint.subscribe(
            self.consumer, [self.catalog.commands.topic, self.catalog.results.topic]
        )

    def _new_producer(self) -> TransactionalProducer:
        # Initialising the transactional id aborts what an earlier producer with this id (a
        # crashed predecessor, or this instance's own fenced one) left open.
        return TransactionalProducer(
            self.settings,
            transactional_id=self.transactional_id,
            client_id=f"reflux-scheduler-{self.instance_id}",
            config={"linger.ms": 0},
        )

    # -- partition ownership -------------------------------------------------------------------

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        new = {tp.partition for tp in partitions} - set(self.states)
        if not new:
            return
        rebuilt = rebuild_partitions(self.settings, self.catalog.runs.topic, new)
        for p, runs in rebuilt.items():
            self.states[p] = runs
            for run_id in runs:
                self._partition_of[run_id] = p
        log.info("scheduler %s owns partitions %s", self.instance_id, sorted(self.states))

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            runs = self.states.pop(tp.partition, {})
            for run_id in runs:
                self._partition_of.pop(run_id, None)

    # -- context for the pure core ---------------------------------------------------------------

    def _lookup_workflow(self, workflow_id: str, version: int | None) -> RegisteredWorkflow | None:
        record = self._workflows.resolve(workflow_id, version)
        if record is None:
            return None
        key = (record.workflow_id, record.version)
        definition = self._workflow_cache.get(key)
        if definition is None:
            definition = WorkflowDefinition.from_json_dict(record.definition)
            self._workflow_cache[key] = definition
        return RegisteredWorkflow(record.version, definition)

    def _load_payload(self, ref: PayloadRef) -> Any:
        return json.loads(self._blobs.get(ref.uri))

    def _context(self) -> DecisionContext:
        return DecisionContext(
            now=self.clock(),
            invoke_topic=lambda node, major: self.catalog.invoke_topic(node, major).topic,
            lookup_workflow=self._lookup_workflow,
            load_payload=self._load_payload,
            resolve_node_version=self._resolve_node_version,
        )

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        log.info("scheduler %s running (group %s)", self.instance_id, self.group)
        heartbeat = Heartbeat.from_settings(self.settings)
        try:
            while not stop.is_set():
                heartbeat.beat()
                self.run_once()
        finally:
            # Also after an error: the consumer leaves the group at once, so whoever restarts
            # the scheduler gets the partitions without waiting for a session timeout.
            try:
                self.close()
            except Exception:
                log.exception("scheduler %s: closing its clients failed", self.instance_id)

    def run_once(self) -> int:
        """Consumes one batch (possibly empty), fires due timers; returns inputs processed."""
        messages = consume_messages(
            self.consumer, self.batch_size, self.poll_timeout, what=f"scheduler {self.group}"
        )
        now = self.clock()
        timers = self._due_timers(now)
        if not messages and not timers:
            return 0
        started = time.perf_counter()
        batch = _Batch()
        try:
            self._transaction.begin()
            for n, message in enumerate(messages):
                if n and time.perf_counter() - started > self.max_batch_seconds:
                    # A transaction open too long is rolled back by the coordinator and fences
                    # the producer: commit what is done, the rest comes again.
                    self._put_back(messages[n:])
                    messages = messages[:n]
                    break
                self._handle(message, batch)
                self.checkpoint.advance(
                    (message.topic() or "", message.partition() or 0), message.offset() or 0
                )
            for command in timers:
                self.producer.send(
                    self.catalog.commands,
                    key=command.run_id,
                    value=command,
                    partition=self._partition_of.get(command.run_id),
                )
            self.checkpoint.commit()
        except (KafkaException, Exception) as exc:
            self._recover(exc)
            return 0
        # Committed: the new states are now the truth.
        for run_id, (partition, state) in batch.states.items():
            self.states.setdefault(partition, {})[run_id] = state
            self._partition_of[run_id] = partition
            self.stats.committed_seq[run_id] = state.last_seq
        self._fired.update(t.timer_id for t in timers)
        self._write_cache(batch)
        self.stats.batches += 1
        self.stats.inputs += len(messages)
        self.stats.timers_fired += len(timers)
        self.stats.last_commit_ms = (time.perf_counter() - started) * 1000
        return len(messages)

    def _put_back(self, messages: list[Message]) -> None:
        """Rewinds each partition to the first of ``messages`` (consumed, not processed)."""
        first: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic() or "", message.partition() or 0)
            first[key] = min(first.get(key, message.offset() or 0), message.offset() or 0)
        for (topic, partition), offset in first.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))
        self.stats.batches_cut += 1
        log.info(
            "scheduler %s: batch cut after %.1fs; %d input(s) left for the next one",
            self.instance_id,
            self.max_batch_seconds,
            len(messages),
        )

    def _handle(self, message: Message, batch: _Batch) -> None:
        partition = message.partition() or 0
        try:
            decoded = decode(message.value() or b"", INPUT_TYPES)
        except SchemaError as exc:
            self._dead_letter(message, exc.error_class, str(exc))
            return
        assert isinstance(decoded, INPUT_TYPES)
        record: SchedulerInput = decoded
        state = batch.state_of(record.run_id, self.states.get(partition, {}))
        try:
            decision = decide(state, record, self._context())
            decision = self._answer_cache(decision, batch)
        except WorkflowValidationError as exc:
            self._dead_letter(message, "WorkflowInvalid", str(exc))
            return
        self._write(decision, partition, batch)
        if isinstance(record, FireTimer):
            self._fired.discard(record.timer_id)
        if decision.rejection:
            log.info(
                "rejected %s for run %s: %s",
                type(record).__name__,
                record.run_id,
                decision.rejection,
            )

    def _answer_cache(self, decision: Decision, batch: _Batch) -> Decision:
        """Looks cache-enabled steps up in Redis and feeds the answers back into ``decide``.

        Done inside the transaction: the lookup only reads a derived cache, so an abort simply
        repeats it, and a hit costs no extra round trip through Kafka.
        """
        lookups = list(decision.cache_lookups)
        events = list(decision.events)
        invocations = list(decision.invocations)
        writes = list(decision.cache_writes)
        state = decision.state
        while lookups:
            lookup = lookups.pop(0)
            answer = self._lookup_cache(lookup)
            follow = decide(state, answer, self._context())
            if isinstance(answer, CacheHit):
                self.stats.cache_hits += 1
            state = follow.state
            events.extend(follow.events)
            invocations.extend(follow.invocations)
            writes.extend(follow.cache_writes)
            lookups.extend(follow.cache_lookups)
        return Decision(
            state=state,
            events=tuple(events),
            invocations=tuple(invocations),
            cache_lookups=(),
            cache_writes=tuple(writes),
            rejection=decision.rejection,
        )

    def _lookup_cache(self, lookup: CacheLookup) -> CacheHit | CacheMiss:
        raw = self._redis.get(self.cache_prefix + lookup.cache_key)
        if raw is None:
            return CacheMiss(lookup.run_id, lookup.step_id, lookup.attempt, lookup.cache_key)
        entry = json.loads(raw)
        ref = PayloadRef(**entry["output_ref"]) if entry.get("output_ref") else None
        return CacheHit(
            lookup.run_id,
            lookup.step_id,
            lookup.attempt,
            lookup.cache_key,
            output=entry.get("output"),
            output_ref=ref,
        )

    def _write(self, decision: Decision, partition: int, batch: _Batch) -> None:
        for event in decision.events:
            self.producer.send(
                self.catalog.runs, key=event.run_id, value=event, partition=partition
            )
        for invocation in decision.invocations:
            self.producer.send(
                self._invoke_topic_of(decision, invocation),
                key=invocation.run_id,
                value=self._claim_check(invocation),
            )
        if decision.state is not None and decision.events:
            batch.states[decision.state.run_id] = (partition, decision.state)
            for trace in traces_for(decision.events, decision.state):
                self.producer.send(
                    self.catalog.traces, trace.node, encode_trace(trace), TRACE_HEADERS
                )
        batch.cache_writes.extend(decision.cache_writes)
        self.stats.events += len(decision.events)
        self.stats.invocations += len(decision.invocations)

    @staticmethod
    def _invoke_topic_of(decision: Decision, invocation: NodeInvocation) -> str:
        state = decision.state
        assert state is not None
        topic = state.steps[invocation.step.step_id].invoke_topic
        assert topic is not None
        return topic

    def _claim_check(self, invocation: NodeInvocation) -> NodeInvocation:
        payload = canonical_json(invocation.params).encode()
        if len(payload) <= self.settings.claim_check_threshold_bytes:
            return invocation
        key = content_key(payload, prefix="params")
        uri = self._blobs.put(key, payload, "application/json")
        ref = PayloadRef(
            uri=uri,
            size_bytes=len(payload),
            sha256=key.rsplit("/", 1)[1],
            content_type="application/json",
        )
        return invocation.model_copy(update={"params": None, "params_ref": ref})

    def _write_cache(self, batch: _Batch) -> None:
        for write in batch.cache_writes:
            entry = {
                "output": write.output,
                "output_ref": write.output_ref.model_dump(mode="json")
                if write.output_ref
                else None,
            }
            self._redis.set(
                self.cache_prefix + write.cache_key,
                canonical_json(entry),
                px=write.ttl_ms if write.ttl_ms > 0 else None,
            )

    def _due_timers(self, now: datetime) -> list[FireTimer]:
        commands: list[FireTimer] = []
        for runs in self.states.values():
            for state in runs.values():
                if not state.timers:
                    continue
                for command in due_timers(state, now):
                    if command.timer_id not in self._fired:
                        commands.append(command)
        return commands

    def _dead_letter(self, message: Message, error_class: str, reason: str) -> None:
        # Queued on the transactional producer: the dead letter commits with the batch.
        self._dead_letters.publish(poison_record(message), error_class, reason)
        self.stats.dead_lettered += 1
        log.warning(
            "dead-lettered %s@%s: [%s] %s", message.topic(), message.offset(), error_class, reason
        )

    def _recover(self, exc: BaseException) -> None:
        """Abort (or replace a fenced producer), rebuild owned state from the log, rewind to
        the committed offsets."""
        log.exception("scheduler batch failed; aborting the transaction: %s", exc)
        self.stats.aborted += 1
        self.checkpoint.clear()
        try:
            self._transaction.abort()
        except KafkaException as abort_error:
            self._replace_producer(abort_error)
        assignment = self.consumer.assignment()
        partitions = {tp.partition for tp in assignment}
        self.states = rebuild_partitions(self.settings, self.catalog.runs.topic, partitions)
        self._partition_of = {run_id: p for p, runs in self.states.items() for run_id in runs}
        self._fired.clear()
        for tp in self.consumer.committed(assignment, timeout=10):
            try:
                if tp.offset >= 0:
                    self.consumer.seek(tp)
                else:
                    self.consumer.seek(TopicPartition(tp.topic, tp.partition, 0))
            except KafkaException as seek_error:
                # Lost meanwhile (the session expired while the batch hung): the rebalance
                # callbacks reset it, and a new owner starts from the committed offset.
                log.info("not rewinding %s/%s: %s", tp.topic, tp.partition, seek_error)
        time.sleep(0.2)

    def _replace_producer(self, error: KafkaException) -> None:
        """The producer cannot abort: fenced (its epoch was bumped, typically because the
        coordinator rolled back a transaction that stayed open past transaction.timeout.ms) or
        broken. A new producer with the same transactional id takes over."""
        now = time.monotonic()
        self._fencings = [t for t in self._fencings if now - t < FENCING_WINDOW_S] + [now]
        if len(self._fencings) > MAX_FENCINGS:
            raise SchedulerFencedError(
                f"Expected to be the only scheduler with transactional id "
                f"{self.transactional_id!r}, but its producer was fenced "
                f"{len(self._fencings)} times in {FENCING_WINDOW_S:.0f}s (last: {error}): is "
                f"another process running with instance id {self.instance_id!r}?"
            ) from error
        log.warning(
            "scheduler %s: the producer cannot abort (%s); replacing it with a new producer "
            "for transactional id %s (%d of %d allowed in %.0fs)",
            self.instance_id,
            error,
            self.transactional_id,
            len(self._fencings),
            MAX_FENCINGS,
            FENCING_WINDOW_S,
        )
        old = self.producer
        with contextlib.suppress(Exception):
            old.close(timeout=1.0)
        self.producer = self._new_producer()
        self._transaction.producer = self.producer
        self._dead_letters.producer = self.producer
        self.stats.producer_replaced += 1

    def run_state(self, run_id: str) -> RunState | None:
        partition = self._partition_of.get(run_id)
        if partition is None:
            return None
        return self.states.get(partition, {}).get(run_id)

    def node_catalog_event_id(self, name: str, version: str) -> str | None:
        """The event id of the ``nodes`` entry this scheduler now routes ``name@version`` by
        (``None``: not seen yet). An observable for tests; the view is read at resolutions."""
        entry = self._nodes.state.entry(name, version)
        return None if entry is None else entry.event_id

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            try:
                # Bounded: a fenced producer's queue never drains.
                self.producer.close(timeout=5.0)
            finally:
                self._workflows.close()
                self._nodes.close()


class _Batch:
    """States changed in the current (uncommitted) transaction, by run id."""

    def __init__(self) -> None:
        self.states: dict[str, tuple[int, RunState]] = {}
        self.cache_writes: list[Any] = []

    def state_of(self, run_id: str, committed: dict[str, RunState]) -> RunState | None:
        if run_id in self.states:
            return self.states[run_id][1]
        return committed.get(run_id)
