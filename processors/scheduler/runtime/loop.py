"""The step scheduler's runtime: a transactional consume-decide-produce loop on confluent-kafka.

One consumer group reads ``commands`` and ``results`` (co-partitioned with ``runs`` by run id);
the instance that owns partition *p* owns every run on it and is the single writer of those runs'
events on ``runs`` partition *p*. A batch is ONE Kafka transaction:

1. each input is decided by the pure core (:func:`processors.scheduler.decide.decide`) against the
   run's state; cache lookups are answered from Redis right away and fed back into ``decide``;
2. the resulting events go to ``runs`` (same partition number), the node invocations to their
   invoke topics (created on first use; params above the claim-check threshold go to the object
   store first, and ``StepScheduled`` carries the reference), the decisions' outbox (commands to
   other runs: child runs' starts, cancel/pause/resume sent on to them, ``ChildRunFinished`` to
   their parents; ADR 0025) and due timers (``FireTimer``) go to ``commands``, poison inputs go
   to ``dlq``; every record is size-checked against
   Kafka's message limit before anything of its input is sent;
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
(:mod:`processors.scheduler.runtime.run_table`).

No failure stops a partition (:mod:`processors.scheduler.runtime.failures`, ADR 0011): an input
whose decision fails deterministically (a bug in ``decide``, a record over the message limit)
fails its run or is rejected or dead-lettered, inside the batch's transaction; a transient
failure aborts the transaction, rewinds the consumer to the batch and retries after a backoff;
a commit the broker refuses is retried one input per transaction to single out the bad input.
In-memory states only ever hold committed decisions, so an abort rebuilds nothing.

Fencing (docs/decisions/0018-scheduler-restarts-and-supervision.md): a transaction left open
longer than ``transaction.timeout.ms`` -- the process paused or starved, a dependency hung -- is
rolled back by the transaction coordinator, which bumps the producer epoch: the producer is then
"fenced by a newer instance" although no other instance exists, and can neither commit nor
abort. The loop keeps its transactions short (a batch stops taking inputs after
``max_batch_seconds`` and leaves the rest for the next one) and, when the producer is fenced or
broken anyway, replaces it with a new one under the same transactional id (whose initialisation
aborts whatever the old one left open), and rewinds like after any abort. Only repeated
fencing in a short time (another live process with this instance id) stops the scheduler.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from opentelemetry.sdk.trace import ReadableSpan

from foundation.errors import NonRetryableError, RefluxError, ServiceUnavailableError
from foundation.liveness import Heartbeat
from foundation.objectstore import S3BlobStore, content_key
from foundation.settings import Settings
from processors.mutations.routing import WorkflowRoute
from processors.node_catalog.runtime_view import (
    CatalogResolver,
    CatalogValidator,
    NodeCatalogKafkaView,
)
from processors.scheduler.decide import (
    CacheHit,
    CacheLookup,
    CacheMiss,
    Decision,
    DecisionContext,
    RegisteredWorkflow,
    SchedulerInput,
    decide,
    fail_input,
    kept_events,
)
from processors.scheduler.evolve import RunEvent
from processors.scheduler.inline import InlinePolicy
from processors.scheduler.runtime.failures import (
    Backoff,
    Isolation,
    PayloadTooLargeError,
    Strike,
    classify_failure,
    coordinates,
    is_fatal,
)
from processors.scheduler.runtime.gate import SchedulerGate
from processors.scheduler.runtime.invoke_topics import InvokeTopics
from processors.scheduler.runtime.outcomes import OutcomeWriter
from processors.scheduler.runtime.recovery import (
    RecoveryReport,
    recover_partitions,
    request_end_offsets,
)
from processors.scheduler.runtime.reload import reload_run
from processors.scheduler.runtime.results_gate import ResultsGate
from processors.scheduler.runtime.run_table import RunTable
from processors.scheduler.runtime.snapshots import RECORD_OVERHEAD, SnapshotCycle, SnapshotWriter
from processors.scheduler.runtime.spans import SchedulerSpans
from processors.scheduler.runtime.traces import traces_for
from processors.scheduler.runtime.workflows import (
    WorkflowRoutesView,
    WorkflowsView,
    route_workflow,
)
from processors.scheduler.state import RunState, RunStatus
from processors.scheduler.timers import due_timers
from schemas import decode, serde
from schemas.base import RefluxRecord, canonical_json
from schemas.errors import SchemaError
from schemas.models import (
    CancelRun,
    ChildRunFinished,
    ChildRunRequested,
    ErrorInfo,
    FireTimer,
    MutateGraph,
    NodeHeartbeat,
    NodeInvocation,
    NodeResult,
    PauseRun,
    PayloadRef,
    RebindRun,
    RedriveStep,
    ResumeRun,
    SignalRun,
    StartRun,
    StepDispatched,
)
from schemas.trace_json import TRACE_HEADERS, encode_trace
from streams.admin import admin_client
from streams.checkpoint import Checkpoint, KafkaTransaction
from streams.consumer import consume_messages, consumer_config, kafka_transient
from streams.dlq import DeadLetterPublisher, poison_record
from streams.metrics import SCHEDULER
from streams.producer import (
    TYPE_HEADER,
    DeliveryError,
    TransactionalProducer,
    TransactionStuckError,
    normalize_headers,
)
from streams.topics import TopicCatalog
from streams.tracing import trace_headers
from workflows.model import WorkflowDefinition
from workflows.validation import WorkflowValidationError

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES: Final = 1_000_000
"""librdkafka's default ``message.max.bytes``; the producer refuses larger records locally."""
_RECORD_OVERHEAD: Final = RECORD_OVERHEAD
"""Bytes kept free for the record's framing (headers, lengths, timestamps) within the limit."""
_MAX_ERROR_MESSAGE: Final = 4000

