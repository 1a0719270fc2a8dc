"""``decide(state, input, ctx) -> Decision``: the step scheduler's pure command processor.

Zeebe-style: a handler validates against read-only state and *appends* events; appending applies
the event through :func:`~processors.scheduler.evolve.evolve` at once, so the rest of the handler
sees the new state (e.g. after ``StepSucceeded`` the downstream steps are ready). Events get
consecutive ``seq`` from ``state.last_seq + 1``. Nothing here does I/O, reads a clock or draws a
random number on its own: all of that comes in through :class:`DecisionContext`.

Inputs (``SchedulerInput``): the commands ``StartRun``, ``CancelRun``, ``PauseRun``,
``ResumeRun``, ``RedriveStep`` (one step, or ``downstream``: from a step), ``RebindRun``,
``MutateGraph``, ``SignalRun`` (for a ``meta.signal`` step: :mod:`~.meta.waits`), ``FireTimer``,
``ChildRunFinished`` (a child run of a ``meta.workflow`` / ``meta.loop`` step ended:
:mod:`processors.scheduler.child_runs`); a worker's
``NodeHeartbeat`` and ``NodeResult``; and the runtime's answers to cache lookups,
:class:`CacheHit` / :class:`CacheMiss` (plain dataclasses, not Avro records: they never leave
the scheduler process).

Timeouts (docs/decisions/0013-execution-and-queue-timeouts.md): waiting for a worker is bounded
only by the step's optional ``queue_timeout`` (a timer armed at dispatch; it fails the step with
the non-retryable ``QueueTimeout``). The step ``timeout`` bounds execution: the worker enforces it
from its own start, and the first ``NodeHeartbeat`` of the current attempt (the start, beat 0, or
any later beat) becomes ``StepStarted``, which cancels the queue timer and arms the step-timeout
timer at ``now + timeout + TIMEOUT_GRACE_MS`` (a backstop for a worker that is lost). Later
heartbeats move that timer forward (``StepTimeoutExtended``) when they move it by at least half
the timeout, so a long attempt adds at most a few events to the log.

What the runtime does with a :class:`Decision`, in one Kafka transaction with the input's offset:

1. append ``events`` to ``reflux.runs`` (key = run id);
2. publish ``invocations`` to ``NodeInvocation``'s topic (``StepDispatched.invoke_topic``).
   Rendered params larger than the claim-check threshold were already stored through
   ``DecisionContext.store_payload``: ``StepScheduled`` and the invocation carry ``params_ref``;
   publish ``commands`` (the outbox: commands to *other* runs, keyed by their run id) to the
   commands topic (docs/decisions/0025-child-runs-and-the-scheduler-outbox.md);
3. store ``state`` in the run table;
4. after commit: answer each ``cache_lookups`` entry from Redis by feeding ``CacheHit`` or
   ``CacheMiss`` back into ``decide``; write ``cache_writes`` to Redis with their TTL;
   update the timer index from ``timers_armed`` / ``timers_cancelled``
   (or ``timers.next_due(state)``).

Cache design: a cache-enabled step goes ``StepScheduled(cache_key=...)`` -> the runtime looks the
key up -> ``CacheHit`` gives ``StepSucceeded(cache_hit=True)`` with no invocation, ``CacheMiss``
gives ``StepDispatched`` + a ``NodeInvocation``. Lookups lost in a crash are recoverable from
state: :func:`pending_cache_lookups`. A ``CacheMiss`` that arrives while the run is paused is
dropped; ``ResumeRun`` issues the lookup again.

Inline steps (docs/decisions/0064-inline-pure-steps.md): a step of a built-in pure node
(``transform``, ``condition``) that ``DecisionContext.inline_node`` allows is evaluated here,
right after its ``StepScheduled``: ``StepStarted(worker="scheduler-inline")`` and
``StepSucceeded`` / ``StepFailed`` follow in the same decision, with no invocation and no cache
lookup (:mod:`processors.scheduler.inline`), so a chain of such steps finishes in one call.

Rejections: an invalid command yields a ``CommandRejected`` event ("Expected X, but Y") and
``Decision.rejection`` holds the same reason. A command for a run with no events (other than
``StartRun``) cannot be placed in a log; it yields no event, only ``rejection``. Results, cache
answers and timers that lost a race (stale attempt, finished step) are silent no-ops.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar

from foundation.errors import NonRetryableError, classify
from foundation.tenancy import DEFAULT_TENANT
from foundation.trace_context import clean_trace_context
from processors.scheduler.backoff import backoff_ms, should_retry
from processors.scheduler.cache import cache_key
from processors.scheduler.child_runs import (
    ChildOps,
    RunCommand,
    child_finished,
    children_in_flight,
    end_children_of_failed_run,
    is_child_run_node,
    notify_parent,
    propagate,
    rejected_child,
    resume_loops,
    schedule_child_step,
)
from processors.scheduler.evolve import (
    RUN_EVENT_TYPES,
    RunEvent,
    dispatch_scheduled,
    evolve,
    fold,
)
from processors.scheduler.inline import InlineNodes, inline_node_for, run_inline
from processors.scheduler.meta import ai_plan
from processors.scheduler.meta.map import map_result
from processors.scheduler.meta.map_children import (
    map_child_finished,
    map_children_in_flight,
    map_timer_due,
    pump_map,
    start_any_map,
)
from processors.scheduler.meta.switch import run_switch, switch_skip_reason
from processors.scheduler.meta.waits import (
    deliver_signal,
    is_wait_node,
    signal_refusal,
    start_wait,
    wait_timer_due,
)
from processors.scheduler.redrive import plan_rebind, plan_redrive_from, rebind_status_refusal
from processors.scheduler.retry_gate import UNGATED, Admission, RetryGating, step_dependency
from processors.scheduler.spans import invocation_trace_context
from processors.scheduler.state import (
    ACTIVE_STEP_STATUSES,
    DONE_STEP_STATUSES,
    FAILED_STEP_STATUSES,
    RunState,
    RunStatus,
    StepState,
    StepStatus,
    Timer,
)
from schemas.base import RefluxRecord
from schemas.base import new_id as _uuid
from schemas.models import (
    CancelRun,
    ChildRunFinished,
    CommandRejected,
    ErrorInfo,
    FireTimer,
    GraphMutated,
    GraphMutation,
    GraphMutationType,
    MutateGraph,
    NodeHeartbeat,
    NodeInvocation,
    NodeResult,
    PauseRun,
    PayloadRef,
    RebindRun,
    RedriveStep,
    ResumeRun,
    RunCancelled,
    RunFailed,
    RunPaused,
    RunRebound,
    RunResumed,
    RunStarted,
    RunSucceeded,
    SignalRun,
    StartRun,
    StepDispatched,
    StepFailed,
    StepRef,
    StepRetryScheduled,
    StepScheduled,
    StepSkipped,
    StepsReset,
    StepStarted,
    StepSucceeded,
    StepTimedOut,
    StepTimeoutExtended,
    TimerKind,
    TraceStatus,
)
from schemas.run_log import scheduling_of
from workflows.expressions import (
    TemplateError,
    evaluate_when,
    expression_references,
    iter_expressions,
    render_params,
)
from workflows.meta import MAP_NODE, is_meta_node
from workflows.model import StepDefinition, WorkflowDefinition
from workflows.mutations import apply_mutation
from workflows.node_catalog import NodeCatalogView, default_resolve_node_version
from workflows.semver import invoke_major
from workflows.validation import (
    WorkflowValidationError,
    check_definition,
    check_step_nodes,
    validate_inputs,
)

__all__ = [
    "QUEUE_TIMEOUT",
    "TIMEOUT_GRACE_MS",
    "CacheHit",
    "CacheLookup",
    "CacheMiss",
    "CacheWrite",
    "Decision",
    "DecisionContext",
    "RegisteredWorkflow",
    "SchedulerInput",
    "decide",
    "default_invoke_topic",
    "default_resolve_node_version",
    "fail_input",
    "invocation_for",
    "pending_cache_lookups",
]


# -- inputs and outputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheLookup:
    """Intent: look ``cache_key`` up, then feed back :class:`CacheHit` or :class:`CacheMiss`."""

    run_id: str
    step_id: str
    attempt: int
    cache_key: str


@dataclass(frozen=True)
class CacheHit:
    """The runtime found the step's output in the cache."""

    run_id: str
    step_id: str
    attempt: int
    cache_key: str
    output: Any = None
    output_ref: PayloadRef | None = None


