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
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

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
from schemas.statuses import TERMINAL_RUN_STATUSES
from workflows.model import WorkflowDefinition
from workflows.node_catalog import default_resolve_node_version
from workflows.semver import invoke_major

__all__ = [
    "FOLDABLE_META_NODES",
    "FoldReplay",
    "catalog_resolver",
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
    into ``StepDispatched``); ``sink(events)``: where each decision's events go (the shadow run
    log), called from the loop's thread in decision order."""

    def __init__(
        self,
        *,
        settings: Any,
        nodes: NodeRegistry,
        workflow: RegisteredWorkflow,
        workflow_id: str,
        invoke_topic: Callable[[str, int], str],
        resolve_node_version: Callable[[str, str, str], str],
        sink: Callable[[Sequence[RunEvent]], None],
        blobs: Callable[[], BlobStore],
        progress: Callable[[int, int], None] | None = None,
        concurrency: int = 256,
        secrets: SecretResolver | None = None,
    ) -> None:
        self.settings = settings
        self.nodes = nodes
        self.workflow = workflow
        self.workflow_id = workflow_id
        self.invoke_topic = invoke_topic
        self.resolve_node_version = resolve_node_version
        self.sink = sink
        self._blobs = blobs
        self.progress = progress
        self.concurrency = concurrency
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

    async def run(self, starts: Sequence[StartRun], timeout_s: float) -> dict[str, list[RunEvent]]:
        """Every run's candidate log (event models in seq order), keyed by run id."""
        for node in self.nodes:
            node.bind(self.settings)
            node.set_concurrency(self.config.limit(node).size)
        self._slots = asyncio.Semaphore(self.concurrency)
        logs: dict[str, list[RunEvent]] = {start.run_id: [] for start in starts}
        total = len(starts)
        done = 0
        if self.progress is not None:
            self.progress(0, total)

        async def one(start: StartRun) -> None:
            nonlocal done
            await self._run(start, logs[start.run_id])
            done += 1
            if self.progress is not None:
                self.progress(done, total)

        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(one(start) for start in starts))
        except TimeoutError:
            missing = sorted(r for r, log in logs.items() if not _finished(log))[:5]
            raise TimeoutError(
                f"{total - done} of {total} candidate runs did not finish within "
                f"{timeout_s:.0f}s (e.g. {missing})"
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
                state = self._decide(state, pending.popleft(), clock, log, flying)
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
        flying: set[asyncio.Task[NodeResult]],
    ) -> RunState | None:
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
            self.sink(events)
        for invocation in invocations:
            self.steps += 1
            flying.add(asyncio.create_task(self._invoke(invocation, clock)))
        return state

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
