"""The worker runtime: consume node invocations, run them concurrently, publish results and traces.

One *lane* per served node major: consumer group ``{prefix}.workers.<node>.v<major>`` on the
invoke topic ``{prefix}.invoke.<node>.v<major>`` (both named by :mod:`streams.topics`). All lanes
of a process share one idempotent producer and one object store. Concurrency is per workload
class (:mod:`node_workers.concurrency`): I/O lanes share ``io_concurrency`` slots (256 by
default: hundreds of attempts in flight on the event loop), CPU lanes share ``cpu_concurrency``
(four per core, ADR 0073), and a node group named in ``node_concurrency`` has a pool of its
own; each node is told its lane's limit (:meth:`~node_workers.node.Node.set_concurrency`) to
size its client and thread pools to it (docs/decisions/0019-worker-concurrency.md).

Delivery is **at-least-once**; execution is at most once per attempt. Per invocation, a lane:

1. waits for a concurrency slot, claims the invocation id in the attempt ledger
   (:mod:`node_workers.ledger`) and, on a first claim only, runs the attempt
   (:func:`node_workers.attempt.run_attempt`), signalling its start on ``results`` if it still
   runs after ``start_signal_delay_s`` (at once with a queue timeout) and heartbeating while it
   runs (:mod:`node_workers.heartbeats`: the step timeout counts from the start); one whose
   ``start_by`` (queue timeout) passed is not run but answered with ``QueueTimeout``; outputs
   over ``max_inline_output_bytes`` are first written to the object store (claim check) and the
   result is recorded in the ledger;
2. queues the ``NodeResult`` (``results``, keyed by run id) and the ``Trace`` (``traces``, keyed by
   node name), then finishes the invocation's offset in the lane's checkpoint.

Commits (periodically, on revoke, at shutdown) follow :mod:`streams.checkpoint`, committing the
consumer group's offsets. Invocations of a partition run concurrently and finish out of order, so
only the contiguous finished prefix of each partition is committed.

A crash before the commit re-delivers the invocation, which is *not* executed again: the ledger
answers a redelivery whose attempt recorded its result with that result again (the scheduler
accepts one result per attempt and drops the rest), and one whose attempt started but recorded
nothing with a retryable ``AttemptInterrupted`` error (the step's retry policy then starts a new
attempt, with a new invocation id). Only an invocation that was still waiting for a slot runs on
its redelivery, for the first time. So results can be duplicated, never lost. If a flush fails the
runtime stops without committing; after a restart the ledger answers the re-delivered
invocations.

A lane drives confluent-kafka itself (with :func:`streams.consumer.consumer_config`,
:mod:`streams.dlq` and :class:`streams.producer.Producer`) rather than using
:class:`streams.consumer.Consumer`: that class counts a record as consumed once it was handed out,
which is right for a sequential loop but would commit past invocations still running here.

Rebalances: on revoke, the lane drains first -- waits (up to ``revoke_grace_s``) for the revoked
partitions' in-flight invocations and cancels the rest -- and the checkpoint then commits what
finished and lets the partitions go; a lost partition (session expired) is dropped without
committing. Shutdown (stop event, SIGTERM in the CLI): stop polling, let in-flight invocations
finish for ``shutdown_grace_s``, cancel the rest, commit what finished, leave the group.

Poison invocations (undecodable bytes, a record of another type, a tombstone) go to the ``dlq``
topic through the shared producer and the partition moves on. Backpressure: a lane pauses its
partitions while it holds its buffer limit of invocations (``max_buffered``, default twice its
pool's size and at least 256: it holds more than it runs), and keeps polling (to stay in the
group and serve rebalances) without fetching. A held invocation waiting for a slot has not
started: its step timeout does not run (ADR 0013), so a backlog waits, it never times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from foundation.errors import ConfigurationError, RefluxError, ServiceUnavailableError
from foundation.objectstore import BlobStore, S3BlobStore
from foundation.settings import Settings
from node_workers.attempt import (
    DEFAULT_TIMEOUT_S,
    Attempt,
    attempt_deadline,
    inputs_hash,
    run_attempt,
    too_late_to_start,
)
from node_workers.chunks import run_chunk
from node_workers.claimcheck import encode_json, load_json, output_key, store_json
from node_workers.concurrency import (
    DEFAULT_IO_CONCURRENCY,
    MIN_BUFFERED,
    Limit,
    check_limit,
    check_node_concurrency,
    default_cpu_concurrency,
    lane_limit,
    parse_node_concurrency,
    unmatched_entries,
)
from node_workers.heartbeats import (
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_START_SIGNAL_DELAY_S,
    heartbeating,
    start_signal_delay,
)
from node_workers.ledger import AttemptLedger, ClaimState
from node_workers.limits import DEFAULT_MAX_INLINE_OUTPUT_BYTES, RESULT_LINGER_MS
from node_workers.node import AnyNode
from node_workers.records import build_result, build_trace
from node_workers.registry import NodeRegistry
from node_workers.secrets import SecretResolver, resolver_from_settings
from schemas import serde
from schemas.errors import MalformedRecordError, SchemaError
from schemas.models import ErrorInfo, NodeHeartbeat, NodeInvocation, NodeResult, TraceStatus
from schemas.trace_json import TRACE_HEADERS, encode_trace
from streams.checkpoint import Checkpoint, ConsumerCommit, Flushable, TopicPartitionKey
from streams.consumer import consume_messages, consumer_config
from streams.dlq import DeadLetterPublisher, poison_record
from streams.metrics import WORKER
from streams.producer import TYPE_HEADER, DeliveryError, Producer
from streams.topics import TopicCatalog, TopicSpec

__all__ = ["DEFAULT_MAX_INLINE_OUTPUT_BYTES", "WorkerConfig", "WorkerRuntime", "WorkerStats"]

log = logging.getLogger(__name__)

# Seek errors that mean "a rebalance moved this partition's fetch state on".
_SEEK_TOLERATED: Final = frozenset(
    {KafkaError._OUTDATED, KafkaError._STATE, KafkaError._UNKNOWN_PARTITION}
)


def seek_unless_rebalanced(consumer: KafkaConsumer, position: TopicPartition) -> bool:
    """Seek; ``False`` when librdkafka declares the seek outdated or no longer fetches the
    partition (a rebalance under way: observed ``_OUTDATED`` on a resume right after an
    assignment, which killed the lane). The lane's seek after a resume only saves a re-fetch,
    and ``_dispatch`` skips re-fetched offsets (``checkpoint.seen``), so skipping it loses and
    duplicates nothing. Any other error is raised."""
    try:
        consumer.seek(position)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if not isinstance(error, KafkaError) or error.code() not in _SEEK_TOLERATED:
            raise
        log.info(
            "seek %s/%s@%s skipped: %s", position.topic, position.partition, position.offset, error
        )
        return False
    return True


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    io_concurrency: int = DEFAULT_IO_CONCURRENCY
    """Attempts of I/O nodes (``Workload.IO``) running at once in this process, shared by
    their lanes."""
    cpu_concurrency: int = field(default_factory=default_cpu_concurrency)
    """Attempts of CPU nodes (``Workload.CPU``) running at once, shared by their lanes; default:
    ``CPU_SLOTS_PER_CORE`` (4) per core this process may run on (ADR 0073). A CPU node with a
    pool of its own (``code.run``) gets at most the cores."""
    node_concurrency: Mapping[str, int] = field(default_factory=dict)
    """Per node group (``"http.request"``, ``"database.query@1"``): a pool of its own of that
    size instead of its class's."""
    max_inline_output_bytes: int = DEFAULT_MAX_INLINE_OUTPUT_BYTES
    """Larger outputs (canonical JSON bytes) go to the object store; the result has output_ref."""
    default_timeout_s: float = DEFAULT_TIMEOUT_S
    """Timeout of an invocation without a deadline."""
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    """Between two heartbeats of a running attempt (after its start signal); 0 = none."""
    start_signal_delay_s: float = DEFAULT_START_SIGNAL_DELAY_S
    """An attempt's start is signalled only if it still runs this long after it started (at
    most half its timeout; at once with a queue timeout); 0 = at once, always."""
    shutdown_grace_s: float = 10.0
    revoke_grace_s: float = 10.0
    commit_interval_s: float = 0.5
    poll_timeout_s: float = 0.1
    max_buffered: int | None = None
    """Invocations a lane holds (running or waiting for a slot) before pausing; default
    ``max(256, 2 * its pool's size)``. Never below a pool's size (a lane runs only what it
    holds). Small limits made lanes pause and resume constantly (a resume seeks and drops
    prefetched data): with 16, 100 concurrent runs waited ~0.5 s per hop."""
    flush_timeout_s: float = 30.0
    client_id: str = "reflux-worker"
    consumer_overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_limit(self.io_concurrency, "io_concurrency")
        check_limit(self.cpu_concurrency, "cpu_concurrency")
        check_node_concurrency(self.node_concurrency, "node_concurrency")
        if self.max_inline_output_bytes < 0:
            raise ConfigurationError(
                f"Expected max_inline_output_bytes >= 0, but got {self.max_inline_output_bytes}"
            )
        if self.start_signal_delay_s < 0:
            raise ConfigurationError(
                f"Expected start_signal_delay_s >= 0, but got {self.start_signal_delay_s}"
            )
        if self.max_buffered is not None:
            check_limit(self.max_buffered, "max_buffered")
            pools = {
                "io_concurrency": self.io_concurrency,
                "cpu_concurrency": self.cpu_concurrency,
                **{f"node_concurrency[{k!r}]": v for k, v in self.node_concurrency.items()},
            }
            over = {name: size for name, size in pools.items() if size > self.max_buffered}
            if over:
                raise ConfigurationError(
                    f"Expected max_buffered >= every concurrency limit (a lane runs only what "
                    f"it holds), but max_buffered is {self.max_buffered} and {over} exceed it"
                )

    @classmethod
    def from_settings(cls, settings: Settings, **changes: Any) -> WorkerConfig:
        """The defaults with the ``REFLUX_WORKER_*`` settings applied, then ``changes``."""
        values: dict[str, Any] = {}
        if settings.worker_io_concurrency is not None:
            values["io_concurrency"] = check_limit(
                settings.worker_io_concurrency, "REFLUX_WORKER_IO_CONCURRENCY"
            )
        if settings.worker_cpu_concurrency is not None:
            values["cpu_concurrency"] = check_limit(
                settings.worker_cpu_concurrency, "REFLUX_WORKER_CPU_CONCURRENCY"
            )
        if settings.worker_node_concurrency:
            values["node_concurrency"] = parse_node_concurrency(
                settings.worker_node_concurrency, "REFLUX_WORKER_NODE_CONCURRENCY"
            )
        if settings.worker_start_signal_delay_ms is not None:
            delay_ms = settings.worker_start_signal_delay_ms
            if delay_ms < 0:
                raise ConfigurationError(
                    f"Expected REFLUX_WORKER_START_SIGNAL_DELAY_MS to be >= 0, but got {delay_ms}"
                )
            values["start_signal_delay_s"] = delay_ms / 1000
        return cls(**(values | changes))

    def limit(self, node: AnyNode) -> Limit:
        """The pool ``node``'s lane draws its slots from (see ``concurrency.lane_limit``)."""
        return lane_limit(
            node, io=self.io_concurrency, cpu=self.cpu_concurrency, overrides=self.node_concurrency
        )

    def buffer_limit(self, concurrency: int) -> int:
        """Invocations a lane whose pool has ``concurrency`` slots holds before pausing."""
        return self.max_buffered or max(MIN_BUFFERED, 2 * concurrency)