@dataclass(frozen=True)
class CacheMiss:
    run_id: str
    step_id: str
    attempt: int
    cache_key: str


@dataclass(frozen=True)
class CacheWrite:
    """Intent: store a fresh step output under ``cache_key`` for ``ttl_ms``."""

    cache_key: str
    output: Any
    output_ref: PayloadRef | None
    ttl_ms: int


SchedulerInput = (
    StartRun
    | CancelRun
    | PauseRun
    | ResumeRun
    | RedriveStep
    | RebindRun
    | MutateGraph
    | SignalRun
    | FireTimer
    | NodeHeartbeat
    | NodeResult
    | CacheHit
    | CacheMiss
    | ChildRunFinished
)

TIMEOUT_GRACE_MS = 1_000
"""Added to the step timeout on the scheduler's timer: the worker enforces the timeout itself
from its own start and reports it, so the scheduler's timer only decides for a worker that is
lost, and must not beat a result that was sent in time and is still on its way."""

_COMMANDS = (
    StartRun,
    CancelRun,
    PauseRun,
    ResumeRun,
    RedriveStep,
    RebindRun,
    MutateGraph,
    SignalRun,
    ChildRunFinished,
)
Command = (
    StartRun
    | CancelRun
    | PauseRun
    | ResumeRun
    | RedriveStep
    | RebindRun
    | MutateGraph
    | SignalRun
    | ChildRunFinished
)


class RegisteredWorkflow(NamedTuple):
    version: int
    definition: WorkflowDefinition
    tenant: str = DEFAULT_TENANT
    """The tenant the workflow belongs to (``WorkflowRegistered.tenant``)."""


def default_invoke_topic(node: str, major: int) -> str:
    return f"reflux.invoke.{node}.v{major}"


def _no_workflows(workflow_id: str, version: int | None) -> RegisteredWorkflow | None:
    return None


def _always_cacheable(node: str, version: str) -> bool:
    return True


@dataclass(frozen=True)
class DecisionContext:
    """Everything ``decide`` needs that is not in run state. Inject fakes for determinism."""

    now: datetime
    """Timezone-aware; becomes every event's ``occurred_at``."""
    new_id: Callable[[], str] = _uuid
    """Event ids, invocation ids and backoff timer ids."""
    random: Callable[[], float] = _random.random
    """Jitter source in [0, 1)."""
    resolve_node_version: Callable[[str, str, str], str] = default_resolve_node_version
    """``(node name, constraint, run_id) -> version`` chosen for a new attempt. Raising a
    ``NonRetryableError`` (e.g. the catalog's ``NodeVersionUnavailableError``) fails the step
    with that error, non-retryable, instead of scheduling it."""
    invoke_topic: Callable[[str, int], str] = default_invoke_topic
    """``(node name, major) -> topic``; the runtime passes its topic catalog's (and makes sure
    the topic exists). Raising a ``NonRetryableError`` (``NodeUnavailable``: the topic cannot be
    named or created) fails the step with it instead of dispatching."""
    lookup_workflow: Callable[[str, int | None], RegisteredWorkflow | None] = _no_workflows
    """``(workflow id, version or None = latest) -> registered definition`` for StartRun."""
    route_workflow: Callable[[str, str], int | None] | None = None
    """``(workflow id, run id) -> version`` for a StartRun that names none: the split between
    workflow versions set by mutation proposals (:mod:`processors.mutations.routing`); ``None``
    (or answering ``None``) means the latest version. Its answer is recorded in ``RunStarted``,
    so replays never ask it."""
    node_catalog: NodeCatalogView | None = None
    """When set, the step a graph mutation adds or re-points must name a node/version that
    exists (the other steps were checked when the run started)."""
    is_cacheable: Callable[[str, str], bool] = _always_cacheable
    """``(node, version) -> bool``: the node's ``cacheable`` flag; steps also opt in."""
    load_payload: Callable[[PayloadRef], Any] | None = None
    """Reads a claim-checked step output when a template references it (runtime I/O hook).
    Raising a ``NonRetryableError`` (a missing or corrupt blob) fails the step (or the run's
    outputs) with that error; a ``RetryableError`` propagates (the runtime retries the input)."""
    store_payload: Callable[[Any], PayloadRef | None] | None = None
    """Claim check for rendered params (runtime I/O hook): stores them and returns their
    ``PayloadRef`` when they are too large to inline in the run log, else ``None``."""
    inline_node: InlineNodes | None = None
    """``(node, resolved version) -> PureNode | None``: which pure node versions ``decide``
    evaluates itself instead of dispatching (:mod:`processors.scheduler.inline`, ADR 0064). The
    runtime passes :class:`~processors.scheduler.inline.InlinePolicy`; ``None`` (the default)
    dispatches every step. The outcome is in the events, so replays never ask it."""
    retry_gate: RetryGating = UNGATED
    """When a retry may go (retry budget and circuit per dependency; soft runtime state, like
    ``now``): what it answers is written in ``StepRetryScheduled``, so replays never ask it.
    The default lets every retry go at its backoff. See :mod:`processors.scheduler.retry_gate`."""


@dataclass(frozen=True)
class Decision:
    state: RunState | None
    """State after every event below (equals ``fold`` of the log so far)."""
    events: tuple[RunEvent, ...] = ()
    invocations: tuple[NodeInvocation, ...] = ()
    cache_lookups: tuple[CacheLookup, ...] = ()
    cache_writes: tuple[CacheWrite, ...] = ()
    timers_armed: tuple[Timer, ...] = ()
    timers_cancelled: tuple[str, ...] = ()
    """Timer ids no longer in state (fired, obsolete, or the run ended)."""
    rejection: str | None = None
    commands: tuple[RunCommand, ...] = ()
    """The outbox: commands to *other* runs (a child's StartRun, cancel/pause/resume sent on to
    children, ChildRunFinished to a parent); written to the commands topic in the same
    transaction as ``events`` (docs/decisions/0025-child-runs-and-the-scheduler-outbox.md)."""

    @property
    def is_noop(self) -> bool:
        return not self.events and self.rejection is None


# -- the writer: append = apply -------------------------------------------------------------------

E = TypeVar("E", bound=RefluxRecord)


@dataclass
class _Writer:
    state: RunState | None
    ctx: DecisionContext
    run_id: str
    causation: str | None
    events: list[RunEvent] = field(default_factory=list)
    invocations: list[NodeInvocation] = field(default_factory=list)
    lookups: list[CacheLookup] = field(default_factory=list)
    writes: list[CacheWrite] = field(default_factory=list)
    commands: list[RunCommand] = field(default_factory=list)
    rejection: str | None = None

    @property
    def run(self) -> RunState:
        assert self.state is not None
        return self.state

    def emit(self, cls: type[E], **fields: Any) -> E:
        if cls is StepDispatched and self.events:
            last = self.events[-1]
            if (
                type(last) is StepScheduled
                and last.step.step_id == fields["step"].step_id
                and last.attempt == fields["attempt"]
            ):
                return self._dispatch_scheduled(last, fields)  # type: ignore[return-value]
        seq = self.state.last_seq + 1 if self.state is not None else 0
        event = cls(**self._envelope(cls, seq), **fields)
        assert isinstance(event, RUN_EVENT_TYPES)
        self.state = evolve(self.state, event)
        self.events.append(event)
        return event

    def _envelope(self, cls: type[RefluxRecord], seq: int) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "seq": seq,
            "event_id": self.ctx.new_id(),
            "occurred_at": self.ctx.now,
            # The envelope base's default is 1; a later version of an event says its own.
            "schema_version": cls.SCHEMA_VERSION,
            "causation_id": self.causation,
        }

    def _dispatch_scheduled(
        self, scheduled: StepScheduled, fields: dict[str, Any]
    ) -> StepDispatched:
        """A step dispatched right after it was scheduled, in this decision: ONE event in place
        of the two (ADR 0075), at the ``StepScheduled``'s position, applied to the state the
        scheduling made: a record fewer per remote step, and ``fold(log)`` still equals this
        state (``evolve`` of the merged event schedules, then dispatches)."""
        self.events.pop()
        event = StepDispatched(
            **self._envelope(StepDispatched, scheduled.seq),
            **fields,
            scheduled=True,
            params=scheduled.params,
            params_ref=scheduled.params_ref,
            cache_key=scheduled.cache_key,
        )
        self.state = dispatch_scheduled(self.run, event)
        self.events.append(event)
        return event

    def reject(self, command: Command, reason: str) -> None:
        self.rejection = reason
        self.emit(
            CommandRejected,
            command_id=command.command_id,
            command_type=command.AVRO_NAME,
            reason=reason,
        )

    def decision(self, before: RunState | None) -> Decision:
        old = before.timers if before is not None else {}
        if (
            self.state is not None
            and self.state.status is RunStatus.FAILED
            and any(isinstance(e, RunFailed) for e in self.events)
        ):
            # A run that fails leaves no child run running (ADR 0025 addendum).
            end_children_of_failed_run(self, map_children_in_flight(self.state))
        new = self.state.timers if self.state is not None else {}
        notification = notify_parent(before, self.state, self.ctx) if self.events else None
        if notification is not None:
            self.commands.append(notification)
        return Decision(
            state=self.state,
            events=tuple(self.events),
            invocations=tuple(self.invocations),
            cache_lookups=tuple(self.lookups),
            cache_writes=tuple(self.writes),
            timers_armed=tuple(t for tid, t in new.items() if tid not in old),
            timers_cancelled=tuple(tid for tid in old if tid not in new),
            rejection=self.rejection,
            commands=tuple(self.commands),
        )


