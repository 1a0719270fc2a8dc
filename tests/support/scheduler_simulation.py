"""An in-memory, deterministic driver for ``decide``: fake clock, ids, workers and cache.

No Kafka and no threads: the simulation plays the runtime's part (publish invocations, answer
cache lookups, fire due timers) by feeding inputs straight back into ``decide``. Unit tests and
the golden-log generator use it; it is also a readable model of what the real runtime must do.

Every :meth:`Simulation.send` checks the core invariant: the live state equals ``fold`` of the
log written so far.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

from processors.scheduler.decide import (
    CacheHit,
    CacheLookup,
    CacheMiss,
    Decision,
    DecisionContext,
    RegisteredWorkflow,
    SchedulerInput,
    decide,
    default_resolve_node_version,
)
from processors.scheduler.evolve import RunEvent, fold
from processors.scheduler.inline import InlineNodes
from processors.scheduler.retry_gate import UNGATED, RetryGate, retry_signals
from processors.scheduler.state import RunState, RunStatus
from processors.scheduler.timers import due_timers, next_due
from schemas.models import (
    CancelRun,
    ErrorInfo,
    GraphMutation,
    GraphMutationType,
    MutateGraph,
    NodeHeartbeat,
    NodeInvocation,
    NodeResult,
    PauseRun,
    RebindRun,
    RedriveStep,
    ResumeRun,
    StartRun,
    TraceStatus,
)
from workflows.model import WorkflowDefinition
from workflows.node_catalog import NodeCatalogView
from workflows.semver import VersionConstraint
from workflows.validation import parse_workflow

__all__ = ["NOT_PICKED_UP", "NO_ANSWER", "T0", "WORKER", "Simulation", "catalog_resolver"]

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
"""The simulated clock's start."""


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NO_ANSWER: Any = _Marker("NO_ANSWER")
"""A worker outcome meaning "started, but the result never arrives" (hung call, lost worker)."""
NOT_PICKED_UP: Any = _Marker("NOT_PICKED_UP")
"""A worker outcome meaning "no worker ever starts the invocation" (a backlog, no worker)."""
WORKER = "sim-worker"
"""The worker name the simulated workers send with their heartbeats."""

Worker = Callable[[NodeInvocation], Any]
"""``invocation -> output``; return an ``ErrorInfo`` to fail, ``NO_ANSWER`` to never answer,
``NOT_PICKED_UP`` to never even start. Every other answer is preceded by the worker's start
signal (a ``NodeHeartbeat`` with beat 0), as real workers send it."""


def catalog_resolver(catalog: NodeCatalogView) -> Callable[[str, str, str], str]:
    """Highest catalog version satisfying the constraint (no rollout weights), else the default."""

    def resolve(name: str, constraint: str, run_id: str) -> str:
        best = VersionConstraint.parse(constraint).best(catalog.versions(name))
        return best or default_resolve_node_version(name, constraint, run_id)

    return resolve