@dataclass(slots=True)
class WorkerStats:
    """Counters for tests, logs and readiness; never used for decisions about offsets."""

    received: int = 0
    started: int = 0
    """Attempts this process started executing (and signalled as started)."""
    results: int = 0
    ok: int = 0
    errors: int = 0
    claim_checked: int = 0
    dead_lettered: int = 0
    abandoned: int = 0
    commits: int = 0
    assigned: int = 0
    pauses: int = 0
    """Times a lane paused its partitions because it held its buffer limit."""
    held_max: int = 0
    """The most invocations one lane held at once (after a poll's dispatch)."""
    map_chunks: int = 0
    """Chunk invocations of meta.map steps started (each counts once in ``started``)."""
    map_items: int = 0
    """Items of those chunks run to an outcome."""

    @property
    def pending(self) -> int:
        """Invocations received but not (yet) answered: running, waiting for a slot, or
        abandoned at a revoke."""
        return self.received - self.results - self.dead_lettered - self.abandoned


class _LaneCheckpoint(Checkpoint):
    """A lane's positions, committed to its consumer group after flushing the shared producer.

    Lanes share the producer (results, traces and dead letters alike), so a delivery failure
    reported to one lane's flush may be another lane's result: commits, flush included, are
    serialized by one lock, and after any delivery failure no lane commits again (the process
    restarts and re-processes).
    """

    def __init__(self, runtime: WorkerRuntime, lane: _Lane, consumer: KafkaConsumer) -> None:
        super().__init__(
            ConsumerCommit(consumer, lane.group),
            outputs=[runtime.producer],
            name=lane.group,
            flush_timeout=runtime.config.flush_timeout_s,
            on_assign=lane.on_assign,
            on_revoke=lane.on_revoke,
            drain=lane.drain_revoked,
        )
        self.runtime = runtime

    def commit(
        self,
        tps: Iterable[TopicPartitionKey] | None = None,
        *,
        positions: Mapping[TopicPartitionKey, int] | None = None,
        flush: Sequence[Flushable] = (),
        timeout: float | None = None,
    ) -> dict[TopicPartitionKey, int]:
        runtime = self.runtime
        with runtime.commit_lock:
            if runtime.failure is not None:
                raise RefluxError(
                    f"Expected a healthy runtime, but it failed: {runtime.failure!r}",
                    error_class="Stopped",
                )
            try:
                committed = super().commit(tps, positions=positions, flush=flush, timeout=timeout)
            except DeliveryError as exc:
                runtime.fail(exc)
                raise
        runtime.stats.commits += 1
        return committed