# -- entry point ----------------------------------------------------------------------------------


def decide(state: RunState | None, input: SchedulerInput, ctx: DecisionContext) -> Decision:
    """Validate ``input`` against ``state`` and return the events (already applied) and intents."""
    if state is not None and state.run_id != input.run_id:
        raise ValueError(f"Expected input for run {state.run_id!r}, but got {input.run_id!r}")
    if isinstance(input, _COMMANDS):
        if state is not None and input.command_id in state.processed_ids:
            return Decision(state=state)  # a redelivered command: already decided
        if state is None and not isinstance(input, StartRun):
            return Decision(
                state=None,
                rejection=f"Expected run {input.run_id!r} to exist, but it has no events",
            )
    causation = _causation_of(input)
    writer = _Writer(state=state, ctx=ctx, run_id=input.run_id, causation=causation)
    handler = _HANDLERS[type(input)]
    handler(writer, input)
    if isinstance(input, StartRun) and writer.rejection is not None:
        rejected = rejected_child(input, writer.rejection, ctx)  # its parent must not wait
        if rejected is not None:
            writer.commands.append(rejected)
    return writer.decision(state)


def _causation_of(input: SchedulerInput) -> str | None:
    if isinstance(input, _COMMANDS):
        return input.command_id
    if isinstance(input, FireTimer):
        return input.timer_id
    if isinstance(input, NodeResult | NodeHeartbeat):
        return input.invocation_id
    return None


# -- commands -------------------------------------------------------------------------------------


def _start(w: _Writer, cmd: StartRun) -> None:
    state = w.state
    if state is not None and state.status is not RunStatus.PENDING:
        if cmd.idempotency_key is not None and cmd.idempotency_key == state.idempotency_key:
            return  # the same start, sent again
        w.reject(cmd, f"Expected run {cmd.run_id!r} not to exist, but it is {state.status}")
        return
    version = cmd.workflow_version
    if version is None and w.ctx.route_workflow is not None:
        version = w.ctx.route_workflow(cmd.workflow_id, cmd.run_id)
    registered = w.ctx.lookup_workflow(cmd.workflow_id, version)
    if registered is None:
        which = "latest" if cmd.workflow_version is None else f"version {cmd.workflow_version}"
        w.reject(
            cmd, f"Expected workflow {cmd.workflow_id!r} ({which}) to be registered, but it is not"
        )
        return
    if cmd.tenant is not None and cmd.tenant != registered.tenant:
        # Same words as a missing workflow: another tenant's workflow ids are not disclosed.
        which = "latest" if cmd.workflow_version is None else f"version {cmd.workflow_version}"
        w.reject(
            cmd,
            f"Expected workflow {cmd.workflow_id!r} ({which}) to be registered in tenant "
            f"{cmd.tenant!r}, but it is not",
        )
        return
    definition = registered.definition
    try:
        inputs = validate_inputs(definition, cmd.inputs)
    except WorkflowValidationError as exc:
        w.reject(cmd, "Expected valid inputs, but " + "; ".join(str(e) for e in exc.errors))
        return
    deadline = cmd.deadline
    if definition.deadline is not None:
        relative = w.ctx.now + timedelta(milliseconds=definition.deadline)
        deadline = min(deadline, relative) if deadline is not None else relative
    w.emit(
        RunStarted,
        workflow_id=cmd.workflow_id,
        workflow_version=registered.version,
        inputs=inputs,
        definition=definition.to_json_dict(),
        idempotency_key=cmd.idempotency_key,
        deadline=deadline,
        source=cmd.source,
        source_key=cmd.source_key,
        parent=cmd.parent,
        tenant=registered.tenant,
        # Recorded so the run's spans survive scheduler restarts; a bad value is dropped here,
        # once, never an error (ADR 0062).
        trace_context=clean_trace_context(cmd.trace_context),
    )
    _advance(w)


def _expect_status(w: _Writer, cmd: Command, allowed: tuple[RunStatus, ...], wording: str) -> bool:
    status = w.run.status
    if status in allowed:
        return True
    w.reject(cmd, f"Expected run to be {wording}, but it is {status}")
    return False


def _all_children(run: RunState) -> list[str]:
    """Child runs in flight: meta.workflow / meta.loop steps' and map items' (ADR 0025)."""
    mapped = map_children_in_flight(run)
    return children_in_flight(run) + [c for step in mapped.values() for c in step]


def _cancel(w: _Writer, cmd: CancelRun) -> None:
    allowed = (RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.FAILED)
    if _expect_status(w, cmd, allowed, "running, paused or failed"):
        children = _all_children(w.run)
        w.emit(RunCancelled, reason=cmd.reason, requested_by=cmd.requested_by)
        propagate(w, children, CancelRun, causation=cmd.command_id, reason=cmd.reason)


def _pause(w: _Writer, cmd: PauseRun) -> None:
    if _expect_status(w, cmd, (RunStatus.RUNNING,), "running"):
        w.emit(RunPaused, reason=cmd.reason, requested_by=cmd.requested_by)
        children = _all_children(w.run)
        propagate(w, children, PauseRun, causation=cmd.command_id, reason=cmd.reason)


def _resume(w: _Writer, cmd: ResumeRun) -> None:
    if _expect_status(w, cmd, (RunStatus.PAUSED,), "paused"):
        children = _all_children(w.run)
        w.emit(RunResumed, reason=cmd.reason, requested_by=cmd.requested_by)
        propagate(w, children, ResumeRun, causation=cmd.command_id, reason=cmd.reason)
        _resume_work(w)
        _advance(w)


def _redrive(w: _Writer, cmd: RedriveStep) -> None:
    if cmd.downstream:
        _redrive_from(w, cmd)
        return
    if not _expect_status(w, cmd, (RunStatus.FAILED, RunStatus.RUNNING), "failed or running"):
        return
    run = w.run
    step = run.steps.get(cmd.step_id)
    if step is None:
        w.reject(
            cmd,
            f"Expected step {cmd.step_id!r} to exist, but the run has no such step "
            f"(steps: {', '.join(run.steps)})",
        )
        return
    if step.status not in FAILED_STEP_STATUSES:
        w.reject(
            cmd, f"Expected step {cmd.step_id!r} to be failed or timed_out, but it is {step.status}"
        )
        return
    if run.status is RunStatus.FAILED:
        w.emit(
            RunResumed,
            reason=cmd.reason or f"re-drive of step {cmd.step_id!r}",
            requested_by=cmd.requested_by,
        )
        _resume_work(w)
    # Through `when` again: a step that failed evaluating its condition must not bypass it.
    _start_step(w, cmd.step_id, step.attempt + 1)
    _advance(w)


def _redrive_from(w: _Writer, cmd: RedriveStep) -> None:
    """Re-drive from a step (docs/decisions/0026): the step and everything downstream of it go
    back to pending (``StepsReset``), a failed or succeeded run is reopened (``RunResumed``), and
    the reset steps run again on the outputs their upstream steps already have."""
    plan = plan_redrive_from(w.run, cmd.step_id)
    if isinstance(plan, str):
        w.reject(cmd, plan)
        return
    reason = cmd.reason or f"re-drive from step {cmd.step_id!r}"
    w.emit(
        StepsReset,
        step_ids=list(plan.step_ids),
        from_step=cmd.step_id,
        reason=reason,
        requested_by=cmd.requested_by,
    )
    if plan.reopen:
        w.emit(RunResumed, reason=reason, requested_by=cmd.requested_by)
        _resume_work(w)
    _advance(w)


