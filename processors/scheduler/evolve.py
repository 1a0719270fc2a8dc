"""``evolve(state, event) -> state``: apply ONE run event, nothing else (Zeebe's appliers).

No validation, no I/O, no clock, no randomness: everything an applier needs is in the event, so
replaying a log (:func:`fold`) rebuilds exactly the state the scheduler had when it wrote it.
Appliers are registered per event type with ``functools.singledispatch``; an event type without
an applier is an error, never silently skipped.

Positions: an event with ``seq <= state.last_seq`` was already applied (a redelivered record) and
is ignored; a gap (``seq > last_seq + 1``) raises :class:`EvolveError`, because state built over a
hole in the log would be wrong in ways nobody could see.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from functools import singledispatch
from typing import Any

from foundation.errors import NonRetryableError
from processors.scheduler.meta import ai_plan
from processors.scheduler.meta.fold import (
    apply_map_child_ended,
    apply_map_chunk_dispatched,
    apply_map_chunk_finished,
    apply_map_started,
)
from processors.scheduler.state import (
    MAX_PROCESSED_IDS,
    RunState,
    RunStatus,
    StepState,
    StepStatus,
    StepWait,
    Timer,
)
from schemas.models import (
    ChildRunEnded,
    ChildRunRequested,
    CommandRejected,
    ErrorInfo,
    GraphMutated,
    GraphMutationType,
    MapChildEnded,
    MapChunkDispatched,
    MapChunkFinished,
    MapStarted,
    RunCancelled,
    RunFailed,
    RunPaused,
    RunRebound,
    RunResumed,
    RunStarted,
    RunSucceeded,
    StepDispatched,
    StepFailed,
    StepRetryScheduled,
    StepScheduled,
    StepSkipped,
    StepsReset,
    StepStarted,
    StepSucceeded,
    StepTimedOut,
    StepTimeoutExtended,
    StepWaitStarted,
    TimerKind,
)
from schemas.run_log import RUN_EVENT_TYPES, RunEvent
from workflows.model import WorkflowDefinition
from workflows.mutations import apply_mutation

__all__ = [
    "ATTEMPT_TIMER_KINDS",
    "FAILED_RUN_TIMER_KINDS",
    "RUN_EVENT_TYPES",
    "EvolveError",
    "RunEvent",
    "deadline_timer_id",
    "evolve",
    "fold",
    "queue_timer_id",
    "timeout_timer_id",
]


class EvolveError(NonRetryableError):
    """An event cannot be applied (gap in the log, event before RunStarted...)."""

    error_class = "EvolveError"


def deadline_timer_id(run_id: str) -> str:
    """Timer ids derived from events (StepDispatched/RunStarted carry no timer id of their own)."""
    return f"deadline:{run_id}"


def timeout_timer_id(invocation_id: str, beat: int | None = None) -> str:
    """The step-timeout timer of an attempt: armed at dispatch in logs from before StepStarted
    (``beat`` None), by StepStarted (0), re-armed by each StepTimeoutExtended (its beat). A new
    id each time, so a FireTimer already written for an earlier due time finds no timer."""
    return f"timeout:{invocation_id}" if beat is None else f"timeout:{invocation_id}:{beat}"


def queue_timer_id(invocation_id: str) -> str:
    return f"queue:{invocation_id}"


def evolve(state: RunState | None, event: RunEvent) -> RunState:
    """The state after ``event``; ``state`` is not modified."""
    if state is not None:
        if event.seq <= state.last_seq:
            return state  # already applied: redelivery of an old record
        if event.seq != state.last_seq + 1:
            raise EvolveError(
                f"Expected seq {state.last_seq + 1} for run {state.run_id!r}, but got {event.seq} "
                f"({type(event).__name__}): the log has a gap"
            )
    elif event.seq != 0:
        raise EvolveError(
            f"Expected the first event of run {event.run_id!r} at seq 0, but got seq {event.seq} "
            f"({type(event).__name__})"
        )
    new = _apply(event, state)
    return new.replace(
        **{"last_seq": event.seq, "processed_ids": _remember(new, _causation(event))}
    )


def fold(events: Iterable[RunEvent], state: RunState | None = None) -> RunState | None:
    """Replay: evolve over a log (optionally continuing from a snapshot)."""
    for event in events:
        state = evolve(state, event)
    return state


def _causation(event: RunEvent) -> str | None:
    if isinstance(event, CommandRejected):
        return event.command_id
    return event.causation_id


def _remember(state: RunState, causation: str | None) -> tuple[str, ...]:
    if causation is None or causation in state.processed_ids:
        return state.processed_ids
    return (*state.processed_ids, causation)[-MAX_PROCESSED_IDS:]


ATTEMPT_TIMER_KINDS = frozenset({TimerKind.STEP_TIMEOUT, TimerKind.QUEUE_TIMEOUT})
"""Timers that end an attempt in flight (kept while a failed run waits for a re-drive)."""
FAILED_RUN_TIMER_KINDS = ATTEMPT_TIMER_KINDS | {TimerKind.WAIT}
"""Timers a failed run keeps: the attempts' and the waits' (a waiting step is in flight too;
without its timer it would wait forever once a re-drive reopens the run)."""


# -- persistent-update helpers --------------------------------------------------------------------


def _require(state: RunState | None, event: RunEvent) -> RunState:
    if state is None or state.definition is None:
        raise EvolveError(
            f"Expected run {event.run_id!r} to have started before {type(event).__name__} "
            f"(seq {event.seq}), but it has not"
        )
    return state


def _with_step(state: RunState, step_id: str, **changes: Any) -> RunState:
    current = state.steps.get(step_id) or StepState(step_id=step_id)
    steps = {**state.steps, step_id: current.replace(**changes)}
    return state.replace(**{"steps": steps})


def _without_step_timers(state: RunState, step_id: str) -> RunState:
    timers = {tid: t for tid, t in state.timers.items() if t.step_id != step_id}
    if len(timers) == len(state.timers):
        return state
    return state.replace(**{"timers": timers})


def _with_timer(state: RunState, timer: Timer) -> RunState:
    return state.replace(**{"timers": {**state.timers, timer.timer_id: timer}})


def _finish_step(state: RunState, step_id: str, at: datetime, **changes: Any) -> RunState:
    return _with_step(_without_step_timers(state, step_id), step_id, finished_at=at, **changes)


# -- appliers -----------------------------------------------------------------------------------


@singledispatch
def _apply(event: object, state: RunState | None) -> RunState:
    raise EvolveError(f"Expected a run event, but got {type(event).__name__} (no applier)")


@_apply.register
def _(event: RunStarted, state: RunState | None) -> RunState:
    if state is not None and state.status is not RunStatus.PENDING:
        raise EvolveError(f"Expected run {event.run_id!r} not to have started, but it has")
    definition = WorkflowDefinition.from_json_dict(event.definition)
    timers: dict[str, Timer] = {}
    if event.deadline is not None:
        timer = Timer(
            timer_id=deadline_timer_id(event.run_id),
            kind=TimerKind.RUN_DEADLINE,
            due_at=event.deadline,
        )
        timers[timer.timer_id] = timer
    base = state or RunState(run_id=event.run_id, status=RunStatus.PENDING)
    return base.replace(
        **{
            "status": RunStatus.RUNNING,
            "workflow_id": event.workflow_id,
            "workflow_version": event.workflow_version,
            "definition": definition,
            "inputs": dict(event.inputs) if isinstance(event.inputs, dict) else {},
            "deadline": event.deadline,
            "started_at": event.occurred_at,
            "idempotency_key": event.idempotency_key,
            "source": event.source,
            "tenant": event.tenant,
            "trace_context": dict(event.trace_context),
            "parent": event.parent,
            "steps": {sid: StepState(step_id=sid) for sid in definition.step_ids},
            "timers": timers,
        }
    )


@_apply.register
def _(event: StepScheduled, state: RunState | None) -> RunState:
    return _schedule_step(_require(state, event), event)


def _schedule_step(state: RunState, event: StepScheduled | StepDispatched) -> RunState:
    """A ``StepScheduled``, or what a ``StepDispatched`` that also schedules its step (version
    3, ``scheduled``; ADR 0075) implies before its dispatch: the same fields."""
    state = _without_step_timers(state, event.step.step_id)
    return _with_step(
        state,
        event.step.step_id,
        status=StepStatus.SCHEDULED,
        attempt=event.attempt,
        node_version=event.step.node_version,
        params=event.params,
        params_ref=event.params_ref,
        cache_key=event.cache_key,
        invocation_id=None,
        invoke_topic=None,
        dispatch_seq=None,
        dispatched_at=None,
        queue_timeout_at=None,
        started_at=None,
        timeout_at=None,
        output=None,
        output_ref=None,
        cache_hit=False,
        error=None,
        skip_reason=None,
        finished_at=None,
        child_run_id=None,
        iteration=0,
        iteration_output=None,
        wait=None,
    )


@_apply.register
def _(event: StepDispatched, state: RunState | None) -> RunState:
    state = _require(state, event)
    if event.scheduled:
        state = _schedule_step(state, event)
    return _dispatch_step(state, event)


def dispatch_scheduled(scheduled: RunState, event: StepDispatched) -> RunState:
    """``evolve(before, event)`` for a dispatch that schedules its step (ADR 0075), given
    ``scheduled = evolve(before, scheduling_of(event))``: the state the scheduler already has
    when it merges the two (one state copy fewer than folding the merged event again; equal to
    it, as the scenario tests' ``fold(log) == state`` checks)."""
    return _dispatch_step(scheduled, event)


def _dispatch_step(state: RunState, event: StepDispatched) -> RunState:
    step_id = event.step.step_id
    state = _with_step(
        state,
        step_id,
        status=StepStatus.DISPATCHED,
        attempt=event.attempt,
        node_version=event.node_version,
        invocation_id=event.invocation_id,
        invoke_topic=event.invoke_topic,
        dispatch_seq=event.seq,
        dispatched_at=event.occurred_at,
        queue_timeout_at=event.queue_timeout_at,
        started_at=None,
        timeout_at=event.timeout_at,
    )
    if event.queue_timeout_at is not None:
        state = _with_timer(
            state,
            Timer(
                timer_id=queue_timer_id(event.invocation_id),
                kind=TimerKind.QUEUE_TIMEOUT,
                due_at=event.queue_timeout_at,
                step_id=step_id,
                attempt=event.attempt,
            ),
        )
    if event.timeout_at is not None:
        # Version 1 logs only: the step timeout counted from dispatch. Since version 2 it is
        # armed by StepStarted.
        state = _step_timeout_timer(state, event, event.timeout_at, None)
    return state


def _step_timeout_timer(
    state: RunState,
    event: StepDispatched | StepStarted | StepTimeoutExtended,
    due_at: datetime,
    beat: int | None,
) -> RunState:
    return _with_timer(
        state,
        Timer(
            timer_id=timeout_timer_id(event.invocation_id, beat),
            kind=TimerKind.STEP_TIMEOUT,
            due_at=due_at,
            step_id=event.step.step_id,
            attempt=event.attempt,
        ),
    )


@_apply.register
def _(event: StepStarted, state: RunState | None) -> RunState:
    # The wait for a worker is over: the queue timeout (and a timeout armed at dispatch by an
    # older scheduler) no longer applies; the execution timeout counts from here.
    step_id = event.step.step_id
    state = _without_step_timers(_require(state, event), step_id)
    state = _with_step(
        state,
        step_id,
        status=StepStatus.RUNNING,
        started_at=event.started_at,
        timeout_at=event.timeout_at,
    )
    if event.timeout_at is not None:
        state = _step_timeout_timer(state, event, event.timeout_at, 0)
    return state


@_apply.register
def _(event: StepTimeoutExtended, state: RunState | None) -> RunState:
    step_id = event.step.step_id
    state = _without_step_timers(_require(state, event), step_id)
    state = _with_step(state, step_id, timeout_at=event.timeout_at)
    return _step_timeout_timer(state, event, event.timeout_at, event.beat)


@_apply.register
def _(event: StepSucceeded, state: RunState | None) -> RunState:
    return _finish_step(
        _require(state, event),
        event.step.step_id,
        event.occurred_at,
        status=StepStatus.SUCCEEDED,
        attempt=event.attempt,
        output=event.output,
        output_ref=event.output_ref,
        cache_hit=event.cache_hit,
        error=None,
    )


@_apply.register
def _(event: StepFailed, state: RunState | None) -> RunState:
    return _finish_step(
        _require(state, event),
        event.step.step_id,
        event.occurred_at,
        status=StepStatus.FAILED,
        attempt=event.attempt,
        error=event.error,
    )


@_apply.register
def _(event: StepTimedOut, state: RunState | None) -> RunState:
    error = ErrorInfo(
        error_class="StepTimeout",
        message=f"attempt {event.attempt} exceeded its {event.timeout_ms} ms timeout",
        retryable=True,
    )
    return _finish_step(
        _require(state, event),
        event.step.step_id,
        event.occurred_at,
        status=StepStatus.TIMED_OUT,
        attempt=event.attempt,
        error=error,
    )


@_apply.register
def _(event: StepRetryScheduled, state: RunState | None) -> RunState:
    state = _require(state, event)
    step_id = event.step.step_id
    state = _with_step(_without_step_timers(state, step_id), step_id, status=StepStatus.RETRY_WAIT)
    return _with_timer(
        state,
        Timer(
            timer_id=event.timer_id,
            kind=TimerKind.BACKOFF,
            due_at=event.next_attempt_at,
            step_id=step_id,
            attempt=event.attempt,
        ),
    )


@_apply.register
def _(event: StepSkipped, state: RunState | None) -> RunState:
    return _finish_step(
        _require(state, event),
        event.step.step_id,
        event.occurred_at,
        status=StepStatus.SKIPPED,
        skip_reason=event.reason,
    )


@_apply.register
def _(event: StepWaitStarted, state: RunState | None) -> RunState:
    # meta.wait / meta.signal (ADR 0057): a new attempt that runs in the scheduler; the step is
    # running until its timer fires or its signal arrives, and no worker holds it.
    step_id = event.step.step_id
    state = _without_step_timers(_require(state, event), step_id)
    wait = StepWait(
        attempt=event.attempt,
        timer_id=event.timer_id,
        due_at=event.due_at,
        signal=event.signal,
        on_timeout=event.on_timeout,
    )
    state = _with_step(
        state,
        step_id,
        status=StepStatus.RUNNING,
        attempt=event.attempt,
        node_version=event.step.node_version,
        params=None,
        params_ref=None,
        cache_key=None,
        invocation_id=None,
        invoke_topic=None,
        dispatch_seq=None,
        dispatched_at=None,
        queue_timeout_at=None,
        started_at=event.occurred_at,
        timeout_at=None,
        output=None,
        output_ref=None,
        cache_hit=False,
        error=None,
        skip_reason=None,
        finished_at=None,
        wait=wait,
    )
    if event.timer_id is not None and event.due_at is not None:
        state = _with_timer(
            state,
            Timer(
                timer_id=event.timer_id,
                kind=TimerKind.WAIT,
                due_at=event.due_at,
                step_id=step_id,
                attempt=event.attempt,
            ),
        )
    return state


# meta.map (processors/scheduler/meta/fold.py)


@_apply.register
def _(event: MapStarted, state: RunState | None) -> RunState:
    return apply_map_started(_require(state, event), event)


@_apply.register
def _(event: MapChunkDispatched, state: RunState | None) -> RunState:
    return apply_map_chunk_dispatched(_require(state, event), event)


@_apply.register
def _(event: MapChunkFinished, state: RunState | None) -> RunState:
    return apply_map_chunk_finished(_require(state, event), event)


@_apply.register
def _(event: MapChildEnded, state: RunState | None) -> RunState:
    return apply_map_child_ended(_require(state, event), event)


@_apply.register
def _(event: GraphMutated, state: RunState | None) -> RunState:
    state = _require(state, event)
    definition = apply_mutation(state.graph, event.mutation)
    steps = dict(state.steps)
    step_id = event.mutation.step_id
    if event.mutation.type is GraphMutationType.ADD_STEP:
        steps[step_id] = StepState(step_id=step_id)
        # A planned step of an ai.meta step: the planner's attempt is over (the LLM answered),
        # the meta step now runs its sub-graph, so its timers and invocation go (ADR 0027).
        owner = ai_plan.on_step_added(definition, step_id)
        if owner is not None and steps[owner].invocation_id is not None:
            state = _without_step_timers(state, owner)
            steps[owner] = steps[owner].replace(
                **{"status": StepStatus.RUNNING, "invocation_id": None}
            )
    elif event.mutation.type is GraphMutationType.REMOVE_STEP:
        steps.pop(step_id, None)
        state = _without_step_timers(state, step_id)
    return state.replace(**{"definition": definition, "steps": steps})


@_apply.register
def _(event: StepsReset, state: RunState | None) -> RunState:
    # Re-drive from a step (docs/decisions/0026): the steps start over as pending, keeping only
    # their attempt numbers (the next attempt continues them: a new invocation id, never the
    # old result); their timers go with their attempts.
    state = _require(state, event)
    steps = dict(state.steps)
    for step_id in event.step_ids:
        old = steps.get(step_id)
        steps[step_id] = StepState(step_id=step_id, attempt=old.attempt if old else 0)
        state = _without_step_timers(state, step_id)
    return state.replace(**{"steps": steps})


@_apply.register
def _(event: RunRebound, state: RunState | None) -> RunState:
    # The run continues on another version (docs/decisions/0026): steps map by id. Kept steps
    # keep their state; steps new in the version start pending; steps that are gone (they had
    # not run: decide refuses otherwise) disappear with their timers.
    state = _require(state, event)
    definition = WorkflowDefinition.from_json_dict(event.definition)
    steps = {sid: state.steps.get(sid) or StepState(step_id=sid) for sid in definition.step_ids}
    for gone in set(state.steps) - set(steps):
        state = _without_step_timers(state, gone)
    return state.replace(
        **{
            "workflow_version": event.workflow_version,
            "definition": definition,
            "inputs": dict(event.inputs) if isinstance(event.inputs, dict) else {},
            "steps": steps,
        }
    )


@_apply.register
def _(event: ChildRunRequested, state: RunState | None) -> RunState:
    # The step runs as a child run (meta.workflow, an iteration of meta.loop): it is running
    # from the first request of its attempt until ChildRunFinished ends it.
    state = _require(state, event)
    step = state.steps.get(event.step.step_id)
    first = step is None or step.status is not StepStatus.RUNNING
    return _with_step(
        state,
        event.step.step_id,
        status=StepStatus.RUNNING,
        attempt=event.attempt,
        child_run_id=event.child_run_id,
        invocation_id=event.child_run_id,
        iteration=event.iteration or 0,
        started_at=event.occurred_at if first else step.started_at if step else None,
    )


@_apply.register
def _(event: ChildRunEnded, state: RunState | None) -> RunState:
    # One loop iteration ended: no child in flight until the next one is requested.
    return _with_step(
        _require(state, event),
        event.step.step_id,
        child_run_id=None,
        iteration_output=event.outputs,
    )


@_apply.register
def _(event: RunPaused, state: RunState | None) -> RunState:
    return _require(state, event).replace(**{"status": RunStatus.PAUSED})


@_apply.register
def _(event: RunResumed, state: RunState | None) -> RunState:
    # From paused, or from failed or succeeded when steps are re-driven (a succeeded run is
    # reopened by a re-drive from a step, docs/decisions/0026): the end is undone (outputs too:
    # they are rendered again when the run ends again), and the run deadline is not re-armed (it
    # bounded the original execution; a re-drive is deliberate).
    return _require(state, event).replace(
        **{
            "status": RunStatus.RUNNING,
            "error": None,
            "failed_step": None,
            "finished_at": None,
            "outputs": None,
        }
    )


@_apply.register
def _(event: RunSucceeded, state: RunState | None) -> RunState:
    return _require(state, event).replace(
        **{
            "status": RunStatus.SUCCEEDED,
            "outputs": event.outputs,
            "finished_at": event.occurred_at,
            "timers": {},
        }
    )


@_apply.register
def _(event: RunFailed, state: RunState | None) -> RunState:
    state = _require(state, event)
    # Step and queue timeouts stay armed: a failed run can be re-driven, and attempts still in
    # flight must end (result or timeout) for it to finish then. Backoffs and the deadline are
    # dropped.
    timers = {tid: t for tid, t in state.timers.items() if t.kind in FAILED_RUN_TIMER_KINDS}
    return state.replace(
        **{
            "status": RunStatus.FAILED,
            "error": event.error,
            "failed_step": event.failed_step.step_id if event.failed_step else None,
            "finished_at": event.occurred_at,
            "timers": timers,
        }
    )


_ABANDONED = frozenset(
    {
        StepStatus.PENDING,
        StepStatus.SCHEDULED,
        StepStatus.DISPATCHED,
        StepStatus.RUNNING,
        StepStatus.RETRY_WAIT,
    }
)


@_apply.register
def _(event: RunCancelled, state: RunState | None) -> RunState:
    state = _require(state, event)
    steps = {
        sid: st.replace(**{"status": StepStatus.CANCELLED, "finished_at": event.occurred_at})
        if st.status in _ABANDONED
        else st
        for sid, st in state.steps.items()
    }
    return state.replace(
        **{
            "status": RunStatus.CANCELLED,
            "steps": steps,
            "finished_at": event.occurred_at,
            "timers": {},
        }
    )


@_apply.register
def _(event: CommandRejected, state: RunState | None) -> RunState:
    # Only the position (and the command id, for dedupe) changes. A rejected StartRun is the
    # first record of its run: the log then holds a PENDING run that a later StartRun may start.
    return state or RunState(run_id=event.run_id, status=RunStatus.PENDING)
