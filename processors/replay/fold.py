"""Fold mode: candidate runs replayed in-process with the scheduler's pure core.

What Temporal's replayer does: no scheduler process, no invoke/results topics, no worker group.
Each candidate run is driven by :func:`~processors.scheduler.decide.decide` (the same pure code
the scheduler runs, so the same events): its invocations are executed right here -- pure nodes
re-execute through :func:`~node_workers.attempt.run_attempt` exactly as a worker runs them,
side-effecting ones go to the same :class:`~processors.replay.recorded.RecordedNode` stand-ins
(answered from the original's record, never called) -- and each result is fed straight back into
``decide``. Cache lookups are answered from an in-memory cache private to the replay; a run with
nothing in flight whose next move is a timer (a retry's backoff, a run deadline) gets that timer
fired at once on a per-run virtual clock moved to its due time, so a replay never waits out a
backoff. The resulting run log is written, in batches, onto the shadow prefix's ``runs`` topic
(isolated like the engine mode's: nothing reaches production topics, read models or caches).

Why it is faster (docs/decisions/0036-replay-fold-mode.md): an engine step costs a Kafka
transaction, an invocation and a result round trip through two topics, a worker's ledger claim
and a trace; here it costs one ``decide`` and, for a pure node, its execution.

Runs that need the engine's other machinery are not folded (:func:`fold_unsupported` says why):
child runs (``meta.workflow``, ``meta.loop``) and ``meta.map`` (chunks, children) go through the
outbox and other runs' logs, which is the shadow engine's job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import faulthandler
import gc
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_connections
from typing import Any, Final, Protocol, TypeVar

from foundation.errors import RefluxError
from foundation.objectstore import BlobStore, content_key
from node_workers.attempt import Attempt, run_attempt
from node_workers.claimcheck import encode_json, load_json, output_key, store_json
from node_workers.node import AnyNode
from node_workers.records import build_result
from node_workers.registry import NodeRegistry, UnknownNodeError
from node_workers.runtime import WorkerConfig
from node_workers.secrets import SecretResolver, resolver_from_settings
from processors.node_catalog.state import CatalogState
from processors.replay.recorded import RecordedNode
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
from processors.scheduler.evolve import RunEvent
from processors.scheduler.state import RunState
from processors.scheduler.timers import fire_timer_command, live_timers
from schemas.base import canonical_json
from schemas.models import (
    ErrorInfo,
    NodeInvocation,
    NodeResult,
    PayloadRef,
    StartRun,
    TraceStatus,
)
from schemas.quality import is_checker
from schemas.statuses import TERMINAL_RUN_STATUSES
from workflows.model import WorkflowDefinition
from workflows.node_catalog import default_resolve_node_version
from workflows.semver import invoke_major

__all__ = [
    "FOLDABLE_META_NODES",
    "MIN_RUNS_PER_PROCESS",
    "FoldReplay",
    "FoldSink",
    "catalog_resolver",
    "default_processes",
    "fold_partitioned",
    "fold_unsupported",
    "run_in_thread",
]

FOLDABLE_META_NODES: Final = frozenset({"meta.switch"})
"""Meta nodes decided entirely inside ``decide`` (no child runs, no chunks): foldable."""

T = TypeVar("T")


def fold_unsupported(definition: WorkflowDefinition) -> str | None:
    """Why runs of ``definition`` cannot be folded in-process (None: they can)."""
    for step in definition.steps:
        name = step.node_name
        if name.startswith("meta.") and name not in FOLDABLE_META_NODES:
            return f"step {step.id!r} uses {name}, which needs the engine (child runs or chunks)"
    return None


def catalog_resolver(nodes: Iterable[AnyNode]) -> Callable[[str, str, str], str]:
    """``resolve_node_version`` over a catalog holding exactly ``nodes`` (what the engine mode's
    shadow workers register in the shadow catalog), else by constraint as without a catalog."""
    from node_workers.registration import catalog_entry

    state = CatalogState()
    for node in nodes:
        state.apply(catalog_entry(node))

    def resolve(name: str, constraint: str, run_id: str) -> str:
        chosen = state.choose(name, constraint, run_id)
        if chosen is not None:
            return chosen
        return default_resolve_node_version(name, constraint, run_id)

    return resolve


def run_in_thread(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a fresh event loop in its own thread (the caller may
    itself be inside a running loop: the API, the replay runner)."""
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            box["value"] = asyncio.run(factory())
        except BaseException as exc:  # handed over to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=main, name="replay-fold", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