def _rebind(w: _Writer, cmd: RebindRun) -> None:
    """Continue the run on another workflow version (docs/decisions/0026): ``RunRebound``, then
    (a failed run, ``redrive_failed``) its failed steps are reset and the run reopens."""
    run = w.run
    refusal = rebind_status_refusal(run)
    if refusal is not None:
        w.reject(cmd, refusal)
        return
    registered = w.ctx.lookup_workflow(run.workflow_id, cmd.workflow_version)
    if registered is None:
        which = "latest" if cmd.workflow_version is None else f"version {cmd.workflow_version}"
        w.reject(
            cmd, f"Expected workflow {run.workflow_id!r} ({which}) to be registered, but it is not"
        )
        return
    plan = plan_rebind(
        run, registered.version, registered.definition, redrive_failed=cmd.redrive_failed
    )
    if isinstance(plan, str):
        w.reject(cmd, plan)
        return
    reason = cmd.reason or f"rebind to version {registered.version}"
    w.emit(
        RunRebound,
        workflow_version=registered.version,
        previous_version=run.workflow_version,
        definition=plan.definition.to_json_dict(),
        inputs=plan.inputs,
        kept_steps=list(plan.kept),
        added_steps=list(plan.added),
        removed_steps=list(plan.removed),
        changed_steps=list(plan.changed),
        reason=reason,
        requested_by=cmd.requested_by,
    )
    if plan.redrive:
        # Reset, not started directly: a failed step may have gained needs in the new version;
        # `_advance` starts it (next attempt, through its `when`) once they have ended.
        w.emit(
            StepsReset,
            step_ids=list(plan.redrive),
            from_step=None,
            reason=reason,
            requested_by=cmd.requested_by,
        )
        w.emit(RunResumed, reason=reason, requested_by=cmd.requested_by)
        _resume_work(w)
        _advance(w)


_MUTABLE_STEP = (
    StepStatus.PENDING,
    StepStatus.RETRY_WAIT,
    StepStatus.FAILED,
    StepStatus.TIMED_OUT,
)


_NODE_MUTATIONS = (GraphMutationType.ADD_STEP, GraphMutationType.REPLACE_NODE)


def _mutate(w: _Writer, cmd: MutateGraph) -> None:
    """One operation (``mutation``) or a list (``mutations``, v2) applied all or nothing.

    The operations are applied in order on a scratch writer, each checked against the run as the
    previous ones left it (the step exists or not, its status, its dependents, the body, the
    catalog for the node it names); the graph they produce must be valid as a whole (references,
    cycles, outputs) -- an intermediate graph is never scheduled, so ``[remove c, add c with new
    needs]`` may rewire a step the outputs reference. Only if everything passes do the trial's
    ``GraphMutated`` events (one per operation) become the decision; otherwise one
    ``CommandRejected`` names the operation (``mutations[i]: ...``; docs/decisions/0022)."""
    allowed = (RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.FAILED)
    if not _expect_status(w, cmd, allowed, "running, paused or failed"):
        return
    if cmd.mutation is not None and cmd.mutations:
        w.reject(cmd, "Expected either mutation or mutations, but the command has both")
        return
    listed = cmd.mutation is None
    operations = cmd.mutations if cmd.mutation is None else [cmd.mutation]
    if not operations:
        w.reject(cmd, "Expected a mutation or a non-empty mutations list, but the command has none")
        return

    def reject(index: int, problem: str) -> None:
        w.reject(cmd, f"mutations[{index}]: {problem}" if listed else problem)

    trial = _Writer(state=w.state, ctx=w.ctx, run_id=w.run_id, causation=w.causation)
    found: list[list[str]] = []  # the graph's problems after each operation
    for index, mutation in enumerate(operations):
        problem = _mutation_problem(trial.run, mutation, w.ctx)
        if problem is not None:
            reject(index, problem)
            return
        trial.emit(
            GraphMutated,
            mutation=mutation,
            mutation_id=cmd.mutation_id,
            requested_by=cmd.requested_by,
            reason=cmd.reason,
        )
        found.append([str(error) for error in check_definition(trial.run.graph)])
    if found[-1]:
        # Name the operation that introduced the final graph's first problem (the first one
        # after which it is there to stay).
        first = found[-1][0]
        index = len(found) - 1
        while index > 0 and first in found[index - 1]:
            index -= 1
        reject(index, "Expected a valid graph after the mutation, but " + "; ".join(found[-1]))
        return
    # Every operation passed: the trial's events are the decision. Nothing is scheduled between
    # operations (one transaction), so no step ever runs on a half-changed graph.
    w.events.extend(trial.events)
    w.state = trial.state
    _advance(w)


def _mutation_problem(run: RunState, mutation: GraphMutation, ctx: DecisionContext) -> str | None:
    """Why ``mutation`` cannot be applied to ``run`` as it is now (``None``: it can); the graph
    as a whole is checked by the caller, after the last operation."""
    step_id = mutation.step_id
    step = run.steps.get(step_id)
    if mutation.type is GraphMutationType.ADD_STEP:
        if step is not None:
            return f"Expected step {step_id!r} not to exist, but it is {step.status}"
        owner = ai_plan.owner_of(run.graph, step_id)
        if owner is not None:
            return f"Expected a step id outside {owner}__*, the ai.meta step's plan"
    elif step is None:
        return (
            f"Expected step {step_id!r} to exist, but the run has no such step "
            f"(steps: {', '.join(run.steps)})"
        )
    elif mutation.type is GraphMutationType.REMOVE_STEP:
        if step.status is not StepStatus.PENDING:
            return f"Expected step {step_id!r} to be pending, but it is {step.status}"
        dependents = run.graph.dependents(step_id)
        if dependents:
            names = ", ".join(repr(d) for d in dependents)
            return f"Expected no step to need {step_id!r}, but {names} needs it"
    elif step.status not in _MUTABLE_STEP:
        return (
            f"Expected step {step_id!r} to be pending, retry_wait, failed or timed_out, "
            f"but it is {step.status}"
        )
    try:
        mutated = apply_mutation(run.graph, mutation)
    except WorkflowValidationError as exc:
        return "Expected a valid graph mutation, but " + "; ".join(map(str, exc.errors))
    if ctx.node_catalog is not None and mutation.type in _NODE_MUTATIONS:
        # Only the step the mutation names: the rest of the graph was accepted when the run
        # started, and a catalog change since must not block an unrelated fix.
        errors = check_step_nodes(mutated, ctx.node_catalog, {step_id})
        if errors:
            return "Expected a valid graph after the mutation, but " + "; ".join(map(str, errors))
    return None


def _fire_timer(w: _Writer, cmd: FireTimer) -> None:
    run = w.state
    if run is None:
        return
    timer = run.timers.get(cmd.timer_id)
    if (
        timer is None
        or timer.kind is not cmd.kind
        or timer.attempt != cmd.attempt
        or timer.step_id != cmd.step_id
    ):
        return  # fired before, or made obsolete by a result: timers race with everything
    if timer.kind is TimerKind.RUN_DEADLINE:
        if run.status in (RunStatus.RUNNING, RunStatus.PAUSED):
            due = timer.due_at.isoformat(timespec="milliseconds")
            w.emit(
                RunFailed,
                error=ErrorInfo(
                    error_class="RunDeadlineExceeded",
                    message=f"the run deadline {due} passed before the run finished",
                    retryable=False,
                ),
                failed_step=None,
            )
        return
    assert timer.step_id is not None
    step = run.steps.get(timer.step_id)
    if step is None:
        return
    if timer.kind is TimerKind.WAIT:
        # A meta.wait's time has come, or a meta.signal's timeout passed (ADR 0057). Recorded
        # in a paused or failed run too (like a result); the run moves on once running.
        if wait_timer_due(w, timer, lambda sid, error: _fail_attempt(w, sid, error)):
            _advance(w)
        return
    if timer.kind is TimerKind.QUEUE_TIMEOUT:
        if step.status is not StepStatus.DISPATCHED or step.attempt != timer.attempt:
            return  # a worker started it (or it ended) first
        _fail_attempt(w, step.step_id, _queue_timeout_error(run, step.step_id))
        _advance(w)
        return
    if timer.kind is TimerKind.STEP_TIMEOUT:
        # RUNNING since StepStarted; DISPATCHED only in logs written before it (timer at dispatch)
        if step.status not in _IN_FLIGHT or step.attempt != timer.attempt:
            return
        w.emit(
            StepTimedOut,
            step=run.step_ref(step.step_id),
            attempt=step.attempt,
            invocation_id=step.invocation_id,
            timeout_ms=_timeout_ms(run, step.step_id),
        )
        error = w.run.steps[step.step_id].error
        assert error is not None
        _after_failure(w, step.step_id, error)
        _advance(w)
        return
    if step.step_id in run.maps and timer.timer_id in run.maps[step.step_id].retries:
        # A meta.map's items waiting for their next attempt: dispatch them (if running).
        try:
            map_timer_due(w, step.step_id, timer.timer_id, _meta_context(w, step.step_id))
        except NonRetryableError as exc:
            _fail_before_dispatch(w, step.step_id, step.attempt, exc)
        _advance(w)
        return
    # Backoff: start the next attempt (a paused run keeps the timer until it is resumed),
    # unless the dependency's circuit opened meanwhile: then the retry is held again.
    if step.status is StepStatus.RETRY_WAIT and run.status is RunStatus.RUNNING:
        if _held_again(w, step.step_id, timer.attempt):
            return
        _schedule(w, step.step_id, timer.attempt)
        _advance(w)