class Simulation:
    def __init__(
        self,
        definition: WorkflowDefinition | str | Mapping[str, Any],
        *,
        run_id: str = "run-1",
        workflow_version: int = 1,
        seed: int = 7,
        node_catalog: NodeCatalogView | None = None,
        check_replay: bool = True,
        retry_gate: RetryGate | None = None,
        inline_node: InlineNodes | None = None,
    ) -> None:
        self.definition = (
            definition
            if isinstance(definition, WorkflowDefinition)
            else parse_workflow(definition, node_catalog=node_catalog)
        )
        self.run_id = run_id
        self.workflow_version = workflow_version
        self.now = T0
        self.node_catalog = node_catalog
        self.check_replay = check_replay
        self.retry_gate = retry_gate
        """Shared by the simulations of one "scheduler process" (see :mod:`scheduler_fleet`);
        fed every decision's signals, as the runtime does. None: retries are not gated."""
        self.inline_node = inline_node
        """Which pure node versions decide evaluates inline (ADR 0064); None: none."""
        self._ids = count(1)
        self._rng = random.Random(seed)
        self.state: RunState | None = None
        self.log: list[RunEvent] = []
        self.decisions: list[Decision] = []
        self.outstanding: dict[str, NodeInvocation] = {}
        """Invocations sent and not yet answered, by invocation id."""
        self.sent: list[NodeInvocation] = []
        self.start_times: dict[str, datetime] = {}
        """When the simulated worker started each invocation it started, by invocation id."""
        self.lookups: list[CacheLookup] = []
        self.cache: dict[str, Any] = {}
        self.rejections: list[str] = []
        self.versions: dict[int, WorkflowDefinition] = {}
        """Other registered versions of the workflow (what a RebindRun may ask for)."""

    # -- plumbing -----------------------------------------------------------------------------

    def new_id(self) -> str:
        return f"id-{next(self._ids):05d}"

    def context(self) -> DecisionContext:
        resolver = (
            catalog_resolver(self.node_catalog)
            if self.node_catalog is not None
            else default_resolve_node_version
        )
        return DecisionContext(
            now=self.now,
            new_id=self.new_id,
            random=self._rng.random,
            resolve_node_version=resolver,
            lookup_workflow=self._lookup,
            node_catalog=self.node_catalog,
            retry_gate=self.retry_gate if self.retry_gate is not None else UNGATED,
            inline_node=self.inline_node,
        )

    def _lookup(self, workflow_id: str, version: int | None) -> RegisteredWorkflow | None:
        if workflow_id != self.definition.id:
            return None
        registered = {**self.versions, self.workflow_version: self.definition}
        if version is None:
            version = max(registered)
        found = registered.get(version)
        return None if found is None else RegisteredWorkflow(version, found)

    @property
    def run(self) -> RunState:
        assert self.state is not None, "the run has no events yet"
        return self.state

    def send(self, input: SchedulerInput) -> Decision:
        decision = decide(self.state, input, self.context())
        self.decisions.append(decision)
        self.state = decision.state
        self.log.extend(decision.events)
        for invocation in decision.invocations:
            self.outstanding[invocation.invocation_id] = invocation
            self.sent.append(invocation)
        self.lookups.extend(decision.cache_lookups)
        for write in decision.cache_writes:
            self.cache[write.cache_key] = write.output
        if decision.rejection is not None:
            self.rejections.append(decision.rejection)
        if self.retry_gate is not None and decision.state is not None:
            self.retry_gate.observe(retry_signals(decision.events, decision.state), self.now)
        if self.check_replay:
            replayed = fold(self.log)
            assert replayed == self.state, "live state differs from the replayed log"
        return decision

    def advance(self, ms: int) -> None:
        self.now += timedelta(milliseconds=ms)

    # -- commands --------------------------------------------------------------------------------

    def _command_fields(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "command_id": self.new_id(), "occurred_at": self.now}

    def start(self, inputs: Any = None, **fields: Any) -> Decision:
        fields.setdefault("workflow_id", self.definition.id)
        return self.send(
            StartRun(
                **self._command_fields(), inputs=inputs if inputs is not None else {}, **fields
            )
        )

    def cancel(self, reason: str | None = None) -> Decision:
        return self.send(CancelRun(**self._command_fields(), reason=reason, requested_by="test"))

    def pause(self) -> Decision:
        return self.send(PauseRun(**self._command_fields(), requested_by="test"))

    def resume(self) -> Decision:
        return self.send(ResumeRun(**self._command_fields(), requested_by="test"))

    def redrive(self, step_id: str) -> Decision:
        return self.send(
            RedriveStep(**self._command_fields(), step_id=step_id, requested_by="test")
        )

    def redrive_from(self, step_id: str) -> Decision:
        return self.send(
            RedriveStep(
                **self._command_fields(), step_id=step_id, downstream=True, requested_by="test"
            )
        )

    def rebind(self, version: int | None = None, *, redrive_failed: bool = True) -> Decision:
        return self.send(
            RebindRun(
                **self._command_fields(),
                workflow_version=version,
                redrive_failed=redrive_failed,
                requested_by="test",
            )
        )

    def mutate(
        self,
        kind: GraphMutationType | str,
        step_id: str,
        data: Any = None,
        *,
        requested_by: str | None = None,
        reason: str | None = None,
    ) -> Decision:
        mutation = GraphMutation(
            type=GraphMutationType(kind), step_id=step_id, data=data if data is not None else {}
        )
        return self.send(
            MutateGraph(
                **self._command_fields(),
                mutation=mutation,
                requested_by=requested_by,
                reason=reason,
            )
        )

    def mutate_all(
        self,
        operations: list[tuple[GraphMutationType | str, str, Any]],
        *,
        requested_by: str | None = None,
        reason: str | None = None,
    ) -> Decision:
        """Send one ``MutateGraph`` with a ``mutations`` list (applied all or nothing)."""
        mutations = [
            GraphMutation(type=GraphMutationType(kind), step_id=step_id, data=data)
            for kind, step_id, data in operations
        ]
        return self.send(
            MutateGraph(
                **self._command_fields(),
                mutations=mutations,
                requested_by=requested_by,
                reason=reason,
            )
        )

    def fire_due(self) -> list[Decision]:
        """Send FireTimer for every timer due now (what the runtime's timer loop does)."""
        if self.state is None:
            return []
        return [self.send(command) for command in due_timers(self.state, self.now)]

    def advance_and_fire(self, ms: int) -> list[Decision]:
        self.advance(ms)
        return self.fire_due()

    # -- workers ---------------------------------------------------------------------------------

    def invocation(self, step_id: str) -> NodeInvocation:
        """The latest invocation sent for ``step_id`` (answered or not)."""
        for invocation in reversed(self.sent):
            if invocation.step.step_id == step_id:
                return invocation
        raise KeyError(f"no invocation was sent for step {step_id!r}")

    def start_attempt(self, invocation: NodeInvocation) -> Decision:
        """The worker's start signal: what a worker publishes right after claiming the attempt."""
        return self.heartbeat(invocation, beat=0)

    def heartbeat(self, invocation: NodeInvocation, beat: int) -> Decision:
        """Beat 0 is the start; later beats are the heartbeats of a long attempt."""
        started_at = self.start_times.setdefault(invocation.invocation_id, self.now)
        return self.send(
            NodeHeartbeat(
                run_id=self.run_id,
                seq=invocation.seq,
                event_id=self.new_id(),
                occurred_at=self.now,
                invocation_id=invocation.invocation_id,
                attempt=invocation.attempt,
                step=invocation.step,
                started_at=started_at,
                beat=beat,
                worker=WORKER,
            )
        )

    def result(
        self,
        invocation: NodeInvocation,
        status: TraceStatus,
        *,
        output: Any = None,
        error: ErrorInfo | None = None,
        duration_ms: int = 5,
        start: bool = True,
    ) -> Decision:
        """The worker's result; with ``start`` (default) preceded by its start signal unless the
        attempt was started already (``start=False``: a worker that sends none)."""
        if start and invocation.invocation_id not in self.start_times:
            self.start_attempt(invocation)
        started = self.start_times.get(invocation.invocation_id, self.now)
        self.advance(duration_ms)
        self.outstanding.pop(invocation.invocation_id, None)
        return self.send(
            NodeResult(
                run_id=self.run_id,
                seq=invocation.seq,
                event_id=self.new_id(),
                occurred_at=self.now,
                invocation_id=invocation.invocation_id,
                attempt=invocation.attempt,
                step=invocation.step,
                status=status,
                output=output,
                error=error,
                started_at=started,
                finished_at=self.now,
            )
        )

    def succeed(self, step_id: str, output: Any = None, *, duration_ms: int = 5) -> Decision:
        return self.result(
            self.invocation(step_id), TraceStatus.OK, output=output, duration_ms=duration_ms
        )

    def fail(
        self,
        step_id: str,
        error_class: str = "Boom",
        *,
        retryable: bool = True,
        message: str | None = None,
    ) -> Decision:
        error = ErrorInfo(
            error_class=error_class,
            message=message or f"{step_id} failed with {error_class}",
            retryable=retryable,
        )
        return self.result(self.invocation(step_id), TraceStatus.ERROR, error=error)

    def answer_lookups(self) -> list[Decision]:
        """Answer pending cache lookups from :attr:`cache` (hit) or with a miss."""
        pending, self.lookups = self.lookups, []
        decisions: list[Decision] = []
        for lookup in pending:
            if lookup.cache_key in self.cache:
                answer: CacheHit | CacheMiss = CacheHit(
                    run_id=lookup.run_id,
                    step_id=lookup.step_id,
                    attempt=lookup.attempt,
                    cache_key=lookup.cache_key,
                    output=self.cache[lookup.cache_key],
                )
            else:
                answer = CacheMiss(
                    run_id=lookup.run_id,
                    step_id=lookup.step_id,
                    attempt=lookup.attempt,
                    cache_key=lookup.cache_key,
                )
            decisions.append(self.send(answer))
        return decisions

    def run_workers(self, worker: Worker, *, max_rounds: int = 200) -> RunState:
        """Play runtime + workers until the run stops moving (finished, failed, paused, stuck).

        Each round answers cache lookups, then every outstanding invocation (in dispatch
        order), and when nothing is outstanding jumps the clock to the next due timer.
        """
        for _ in range(max_rounds):
            if self.state is None or self.state.status is not RunStatus.RUNNING:
                break
            if self.lookups:
                self.answer_lookups()
                continue
            if self.outstanding:
                for invocation in list(self.outstanding.values()):
                    self._answer(invocation, worker(invocation))
                continue
            due = next_due(self.state)
            if due is None:
                break
            self.now = max(self.now, due)
            self.fire_due()
        return self.run

    def _answer(self, invocation: NodeInvocation, outcome: Any) -> None:
        if outcome is NOT_PICKED_UP:
            self.outstanding.pop(invocation.invocation_id, None)
        elif outcome is NO_ANSWER:
            if invocation.invocation_id not in self.start_times:
                self.start_attempt(invocation)
            self.outstanding.pop(invocation.invocation_id, None)
        elif isinstance(outcome, ErrorInfo):
            self.result(invocation, TraceStatus.ERROR, error=outcome)
        else:
            self.result(invocation, TraceStatus.OK, output=outcome)