class _Lane:
    """One node major: its consumer, in-flight tasks and checkpoint."""

    def __init__(self, runtime: WorkerRuntime, node: AnyNode) -> None:
        self.runtime = runtime
        self.node = node
        self.limit = runtime.config.limit(node)
        self.semaphore = runtime.pool(self.limit)
        self.buffer_limit = runtime.config.buffer_limit(self.limit.size)
        self.spec: TopicSpec = runtime.catalog.invoke_topic(node.name, node.major)
        self.group = runtime.catalog.worker_group(node.name, node.major)
        self.tasks: dict[TopicPartitionKey, set[asyncio.Task[None]]] = {}
        config = consumer_config(
            self.group,
            runtime.settings,
            {"client.id": runtime.config.client_id, **runtime.config.consumer_overrides},
        )
        consumer = KafkaConsumer(config)
        self.consumer: KafkaConsumer | None = consumer
        self.checkpoint = _LaneCheckpoint(runtime, self, consumer)
        self.dead_letters = DeadLetterPublisher(runtime.producer, runtime.catalog.dlq, self.group)
        self._last_commit = time.monotonic()
        self._paused = False

    # -- consumer (called in a worker thread; never concurrently for one lane) -----------------

    def open(self) -> None:
        self.checkpoint.subscribe(self._require_consumer(), [self.spec.topic])

    def _consume(self, capacity: int) -> list[Message]:
        consumer = self._require_consumer()
        full = capacity <= 0
        if full != self._paused:
            assignment = consumer.assignment()
            if assignment and full:
                consumer.pause(assignment)
                self.runtime.stats.pauses += 1
            elif assignment:
                consumer.resume(assignment)
                # Pausing drops prefetched messages; fetching must go on right after the last
                # dispatched offset. Observed: without this seek, librdkafka sometimes re-fetches
                # an already delivered offset after a resume.
                for tp in assignment:
                    following = self.checkpoint.next_offset((tp.topic, tp.partition))
                    if following is not None:
                        seek_unless_rebalanced(
                            consumer, TopicPartition(tp.topic, tp.partition, following)
                        )
            self._paused = full
        return consume_messages(
            consumer,
            max(capacity, 1),
            self.runtime.config.poll_timeout_s,
            what=f"{self.spec.topic} (worker {self.group})",
            logger=log,
        )

    def _require_consumer(self) -> KafkaConsumer:
        if self.consumer is None:
            raise RefluxError(
                "Expected an open consumer, but the lane is closed", error_class="State"
            )
        return self.consumer

    # -- rebalance callbacks (run inside consume(), i.e. in the lane's worker thread) ----------

    def on_assign(self, partitions: list[TopicPartition]) -> None:
        consumer = self._require_consumer()
        # librdkafka keeps a partition's pause flag across revoke/assign: a partition paused
        # for backpressure before a rebalance would come back paused and never be resumed.
        # Assign explicitly, then resume, so every assignment starts fetching.
        consumer.assign(partitions)
        if partitions:
            consumer.resume(partitions)
        self._paused = False
        self.runtime.stats.assigned += 1
        log.info("%s assigned %s", self.group, [(p.topic, p.partition) for p in partitions])

    def drain_revoked(self, partitions: list[TopicPartition]) -> dict[TopicPartitionKey, int]:
        """Before the checkpoint commits on revoke: the revoked partitions' in-flight
        invocations finish (or are cancelled after ``revoke_grace_s``); returns what finished."""
        tps = [(p.topic, p.partition) for p in partitions]
        log.info("%s revoked %s (%d in flight)", self.group, tps, self.checkpoint.in_flight(tps))
        if self.runtime.hard_stopped:
            return {}
        grace = self.runtime.config.revoke_grace_s
        future = asyncio.run_coroutine_threadsafe(self._drain(tps, grace), self.runtime.loop)
        return future.result(timeout=grace + 10)

    def on_revoke(self, _partitions: list[TopicPartition]) -> None:
        self._paused = False

    # -- the loop (event loop thread) ----------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        config = self.runtime.config
        try:
            while not stop.is_set():
                capacity = self.buffer_limit - self.checkpoint.in_flight()
                messages = await asyncio.to_thread(self._consume, capacity)
                for message in messages:
                    self._dispatch(message)
                if messages:
                    stats = self.runtime.stats
                    stats.held_max = max(stats.held_max, self.checkpoint.in_flight())
                if time.monotonic() - self._last_commit >= config.commit_interval_s:
                    await self.commit()
        except Exception as exc:
            # Recorded before the shutdown below, so that shutdown does not commit.
            self.runtime.fail(exc)
            raise
        finally:
            await self._shutdown()

    def _dispatch(self, message: Message) -> None:
        tp = (message.topic() or "", message.partition() or 0)
        offset = message.offset() or 0
        if self.checkpoint.seen(tp, offset):
            # A re-fetch of an offset this lane already runs or ran (see _consume): running it
            # twice would only duplicate work and side effects.
            log.debug("%s: skipping re-fetched %s/%s@%s", self.group, *tp, offset)
            return
        log.debug("%s: received %s/%s@%s", self.group, *tp, offset)
        self.checkpoint.start(tp, offset)
        self.runtime.stats.received += 1
        value = message.value()
        try:
            if value is None:
                raise MalformedRecordError("Expected a NodeInvocation, but got a tombstone")
            invocation = serde.decode(value, NodeInvocation)
        except SchemaError as exc:
            log.warning("%s: dead-lettering %s/%s@%s: %s", self.group, *tp, offset, exc)
            self.dead_letters.publish(poison_record(message), exc.error_class, str(exc))
            self.runtime.stats.dead_lettered += 1
            WORKER.dead_letters.labels(tp[0]).inc()
            self.checkpoint.finish(tp, offset)
            return
        task = asyncio.create_task(self._handle(tp, offset, invocation))
        self.tasks.setdefault(tp, set()).add(task)
        task.add_done_callback(lambda t: self._task_done(tp, t))

    def _task_done(self, tp: TopicPartitionKey, task: asyncio.Task[None]) -> None:
        self.tasks.get(tp, set()).discard(task)
        if task.cancelled():
            self.runtime.stats.abandoned += 1
            return
        exc = task.exception()
        if exc is not None:
            self.runtime.fail(exc)

    async def _handle(self, tp: TopicPartitionKey, offset: int, invocation: NodeInvocation) -> None:
        runtime = self.runtime
        node = self.node.for_invocation(invocation)
        async with self.semaphore:
            # Claimed only once a slot is free: an invocation still queued here when the worker
            # dies was never started, so its redelivery may run it.
            claim = await runtime.ledger.claim(invocation.invocation_id)
            if claim.state is ClaimState.NEW:
                in_flight = WORKER.in_flight.labels(self.node.name)
                in_flight.inc()
                try:
                    attempt = await runtime.execute(node, invocation)
                finally:
                    in_flight.dec()
        if claim.state is ClaimState.DONE and claim.result is not None:
            WORKER.cache_hits.labels(self.node.name).inc()
            # Executed and recorded by an earlier delivery: hand over the same result again.
            runtime.producer.send(
                runtime.catalog.results,
                invocation.run_id,
                claim.result,
                {TYPE_HEADER: NodeResult.AVRO_NAME},
            )
            runtime.stats.results += 1
            self.checkpoint.finish(tp, offset)
            return
        if claim.state is not ClaimState.NEW:
            attempt = _interrupted(invocation)
        output_ref = None
        if attempt.status is TraceStatus.OK:
            data = encode_json(attempt.output)
            if len(data) > runtime.config.max_inline_output_bytes:
                try:
                    output_ref = await asyncio.to_thread(
                        store_json, runtime.blob_store, output_key(invocation), data
                    )
                    runtime.stats.claim_checked += 1
                except Exception as exc:
                    attempt = _claim_check_failed(attempt, exc)
        result = build_result(node, invocation, attempt, output_ref=output_ref)
        trace = build_trace(
            node,
            invocation,
            attempt,
            context={"worker": runtime.config.client_id, "origin": f"{tp[0]}/{tp[1]}/{offset}"},
        )
        encoded = serde.encode(result)  # once: the same bytes are recorded and sent
        if claim.state is ClaimState.NEW:
            await runtime.ledger.record(invocation.invocation_id, encoded)
        runtime.producer.send(
            runtime.catalog.results, invocation.run_id, encoded, {TYPE_HEADER: NodeResult.AVRO_NAME}
        )
        # Traces are JSON (the Avro Trace schema's fields) so ClickHouse's Kafka engine reads
        # them with no Python in the path: docs/decisions/0004-traces-json-on-kafka.md.
        runtime.producer.send(
            runtime.catalog.traces, self.node.name, encode_trace(trace), TRACE_HEADERS
        )
        runtime.stats.results += 1
        _observe(self.node.name, attempt)
        if attempt.status is TraceStatus.OK:
            runtime.stats.ok += 1
        else:
            runtime.stats.errors += 1
        self.checkpoint.finish(tp, offset)

    async def commit(self) -> None:
        self._last_commit = time.monotonic()
        positions = self.checkpoint.positions()
        if not positions:
            return
        log.debug("%s: committing %s", self.group, positions)
        try:
            await asyncio.to_thread(self.checkpoint.commit, positions=positions)
        except RefluxError as exc:
            if exc.error_class != "CommitFailed":
                raise  # a delivery failure or a failed runtime: never commit past it
            # Typically a rebalance in progress; the next interval (or the revoke) commits.
            log.warning("%s: %s", self.group, exc)

    async def _drain(
        self, tps: Iterable[TopicPartitionKey], grace: float
    ) -> dict[TopicPartitionKey, int]:
        """Wait for the in-flight tasks of ``tps`` up to ``grace`` s, cancel the rest; return
        the positions that are safe to commit."""
        tps = list(tps)
        tasks = {t for tp in tps for t in self.tasks.get(tp, set())}
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        leftover = [t for t in tasks if not t.done()]
        for task in leftover:
            task.cancel()
        if leftover:
            log.warning("%s: abandoned %d in-flight invocation(s)", self.group, len(leftover))
            await asyncio.gather(*leftover, return_exceptions=True)
        return self.checkpoint.positions(tps)

    async def _shutdown(self) -> None:
        runtime = self.runtime
        try:
            grace = 0.0 if runtime.hard_stopped else runtime.config.shutdown_grace_s
            positions = await self._drain(self.checkpoint.partitions(), grace)
            if positions and not runtime.hard_stopped and runtime.failure is None:
                try:
                    await asyncio.to_thread(self.checkpoint.commit, positions=positions)
                except RefluxError as exc:
                    log.warning("%s: final commit failed: %s", self.group, exc)
            self.checkpoint.clear()
        finally:
            if self.consumer is not None:
                consumer, self.consumer = self.consumer, None
                await asyncio.to_thread(consumer.close)