def _signal(w: _Writer, cmd: SignalRun) -> None:
    """Deliver a signal to the steps waiting for it (meta.signal, ADR 0057); refused when none
    does (a signal is not kept for a step that will wait later: the sender retries)."""
    allowed = (RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.FAILED)
    if not _expect_status(w, cmd, allowed, "running, paused or failed"):
        return
    refusal = signal_refusal(w.run, cmd.signal)
    if refusal is not None:
        w.reject(cmd, refusal)
        return
    deliver_signal(w, cmd)
    _advance(w)


def _timeout_ms(run: RunState, step_id: str) -> int:
    """The step's execution timeout (what StepTimedOut reports)."""
    timeout = run.step_definition(step_id).timeout
    if timeout is not None:
        return timeout
    step = run.steps[step_id]
    if step.timeout_at is not None and step.dispatched_at is not None:
        # A timer armed at dispatch (a log from before StepStarted) whose step lost its timeout
        # in a graph mutation since: report what it was armed with.
        return int((step.timeout_at - step.dispatched_at).total_seconds() * 1000)
    return 0


def _queue_timeout_error(run: RunState, step_id: str) -> ErrorInfo:
    step = run.steps[step_id]
    waited = run.step_definition(step_id).queue_timeout
    if step.queue_timeout_at is not None and step.dispatched_at is not None:
        waited = int((step.queue_timeout_at - step.dispatched_at).total_seconds() * 1000)
    return ErrorInfo(
        error_class=QUEUE_TIMEOUT,
        message=(
            f"No worker started attempt {step.attempt} of step {step_id!r} within its "
            f"queue_timeout of {waited} ms (invoke topic {step.invoke_topic})"
        ),
        # Another attempt would wait in the same queue, behind this one: re-drive instead.
        retryable=False,
    )


def _fail_attempt(w: _Writer, step_id: str, error: ErrorInfo) -> None:
    step = w.run.steps[step_id]
    w.emit(
        StepFailed,
        step=w.run.step_ref(step_id),
        attempt=step.attempt,
        invocation_id=step.invocation_id,
        error=error,
    )
    _after_failure(w, step_id, error)


# -- results and cache answers -------------------------------------------------------------------

_RECORDING = (RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.FAILED)
"""Run statuses in which results are still recorded (a failed run can be re-driven)."""

_IN_FLIGHT = (StepStatus.DISPATCHED, StepStatus.RUNNING)
"""Step statuses of an attempt that a worker may answer."""

QUEUE_TIMEOUT = "QueueTimeout"
"""Error class of a step whose attempt no worker started within its ``queue_timeout``."""

_WORKER_ERRORS = {
    TraceStatus.ERROR: ("WorkerError", "the worker reported an error without details"),
    TraceStatus.TIMEOUT: ("WorkerTimeout", "the worker gave up on the attempt"),
    TraceStatus.CANCELLED: ("WorkerCancelled", "the worker cancelled the attempt"),
}


def _current_attempt(w: _Writer, signal: NodeResult | NodeHeartbeat) -> StepState | None:
    """The step ``signal`` is about, if it is for the step's attempt in flight (else None)."""
    run = w.state
    if run is None or run.status not in _RECORDING:
        return None
    step = run.steps.get(signal.step.step_id)
    if (
        step is None
        or step.status not in _IN_FLIGHT
        or step.invocation_id != signal.invocation_id
        or step.attempt != signal.attempt
    ):
        return None  # late or duplicate: an old attempt's, or the step moved on
    return step


def _heartbeat(w: _Writer, beat: NodeHeartbeat) -> None:
    """A worker runs the attempt: StepStarted once, then maybe StepTimeoutExtended."""
    step = _current_attempt(w, beat)
    if step is None:
        return
    run = w.run
    timeout = run.step_definition(step.step_id).timeout
    due = (
        w.ctx.now + timedelta(milliseconds=timeout + TIMEOUT_GRACE_MS)
        if timeout is not None
        else None
    )
    ref = run.step_ref(step.step_id)
    if step.status is StepStatus.DISPATCHED:
        w.emit(
            StepStarted,
            step=ref,
            attempt=step.attempt,
            invocation_id=beat.invocation_id,
            started_at=beat.started_at,
            timeout_at=due,
            worker=beat.worker,
        )
        return
    # Running: a heartbeat pushes the timer forward, recorded only when it moves it by at least
    # half the timeout (at most about two events per attempt: the worker ends it at `timeout`).
    if timeout is None or due is None or step.timeout_at is None or beat.beat <= 0:
        return  # no timer to move (no timeout), or a duplicate start
    if (due - step.timeout_at) >= timedelta(milliseconds=timeout / 2):
        w.emit(
            StepTimeoutExtended,
            step=ref,
            attempt=step.attempt,
            invocation_id=beat.invocation_id,
            beat=beat.beat,
            timeout_at=due,
        )


def _result(w: _Writer, result: NodeResult) -> None:
    if w.state is not None and result.step.step_id in w.state.maps:
        # A chunk of a meta.map step (processors/scheduler/meta/map.py).
        try:
            handled = map_result(w, result, _meta_context(w, result.step.step_id))
        except NonRetryableError as exc:  # rendering the next chunk failed
            failing = w.run.steps[result.step.step_id]
            _fail_before_dispatch(w, failing.step_id, failing.attempt, exc)
            handled = True
        if handled:
            _advance(w)
            return
    step = _current_attempt(w, result)
    if step is None:
        return
    run = w.run
    ref = StepRef(
        step_id=step.step_id,
        node=run.step_definition(step.step_id).node_name,
        node_version=result.step.node_version or step.node_version or "",
    )
    if result.status is TraceStatus.OK and ai_plan.is_ai_meta(run.step_definition(step.step_id)):
        _splice_plan(w, step, result)
    elif result.status is TraceStatus.OK:
        duration = max(0, int((result.finished_at - result.started_at).total_seconds() * 1000))
        w.emit(
            StepSucceeded,
            step=ref,
            attempt=result.attempt,
            invocation_id=result.invocation_id,
            output=result.output,
            output_ref=result.output_ref,
            cache_hit=False,
            duration_ms=duration,
        )
        if step.cache_key is not None:
            w.writes.append(
                CacheWrite(
                    cache_key=step.cache_key,
                    output=result.output,
                    output_ref=result.output_ref,
                    ttl_ms=run.step_definition(step.step_id).cache.ttl,
                )
            )
    elif result.status is TraceStatus.SKIPPED:
        w.emit(StepSkipped, step=ref, reason=f"node {ref.node!r} reported the step as skipped")
    elif result.status is TraceStatus.TIMEOUT and (
        step.timeout_at is not None or run.step_definition(step.step_id).timeout is not None
    ):
        # The worker enforces the step timeout from its own start; the scheduler's timer is the
        # backstop. Whichever reports first, the step ends the same way (StepTimedOut, error
        # class StepTimeout).
        w.emit(
            StepTimedOut,
            step=ref,
            attempt=result.attempt,
            invocation_id=result.invocation_id,
            timeout_ms=_timeout_ms(run, step.step_id),
        )
        timed_out = w.run.steps[step.step_id].error
        assert timed_out is not None
        _after_failure(w, step.step_id, timed_out)
    else:
        error_class, message = _WORKER_ERRORS[result.status]
        error = result.error or ErrorInfo(error_class=error_class, message=message, retryable=True)
        w.emit(
            StepFailed,
            step=ref,
            attempt=result.attempt,
            invocation_id=result.invocation_id,
            error=error,
        )
        _after_failure(w, step.step_id, error)
    _advance(w)


