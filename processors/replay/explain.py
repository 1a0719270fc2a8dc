"""Explain a run's log in words: fold it event by event with the scheduler's own ``evolve`` and
say what each event changed and why (``reflux replay RUN``).

Pure: events in, text and states out. The "why" is read from the state *before* the event (the
state ``decide`` saw when it wrote the event): a step became ready because its needs had
succeeded, a condition skipped a step because its ``when`` evaluated to a falsy value (evaluated
again here over the same context), a retry fired after a failed attempt with that error.
Claim-checked outputs are not loaded (no I/O here): an expression that reads one says so.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import singledispatch
from typing import Any, Final

from foundation.errors import NonRetryableError
from processors.scheduler.evolve import evolve
from processors.scheduler.inline import INLINE_WORKER
from processors.scheduler.state import RunState, StepState, StepStatus
from schemas.models import (
    MODELS,
    ChildRunEnded,
    ChildRunRequested,
    CommandRejected,
    GraphMutated,
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
)
from schemas.run_log import RUN_EVENT_TYPES, RunEvent
from workflows.expressions import TemplateError, evaluate, is_truthy

__all__ = [
    "ReplayStep",
    "UnknownEventError",
    "describe_state",
    "event_from_json",
    "explain_event",
    "replay",
]

_BY_NAME: Final[dict[str, type[RunEvent]]] = {
    **{model.__name__: model for model in RUN_EVENT_TYPES},
    **{
        name: model
        for name, model in MODELS.items()
        if isinstance(model, type) and issubclass(model, RUN_EVENT_TYPES)
    },
}


class UnknownEventError(NonRetryableError):
    """A record that is not a run event (wrong type name)."""

    error_class = "UnknownEventError"


def event_from_json(event_type: str, payload: Mapping[str, Any]) -> RunEvent:
    """A run event from its JSON form: ``event_type`` is the class name (the API's events
    endpoint, ``RunEventRow``) or the Avro full name (golden logs, bundles)."""
    model = _BY_NAME.get(event_type)
    if model is None:
        raise UnknownEventError(
            f"Expected a run event type (e.g. 'StepSucceeded' or 'reflux.events.StepSucceeded'), "
            f"but got {event_type!r}"
        )
    event: RunEvent = model.model_validate(dict(payload))
    return event


@dataclass(frozen=True, slots=True)
class ReplayStep:
    """One event of a replay: what it said, the state after it, and the explanation."""

    seq: int
    event_type: str
    occurred_at: datetime
    lines: tuple[str, ...]
    state: RunState


def replay(events: Iterable[RunEvent], until: int | None = None) -> Iterator[ReplayStep]:
    """Fold ``events`` one by one (stopping after seq ``until``), explaining each."""
    state: RunState | None = None
    for event in events:
        if until is not None and event.seq > until:
            return
        after = evolve(state, event)
        yield ReplayStep(
            seq=event.seq,
            event_type=type(event).__name__,
            occurred_at=event.occurred_at,
            lines=tuple(explain_event(state, event, after)),
            state=after,
        )
        state = after


def explain_event(before: RunState | None, event: RunEvent, after: RunState) -> list[str]:
    """What ``event`` means, in words, followed by the state changes it caused."""
    lines = _explain(event, before, after)
    return [*lines, *_changes(before, after)]


# -- per event type -------------------------------------------------------------------------------


@singledispatch
def _explain(event: object, before: RunState | None, after: RunState) -> list[str]:
    return [f"{type(event).__name__}"]


@_explain.register
def _(event: RunStarted, before: RunState | None, after: RunState) -> list[str]:
    graph = after.graph
    lines = [
        f"run {event.run_id} started: workflow {event.workflow_id} v{event.workflow_version} "
        f"({len(graph.steps)} steps), source {event.source}, inputs {_short(event.inputs)}"
    ]
    if event.parent is not None:
        lines.append(
            f"a child run of {event.parent.run_id} (step {event.parent.step_id}, attempt "
            f"{event.parent.attempt})"
        )
    if event.deadline is not None:
        lines.append(f"run deadline at {event.deadline.isoformat()}")
    roots = [s.id for s in graph.steps if not s.needs]
    lines.append(f"root steps (no needs, ready at once): {', '.join(roots) or '-'}")
    return lines


@_explain.register
def _(event: StepScheduled, before: RunState | None, after: RunState) -> list[str]:
    return _scheduling(event, before)


def _scheduling(event: StepScheduled | StepDispatched, before: RunState | None) -> list[str]:
    """A StepScheduled, or a StepDispatched that schedules its step too (ADR 0075)."""
    step_id = event.step.step_id
    node = f"{event.step.node}@{event.step.node_version}"
    previous = before.steps.get(step_id) if before else None
    if previous is not None and previous.status is StepStatus.RETRY_WAIT:
        head = f"step {step_id} scheduled again: attempt {event.attempt} on {node} (backoff over)"
        return [
            head,
            f"params {_short(event.params) if event.params_ref is None else 'claim-checked'}",
        ]
    head = f"step {step_id} became ready and was scheduled (attempt {event.attempt}) on {node}"
    lines = [head]
    if before is not None and before.definition is not None and step_id in before.graph.step_ids:
        definition = before.graph.step(step_id)
        if definition.needs:
            needs = ", ".join(f"{n} {_status(before, n)}" for n in definition.needs)
            lines.append(f"why: its needs are done ({needs})")
        else:
            lines.append("why: it has no needs")
        if definition.when is not None:
            value = _when_value(before, definition.when, step_id)
            lines.append(f"condition `{definition.when}` -> {value} (truthy: scheduled)")
    params = "claim-checked (object storage)" if event.params_ref else _short(event.params)
    lines.append(f"params {params}")
    if event.cache_key:
        lines.append(f"cache key {event.cache_key[:16]}…")
    return lines


@_explain.register
def _(event: StepSkipped, before: RunState | None, after: RunState) -> list[str]:
    step_id = event.step.step_id
    lines = [f"step {step_id} skipped: {event.reason}"]
    if before is not None and before.definition is not None and step_id in before.graph.step_ids:
        definition = before.graph.step(step_id)
        skipped = [n for n in definition.needs if _status(before, n) == StepStatus.SKIPPED.value]
        if skipped:
            lines.append(f"why: its need(s) {', '.join(skipped)} were skipped")
        elif definition.when is not None:
            value = _when_value(before, definition.when, step_id)
            lines.append(f"why: condition `{definition.when}` -> {value} (falsy)")
    return lines


@_explain.register
def _(event: StepDispatched, before: RunState | None, after: RunState) -> list[str]:
    line = (
        f"step {event.step.step_id} attempt {event.attempt} dispatched to {event.invoke_topic} "
        f"(node {event.step.node}@{event.node_version}, invocation {event.invocation_id})"
    )
    if event.queue_timeout_at is not None:
        line += f"; queue timeout at {event.queue_timeout_at.isoformat()}"
    return [*_scheduling(event, before), line] if event.scheduled else [line]


@_explain.register
def _(event: StepStarted, before: RunState | None, after: RunState) -> list[str]:
    if event.worker == INLINE_WORKER:  # ADR 0064: no worker, the outcome follows at once
        head = f"step {event.step.step_id} attempt {event.attempt}"
        return [f"{head} evaluated inline by the scheduler (no worker)"]
    line = f"step {event.step.step_id} attempt {event.attempt} started on worker {event.worker}"
    if event.timeout_at is not None:
        line += f"; times out at {event.timeout_at.isoformat()}"
    return [line]


@_explain.register
def _(event: StepWaitStarted, before: RunState | None, after: RunState) -> list[str]:
    head = f"step {event.step.step_id} attempt {event.attempt} waits in the scheduler (no worker)"
    due = event.due_at.isoformat() if event.due_at is not None else None
    if event.signal is None:
        return [f"{head} until {due}"]
    limit = f", timeout at {due} ({event.on_timeout})" if due is not None else ", no timeout"
    return [f"{head} for signal {event.signal!r}{limit}"]


@_explain.register
def _(event: StepTimeoutExtended, before: RunState | None, after: RunState) -> list[str]:
    return [
        f"step {event.step.step_id} heartbeat {event.beat}: timeout moved to "
        f"{event.timeout_at.isoformat()}"
    ]


@_explain.register
def _(event: StepSucceeded, before: RunState | None, after: RunState) -> list[str]:
    output = "claim-checked (object storage)" if event.output_ref else _short(event.output)
    cache = " from the cache" if event.cache_hit else ""
    took = f" in {event.duration_ms} ms" if event.duration_ms is not None else ""
    return [
        f"step {event.step.step_id} attempt {event.attempt} succeeded{cache}{took}: output {output}"
    ]


@_explain.register
def _(event: StepFailed, before: RunState | None, after: RunState) -> list[str]:
    error = event.error
    kind = "retryable" if error.retryable else "not retryable"
    return [
        f"step {event.step.step_id} attempt {event.attempt} failed: [{error.error_class}] "
        f"{error.message} ({kind})"
    ]


@_explain.register
def _(event: StepTimedOut, before: RunState | None, after: RunState) -> list[str]:
    return [
        f"step {event.step.step_id} attempt {event.attempt} timed out after {event.timeout_ms} ms"
    ]


@_explain.register
def _(event: StepRetryScheduled, before: RunState | None, after: RunState) -> list[str]:
    step_id = event.step.step_id
    previous = before.steps.get(step_id) if before else None
    error = previous.error if previous else None
    why = f" after [{error.error_class}] {error.message}" if error else ""
    lines = [
        f"retry of step {step_id} fired{why}: attempt {event.attempt} at "
        f"{event.next_attempt_at.isoformat()} (backoff {event.backoff_ms} ms)"
    ]
    if event.reason != "backoff":
        lines.append(
            f"held {event.held_ms} ms: {event.reason} (circuit {event.circuit}, dependency "
            f"{event.dependency})"
        )
    if before is not None and before.definition is not None and step_id in before.graph.step_ids:
        policy = before.graph.step(step_id).retry
        lines.append(
            f"retry policy: max {policy.max_attempts} attempts, backoff {policy.initial_backoff} "
            f"ms x{policy.multiplier} (max {policy.max_backoff} ms, jitter {policy.jitter})"
        )
    return lines


@_explain.register
def _(event: GraphMutated, before: RunState | None, after: RunState) -> list[str]:
    mutation = event.mutation
    who = event.requested_by or "?"
    why = event.reason or "no reason given"
    return [
        f"mutation {mutation.type.value} on step {mutation.step_id} applied"
        + (f" (mutation {event.mutation_id})" if event.mutation_id else "")
        + f" by {who}: {why}",
        f"data {_short(mutation.data)}",
    ]


@_explain.register
def _(event: StepsReset, before: RunState | None, after: RunState) -> list[str]:
    return [
        f"re-drive from step {event.from_step}: steps {', '.join(event.step_ids)} start over "
        f"(by {event.requested_by or '?'}: {event.reason or 'no reason given'})"
    ]


@_explain.register
def _(event: RunRebound, before: RunState | None, after: RunState) -> list[str]:
    return [
        f"run rebound from v{event.previous_version} to v{event.workflow_version} by "
        f"{event.requested_by or '?'}: {event.reason or 'no reason given'}",
        f"kept {list(event.kept_steps)}, added {list(event.added_steps)}, removed "
        f"{list(event.removed_steps)}, changed {list(event.changed_steps)}",
    ]


@_explain.register
def _(event: ChildRunRequested, before: RunState | None, after: RunState) -> list[str]:
    iteration = f" iteration {event.iteration}" if event.iteration else ""
    return [
        f"step {event.step.step_id} attempt {event.attempt}{iteration} requested child run "
        f"{event.child_run_id} of {event.workflow_id} v{event.workflow_version} with inputs "
        f"{_short(event.inputs)}"
    ]


@_explain.register
def _(event: ChildRunEnded, before: RunState | None, after: RunState) -> list[str]:
    iteration = f" (iteration {event.iteration})" if event.iteration else ""
    return [
        f"child run {event.child_run_id} of step {event.step.step_id}{iteration} ended "
        f"{event.status}: outputs {_short(event.outputs)}"
    ]


@_explain.register
def _(event: MapStarted, before: RunState | None, after: RunState) -> list[str]:
    target = (
        f"a child run of {event.workflow_id} v{event.workflow_version} per item"
        if event.workflow_id
        else f"node {event.node.node}@{event.node.node_version}, chunks of {event.chunk_size}"
    )
    return [
        f"map step {event.step.step_id} started over {event.item_count} items: {target} "
        f"({event.max_chunks_in_flight} chunks in flight, on failure {event.on_failure})"
    ]


@_explain.register
def _(event: MapChunkDispatched, before: RunState | None, after: RunState) -> list[str]:
    retry = f" (item attempt {event.item_attempt})" if event.item_attempt > 1 else ""
    return [
        f"map step {event.step.step_id}: chunk {event.chunk} dispatched, {event.item_count} "
        f"items from #{event.first_item}{retry}"
    ]


@_explain.register
def _(event: MapChunkFinished, before: RunState | None, after: RunState) -> list[str]:
    return [
        f"map step {event.step.step_id}: chunk {event.chunk} finished, {event.succeeded} ok, "
        f"{len(event.failed_items or [])} failed, {len(event.retry_items or [])} to retry"
    ]


@_explain.register
def _(event: MapChildEnded, before: RunState | None, after: RunState) -> list[str]:
    return [
        f"map step {event.step.step_id}: item {event.item} (attempt {event.item_attempt}) child "
        f"run {event.child_run_id} ended {event.status} -> {event.outcome}"
    ]


@_explain.register
def _(event: RunPaused, before: RunState | None, after: RunState) -> list[str]:
    return [f"run paused by {event.requested_by or '?'}: {event.reason or 'no reason given'}"]


@_explain.register
def _(event: RunResumed, before: RunState | None, after: RunState) -> list[str]:
    return [f"run resumed by {event.requested_by or '?'}: {event.reason or 'no reason given'}"]


@_explain.register
def _(event: RunCancelled, before: RunState | None, after: RunState) -> list[str]:
    return [f"run cancelled by {event.requested_by or '?'}: {event.reason or 'no reason given'}"]


@_explain.register
def _(event: RunSucceeded, before: RunState | None, after: RunState) -> list[str]:
    took = f" in {event.duration_ms} ms" if event.duration_ms is not None else ""
    return [f"run succeeded{took}: outputs {_short(event.outputs)}"]


@_explain.register
def _(event: RunFailed, before: RunState | None, after: RunState) -> list[str]:
    step = f" at step {event.failed_step.step_id}" if event.failed_step else ""
    return [f"run failed{step}: [{event.error.error_class}] {event.error.message}"]


@_explain.register
def _(event: CommandRejected, before: RunState | None, after: RunState) -> list[str]:
    return [f"command {event.command_type} ({event.command_id}) rejected: {event.reason}"]


# -- state ----------------------------------------------------------------------------------------


def _changes(before: RunState | None, after: RunState) -> list[str]:
    """The state transitions the event caused (run status, step statuses, timers)."""
    lines: list[str] = []
    old_status = before.status.value if before else "none"
    if old_status != after.status.value:
        lines.append(f"  run: {old_status} -> {after.status.value}")
    old_steps: Mapping[str, StepState] = before.steps if before else {}
    for step_id, step in after.steps.items():
        old = old_steps.get(step_id)
        if old is None:
            if before is not None:
                lines.append(f"  step {step_id}: added ({step.status.value})")
        elif old.status is not step.status:
            lines.append(f"  step {step_id}: {old.status.value} -> {step.status.value}")
    for step_id in old_steps.keys() - after.steps.keys():
        lines.append(f"  step {step_id}: removed")
    old_timers = before.timers if before else {}
    for timer_id, timer in after.timers.items():
        if timer_id not in old_timers:
            lines.append(
                f"  timer armed: {timer.kind.value} {timer.step_id or ''} at "
                f"{timer.due_at.isoformat()}"
            )
    for timer_id in old_timers.keys() - after.timers.keys():
        timer = old_timers[timer_id]
        lines.append(f"  timer cleared: {timer.kind.value} {timer.step_id or ''}".rstrip())
    return lines


def describe_state(state: RunState) -> list[str]:
    """The folded state in words (``--until`` prints it where it stops)."""
    lines = [
        f"run {state.run_id}  {state.workflow_id}@{state.workflow_version}  status "
        f"{state.status.value}  after seq {state.last_seq}",
        f"inputs {_short(state.inputs)}",
    ]
    for step_id, step in state.steps.items():
        extra = []
        if step.output is not None:
            extra.append(f"output {_short(step.output, 60)}")
        elif step.output_ref is not None:
            extra.append("output claim-checked")
        if step.error is not None:
            extra.append(f"error [{step.error.error_class}] {step.error.message}")
        if step.skip_reason:
            extra.append(step.skip_reason)
        lines.append(
            f"  {step_id:<16} {step.status.value:<11} attempt {step.attempt}  " + "; ".join(extra)
        )
    for timer in sorted(state.timers.values(), key=lambda t: t.due_at):
        lines.append(
            f"  timer {timer.kind.value} {timer.step_id or ''} due {timer.due_at.isoformat()}"
        )
    for step_id, progress in state.maps.items():
        done = sum(1 for c in progress.chunks.values() if c.finished)
        lines.append(f"  map {step_id}: {done}/{len(progress.chunks)} chunks finished")
    if state.outputs is not None:
        lines.append(f"outputs {_short(state.outputs)}")
    if state.error is not None:
        lines.append(f"error [{state.error.error_class}] {state.error.message}")
    return lines


# -- helpers --------------------------------------------------------------------------------------


def _status(state: RunState, step_id: str) -> str:
    step = state.steps.get(step_id)
    return step.status.value if step else "unknown"


def _context(state: RunState) -> dict[str, Any]:
    """The expression context ``decide`` builds (without loading claim-checked outputs)."""
    steps = {
        sid: {"status": st.status.value, "attempt": st.attempt, "output": st.output}
        for sid, st in state.steps.items()
    }
    return {
        "inputs": state.inputs,
        "steps": steps,
        "run": {
            "id": state.run_id,
            "workflow_id": state.workflow_id,
            "workflow_version": state.workflow_version,
        },
    }


def _when_value(state: RunState, expression: str, step_id: str) -> str:
    if any(st.output_ref is not None for st in state.steps.values()):
        note = " (claim-checked outputs not loaded)"
    else:
        note = ""
    try:
        value = evaluate(expression, _context(state), f"steps.{step_id}.when")
    except TemplateError as exc:
        return f"error: {exc}"
    return f"{_short(value)} = {str(is_truthy(value)).lower()}{note}"


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"