def _observe(node: str, attempt: Attempt) -> None:
    """Count one finished attempt for /metrics (ADR 0060)."""
    WORKER.attempts.labels(node, attempt.status.value).inc()
    WORKER.duration.labels(node).observe(attempt.latency_ms / 1000)
    if attempt.error is not None and attempt.error.retryable:
        WORKER.retries.labels(node).inc()


def _claim_check_failed(attempt: Attempt, exc: BaseException) -> Attempt:
    # The attempt itself succeeded but its output cannot be handed over; another attempt (with
    # the same idempotency key) is the way to get it, so this is retryable.
    return dataclasses.replace(
        attempt,
        status=TraceStatus.ERROR,
        output=None,
        error=ErrorInfo(
            error_class="ClaimCheckFailed",
            message=f"Expected to store the output in the object store, but: {exc!r}",
            retryable=True,
        ),
    )


def _interrupted(invocation: NodeInvocation) -> Attempt:
    """The result of an attempt an earlier delivery started but never finished (see ledger)."""
    now = datetime.now(UTC)
    return Attempt(
        status=TraceStatus.ERROR,
        started_at=now,
        finished_at=now,
        inputs_hash=inputs_hash(invocation.params),
        error=ErrorInfo(
            error_class="AttemptInterrupted",
            message=(
                f"Attempt {invocation.attempt} ({invocation.invocation_id}) was started by a "
                "worker that stopped before reporting; it is not executed twice"
            ),
            retryable=True,
        ),
    )