def _splice_plan(w: _Writer, step: StepState, result: NodeResult) -> None:
    """An ai.meta step's plan: fail the attempt with ``InvalidPlan`` (retried with the errors as
    feedback) or splice it in as ``GraphMutated`` add_steps (ADR 0027)."""
    try:
        params = step.params
        if params is None and step.params_ref is not None and w.ctx.load_payload is not None:
            params = w.ctx.load_payload(step.params_ref)
        output = result.output
        if output is None and result.output_ref is not None and w.ctx.load_payload is not None:
            output = w.ctx.load_payload(result.output_ref)
    except NonRetryableError as exc:
        found = classify(exc)
        error = ErrorInfo(error_class=found.error_class, message=str(exc), retryable=False)
        _fail_attempt(w, step.step_id, error)
        return
    checked = ai_plan.check_plan(
        w.run.graph, step.step_id, output, params=params, catalog=w.ctx.node_catalog
    )
    if not checked.ok:
        error = ai_plan.invalid_plan_error(checked.errors, output, step.attempt)
        _fail_attempt(w, step.step_id, error)
        return
    # Who/why in the graph view (ADR 0022): the planner step, and the goal it planned for.
    goal = params.get("goal") if isinstance(params, dict) else None
    for mutation in checked.mutations:
        w.emit(
            GraphMutated,
            mutation=mutation,
            mutation_id=None,
            requested_by=f"ai.meta:{step.step_id}",
            reason=f"plan for goal: {goal}" if isinstance(goal, str) else "ai.meta plan",
        )


def _settle_meta_steps(w: _Writer) -> bool:
    """Complete the ai.meta steps whose sub-graph finished; True if any was completed."""
    run = w.run
    if not ai_plan.has_ai_meta(run.graph):
        return False
    params = {sid: st.params for sid, st in run.steps.items()}
    completions = ai_plan.settle(run.graph, run.steps, params)
    for done in completions:
        meta = w.run.steps[done.meta_id]
        ref = w.run.step_ref(done.meta_id)
        if done.succeeded:
            output, output_ref = done.output, None
            if done.output_from is not None:
                source = w.run.steps[done.output_from]
                output, output_ref = source.output, source.output_ref
            began = meta.started_at or meta.dispatched_at or w.ctx.now
            w.emit(
                StepSucceeded,
                step=ref,
                attempt=meta.attempt,
                invocation_id=None,
                output=output,
                output_ref=output_ref,
                cache_hit=False,
                duration_ms=max(0, int((w.ctx.now - began).total_seconds() * 1000)),
            )
        elif done.error is not None:
            w.emit(StepFailed, step=ref, attempt=meta.attempt, error=done.error)
            _after_failure(w, done.meta_id, done.error)
    return bool(completions)


def _awaiting_cache(run: RunState | None, answer: CacheHit | CacheMiss) -> bool:
    if run is None:
        return False
    step = run.steps.get(answer.step_id)
    return (
        step is not None
        and step.status is StepStatus.SCHEDULED
        and step.attempt == answer.attempt
        and step.cache_key == answer.cache_key
    )


def _cache_hit(w: _Writer, hit: CacheHit) -> None:
    if not _awaiting_cache(w.state, hit) or w.run.status not in _RECORDING:
        return
    w.emit(
        StepSucceeded,
        step=w.run.step_ref(hit.step_id),
        attempt=hit.attempt,
        invocation_id=None,
        output=hit.output,
        output_ref=hit.output_ref,
        cache_hit=True,
        duration_ms=0,
    )
    _advance(w)


def _cache_miss(w: _Writer, miss: CacheMiss) -> None:
    if _awaiting_cache(w.state, miss) and w.run.status is RunStatus.RUNNING:
        _dispatch(w, miss.step_id)


# -- the DAG ---------------------------------------------------------------------------------------


def _after_failure(w: _Writer, step_id: str, error: ErrorInfo) -> None:
    """After a failed attempt: schedule a retry, or fail the run (record only if it failed)."""
    run = w.run
    if run.status not in (RunStatus.RUNNING, RunStatus.PAUSED):
        return
    policy = run.step_definition(step_id).retry
    attempt = run.steps[step_id].attempt
    if should_retry(policy, attempt, error_class=error.error_class, retryable=error.retryable):
        delay = backoff_ms(policy, attempt, w.ctx.random())
        earliest = w.ctx.now + timedelta(milliseconds=delay)
        dependency = step_dependency(run, step_id)
        admission = w.ctx.retry_gate.admit(dependency, earliest, w.ctx.now, w.ctx.random)
        _retry_at(w, step_id, attempt + 1, admission, earliest=earliest, backoff=delay)
    else:
        w.emit(RunFailed, error=error, failed_step=run.step_ref(step_id))


def _held_again(w: _Writer, step_id: str, attempt: int) -> bool:
    """A retry's time has come: ask the gate again (its circuit may have opened since, or be
    half-open with its probes out). Held: a new StepRetryScheduled for the same attempt."""
    dependency = step_dependency(w.run, step_id)
    admission = w.ctx.retry_gate.recheck(dependency, w.ctx.now, w.ctx.random)
    if admission.due <= w.ctx.now:
        return False
    _retry_at(w, step_id, attempt, admission, earliest=w.ctx.now, backoff=0)
    return True


def _retry_at(
    w: _Writer,
    step_id: str,
    attempt: int,
    admission: Admission,
    *,
    earliest: datetime,
    backoff: int,
) -> None:
    """StepRetryScheduled for ``attempt`` at the gate's time (never before ``earliest``)."""
    due = max(admission.due, earliest)
    w.emit(
        StepRetryScheduled,
        step=w.run.step_ref(step_id),
        attempt=attempt,
        next_attempt_at=due,
        backoff_ms=backoff,
        timer_id=w.ctx.new_id(),
        reason=admission.reason.value,
        circuit=admission.circuit.value,
        held_ms=int((due - earliest) / timedelta(milliseconds=1)),
        dependency=admission.dependency,
    )


def _resume_work(w: _Writer) -> None:
    """After RunResumed: restart what a pause (or a failure) left waiting."""
    run = w.run
    for step_id in list(run.maps):
        try:  # meta.map steps dispatch the chunks they held back
            pump_map(w, step_id, _meta_context(w, step_id))
        except NonRetryableError as exc:
            _fail_before_dispatch(w, step_id, w.run.steps[step_id].attempt, exc)
    for step_id in run.graph.topological_order:
        step = w.run.steps[step_id]
        if step.status is StepStatus.SCHEDULED:
            if step.cache_key is not None:
                w.lookups.append(CacheLookup(run.run_id, step_id, step.attempt, step.cache_key))
            else:
                _dispatch(w, step_id)
        elif step.status is StepStatus.RETRY_WAIT:
            backoff = next(
                (
                    t
                    for t in w.run.timers.values()
                    if t.step_id == step_id and t.kind is TimerKind.BACKOFF
                ),
                None,
            )
            # No timer left means the run failed meanwhile (RunFailed drops backoffs): retry now
            # (unless the dependency's circuit holds it).
            due = backoff is None or backoff.due_at <= w.ctx.now
            if due and not _held_again(w, step_id, step.attempt + 1):
                _schedule(w, step_id, step.attempt + 1)
    resume_loops(w, _CHILD_OPS)


def _advance(w: _Writer) -> None:
    """Schedule or skip every ready step, then finish the run if nothing is left to do.

    Rules: a step is ready when each of its needs succeeded or was skipped. If any need was
    skipped the step is skipped too ("any need skipped -> skipped"). Otherwise a false ``when``
    skips it, and a true (or absent) ``when`` schedules it. A failed need blocks the step.
    """
    if w.run.status is not RunStatus.RUNNING:
        return
    _settle_meta_steps(w)  # an ai.meta step whose sub-graph is done frees its dependents
    graph = w.run.graph
    for step_id in graph.topological_order:
        run = w.run
        if run.status is not RunStatus.RUNNING:
            return
        step = run.steps[step_id]
        if step.status is not StepStatus.PENDING:
            continue
        definition = graph.step(step_id)
        needs = [run.steps[n] for n in definition.needs if n in run.steps]
        if any(n.status not in DONE_STEP_STATUSES for n in needs):
            continue
        skipped = [n.step_id for n in needs if n.status is StepStatus.SKIPPED]
        if skipped:
            w.emit(
                StepSkipped,
                step=run.step_ref(step_id),
                reason=f"upstream step {skipped[0]!r} was skipped",
            )
            continue
        _start_step(w, step_id, step.attempt + 1)
    if w.run.status is RunStatus.RUNNING and _settle_meta_steps(w):
        _advance(w)  # planned steps skipped in this pass finished an ai.meta step
        return
    _finish_if_done(w)