@dataclass
class _Cache:
    """The replay's private step cache (the engine mode's is a Redis namespace of its own)."""

    entries: dict[str, tuple[float | None, Any, PayloadRef | None]] = field(default_factory=dict)

    def lookup(self, lookup: CacheLookup) -> CacheHit | CacheMiss:
        entry = self.entries.get(lookup.cache_key)
        if entry is not None and (entry[0] is None or entry[0] > time.monotonic()):
            return CacheHit(
                lookup.run_id,
                lookup.step_id,
                lookup.attempt,
                lookup.cache_key,
                output=entry[1],
                output_ref=entry[2],
            )
        return CacheMiss(lookup.run_id, lookup.step_id, lookup.attempt, lookup.cache_key)

    def write(self, decision: Decision) -> None:
        for write in decision.cache_writes:
            expires = time.monotonic() + write.ttl_ms / 1000 if write.ttl_ms > 0 else None
            self.entries[write.cache_key] = (expires, write.output, write.output_ref)


@dataclass
class _Clock:
    """A run's clock: real time, moved forward by the timers fired ahead of time."""

    offset: timedelta = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance_to(self, when: datetime) -> None:
        now = self.now()
        if when > now:
            self.offset += when - now


class FoldReplay:
    """Folds candidate runs in-process; see the module docstring.

    ``invoke_topic``: the shadow catalog's topic names (what the engine mode's scheduler writes
    into ``StepDispatched``)."""

    def __init__(
        self,
        *,
        settings: Any,
        nodes: NodeRegistry,
        workflow: RegisteredWorkflow,
        workflow_id: str,
        invoke_topic: Callable[[str, int], str],
        resolve_node_version: Callable[[str, str, str], str],
        blobs: Callable[[], BlobStore],
        concurrency: int = 256,
        secrets: SecretResolver | None = None,
        runs_in_flight: int | None = None,
    ) -> None:
        self.settings = settings
        self.nodes = nodes
        self.workflow = workflow
        self.workflow_id = workflow_id
        self.invoke_topic = invoke_topic
        self.resolve_node_version = resolve_node_version
        self._blobs = blobs
        self.concurrency = concurrency
        # At most this many runs folded at once per process (None: all of them); see
        # processors/replay/pace.py.
        self.runs_in_flight = runs_in_flight
        self.config = WorkerConfig.from_settings(settings)
        self.secrets = secrets if secrets is not None else resolver_from_settings(settings)
        self.cache = _Cache()
        self.steps = 0
        self.decisions = 0

    # -- the DecisionContext, as the scheduler runtime builds it ----------------------------

    def _lookup_workflow(self, workflow_id: str, version: int | None) -> RegisteredWorkflow | None:
        if workflow_id != self.workflow_id:
            return None
        if version is not None and version != self.workflow.version:
            return None
        return self.workflow

    def _load_payload(self, ref: PayloadRef) -> Any:
        return load_json(self._blobs(), ref)

    def _store_params(self, params: Any) -> PayloadRef | None:
        """Claim check of rendered params, as the scheduler runtime does it."""
        payload = canonical_json(params).encode()
        if len(payload) <= self.settings.claim_check_threshold_bytes:
            return None
        key = content_key(payload, prefix="params")
        uri = self._blobs().put(key, payload, "application/json")
        return PayloadRef(
            uri=uri,
            size_bytes=len(payload),
            sha256=key.rsplit("/", 1)[1],
            content_type="application/json",
        )

    def _context(self, clock: _Clock) -> DecisionContext:
        return DecisionContext(
            now=clock.now(),
            invoke_topic=self.invoke_topic,
            lookup_workflow=self._lookup_workflow,
            load_payload=self._load_payload,
            store_payload=self._store_params,
            resolve_node_version=self.resolve_node_version,
        )

    # -- running ----------------------------------------------------------------------------

    async def run(
        self,
        starts: Sequence[StartRun],
        timeout_s: float,
        write: Callable[[Sequence[RunEvent]], None],
        on_done: Callable[[], None] = lambda: None,
    ) -> dict[str, list[RunEvent]]:
        """Every run's candidate log (event models in seq order), keyed by run id.
        ``write(events)``: each decision's events, in decision order (the shadow run log);
        ``on_done()``: a run finished."""
        self._write = write
        for node in self.nodes:
            node.bind(self.settings)
            node.set_concurrency(self.config.limit(node).size)
        self._slots = asyncio.Semaphore(self.concurrency)
        logs: dict[str, list[RunEvent]] = {start.run_id: [] for start in starts}

        admitted = asyncio.Semaphore(self.runs_in_flight or max(len(starts), 1))

        async def one(start: StartRun) -> None:
            async with admitted:
                await self._run(start, logs[start.run_id])
            on_done()

        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(one(start) for start in starts))
        except TimeoutError:
            missing = sorted(r for r, log in logs.items() if not _finished(log))
            raise TimeoutError(
                f"{len(missing)} of {len(starts)} candidate runs did not finish within "
                f"{timeout_s:.0f}s (e.g. {missing[:5]})"
            ) from None
        finally:
            for node in self.nodes:
                await node.aclose()
        return logs

    async def _run(self, start: StartRun, log: list[RunEvent]) -> None:
        """One run: decide, execute its invocations, feed the results back, until it ends."""
        clock = _Clock()
        state: RunState | None = None
        pending: deque[SchedulerInput] = deque([start])
        flying: set[asyncio.Task[NodeResult]] = set()
        while True:
            while pending:
                state, invocations = self._decide(state, pending.popleft(), clock, log)
                self.steps += len(invocations)
                if len(invocations) == 1 and not flying:
                    # The usual case (a chain): awaited right here, no task to schedule.
                    pending.append(await self._invoke(invocations[0], clock))
                    continue
                for invocation in invocations:
                    flying.add(asyncio.create_task(self._invoke(invocation, clock)))
            if flying:
                finished, _ = await asyncio.wait(flying, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    flying.discard(task)
                    pending.append(task.result())
                continue
            if state is None or state.status in TERMINAL_RUN_STATUSES:
                return
            timers = live_timers(state)
            if not timers:
                return  # paused, or waiting for something no replay sends (left unfinished)
            # Nothing in flight: the run's next move is this timer. Fire it now, on its time.
            clock.advance_to(timers[0].due_at)
            pending.append(fire_timer_command(state, timers[0]))

    def _decide(
        self,
        state: RunState | None,
        input: SchedulerInput,
        clock: _Clock,
        log: list[RunEvent],
    ) -> tuple[RunState | None, list[NodeInvocation]]:
        """``decide`` one input (cache lookups answered at once); the state after it and the
        invocations to execute."""
        decision = decide(state, input, self._context(clock))
        self.decisions += 1
        # Cache lookups answered inside the decision, as the runtime does (no round trip).
        lookups = deque(decision.cache_lookups)
        events = list(decision.events)
        invocations = list(decision.invocations)
        commands = list(decision.commands)
        self.cache.write(decision)
        state = decision.state
        while lookups:
            follow = decide(state, self.cache.lookup(lookups.popleft()), self._context(clock))
            state = follow.state
            events.extend(follow.events)
            invocations.extend(follow.invocations)
            commands.extend(follow.commands)
            lookups.extend(follow.cache_lookups)
            self.cache.write(follow)
        if commands:
            # Pre-checked by fold_unsupported; a command to another run means a child run.
            raise RefluxError(
                f"run {input.run_id}: the fold cannot send {type(commands[0]).__name__} to "
                f"run {commands[0].run_id} (child runs need the engine mode)",
                error_class="ReplayFoldUnsupported",
            )
        if events:
            log.extend(events)
            self._write(events)
        return state, invocations

    # -- executing an invocation, as a worker does ------------------------------------------

    async def _invoke(self, invocation: NodeInvocation, clock: _Clock) -> NodeResult:
        try:
            node = self.nodes.get(invocation.step.node, invoke_major(invocation.step.node_version))
        except UnknownNodeError as exc:
            raise RefluxError(
                f"run {invocation.run_id} step {invocation.step.step_id}: no shadow worker "
                f"serves it: {exc}",
                error_class="ReplayNodeUnavailable",
            ) from exc
        attempt = self._served_from_record(node, invocation, clock)
        if attempt is None:
            async with self._slots:
                attempt = await run_attempt(
                    node,
                    invocation,
                    load_params=self._load_params,
                    default_timeout_s=self.config.default_timeout_s,
                    secrets=self.secrets,
                    started_at=clock.now(),
                )
        output_ref = None
        if attempt.status is TraceStatus.OK:
            data = encode_json(attempt.output)
            if len(data) > self.config.max_inline_output_bytes:
                try:
                    output_ref = await asyncio.to_thread(
                        store_json, self._blobs(), output_key(invocation), data
                    )
                except Exception as exc:  # as the worker: the attempt ends retryable
                    attempt = _claim_check_failed(attempt, exc)
        return build_result(node, invocation, attempt, output_ref=output_ref)

    def _served_from_record(
        self, node: AnyNode, invocation: NodeInvocation, clock: _Clock
    ) -> Attempt | None:
        """A side effect answered by its stand-in like a cache hit: no attempt, no task, the
        record's output or error as the attempt's end (what :func:`run_attempt` would make of
        the stand-in's answer). None: the invocation takes the attempt path."""
        if (
            not isinstance(node, RecordedNode)
            or invocation.params_ref is not None
            # The attempt reads the trace context (e.g. a checker step's score): let it.
            or is_checker(invocation.trace_context)
        ):
            return None
        params = {} if invocation.params is None else invocation.params
        answer = node.answer(params, invocation.run_id, invocation.step.step_id, invocation.attempt)
        if answer is None:
            return None
        now = clock.now()
        redactor = self.secrets.redactor
        if answer.ok:
            return Attempt(
                status=TraceStatus.OK,
                started_at=now,
                finished_at=now,
                inputs_hash="",
                output=redactor.redact(answer.output),
            )
        error = ErrorInfo(
            error_class=answer.error_class or "NodeError",
            message=answer.message,
            retryable=answer.retryable,
        )
        return Attempt(
            status=TraceStatus.ERROR,
            started_at=now,
            finished_at=now,
            inputs_hash="",
            error=redactor.redact_error(error),
        )

    async def _load_params(self, invocation: NodeInvocation) -> Any:
        if invocation.params_ref is None:
            return {} if invocation.params is None else invocation.params
        return await asyncio.to_thread(load_json, self._blobs(), invocation.params_ref)


def _finished(log: Sequence[RunEvent]) -> bool:
    return any(type(e).__name__ in ("RunSucceeded", "RunFailed", "RunCancelled") for e in log)


def _claim_check_failed(attempt: Attempt, exc: BaseException) -> Attempt:
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


# -- several processes -------------------------------------------------------------------------


class FoldSink(Protocol):
    """Where a fold's events go (the shadow run log); one per process."""

    def write(self, events: Sequence[RunEvent]) -> None: ...

    def close(self) -> None:
        """Flush: every event written is stored."""


R = TypeVar("R")
P = TypeVar("P")
Finish = Callable[[P, dict[str, list[RunEvent]], FoldSink], R]

MIN_RUNS_PER_PROCESS: Final = 100
"""Below this many runs per process a fork does not pay for itself (a few ms per process, plus
the copy-on-write of the parent's heap as the child touches it)."""


def default_processes(runs: int) -> int:
    """One process per core, as long as each gets :data:`MIN_RUNS_PER_PROCESS` runs."""
    return max(1, min(os.cpu_count() or 1, runs // MIN_RUNS_PER_PROCESS))


def fold_partitioned(
    folder: FoldReplay,
    starts: Sequence[StartRun],
    *,
    timeout_s: float,
    processes: int,
    new_sink: Callable[[], FoldSink],
    prepare: Callable[[Sequence[StartRun]], P],
    finish: Finish[P, R],
    progress: Callable[[int, int], None] | None = None,
    timings: dict[str, float] | None = None,
    alongside: Callable[[], None] | None = None,
) -> list[R]:
    """Fold ``starts`` in ``processes`` processes (1: a thread of this one), each with its own
    sink. In each part, ``prepare(part)`` runs first (e.g. reads the part's original logs and
    fills the records the stand-ins answer from), then the fold, then ``finish(prepared, logs,
    sink)`` turns the part into what is handed back (it runs where the part was folded, so a
    child hands back something small and picklable, not models).

    The runs are independent (each its own log; the fold needs no other run), so the only
    thing the parts share is the machine: the GIL caps one process at one core, and the
    scheduler's pure core is the fold's cost. Children are forked: the records, the registry
    and the candidate's definition are inherited, not pickled. ``progress(done, total)`` is
    called from the calling thread. ``timings`` (filled when given): seconds spent forking,
    and the slowest part's prepare, fold and finish. ``alongside()``: work of the calling
    process done while the parts fold (after the fork: it may use clients that must not be
    busy while forking); its error is raised."""
    total = len(starts)
    timings = timings if timings is not None else {}
    processes = max(1, min(processes, total))
    if processes == 1:
        count = [0]
        clock = time.monotonic()
        prepared = prepare(starts)
        timings["prepare_s"] = time.monotonic() - clock

        def part() -> Coroutine[Any, Any, tuple[dict[str, list[RunEvent]], FoldSink]]:
            async def go() -> tuple[dict[str, list[RunEvent]], FoldSink]:
                sink = new_sink()
                try:
                    logs = await folder.run(starts, timeout_s, sink.write, _increment(count))
                    sink.close()
                except BaseException:
                    with contextlib.suppress(Exception):
                        sink.close()
                    raise
                return logs, sink

            return go()

        clock = time.monotonic()
        side = _BACKGROUND.submit(alongside) if alongside is not None else None
        try:
            logs, sink = _watch_thread(part, lambda: count[0], total, progress)
        finally:
            if side is not None:
                side.result()
        timings["fold_s"] = time.monotonic() - clock
        clock = time.monotonic()
        result = finish(prepared, logs, sink)
        timings["finish_s"] = time.monotonic() - clock
        return [result]
    return _fold_in_children(
        folder,
        starts,
        timeout_s=timeout_s,
        processes=processes,
        new_sink=new_sink,
        prepare=prepare,
        finish=finish,
        progress=progress,
        timings=timings,
        alongside=alongside,
    )


def _increment(count: list[int]) -> Callable[[], None]:
    def done() -> None:
        count[0] += 1

    return done


def _watch_thread(
    factory: Callable[[], Coroutine[Any, Any, T]],
    done: Callable[[], int],
    total: int,
    progress: Callable[[int, int], None] | None,
) -> T:
    """:func:`run_in_thread`, reporting ``progress`` from this thread while it runs."""
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            box["value"] = asyncio.run(factory())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=main, name="replay-fold", daemon=True)
    thread.start()
    seen = -1
    while True:
        thread.join(PROGRESS_INTERVAL_S)
        now = done()
        if progress is not None and now != seen:
            seen = now
            progress(now, total)
        if not thread.is_alive():
            break
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


PROGRESS_INTERVAL_S: Final = 0.1

_BACKGROUND = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="replay-alongside")


def _fold_in_children(
    folder: FoldReplay,
    starts: Sequence[StartRun],
    *,
    timeout_s: float,
    processes: int,
    new_sink: Callable[[], FoldSink],
    prepare: Callable[[Sequence[StartRun]], P],
    finish: Finish[P, R],
    progress: Callable[[int, int], None] | None,
    timings: dict[str, float],
    alongside: Callable[[], None] | None,
) -> list[R]:
    forking = time.monotonic()
    context = multiprocessing.get_context("fork")
    counter = context.Value("q", 0)
    total = len(starts)
    children: list[tuple[Any, Connection]] = []
    # Everything the parent holds goes to the permanent generation while forking: a child's
    # garbage collector must never finalize an inherited Kafka client (librdkafka's threads do
    # not survive a fork; destroying such a handle in the child crashes it).
    gc.collect()
    gc.freeze()
    try:
        for index in range(processes):
            part = list(starts[index::processes])  # interleaved: similar runs spread evenly
            receiver, sender = context.Pipe(duplex=False)
            child = context.Process(
                target=_child,
                args=(folder, part, timeout_s, new_sink, prepare, finish, sender, counter),
                name=f"replay-fold-{index}",
                daemon=True,
            )
            child.start()
            sender.close()
            children.append((child, receiver))
        gc.unfreeze()
        timings["fork_s"] = time.monotonic() - forking
        if alongside is not None:
            alongside()
        results: dict[int, R] = {}
        waiting = {receiver: index for index, (_, receiver) in enumerate(children)}
        # The children enforce timeout_s themselves; this is the backstop for a child that dies.
        deadline = time.monotonic() + timeout_s + 30.0
        seen = -1
        while waiting:
            for ready in wait_for_connections(list(waiting), PROGRESS_INTERVAL_S):
                assert isinstance(ready, Connection)
                index = waiting.pop(ready)
                try:
                    status, payload = ready.recv()
                except EOFError:
                    child = children[index][0]
                    child.join(5)
                    raise RefluxError(
                        f"replay fold process {index} ended without an answer (exit code "
                        f"{child.exitcode})",
                        error_class="ReplayFoldFailed",
                    ) from None
                if status == "error":
                    raise payload
                results[index], spent = payload
                for key, seconds in spent.items():
                    timings[key] = max(timings.get(key, 0.0), seconds)
            now = int(counter.value)
            if progress is not None and now != seen:
                seen = now
                progress(now, total)
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(
                    f"{total - now} of {total} candidate runs did not finish within "
                    f"{timeout_s:.0f}s"
                )
        return [results[index] for index in range(processes)]
    finally:
        gc.unfreeze()
        for child, receiver in children:
            receiver.close()
            child.join(5)
            if child.is_alive():  # only ours, by its own handle
                child.terminate()
                child.join(5)


def _child(  # noqa: PLR0917 - a Process target takes its arguments by position
    folder: FoldReplay,
    part: list[StartRun],
    timeout_s: float,
    new_sink: Callable[[], FoldSink],
    prepare: Callable[[Sequence[StartRun]], Any],
    finish: Finish[Any, Any],
    conn: Connection,
    counter: Any,
) -> None:
    """A forked process: prepare and fold its part, hand back ``finish``'s answer (or the
    error)."""

    def done() -> None:
        with counter.get_lock():
            counter.value += 1

    faulthandler.enable()  # a crash in C code leaves its Python traceback on stderr
    # A short-lived process that allocates a lot and makes few cycles: the cyclic collector
    # cost ~14% of the fold's CPU. The inherited heap is frozen anyway (see the parent).
    gc.disable()
    try:
        clock = time.monotonic()
        prepared = prepare(part)
        spent = {"prepare_s": time.monotonic() - clock}
        clock = time.monotonic()
        sink = new_sink()
        # In a thread of its own: the forking thread may have had an event loop running.
        logs = run_in_thread(lambda: folder.run(part, timeout_s, sink.write, done))
        sink.close()
        spent["fold_s"] = time.monotonic() - clock
        clock = time.monotonic()
        result = finish(prepared, logs, sink)
        spent["finish_s"] = time.monotonic() - clock
        answer: tuple[str, Any] = ("ok", (result, spent))
    except BaseException as exc:
        answer = ("error", exc)
    try:
        conn.send(answer)
    except Exception as exc:  # an answer or an error that does not pickle
        conn.send(
            ("error", RefluxError(f"replay fold process: {exc!r}", error_class="ReplayFoldFailed"))
        )
    finally:
        conn.close()