class WorkerRuntime:
    """Serves every node of ``nodes``; see the module docstring for the delivery contract."""

    def __init__(
        self,
        settings: Settings,
        nodes: NodeRegistry | Iterable[AnyNode],
        *,
        config: WorkerConfig | None = None,
        catalog: TopicCatalog | None = None,
        blob_store: BlobStore | None = None,
        secrets: SecretResolver | None = None,
    ) -> None:
        self.settings = settings
        # Built now, so a bad secrets_dir or grants file stops the worker at start, and its
        # redactor covers this process's logs before the first attempt (docs/secrets.md).
        self.secrets = secrets if secrets is not None else resolver_from_settings(settings)
        self.nodes = nodes if isinstance(nodes, NodeRegistry) else NodeRegistry(nodes)
        if not len(self.nodes):
            raise ConfigurationError("Expected at least one node to serve, but got none")
        self.config = config or WorkerConfig.from_settings(settings)
        self.catalog = catalog or TopicCatalog.from_settings(settings)
        self.stats = WorkerStats()
        self._blob_store = blob_store
        self._producer: Producer | None = None
        self._pools: dict[str, asyncio.Semaphore] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._ledger: AttemptLedger | None = None
        self._hard_stop = False
        self._running = False
        self.commit_lock = threading.Lock()

    # -- what it serves ------------------------------------------------------------------------

    def invoke_topics(self) -> list[TopicSpec]:
        """The invoke topics this runtime consumes (create them with ``ensure_topics``)."""
        return [self.catalog.invoke_topic(n.name, n.major) for n in self.nodes]

    def consumer_groups(self) -> list[str]:
        return [self.catalog.worker_group(n.name, n.major) for n in self.nodes]

    # -- shared resources (used by lanes) ------------------------------------------------------

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(
                self.settings,
                client_id=self.config.client_id,
                config={"linger.ms": RESULT_LINGER_MS},
            )
        return self._producer

    def pool(self, limit: Limit) -> asyncio.Semaphore:
        """The slots of ``limit.pool``, shared by every lane drawing from it."""
        if limit.key not in self._pools:
            self._pools[limit.key] = asyncio.Semaphore(limit.size)
        return self._pools[limit.key]

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RefluxError("Expected a running worker, but it is not", error_class="State")
        return self._loop

    @property
    def blob_store(self) -> BlobStore:
        # Created on first use: a worker whose outputs are all small never touches S3.
        if self._blob_store is None:
            self._blob_store = S3BlobStore(self.settings)
        return self._blob_store

    async def execute(self, node: AnyNode, invocation: NodeInvocation) -> Attempt:
        """Run a claimed attempt: signal its start if it runs long enough, heartbeat while it
        runs; one whose ``start_by`` (queue timeout) passed is not started at all
        (``QueueTimeout``)."""
        started = datetime.now(UTC)
        late = too_late_to_start(invocation, started)
        if late is not None:
            return late
        self.stats.started += 1
        async with self.heartbeats(node, invocation, started):
            if invocation.chunk is not None:
                # A chunk of a meta.map step: the node runs once per item (node_workers.chunks).
                self.stats.map_chunks += 1
                return await run_chunk(
                    node,
                    invocation,
                    load_params=self.load_params,
                    default_timeout_s=self.config.default_timeout_s,
                    secrets=self.secrets,
                    started_at=started,
                    on_item=self._map_item_done,
                )
            return await run_attempt(
                node,
                invocation,
                load_params=self.load_params,
                default_timeout_s=self.config.default_timeout_s,
                secrets=self.secrets,
                started_at=started,
            )

    def _map_item_done(self, _index: int) -> None:
        self.stats.map_items += 1

    @property
    def worker_name(self) -> str:
        """How this process names itself in its heartbeats (the steps' ``worker``)."""
        return f"{self.config.client_id}@{socket.gethostname()}:{os.getpid()}"

    def heartbeats(
        self, node: AnyNode, invocation: NodeInvocation, started_at: datetime
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """The start signal (if the block still runs after its delay), heartbeats while the block
        runs (see node_workers.heartbeats)."""
        return heartbeating(
            self._send_heartbeat,
            node,
            invocation,
            started_at=started_at,
            interval_s=self.config.heartbeat_interval_s,
            start_delay_s=start_signal_delay(
                invocation,
                started_at=started_at,
                # without a timeout of its own the attempt ends at the worker's default one
                deadline=attempt_deadline(invocation, started_at)
                or started_at + timedelta(seconds=self.config.default_timeout_s),
                configured_s=self.config.start_signal_delay_s,
            ),
            worker=self.worker_name,
        )

    def _send_heartbeat(self, record: NodeHeartbeat) -> None:
        self.producer.send(self.catalog.results, record.run_id, record)

    @property
    def hard_stopped(self) -> bool:
        return self._hard_stop

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    async def load_params(self, invocation: NodeInvocation) -> Any:
        if invocation.params_ref is None:
            return {} if invocation.params is None else invocation.params
        try:
            return await asyncio.to_thread(load_json, self.blob_store, invocation.params_ref)
        except RefluxError:
            raise
        except Exception as exc:
            raise ServiceUnavailableError(
                f"Expected to read params from {invocation.params_ref.uri}, but: {exc!r}"
            ) from exc

    def fail(self, exc: BaseException) -> None:
        """Stop the whole runtime without committing further (a result may be undelivered).

        Callable from any thread."""
        if self._failure is None:
            log.error("worker runtime failing: %r", exc, exc_info=exc)
            self._failure = exc
        if self._stop is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)

    # -- running -------------------------------------------------------------------------------

    async def run_forever(self, stop_event: asyncio.Event) -> None:
        """Serve until ``stop_event`` is set, then shut down gracefully (see module docstring).

        Raises the first fatal error (e.g. a :class:`~streams.producer.DeliveryError`) after
        shutting down.
        """
        if self._running:
            raise RefluxError("Expected a runtime that is not running yet", error_class="State")
        self._running = True
        self._loop = asyncio.get_running_loop()
        self._stop = stop_event
        for node in self.nodes:
            node.bind(self.settings)
            node.set_concurrency(self.config.limit(node).size)
        unmatched = unmatched_entries(self.config.node_concurrency, self.nodes)
        if unmatched:
            # Not an error: one setting may configure several worker groups.
            log.warning("node_concurrency entries %s name no node served here", unmatched)
        lanes: list[_Lane] = []
        # Every lane blocks a thread in its poll: asyncio's default pool (cpu + 4 threads, 6
        # here) is smaller than 8 lanes, and a lane waiting for a thread added ~25 ms to every
        # step. One thread per lane, plus room for commits, claim checks and secret lookups.
        self._loop.set_default_executor(
            ThreadPoolExecutor(
                max_workers=2 * len(self.nodes) + 4, thread_name_prefix="reflux-lane"
            )
        )
        try:
            for node in self.nodes:
                lanes.append(_Lane(self, node))
            for lane in lanes:
                await asyncio.to_thread(lane.open)
            log.info(
                "worker serving %s",
                ", ".join(
                    f"{lane.node.key} ({lane.limit.pool} pool {lane.limit.size}, buffer "
                    f"{lane.buffer_limit})"
                    for lane in lanes
                ),
            )
            tasks = [asyncio.create_task(lane.run(stop_event)) for lane in lanes]
            # A failing lane calls fail(), which stops the others; gather waits for all.
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for lane in lanes:
                if lane.consumer is not None:  # a lane that never started its loop
                    with contextlib.suppress(Exception):
                        await asyncio.to_thread(lane.consumer.close)
            await self._close_resources()
            # Loop-bound state goes with the loop, so a later run (new loop) starts clean.
            self._pools = {}
            self._loop = None
            self._stop = None
            self._running = False
        if self._failure is not None:
            raise self._failure

    @property
    def ledger(self) -> AttemptLedger:
        # Created on first use, inside the running event loop its asyncio client belongs to.
        if self._ledger is None:
            self._ledger = AttemptLedger(self.settings)
        return self._ledger

    async def _close_resources(self) -> None:
        if self._ledger is not None:
            ledger, self._ledger = self._ledger, None
            with contextlib.suppress(Exception):
                await ledger.aclose()
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                await asyncio.to_thread(producer.close, self.config.flush_timeout_s)
            except RefluxError as exc:
                log.warning("closing the worker producer: %s", exc)
                if self._failure is None:
                    self._failure = exc
        for node in self.nodes:
            with contextlib.suppress(Exception):
                await node.aclose()

    async def run_until(
        self,
        predicate: Callable[[WorkerStats], bool] | None = None,
        *,
        timeout: float,
        graceful: bool = True,
    ) -> WorkerStats:
        """Run until ``predicate(stats)`` holds or ``timeout`` s passed, then stop (for tests).

        ``graceful=False`` simulates a crash: in-flight attempts are cancelled and nothing more
        is flushed or committed (results already queued may still reach the broker).
        """
        stop = asyncio.Event()

        async def watch() -> None:
            deadline = time.monotonic() + timeout
            while not stop.is_set():
                if (predicate is not None and predicate(self.stats)) or (
                    time.monotonic() >= deadline
                ):
                    break
                await asyncio.sleep(0.02)
            if not graceful:
                self._hard_stop = True
            stop.set()

        watcher = asyncio.create_task(watch())
        try:
            await self.run_forever(stop)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        return self.stats