def _start_step(w: _Writer, step_id: str, attempt: int) -> None:
    """Evaluate ``when`` (skip if false, fail if it errors), else schedule ``attempt``."""
    definition = w.run.step_definition(step_id)
    branch_skipped = switch_skip_reason(w.run, step_id)  # a meta.switch chose another branch
    if branch_skipped is not None:
        w.emit(StepSkipped, step=w.run.step_ref(step_id), reason=branch_skipped)
        return
    if definition.when is not None:
        try:
            go = evaluate_when(
                definition.when, _context(w, definition), path=f"steps.{step_id}.when"
            )
        except NonRetryableError as exc:  # a TemplateError, or a claim check that cannot load
            _fail_before_dispatch(w, step_id, attempt, exc)
            return
        if not go:
            w.emit(
                StepSkipped,
                step=w.run.step_ref(step_id),
                reason=f"condition {definition.when!r} was false",
            )
            return
    _schedule(w, step_id, attempt)


def _finish_if_done(w: _Writer) -> None:
    run = w.run
    if run.status is not RunStatus.RUNNING:
        return
    statuses = [st.status for st in run.steps.values()]
    if all(s in DONE_STEP_STATUSES for s in statuses):
        try:
            outputs = render_params(run.graph.outputs, _context(w, None), path="outputs")
        except NonRetryableError as exc:
            error_class = "OutputTemplate" if isinstance(exc, TemplateError) else exc.error_class
            w.emit(
                RunFailed,
                error=ErrorInfo(error_class=error_class, message=str(exc), retryable=False),
                failed_step=None,
            )
            return
        started = run.started_at or w.ctx.now
        w.emit(
            RunSucceeded,
            outputs=outputs,
            duration_ms=max(0, int((w.ctx.now - started).total_seconds() * 1000)),
        )
        return
    if any(s in ACTIVE_STEP_STATUSES for s in statuses):
        return
    # Nothing in flight and not done: a failed step blocks the rest (e.g. one of two failed
    # steps was re-driven and succeeded). The run fails again, naming the blocking step.
    for step_id in run.graph.topological_order:
        step = run.steps[step_id]
        if step.status in FAILED_STEP_STATUSES and step.error is not None:
            w.emit(RunFailed, error=step.error, failed_step=run.step_ref(step_id))
            return


def _fail_before_dispatch(w: _Writer, step_id: str, attempt: int, exc: NonRetryableError) -> None:
    found = classify(exc)
    error = ErrorInfo(error_class=found.error_class, message=str(exc), retryable=found.retryable)
    w.emit(StepFailed, step=w.run.step_ref(step_id), attempt=attempt, error=error)
    _after_failure(w, step_id, error)


def _schedule(w: _Writer, step_id: str, attempt: int) -> None:
    """StepScheduled for ``attempt`` (params rendered now), then dispatch or a cache lookup."""
    run = w.run
    definition = run.step_definition(step_id)
    if is_child_run_node(definition.node_name):
        schedule_child_step(w, _CHILD_OPS, step_id, attempt)  # a child run, no worker
        return
    if is_meta_node(definition.node_name):
        _run_meta(w, step_id, attempt, definition)
        return
    try:
        params = render_params(
            definition.params, _context(w, definition), path=f"steps.{step_id}.params"
        )
    except NonRetryableError as exc:  # a TemplateError, or a claim check that cannot load
        _fail_before_dispatch(w, step_id, attempt, exc)
        return
    name = definition.node_name
    try:
        version = w.ctx.resolve_node_version(name, definition.node_constraint, run.run_id)
    except NonRetryableError as exc:
        # The catalog refuses (deprecated pin, no production version matching): retrying the
        # same step cannot help, so it fails for good and says why.
        _fail_before_dispatch(w, step_id, attempt, exc)
        return
    planner = ai_plan.is_ai_meta(definition)
    if planner:  # the planner sees the catalog and its last rejection
        params = ai_plan.invocation_params(
            params,
            attempt=attempt,
            previous_error=run.steps[step_id].error,
            catalog=w.ctx.node_catalog,
        )
    # A pure node the scheduler evaluates itself, in this decision (ADR 0064): no cache, no worker.
    pure = inline_node_for(w.ctx.inline_node, definition, version, params)
    key = None
    # A planner's answer is spliced into the run, never served from the cache.
    cached = definition.cache.enabled and not planner and pure is None
    if cached and w.ctx.is_cacheable(name, version):
        key = cache_key(name, version, params)
    # Large params (e.g. an upstream output of megabytes) go to the object store: the run log
    # and the invocation carry the reference, never a record over Kafka's message limit.
    ref = w.ctx.store_payload(params) if w.ctx.store_payload is not None else None
    w.emit(
        StepScheduled,
        step=StepRef(step_id=step_id, node=name, node_version=version),
        attempt=attempt,
        params=None if ref is not None else params,
        params_ref=ref,
        cache_key=key,
    )
    if pure is not None:
        run_inline(w, step_id, pure, params, lambda sid, error: _after_failure(w, sid, error))
    elif key is not None:
        w.lookups.append(CacheLookup(run.run_id, step_id, attempt, key))
    else:
        _dispatch(w, step_id)


def _run_meta(w: _Writer, step_id: str, attempt: int, definition: StepDefinition) -> None:
    """A meta node runs in the scheduler (processors/scheduler/meta): never dispatched as such."""
    try:
        if definition.node_name == MAP_NODE:
            start_any_map(w, step_id, attempt, lambda: _context(w, definition))
        elif is_wait_node(definition.node_name):  # meta.wait / meta.signal: ADR 0057
            start_wait(w, step_id, attempt, lambda: _context(w, definition))
        else:
            run_switch(w, step_id, attempt, lambda: _context(w, definition))
    except NonRetryableError as exc:  # a TemplateError, no such node version, no topic
        _fail_before_dispatch(w, step_id, attempt, exc)


def _meta_context(w: _Writer, step_id: str) -> Callable[[], dict[str, Any]]:
    return lambda: _context(w, w.run.step_definition(step_id))


def _dispatch(w: _Writer, step_id: str) -> None:
    run = w.run
    step = run.steps[step_id]
    definition = run.step_definition(step_id)
    version = step.node_version or definition.node_constraint
    try:
        invoke_topic = w.ctx.invoke_topic(definition.node_name, invoke_major(version))
    except NonRetryableError as exc:
        # No topic can carry the invocation (NodeUnavailable): fail the step rather than send
        # a record that can never be delivered (and would block its partition).
        _fail_before_dispatch(w, step_id, step.attempt, exc)
        return
    # Only the queue timeout starts now; the step timeout starts when a worker starts the attempt.
    queue_timeout_at = (
        w.ctx.now + timedelta(milliseconds=definition.queue_timeout)
        if definition.queue_timeout is not None
        else None
    )
    w.emit(
        StepDispatched,
        step=StepRef(step_id=step_id, node=definition.node_name, node_version=version),
        attempt=step.attempt,
        invocation_id=w.ctx.new_id(),
        invoke_topic=invoke_topic,
        node_version=version,
        timeout_at=None,
        queue_timeout_at=queue_timeout_at,
    )
    w.invocations.append(
        invocation_for(w.run, step_id, event_id=w.ctx.new_id(), occurred_at=w.ctx.now)
    )


def _context(w: _Writer, definition: StepDefinition | None) -> dict[str, Any]:
    """The expression context; claim-checked outputs are loaded only when referenced."""
    run = w.run
    loaded: set[str] = set()
    if any(st.output_ref is not None for st in run.steps.values()):
        loaded = _referenced_steps(run.graph, definition)
    steps: dict[str, Any] = {}
    for step_id, st in run.steps.items():
        output = st.output
        if st.output_ref is not None and step_id in loaded:
            if w.ctx.load_payload is None:
                raise TemplateError(
                    f"steps.{step_id}.output",
                    f"the output is in object storage ({st.output_ref.uri}) and the scheduler "
                    "has no payload loader",
                )
            output = w.ctx.load_payload(st.output_ref)
        steps[step_id] = {"status": st.status.value, "attempt": st.attempt, "output": output}
    return {
        "inputs": run.inputs,
        "steps": steps,
        "run": {
            "id": run.run_id,
            "workflow_id": run.workflow_id,
            "workflow_version": run.workflow_version,
        },
    }