INPUT_TYPES = (
    StartRun,
    CancelRun,
    PauseRun,
    ResumeRun,
    RedriveStep,
    RebindRun,
    MutateGraph,
    SignalRun,
    FireTimer,
    NodeHeartbeat,
    NodeResult,
    ChildRunFinished,
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
    """Transactions aborted (transient failures and commits the broker refused)."""
    transient_failures: int = 0
    """Batches retried after a backoff (a service unreachable or slow)."""
    failed_inputs: int = 0
    """Inputs whose failure was written on their run (RunFailed / CommandRejected) instead of
    their decision; see ``fail_input``."""
    isolated_batches: int = 0
    """Batches re-processed one input per transaction after the broker refused their commit."""
    # Producers replaced after they were fenced or broken (see the module docstring).
    producer_replaced: int = 0
    # Batches that stopped taking inputs at max_batch_seconds (the rest went to the next one).
    batches_cut: int = 0
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
    snapshot_oversized: int = 0
    """Run records left out of snapshot cycles for exceeding the record limit."""
    snapshot_s: float = 0.0
    """Time spent producing snapshot cycles (what snapshots cost the loop)."""


ABORT_ATTEMPTS: Final = 2
"""Aborts that time out before the producer is replaced instead of tried again."""


class SchedulerRuntime:
    def __init__(
        self,
        settings: Settings,
        *,
        instance_id: str | None = None,
        batch_size: int = 500,
        poll_timeout: float = 0.02,
        max_batch_seconds: float = 5.0,
        rebuild_timeout_s: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_message_bytes: int | None = None,
    ) -> None:
        self.settings = settings
        self._spans = SchedulerSpans(settings)
        self.catalog = TopicCatalog.from_settings(settings)
        self.group = f"{settings.topic_prefix}.scheduler"
        self.instance_id = instance_id or settings.scheduler_instance_id
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        # Well inside the producer's transaction.timeout.ms (15 s), so the commit has room too.
        self.max_batch_seconds = max_batch_seconds
        # How long a partition's rebuild may keep failing transiently before the scheduler
        # exits for a clean restart (the broker is down longer than a restart takes).
        self.rebuild_timeout_s = rebuild_timeout_s
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
        # Queue and step timeouts wait until the results they race with are read.
        self._results_gate = ResultsGate(self.catalog.results.topic)
        self._redis = redis.Redis.from_url(settings.redis_url)
        # Namespaced like the topics, so environments sharing one Redis never share entries.
        self.cache_prefix = f"{settings.topic_prefix}:step-cache:"
        self._workflows = WorkflowsView(settings, self.catalog)
        # Splits between workflow versions set by mutation proposals (reflux.mutations).
        self._routes = WorkflowRoutesView(settings, self.catalog)
        self._workflow_cache: dict[tuple[str, int], WorkflowDefinition] = {}
        # Node versions by catalog status and rollout weight (nodes topic, all partitions).
        self._nodes = NodeCatalogKafkaView(settings, self.catalog)
        self._resolve_node_version = CatalogResolver(self._nodes)
        # Pure steps evaluated in decide, no worker (ADR 0064); no rollout may split the node.
        self._inline = InlinePolicy(settings.inline_nodes, self._nodes.state.catalog_versions)
        # Graph mutations (add_step, replace_node) are checked against the same view.
        self._node_validator = CatalogValidator(self._nodes)
        self.transactional_id = f"{self.group}.{self.instance_id}"
        self.producer = self._new_producer()
        self._fencings: list[float] = []
        self._dead_letters = DeadLetterPublisher(self.producer, self.catalog.dlq, self.group)
        # Records over this are refused before anything of their input is sent.
        self.max_message_bytes = max_message_bytes or int(
            self.producer.config.get("message.max.bytes", DEFAULT_MAX_MESSAGE_BYTES)
        )
        self._snapshots.max_record_bytes = self.max_message_bytes
        self.invoke_topics = InvokeTopics(settings, self.catalog)
        # Public CloudEvents of run outcomes, in the same transaction as their run events.
        self._outcomes = OutcomeWriter(
            settings.topic_prefix, self.catalog.run_outcomes.topic, self._store_outputs
        )
        # Retry budget and circuit per dependency: soft state fed by what this process decides.
        self.retry_gate = SchedulerGate(settings, self.instance_id)
        self._backoff = Backoff()
        self._isolation = Isolation()
        self._stop = threading.Event()
        # librdkafka's default fetch wait (500 ms): the broker answers a waiting fetch as soon
        # as a record (or, read_committed, a commit marker) arrives, so a shorter wait buys no
        # latency; at 5 ms an idle scheduler cost the broker 0.11 cores in empty fetches.
        self.consumer = Consumer(
            consumer_config(
                self.group,
                settings,
                {
                    "max.poll.interval.ms": 300_000,
                    "client.id": f"reflux-scheduler-{self.instance_id}",
                },
            )
        )
        # The transaction flushes the events, invocations and dead letters as it commits.
        # Calls time out after 30 s; one still blocked 10 s later is abandoned with its
        # producer (TransactionStuckError). A 10 s timeout made commits on a loaded machine
        # (load average 6+) time out: an extra abort, and a refused record's delivery
        # report lost to the timeout, so its whole input failed instead of its step.
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
            config={"linger.ms": self.settings.scheduler_linger_ms},
        )

    @functools.cached_property
    def _admin(self) -> AdminClient:
        """Asks where partitions end (snapshot checkpoints, recovery); warmed so that the
        restart's first question is answered at once."""
        return admin_client(self.settings, warm=True)

    @functools.cached_property
    def _blobs(self) -> S3BlobStore:
        """Created on first use (a claim check): the S3 client costs ~0.2 s of every restart."""
        return S3BlobStore(self.settings)

    # -- partition ownership -------------------------------------------------------------------

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        new = {tp.partition for tp in partitions} - set(self.states)
        if not new:
            return
        self._own(new, [tp for tp in partitions if tp.partition in new])

    def _own(self, partitions: set[int], assigned: Sequence[TopicPartition] = ()) -> None:
        """Rebuild ``partitions``' run tables, retrying transient failures: a partition is only
        processed with its state rebuilt. Observed in the chaos test: right after a broker
        restart the end-offset request failed (FENCED_LEADER_EPOCH) inside the assignment
        callback, the partitions stayed assigned without state, and results of their runs were
        consumed against empty tables and dropped -- 142 of 200 runs hung.

        ``assigned``: the newly assigned topic partitions, whose results backlog the gate
        learns first (their committed offsets, from the group coordinator): on a loaded machine
        that request timed out (``_TIMED_OUT``, "Failed to get committed offsets") inside the
        assignment callback, and the exception ended the scheduler that was taking over."""
        deadline = time.monotonic() + self.rebuild_timeout_s
        while True:
            try:
                try:
                    self._results_gate.assigned(self.consumer, assigned)
                except KafkaException as exc:
                    if not (kafka_transient(exc) or _timed_out(exc)):
                        raise
                    raise ServiceUnavailableError(
                        f"Expected the committed offsets of {len(assigned)} new partitions, "
                        f"but: {exc}"
                    ) from exc
                tables = self._rebuild(partitions)
                break
            except ServiceUnavailableError as exc:
                if self._stop.is_set() or time.monotonic() > deadline:
                    raise RefluxError(
                        f"Expected to rebuild partitions {sorted(partitions)} within "
                        f"{self.rebuild_timeout_s:.0f} s, but: {exc}; exiting so a supervisor "
                        "restarts the scheduler",
                        error_class="RecoveryFailed",
                    ) from exc
                self._wait_after(f"rebuilding partitions {sorted(partitions)}", exc)
        self._backoff.reset()
        for p, table in tables.items():
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

    def _reload(self, partition: int, run_id: str, marker: RunState | None) -> RunState | None:
        """A finished run's full state from the run log (a re-drive from a step reopens it);
        the marker's minimal state when the log cannot give it (decide then refuses). Without
        a marker: an imported run, adopted from the log as it is there (None when it is not)."""
        state = reload_run(self.settings, self._admin, self.catalog.runs.topic, partition, run_id)
        if marker is None:
            return state
        if state is None or state.last_seq != marker.last_seq:
            return marker
        return state

    def _table(self, partition: int) -> RunTable:
        table = self.states.get(partition)
        if table is None:
            table = self.states[partition] = RunTable(self.finished_kept)
        return table

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        self._isolation.forget((tp.topic, tp.partition) for tp in partitions)
        self._results_gate.revoked(partitions)
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
        return RegisteredWorkflow(record.version, definition, record.tenant)

    def workflow_route(self, workflow_id: str) -> WorkflowRoute | None:
        """The split between versions this scheduler applies to new runs of ``workflow_id``
        (``None``: the latest version), after reading what has arrived."""
        self._routes.drain()
        return self._routes.routes.get(workflow_id)

    def _route_workflow(self, workflow_id: str, run_id: str) -> int | None:
        return route_workflow(self._workflows, self._routes, workflow_id, run_id)

    def _load_payload(self, ref: PayloadRef) -> Any:
        """A claim-checked output a template references: a missing or corrupt blob fails the
        step (non-retryable); an unreachable store is retried with the batch."""
        try:
            data = self._blobs.get(ref.uri)
        except RefluxError:
            raise  # BlobNotFound
        except Exception as exc:
            if classify_failure(exc).retryable:
                raise ServiceUnavailableError(f"Expected to read {ref.uri}, but: {exc}") from exc
            raise
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != ref.size_bytes or digest != ref.sha256:
            raise NonRetryableError(
                f"Expected {ref.uri} to hold {ref.size_bytes} bytes with sha256 {ref.sha256}, "
                f"but it holds {len(data)} bytes with sha256 {digest}",
                error_class="PayloadCorrupt",
            )
        return json.loads(data)

    def _store_params(self, params: Any) -> PayloadRef | None:
        """Claim check: params over the threshold go to the object store (content-addressed,
        so a retried batch stores the same object again)."""
        return self._store_json(params, "params")

    def _store_outputs(self, outputs: Any) -> PayloadRef | None:
        """Claim check of a run's outputs on the outcomes topic (ADR 0054)."""
        return self._store_json(outputs, "outputs")

    def _store_json(self, value: Any, prefix: str) -> PayloadRef | None:
        payload = canonical_json(value).encode()
        if len(payload) <= self.settings.claim_check_threshold_bytes:
            return None
        key = content_key(payload, prefix=prefix)
        uri = self._blobs.put(key, payload, "application/json")
        return PayloadRef(
            uri=uri,
            size_bytes=len(payload),
            sha256=key.rsplit("/", 1)[1],
            content_type="application/json",
        )

    def _context(self) -> DecisionContext:
        return DecisionContext(
            now=self.clock(),
            invoke_topic=self.invoke_topics,
            lookup_workflow=self._lookup_workflow,
            route_workflow=self._route_workflow,
            load_payload=self._load_payload,
            store_payload=self._store_params,
            resolve_node_version=self._resolve_node_version,
            inline_node=self._inline,
            retry_gate=self.retry_gate.gate,
            # Graph mutations and ai.meta plans are validated against the live catalog; an
            # empty catalog (a deployment that registers no nodes) checks no node names, as
            # the resolver then falls back to the constraint's major. The validator refreshes
            # the view and catches up once before calling a name unknown (ADR 0022).
            node_catalog=self._node_validator if self._node_validator.active() else None,
        )

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        log.info("scheduler %s running (group %s)", self.instance_id, self.group)
        self._stop = stop  # backoff waits end early on stop
        heartbeat = Heartbeat.from_settings(self.settings)
        try:
            while not stop.is_set():
                heartbeat.beat()
                self.run_once()
        finally:
            self.snapshot_before_stop()
            # Also after an error: the consumer leaves the group at once, so whoever restarts
            # the scheduler gets the partitions without waiting for a session timeout.
            try:
                self.close()
            except Exception:
                log.exception("scheduler %s: closing its clients failed", self.instance_id)

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
                if not cycle.records:
                    break  # what is still dirty is over the record limit (never written)
        except Exception as exc:
            log.warning("no snapshot before stopping (the next owner folds the tail): %s", exc)
            with contextlib.suppress(Exception):
                self._transaction.abort()
        return written

    def run_once(self) -> int:
        """Consumes one batch (possibly empty), fires due timers; returns inputs processed.

        While a refused commit is being narrowed down (:class:`Isolation`), a batch is one
        input and fires no timers."""
        isolating = self._isolation.active
        try:
            messages = consume_messages(
                self.consumer,
                1 if isolating else self.batch_size,
                self.poll_timeout,
                what=f"scheduler {self.group}",
            )
        except ServiceUnavailableError as exc:
            self._wait_after("consuming", exc)
            return 0
        unowned = {message.partition() or 0 for message in messages} - set(self.states)
        if unowned:
            # Never decide against a table that was not rebuilt (see _own): read them again
            # once the partitions are owned.
            self._rewind(messages)
            self._own(unowned)
            return 0
        for message in messages:
            self._results_gate.consumed(message)
        now = self.clock()
        timers = [] if isolating else self._due_timers(now)
        snapshot = False if isolating else self._snapshots.due(self.states)
        if not messages and not timers and not snapshot:
            return 0
        started = time.perf_counter()
        before = (self.stats.events, self.stats.invocations, self.stats.cache_hits)
        batch = _Batch()
        cycle: SnapshotCycle | None = None
        try:
            self._transaction.begin()
            if snapshot:
                # First in the transaction: the committed states, before any event of this batch.
                writing = time.perf_counter()
                cycle = self._snapshots.write(self.producer, self.states, self._runs_ends)
                self.stats.snapshot_s += time.perf_counter() - writing
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
            self._commit(cycle)
        except Exception as exc:
            self._failed(exc, messages, timers)
            return 0
        # Committed: the new states are now the truth.
        self._apply_committed(batch, cycle)
        self._spans.export(batch.spans)
        self._fired.update(t.timer_id for t in timers)
        self._write_cache(batch)
        self._backoff.reset()
        self._isolation.committed(messages)
        if messages or timers:  # a snapshot cycle alone is counted in snapshot_cycles
            self.stats.batches += 1
        self.stats.inputs += len(messages)
        self.stats.timers_fired += len(timers)
        self.stats.dead_lettered += batch.dead_lettered
        self.stats.failed_inputs += batch.failed_inputs
        self.stats.last_commit_ms = (time.perf_counter() - started) * 1000
        if messages or timers:
            self._observe(messages, batch, before, started)
        return len(messages)

    def _observe(
        self, messages: list[Message], batch: _Batch, before: tuple[int, int, int], started: float
    ) -> None:
        """Count a committed batch for /metrics (streams.metrics, ADR 0060)."""
        SCHEDULER.committed(
            (message.topic() or "" for message in messages),
            self.stats.events - before[0],
            self.stats.invocations - before[1],
            batch.dead_lettered,
            time.perf_counter() - started,
        )
        if self.stats.cache_hits != before[2]:
            SCHEDULER.cache_hits.inc(self.stats.cache_hits - before[2])
        SCHEDULER.runs_in_memory.set(sum(len(table) for table in self.states.values()))

    def _apply_committed(self, batch: _Batch, cycle: SnapshotCycle | None) -> None:
        """A batch's transaction committed: its states and snapshots are now the truth."""
        if cycle is not None:
            self._snapshots.committed(cycle, self.states)
            self.stats.snapshot_cycles += 1
            self.stats.snapshot_records += cycle.records
            self.stats.snapshot_bytes += cycle.bytes
            self.stats.snapshot_oversized += len(cycle.oversized)
        for run_id, (partition, state) in batch.states.items():
            self.stats.committed_seq[run_id] = state.last_seq
            if state.is_finished:
                self._partition_of.pop(run_id, None)
            else:
                self._partition_of[run_id] = partition
            for shrunk in self._table(partition).put(state):
                self.stats.committed_seq.pop(shrunk, None)

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
            self._dead_letter(message, exc.error_class, str(exc), batch)
            return
        assert isinstance(decoded, INPUT_TYPES)
        record: SchedulerInput = decoded
        if isinstance(record, FireTimer):
            self._fired.discard(record.timer_id)
        state = batch.state_of(record.run_id, self._table(partition))
        if _needs_full_state(record, state):
            state = self._reload(partition, record.run_id, state)
        strike = self._isolation.strikes.get(coordinates(message))
        if strike is not None and strike.level >= 2:
            # Even writing this input's failure was refused: dead-letter it, nothing else.
            failure = _Failure(strike.error_class, strike.message)
            self._write_failure(failure, message, record, state, batch, dead_letter_only=True)
            return
        decision: Decision | None = None
        try:
            decision = decide(state, record, self._context())
            decision = self._answer_cache(decision, batch)
            # After a refused commit (a strike), the records bound for the refusing topics
            # fail their step; the rest of the decision stands.
            records = self._records(decision, partition, refused=strike)
        except WorkflowValidationError as exc:
            self._dead_letter(message, "WorkflowInvalid", str(exc), batch)
            return
        except _RecordRefusedError as refused:
            assert decision is not None
            failure = refused.failure()
            self._write_failure(failure, message, record, state, batch, decision=decision)
            return
        except Exception as exc:
            found = classify_failure(exc)
            if found.retryable or is_fatal(exc):
                raise  # the whole batch is retried (after a backoff) or the loop ends
            log.exception(
                "deciding %s of run %s failed; failing the input, not the partition",
                type(record).__name__,
                record.run_id,
            )
            detail = str(exc) or type(exc).__name__
            self._write_failure(_Failure(found.error_class, detail), message, record, state, batch)
            return
        if strike is not None:
            # Refused alone, but none of its records goes where the broker refused: fail the
            # input as a whole rather than try the same transaction again.
            failure = _Failure(strike.error_class, strike.message)
            self._write_failure(failure, message, record, state, batch)
            return
        self._send(records)
        self._applied(decision, partition, batch)
        batch.spans.extend(self._spans.of(state, decision.state, decision.events))
        if decision.rejection:
            log.info(
                "rejected %s for run %s: %s",
                type(record).__name__,
                record.run_id,
                decision.rejection,
            )

    def _write_failure(
        self,
        failure: _Failure,
        message: Message,
        record: SchedulerInput,
        state: RunState | None,
        batch: _Batch,
        *,
        decision: Decision | None = None,
        dead_letter_only: bool = False,
    ) -> None:
        """Queue ``failure`` on the input's run (``fail_input``) instead of its decision, or
        else dead-letter the input."""
        topic, partition, offset = coordinates(message)
        origin = f"{type(record).__name__} at {topic}/{partition}@{offset}"
        text = f"{failure.detail} (input: {origin})"
        if len(text) > _MAX_ERROR_MESSAGE:
            text = text[: _MAX_ERROR_MESSAGE - 1] + "…"
        error = ErrorInfo(error_class=failure.error_class, message=text, retryable=False)
        failed: Decision | None = None
        records: list[_Out] = []
        if not dead_letter_only:
            prefix: tuple[RunEvent, ...] = ()
            invocations: tuple[NodeInvocation, ...] = ()
            commands: tuple[Any, ...] = ()
            if decision is not None:
                # With the scheduling of a refused dispatch that scheduled its step (ADR 0075).
                prefix = kept_events(decision.events, failure.keep)
                sent = {e.invocation_id for e in prefix if isinstance(e, StepDispatched)}
                invocations = tuple(i for i in decision.invocations if i.invocation_id in sent)
                # A child requested in the kept events must be started too (its StartRun).
                children = {e.child_run_id for e in prefix if isinstance(e, ChildRunRequested)}
                commands = tuple(
                    c for c in decision.commands if isinstance(c, StartRun) and c.run_id in children
                )
            try:
                failed = fail_input(
                    state,
                    record,
                    error,
                    self._context(),
                    prefix=prefix,
                    invocations=invocations,
                    commands=commands,
                    step_id=failure.step_id,
                    attempt=failure.attempt,
                )
                records = self._records(failed, partition)
            except Exception as exc:
                if classify_failure(exc).retryable or is_fatal(exc):
                    raise
                log.exception("could not write the failure of %s; dead-lettering it", origin)
                failed = None
        if failed is None or not failed.events:
            self._dead_letter(message, error.error_class, error.message, batch)
            return
        log.error("run %s: [%s] %s", record.run_id, error.error_class, error.message)
        self._send(records)
        self._applied(failed, partition, batch)
        batch.failed_inputs += 1

    def _answer_cache(self, decision: Decision, batch: _Batch) -> Decision:
        """Looks cache-enabled steps up in Redis and feeds the answers back into ``decide``.

        Done inside the transaction: the lookup only reads a derived cache, so an abort simply
        repeats it, and a hit costs no extra round trip through Kafka.
        """
        lookups = list(decision.cache_lookups)
        events = list(decision.events)
        invocations = list(decision.invocations)
        writes = list(decision.cache_writes)
        commands = list(decision.commands)
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
            commands.extend(follow.commands)
        return Decision(
            state=state,
            events=tuple(events),
            invocations=tuple(invocations),
            cache_lookups=(),
            cache_writes=tuple(writes),
            rejection=decision.rejection,
            commands=tuple(commands),
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

    def _records(
        self, decision: Decision, partition: int, refused: Strike | None = None
    ) -> list[_Out]:
        """Everything ``decision`` writes, encoded and size-checked; nothing is sent yet.

        Raises :class:`_RecordRefusedError` at the first event or invocation over the message
        limit, or (``refused``) bound for a topic whose broker refused this input's records
        before; the decision's events before it can still be written. An oversized trace is
        dropped.
        """
        out: list[_Out] = []
        dispatched: dict[str, int] = {}
        for index, event in enumerate(decision.events):
            record = self._encoded(self.catalog.runs.topic, event.run_id, event, partition)
            self._check(index, event, record, refused)
            if isinstance(event, StepDispatched):
                dispatched[event.invocation_id] = index
            out.append(record)
        for invocation in decision.invocations:
            topic = self._invoke_topic_of(decision, invocation)
            value = self._claim_check(invocation)
            record = self._encoded(topic, invocation.run_id, value, None)
            # Cut before the StepDispatched of the invocation: the step fails instead.
            index = dispatched.get(invocation.invocation_id, len(decision.events))
            self._check(index, value, record, refused)
            out.append(record)
        for command in decision.commands:
            # The outbox (child runs, ADR 0025): commands to other runs, keyed (and so
            # partitioned) by their run id like every command, in this same transaction.
            record = self._encoded(self.catalog.commands.topic, command.run_id, command, None)
            self._check(len(decision.events), command, record, refused)
            out.append(record)
        if decision.state is not None and decision.events:
            for trace in traces_for(decision.events, decision.state):
                data = encode_trace(trace)
                size = len(data) + len(trace.node) + _RECORD_OVERHEAD
                if size > self.max_message_bytes:
                    log.warning("dropping a %d-byte trace of run %s", size, trace.run_id)
                    continue
                headers = normalize_headers(TRACE_HEADERS)
                topic = self.catalog.traces.topic
                out.append(_Out(topic, trace.node.encode(), data, headers, None, size))
        for outcome in self._outcomes.records(decision):
            size = len(outcome.value) + len(outcome.key) + _RECORD_OVERHEAD
            record = _Out(
                self._outcomes.topic, outcome.key, outcome.value, outcome.headers, None, size
            )
            # Refused: the run fails at the event the outcome is made from (and so has none).
            self._check(outcome.event_index, decision.events[outcome.event_index], record, refused)
            out.append(record)
        return out

    def _check(self, index: int, value: RefluxRecord, record: _Out, refused: Strike | None) -> None:
        if record.size > self.max_message_bytes:
            raise _RecordRefusedError(
                index,
                value,
                PayloadTooLargeError.error_class,
                f"it is {record.size} bytes, over Kafka's {self.max_message_bytes}-byte message "
                "limit (large step params and outputs travel by claim check; run inputs, "
                "outputs and definitions must stay under the limit)",
            )
        if refused is not None and record.topic in refused.topics:
            raise _RecordRefusedError(
                index,
                value,
                refused.error_class,
                f"the broker refused it on {record.topic}: {refused.message}",
            )

    @staticmethod
    def _encoded(topic: str, key: str, value: RefluxRecord, partition: int | None) -> _Out:
        data = serde.encode(value)
        key_bytes = key.encode()
        headers = [(TYPE_HEADER, value.AVRO_NAME.encode())]
        if isinstance(value, NodeInvocation | StartRun):
            # The attempt's span (a child run: the parent run's) for whoever consumes it.
            headers += trace_headers(value.trace_context)
        size = len(data) + len(key_bytes) + _RECORD_OVERHEAD
        return _Out(topic, key_bytes, data, headers, partition, size)

    def _send(self, records: Sequence[_Out]) -> None:
        for r in records:
            self.producer.send(r.topic, r.key, r.value, r.headers, partition=r.partition)

    def _applied(self, decision: Decision, partition: int, batch: _Batch) -> None:
        """Bookkeeping once a decision's records are queued in the transaction."""
        if decision.state is not None and decision.events:
            batch.states[decision.state.run_id] = (partition, decision.state)
        batch.cache_writes.extend(decision.cache_writes)
        self.retry_gate.fed(decision)
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
        """Params still inline in state (logged before StepScheduled had ``params_ref``)."""
        if invocation.params_ref is not None:
            return invocation
        ref = self._store_params(invocation.params)
        if ref is None:
            return invocation
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
        for partition, runs in self.states.items():
            for state in runs.active_states():
                if not state.timers:
                    continue
                for command in due_timers(state, now):
                    if command.timer_id not in self._fired and self._results_gate.allows(
                        self.consumer, partition, command
                    ):
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

    def _dead_letter(self, message: Message, error_class: str, reason: str, batch: _Batch) -> None:
        # Queued on the transactional producer: the dead letter commits with the batch.
        self._dead_letters.publish(poison_record(message), error_class, reason)
        batch.dead_lettered += 1
        log.warning(
            "dead-lettered %s@%s: [%s] %s", message.topic(), message.offset(), error_class, reason
        )

    def _failed(
        self, exc: BaseException, messages: Sequence[Message], timers: Sequence[FireTimer]
    ) -> None:
        """The batch's transaction failed: abort it, rewind, then retry or narrow it down.

        Nothing is rebuilt: the batch's decisions were never applied to ``self.states``."""
        fatal = is_fatal(exc)
        if not fatal:
            # A record that failed earlier in the transaction is the real cause (the error
            # that surfaced may be a later produce refused because the transaction had failed).
            try:
                reports = self.producer.take_failures()
            except (KafkaException, SystemError) as flush_exc:
                # A producer broken beyond what its error said: confluent-kafka's flush raised
                # SystemError ("returned NULL without setting an exception") on a fenced one.
                log.warning(
                    "scheduler %s: the producer cannot flush: %r", self.instance_id, flush_exc
                )
                reports, fatal = [], True
            if reports:
                then = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                exc = DeliveryError(reports, f" (then: {then})")
                fatal = is_fatal(exc)
        failure = classify_failure(exc)
        self.stats.aborted += 1
        SCHEDULER.aborts.inc()
        self.checkpoint.clear()
        self._abort(exc, fatal=fatal)
        self._rewind(messages)
        # Check invoke topics again on their next use: one deleted meanwhile (its records time
        # out, or are refused) is created again instead of failing every try.
        self.invoke_topics.forget()
        if fatal:
            return  # the producer was replaced (_abort): the batch runs again at once
        if failure.retryable:
            self.stats.transient_failures += 1
            self._wait_after("the batch", exc)
            return
        log.error(
            "the broker refused the transaction of %d input(s) [%s]: %s",
            len(messages),
            failure.error_class,
            exc,
        )
        if len(messages) == 1 and not timers and self._isolation.covers(messages[0]):
            # Refused alone, after the batch it was in was refused: this input is the cause.
            strike = self._isolation.strike(messages[0], failure, exc)
            if strike.level > 2:
                # Even a dead letter alone was refused: nothing is left but to wait (never
                # skip an input: that would lose it).
                strike.level = 2
                log.critical("cannot even dead-letter %s", coordinates(messages[0]))
                self._wait_after("dead-lettering", exc)
        elif messages:
            self._isolation.isolate(messages)
            self.stats.isolated_batches += 1
        else:
            self._wait_after("firing timers", exc)

    def _abort(self, exc: BaseException, *, fatal: bool = False) -> None:
        """Abort the open transaction; an abort that times out (broker unreachable) is tried
        again after a backoff, as librdkafka allows. A fenced or broken producer (``fatal``),
        which cannot abort, is replaced (:meth:`_replace_producer`)."""
        if fatal or is_fatal(exc):
            self._replace_producer(exc)
            return
        for attempt in range(1, ABORT_ATTEMPTS + 1):
            try:
                self._transaction.abort()
                return
            except TransactionStuckError as abort_exc:
                self._replace_producer(abort_exc)
                return
            except KafkaException as abort_exc:
                error = abort_exc.args[0] if abort_exc.args else None
                if isinstance(error, KafkaError) and error.code() == KafkaError._STATE:
                    return  # no transaction was open (begin itself failed)
                if (
                    is_fatal(abort_exc)
                    or not classify_failure(abort_exc).retryable
                    or attempt == ABORT_ATTEMPTS
                ):
                    # Seen in the chaos test after a broker restart: abort_transaction timed
                    # out every 30 s for minutes, the producer still bound to the coordinator
                    # of the broker before the restart. A new producer (same transactional id)
                    # finds the current coordinator, which aborts what this one left open.
                    self._replace_producer(abort_exc)
                    return
                self._wait_after("aborting", abort_exc)
                if self._stop.is_set():
                    raise

    def _rewind(self, messages: Sequence[Message]) -> None:
        """Seek every partition of the batch back to its first input (what was committed)."""
        first: dict[tuple[str, int], int] = {}
        for message in messages:
            topic, partition, offset = coordinates(message)
            first[(topic, partition)] = min(first.get((topic, partition), offset), offset)
        for (topic, partition), offset in first.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:  # revoked meanwhile: its next owner starts over
                log.warning("could not rewind %s/%d to %d: %s", topic, partition, offset, exc)
        # The results read in the aborted batch are read again: the gate starts over from the
        # committed offsets (docs/decisions/0013-execution-and-queue-timeouts.md).
        rewound = [TopicPartition(topic, partition) for topic, partition in first]
        self._results_gate.revoked(rewound)
        self._results_gate.assigned(self.consumer, rewound)

    def _wait_after(self, what: str, exc: BaseException) -> None:
        delay = self._backoff.next_delay()
        log.warning(
            "scheduler %s: %s failed transiently (%s); retrying in %.2fs",
            self.instance_id,
            what,
            exc,
            delay,
        )
        self._stop.wait(delay)

    def _replace_producer(self, error: BaseException) -> None:
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
            try:
                # Bounded: a fenced producer's queue never drains.
                self.producer.close(timeout=5.0)
            finally:
                self._workflows.close()
                self._routes.close()
                self._nodes.close()


class _Batch:
    """States changed in the current (uncommitted) transaction, by run id."""

    def __init__(self) -> None:
        self.states: dict[str, tuple[int, RunState]] = {}
        self.cache_writes: list[Any] = []
        self.dead_lettered = 0
        self.failed_inputs = 0
        self.spans: list[ReadableSpan] = []
        """Spans that ended in this batch, exported once it committed (ADR 0062)."""

    def state_of(self, run_id: str, committed: RunTable) -> RunState | None:
        if run_id in self.states:
            return self.states[run_id][1]
        return committed.get(run_id)


_OPERATOR_COMMANDS = (
    CancelRun,
    PauseRun,
    ResumeRun,
    RedriveStep,
    RebindRun,
    MutateGraph,
    SignalRun,
)
"""Commands people send through the API (which checks the run exists in the read model)."""


def _needs_full_state(record: SchedulerInput, state: RunState | None) -> bool:
    """A re-drive from a step of a run the table keeps only as a finished marker; or an
    operator command for a run the table does not know at all: a run imported into this
    REFLUX's log (``reflux runs import``, ADR 0028) after the partition was recovered."""
    if state is None:
        return isinstance(record, _OPERATOR_COMMANDS)
    return (
        isinstance(record, RedriveStep)
        and record.downstream
        and state.definition is None
        and state.status is RunStatus.SUCCEEDED
    )


class _Out(NamedTuple):
    """One encoded record to send in the transaction."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    partition: int | None
    size: int


class _Failure(NamedTuple):
    """A deterministic failure of one input, to be written instead of its decision."""

    error_class: str
    detail: str
    keep: int = 0
    """How many of the decision's first events are still written (before the refused one)."""
    step_id: str | None = None
    attempt: int | None = None


class _RecordRefusedError(NonRetryableError):
    """A record of a decision cannot be written (raised by ``_records``); the runtime turns it
    into a :class:`_Failure` that keeps the decision's events before it."""

    def __init__(self, index: int, record: RefluxRecord, error_class: str, reason: str) -> None:
        run_id = getattr(record, "run_id", None)
        seq = getattr(record, "seq", None)
        super().__init__(
            f"Expected to write {type(record).__name__} (seq {seq}) of run {run_id!r}, but "
            f"{reason}",
            error_class=error_class,
        )
        self.index = index
        self.record = record

    def failure(self) -> _Failure:
        step = getattr(self.record, "step", None)
        return _Failure(
            self.error_class,
            str(self),
            keep=self.index,
            step_id=step.step_id if step is not None else None,
            attempt=getattr(self.record, "attempt", None),
        )


def _timed_out(exc: KafkaException) -> bool:
    """A request librdkafka gave up waiting for (not marked retriable, but it is)."""
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and error.code() == KafkaError._TIMED_OUT
