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

On assignment, a partition's runs are rebuilt from its snapshot on ``scheduler-state`` plus the
tail of its ``runs`` log (:mod:`processors.scheduler.runtime.recovery`). Every
``scheduler_snapshot_interval_ms``, a batch starts with a snapshot cycle: the runs that changed
since their last snapshot are written to ``scheduler-state`` in the same transaction
(:mod:`processors.scheduler.runtime.snapshots`). Finished runs shrink to markers in memory
(:mod:`processors.scheduler.runtime.run_table`). If a transaction aborts, the checkpoint forgets
the batch's positions, the assigned partitions are rebuilt and the consumer rewinds to the
committed offsets.
"""

from __future__ import annotations

import contextlib
import functools
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
from confluent_kafka.admin import AdminClient

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
from processors.scheduler.runtime.recovery import (
    RecoveryReport,
    recover_partitions,
    request_end_offsets,
)
from processors.scheduler.runtime.run_table import RunTable
from processors.scheduler.runtime.snapshots import SnapshotCycle, SnapshotWriter
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
from streams.admin import admin_client
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
    last_commit_ms: float = 0.0
    # run id -> seq of the last committed event, for runs held in full (tests and progress
    # output read it); a finished run's entry goes when the run shrinks to a marker
    committed_seq: dict[str, int] = field(default_factory=dict)
    recoveries: int = 0
    snapshot_fallbacks: int = 0
    """Partitions whose snapshot could not be used (folded from offset 0 instead)."""
    last_recovery: RecoveryReport | None = None
    snapshot_cycles: int = 0
    snapshot_records: int = 0
    snapshot_bytes: int = 0
    snapshot_s: float = 0.0
    """Time spent producing snapshot cycles (what snapshots cost the loop)."""


class SchedulerRuntime:
    def __init__(
        self,
        settings: Settings,
        *,
        instance_id: str | None = None,
        batch_size: int = 500,
        poll_timeout: float = 0.02,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.catalog = TopicCatalog.from_settings(settings)
        self.group = f"{settings.topic_prefix}.scheduler"
        self.instance_id = instance_id or settings.scheduler_instance_id
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.clock = clock
        self.stats = RuntimeStats()
        self.finished_kept = settings.scheduler_finished_runs_kept
        self.states: dict[int, RunTable] = {}
        self._snapshots = SnapshotWriter(
            self.catalog.scheduler_state.topic, settings.scheduler_snapshot_interval_ms / 1000
        )
        self._partition_of: dict[str, int] = {}
        # Timers already written as FireTimer and not yet answered: do not write them twice.
        self._fired: set[str] = set()
        self._redis = redis.Redis.from_url(settings.redis_url)
        # Namespaced like the topics, so environments sharing one Redis never share entries.
        self.cache_prefix = f"{settings.topic_prefix}:step-cache:"
        self._workflows = WorkflowsView(settings, self.catalog)
        self._workflow_cache: dict[tuple[str, int], WorkflowDefinition] = {}
        # Node versions by catalog status and rollout weight (nodes topic, all partitions).
        self._nodes = NodeCatalogKafkaView(settings, self.catalog)
        self._resolve_node_version = CatalogResolver(self._nodes)
        self.producer = TransactionalProducer(
            settings,
            transactional_id=f"{self.group}.{self.instance_id}",
            client_id=f"reflux-scheduler-{self.instance_id}",
            config={"linger.ms": 0},
        )
        self._dead_letters = DeadLetterPublisher(self.producer, self.catalog.dlq, self.group)
        self.consumer = Consumer(
            consumer_config(
                self.group,
                settings,
                {"fetch.wait.max.ms": 5, "max.poll.interval.ms": 300_000},
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

    @functools.cached_property
    def _admin(self) -> AdminClient:
        """Asks where partitions end (snapshot checkpoints, recovery)."""
        return admin_client(self.settings)

    @functools.cached_property
    def _blobs(self) -> S3BlobStore:
        """Created on first use (a claim check): the S3 client costs ~0.2 s of every restart."""
        return S3BlobStore(self.settings)

    # -- partition ownership -------------------------------------------------------------------

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        new = {tp.partition for tp in partitions} - set(self.states)
        if not new:
            return
        for p, table in self._rebuild(new).items():
            self.states[p] = table
            for run_id in table.active:
                self._partition_of[run_id] = p
        log.info("scheduler %s owns partitions %s", self.instance_id, sorted(self.states))

    def _rebuild(self, partitions: set[int]) -> dict[int, RunTable]:
        recovery = recover_partitions(
            self.settings, self.catalog, partitions, kept=self.finished_kept, admin=self._admin
        )
        self.stats.recoveries += 1
        self.stats.snapshot_fallbacks += len(recovery.report.fallbacks)
        self.stats.last_recovery = recovery.report
        return recovery.tables

    def _table(self, partition: int) -> RunTable:
        table = self.states.get(partition)
        if table is None:
            table = self.states[partition] = RunTable(self.finished_kept)
        return table

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            table = self.states.pop(tp.partition, None)
            for run_id in table.active if table is not None else ():
                self._partition_of.pop(run_id, None)  # only active runs are indexed

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
        while not stop.is_set():
            self.run_once()
        self.snapshot_before_stop()
        self.close()

    def snapshot_before_stop(self) -> int:
        """Writes every run changed since its last snapshot, so whoever owns the partitions
        next has no tail to fold (a planned restart); returns the records written. A failure
        is only logged: the next owner folds the tail instead."""
        written = 0
        if not self._snapshots.enabled:
            return written
        try:
            while any(table.dirty for table in self.states.values()):
                self._transaction.begin()
                cycle = self._snapshots.write(self.producer, self.states, self._runs_ends)
                self._commit(cycle)
                self._snapshots.committed(cycle, self.states)
                self.stats.snapshot_cycles += 1
                self.stats.snapshot_records += cycle.records
                self.stats.snapshot_bytes += cycle.bytes
                written += cycle.records
        except Exception as exc:
            log.warning("no snapshot before stopping (the next owner folds the tail): %s", exc)
            with contextlib.suppress(Exception):
                self._transaction.abort()
        return written

    def run_once(self) -> int:
        """Consumes one batch (possibly empty), fires due timers; returns inputs processed."""
        messages = consume_messages(
            self.consumer, self.batch_size, self.poll_timeout, what=f"scheduler {self.group}"
        )
        now = self.clock()
        timers = self._due_timers(now)
        snapshot = self._snapshots.due(self.states)
        if not messages and not timers and not snapshot:
            return 0
        started = time.perf_counter()
        batch = _Batch()
        cycle: SnapshotCycle | None = None
        try:
            self._transaction.begin()
            if snapshot:
                # First in the transaction: the committed states, before any event of this batch.
                writing = time.perf_counter()
                cycle = self._snapshots.write(self.producer, self.states, self._runs_ends)
                self.stats.snapshot_s += time.perf_counter() - writing
            for message in messages:
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
            self._commit(cycle)
        except (KafkaException, Exception) as exc:
            self._recover(exc)
            return 0
        # Committed: the new states are now the truth.
        if cycle is not None:
            self._snapshots.committed(cycle, self.states)
            self.stats.snapshot_cycles += 1
            self.stats.snapshot_records += cycle.records
            self.stats.snapshot_bytes += cycle.bytes
        for run_id, (partition, state) in batch.states.items():
            self.stats.committed_seq[run_id] = state.last_seq
            if state.is_finished:
                self._partition_of.pop(run_id, None)
            else:
                self._partition_of[run_id] = partition
            for shrunk in self._table(partition).put(state):
                self.stats.committed_seq.pop(shrunk, None)
        self._fired.update(t.timer_id for t in timers)
        self._write_cache(batch)
        self.stats.batches += 1
        self.stats.inputs += len(messages)
        self.stats.timers_fired += len(timers)
        self.stats.last_commit_ms = (time.perf_counter() - started) * 1000
        return len(messages)

    def _handle(self, message: Message, batch: _Batch) -> None:
        partition = message.partition() or 0
        try:
            decoded = decode(message.value() or b"", INPUT_TYPES)
        except SchemaError as exc:
            self._dead_letter(message, exc.error_class, str(exc))
            return
        assert isinstance(decoded, INPUT_TYPES)
        record: SchedulerInput = decoded
        state = batch.state_of(record.run_id, self._table(partition))
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
            for state in runs.active_states():
                if not state.timers:
                    continue
                for command in due_timers(state, now):
                    if command.timer_id not in self._fired:
                        commands.append(command)
        return commands

    def _runs_ends(self, partitions: list[int]) -> Callable[[], dict[int, int]]:
        """Asks where those ``runs`` partitions end (snapshot checkpoints); answered later."""
        topic = self.catalog.runs.topic
        answer = request_end_offsets(self._admin, [topic], partitions, timeout=10)
        return lambda: answer()[topic]

    def _commit(self, cycle: SnapshotCycle | None) -> None:
        if cycle is not None:
            self._snapshots.finish(self.producer, cycle)
        if cycle is None or self.checkpoint.positions():
            self.checkpoint.commit()
            return
        # Snapshots without consumed input: commit the group's current positions anyway, so the
        # transaction is fenced by the group generation like any batch (a member that lost its
        # partitions must not commit snapshots of them).
        assignment = self.consumer.assignment()
        current = [tp for tp in self.consumer.position(assignment) if tp.offset >= 0]
        if not current:
            current = [
                tp for tp in self.consumer.committed(assignment, timeout=10) if tp.offset >= 0
            ]
        self.checkpoint.commit(positions={(tp.topic, tp.partition): tp.offset for tp in current})

    def _dead_letter(self, message: Message, error_class: str, reason: str) -> None:
        # Queued on the transactional producer: the dead letter commits with the batch.
        self._dead_letters.publish(poison_record(message), error_class, reason)
        self.stats.dead_lettered += 1
        log.warning(
            "dead-lettered %s@%s: [%s] %s", message.topic(), message.offset(), error_class, reason
        )

    def _recover(self, exc: BaseException) -> None:
        """Abort, rebuild owned state from the log, rewind to the committed offsets."""
        log.exception("scheduler batch failed; aborting the transaction: %s", exc)
        self.stats.aborted += 1
        self.checkpoint.clear()
        try:
            self._transaction.abort()
        except KafkaException:
            log.exception("abort failed (producer fenced?); exiting so a supervisor restarts")
            raise
        assignment = self.consumer.assignment()
        partitions = {tp.partition for tp in assignment}
        self.states = self._rebuild(partitions)
        self._partition_of = {
            run_id: p for p, table in self.states.items() for run_id in table.active
        }
        self._fired.clear()
        for tp in self.consumer.committed(assignment, timeout=10):
            if tp.offset >= 0:
                self.consumer.seek(tp)
            else:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, 0))
        time.sleep(0.2)

    def run_state(self, run_id: str) -> RunState | None:
        """The run's state as this scheduler holds it: in full (active, or among the recently
        finished), or the minimal state of its marker; ``None``: not on an owned partition."""
        for table in list(self.states.values()):
            state = table.get(run_id)
            if state is not None:
                return state
        return None

    def node_catalog_event_id(self, name: str, version: str) -> str | None:
        """The event id of the ``nodes`` entry this scheduler now routes ``name@version`` by
        (``None``: not seen yet). An observable for tests; the view is read at resolutions."""
        entry = self._nodes.state.entry(name, version)
        return None if entry is None else entry.event_id

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.producer.close()
            self._workflows.close()
            self._nodes.close()


class _Batch:
    """States changed in the current (uncommitted) transaction, by run id."""

    def __init__(self) -> None:
        self.states: dict[str, tuple[int, RunState]] = {}
        self.cache_writes: list[Any] = []

    def state_of(self, run_id: str, committed: RunTable) -> RunState | None:
        if run_id in self.states:
            return self.states[run_id][1]
        return committed.get(run_id)