def _referenced_steps(graph: WorkflowDefinition, definition: StepDefinition | None) -> set[str]:
    exprs: list[str] = []
    if definition is None:
        exprs = [e for _, e in iter_expressions(graph.outputs, "outputs")]
    else:
        exprs = [e for _, e in iter_expressions(definition.params, "params")]
        if definition.when is not None:
            exprs.append(definition.when)
    return {
        ref.name
        for expr in exprs
        for ref in expression_references(expr)
        if ref.root == "steps" and ref.name is not None
    }


# -- helpers for the runtime ----------------------------------------------------------------------


def invocation_for(
    state: RunState,
    step_id: str,
    *,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> NodeInvocation:
    """The NodeInvocation of a dispatched step's current attempt, rebuilt from state.

    ``decide`` uses it to build invocations; a runtime can use it to re-publish after a crash
    between writing ``StepDispatched`` and the invocation (the worker dedupes on invocation_id).
    """
    step = state.steps[step_id]
    if step.status is not StepStatus.DISPATCHED or step.invocation_id is None:
        raise ValueError(f"Expected step {step_id!r} to be dispatched, but it is {step.status}")
    definition = state.step_definition(step_id)
    version = step.node_version or definition.node_constraint
    extra: dict[str, Any] = {}
    if event_id is not None:
        extra["event_id"] = event_id
    if occurred_at is not None:
        extra["occurred_at"] = occurred_at
    return NodeInvocation(
        run_id=state.run_id,
        seq=step.dispatch_seq if step.dispatch_seq is not None else state.last_seq,
        invocation_id=step.invocation_id,
        attempt=step.attempt,
        workflow_id=state.workflow_id,
        workflow_version=state.workflow_version,
        tenant=state.tenant,
        step=StepRef(step_id=step_id, node=definition.node_name, node_version=version),
        params=step.params,
        params_ref=step.params_ref,
        # The worker counts the timeout from its own start of the attempt, and does not start it
        # after the queue timeout (the scheduler fails the step then).
        deadline=None,
        timeout_ms=definition.timeout,
        start_by=step.queue_timeout_at,
        # Stable across retries with the same params (a retry after a timeout must not repeat a
        # side effect that did happen), new when the params change (a mutation, a fix).
        idempotency_key=f"{state.run_id}:{step_id}:{step.params_sha256[:16]}",
        # The attempt's span as the worker's parent (ADR 0062); a checker step is marked: the
        # worker turns its output's score into the trace's quality_score.
        trace_context=invocation_trace_context(
            state.run_id,
            state.trace_context,
            step_id,
            step.invocation_id,
            checker=definition.checker,
        ),
        **extra,
    )


_UNFINISHED_STEP = (
    StepStatus.PENDING,
    StepStatus.SCHEDULED,
    StepStatus.DISPATCHED,
    StepStatus.RUNNING,
    StepStatus.RETRY_WAIT,
)


def kept_events(events: Sequence[RunEvent], keep: int) -> tuple[RunEvent, ...]:
    """The first ``keep`` events of a decision whose event ``keep`` cannot be written (its
    invocation is refused, say), for :func:`fail_input`'s ``prefix``: when that event is a
    dispatch that schedules its step, the scheduling is kept, as it was when the two were
    separate events, so the step fails as an attempt that was scheduled."""
    kept = tuple(events[:keep])
    if keep < len(events):
        cut = events[keep]
        if isinstance(cut, StepDispatched) and cut.scheduled:
            return (*kept, scheduling_of(cut))
    return kept


def fail_input(
    state: RunState | None,
    input: SchedulerInput,
    error: ErrorInfo,
    ctx: DecisionContext,
    *,
    prefix: Sequence[RunEvent] = (),
    invocations: Sequence[NodeInvocation] = (),
    commands: Sequence[RunCommand] = (),
    step_id: str | None = None,
    attempt: int | None = None,
) -> Decision:
    """The decision for an input whose own decision cannot be written (docs/decisions/0011).

    The runtime calls it when deciding ``input`` raised (a bug), or when the decision holds a
    record that Kafka refuses (over the message limit, refused by the broker): the failure is
    recorded on the run, with ``error``, instead of blocking the input's partition.

    ``prefix``: the decision's first events, which can be written (kept, with the
    ``invocations`` of the steps they dispatched and the outbox ``commands`` of the child runs
    they requested); ``step_id`` / ``attempt``: the step the
    refused record belongs to, when known (for a ``NodeResult``, by default the step whose
    current attempt it reports on). Then:

    - a command that changed nothing (empty ``prefix``) is rejected: ``CommandRejected`` with
      ``"[ErrorClass] message"``, and the run carries on as it was;
    - otherwise a running or paused run fails: ``StepFailed`` for the step (when known and not
      finished), then ``RunFailed``, both carrying ``error``;
    - otherwise (a result or timer for a missing, finished or already failed run) nothing is
      written: the decision has no event and the runtime dead-letters the input.
    """
    current = fold(prefix, state) if prefix else state
    if step_id is None and isinstance(input, NodeResult) and current is not None:
        # A result that could not be decided fails the attempt it reports on (if current).
        reported = current.steps.get(input.step.step_id)
        if reported is not None and reported.invocation_id == input.invocation_id:
            step_id, attempt = reported.step_id, input.attempt
    w = _Writer(state=current, ctx=ctx, run_id=input.run_id, causation=_causation_of(input))
    w.events.extend(prefix)
    w.invocations.extend(invocations)
    w.commands.extend(commands)
    if isinstance(input, _COMMANDS) and not prefix:
        reason = f"[{error.error_class}] {error.message}"
        if current is None and not isinstance(input, StartRun):
            return Decision(state=None, rejection=reason)  # no run log to put it in
        w.reject(input, reason)
    elif current is not None and current.status in (RunStatus.RUNNING, RunStatus.PAUSED):
        run = w.run
        step = run.steps.get(step_id) if step_id is not None else None
        failed_step = None
        if step is not None and step.status in _UNFINISHED_STEP:
            failed_step = run.step_ref(step.step_id)
            dispatched = step.status in (StepStatus.DISPATCHED, StepStatus.RUNNING)
            w.emit(
                StepFailed,
                step=failed_step,
                attempt=attempt if attempt is not None else max(step.attempt, 1),
                invocation_id=step.invocation_id if dispatched else None,
                error=error,
            )
        w.emit(RunFailed, error=error, failed_step=failed_step)
    return w.decision(state)


def pending_cache_lookups(state: RunState) -> list[CacheLookup]:
    """Lookups a running run is waiting for (to re-issue after a runtime restart)."""
    if state.status is not RunStatus.RUNNING:
        return []
    return [
        CacheLookup(state.run_id, st.step_id, st.attempt, st.cache_key)
        for st in state.steps.values()
        if st.status is StepStatus.SCHEDULED and st.cache_key is not None
    ]


def _child_finished(w: _Writer, cmd: ChildRunFinished) -> None:
    if w.state is None:
        return
    progress = w.state.maps.get(cmd.step_id)
    if progress is not None and progress.workflow_id is not None:
        # An item of a meta.map over a sub-workflow (processors/scheduler/meta/map_children.py).
        try:
            map_child_finished(w, cmd, _meta_context(w, cmd.step_id))
        except NonRetryableError as exc:  # starting the next batch failed (inputs, workflow)
            failing = w.run.steps[cmd.step_id]
            _fail_before_dispatch(w, failing.step_id, failing.attempt, exc)
        _advance(w)
        return
    child_finished(w, _CHILD_OPS, cmd)


_CHILD_OPS = ChildOps(after_failure=_after_failure, advance=_advance, context=_context)
"""What the child-run hooks (processors/scheduler/child_runs.py) call back into."""

_HANDLERS: dict[type[Any], Callable[[_Writer, Any], None]] = {
    StartRun: _start,
    CancelRun: _cancel,
    PauseRun: _pause,
    ResumeRun: _resume,
    RedriveStep: _redrive,
    RebindRun: _rebind,
    MutateGraph: _mutate,
    SignalRun: _signal,
    FireTimer: _fire_timer,
    NodeHeartbeat: _heartbeat,
    NodeResult: _result,
    CacheHit: _cache_hit,
    CacheMiss: _cache_miss,
    ChildRunFinished: _child_finished,
}
