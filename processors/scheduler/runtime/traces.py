"""Traces the scheduler writes itself: steps that ended without a worker reporting them, and
its retry decisions.

Workers trace every attempt they execute. A cache hit, a step timeout (the worker may never
answer), a queue timeout (no worker started the attempt) and a skipped step have no worker trace,
so the scheduler emits one from the run events, in the same transaction as those events.

An inline attempt (a pure step the scheduler evaluated itself, ADR 0064) has no worker either:
its ``StepStarted(worker="scheduler-inline")`` and its ``StepSucceeded`` / ``StepFailed`` are in
the same decision, and become one trace (status ``ok`` or ``error``, ``context["worker"] =
"scheduler-inline"``), which the critic, the metrics and ClickHouse read like a worker's.

Every ``StepRetryScheduled`` also gets a trace, ``context["kind"] = "retry"`` (status
``skipped``: it is a decision, not an attempt), spanning the wait (``start`` = the decision,
``end`` = when the retry goes) with the retry gate's answer in ``context`` (``reason``,
``circuit``, ``dependency``, the failed attempt's ``error_class``) and ``metrics``
(``backoff_ms``, ``held_ms``). The attempt rollups leave these rows out; ``retry_metrics_1m``
counts them (docs/traces.md, docs/decisions/0020-retry-budget-and-circuit.md).
"""

from __future__ import annotations

from processors.scheduler.cache import params_digest
from processors.scheduler.decide import QUEUE_TIMEOUT
from processors.scheduler.inline import INLINE_WORKER
from processors.scheduler.state import RunState
from schemas.models import (
    StepFailed,
    StepRetryScheduled,
    StepSkipped,
    StepStarted,
    StepSucceeded,
    StepTimedOut,
    Trace,
    TraceStatus,
)

TracedEvent = StepSucceeded | StepTimedOut | StepFailed | StepSkipped

RETRY_KIND = "retry"
"""``context["kind"]`` of the traces of retry decisions (not attempts)."""


def traces_for(events: tuple[object, ...], state: RunState) -> list[Trace]:
    traces: list[Trace] = []
    inline: dict[str, StepStarted] = {}  # inline attempts started in this decision, by id
    for event in events:
        if isinstance(event, StepStarted) and event.worker == INLINE_WORKER:
            inline[event.invocation_id] = event
        elif isinstance(event, StepSucceeded | StepFailed) and event.invocation_id in inline:
            traces.append(_inline_trace(event, inline.pop(event.invocation_id), state))
        elif isinstance(event, StepSucceeded) and event.cache_hit:
            traces.append(_trace(event, state, TraceStatus.OK))
        elif isinstance(event, StepTimedOut) or (
            isinstance(event, StepFailed) and event.error.error_class == QUEUE_TIMEOUT
        ):
            traces.append(_trace(event, state, TraceStatus.TIMEOUT))
        elif isinstance(event, StepSkipped):
            traces.append(_trace(event, state, TraceStatus.SKIPPED))
        elif isinstance(event, StepRetryScheduled):
            traces.append(_retry_trace(event, state))
    return traces


def _inline_trace(
    event: StepSucceeded | StepFailed, started: StepStarted, state: RunState
) -> Trace:
    step = state.steps.get(event.step.step_id)
    failed = isinstance(event, StepFailed)
    return Trace(
        run_id=state.run_id,
        seq=started.seq,  # like a worker's trace: the position the attempt started from
        workflow_id=state.workflow_id,
        workflow_version=state.workflow_version,
        step_id=event.step.step_id,
        node=event.step.node,
        node_version=event.step.node_version,
        invocation_id=started.invocation_id,
        status=TraceStatus.ERROR if failed else TraceStatus.OK,
        start=started.started_at,
        end=event.occurred_at,
        latency_ms=max(int((event.occurred_at - started.started_at).total_seconds() * 1000), 0),
        inputs_hash=step.params_sha256 if step is not None else params_digest(None),
        error=event.error if isinstance(event, StepFailed) else None,
        retry_count=max(event.attempt - 1, 0),
        cache_hit=False,
        context={"source": "scheduler", "worker": INLINE_WORKER},
    )


def _retry_trace(event: StepRetryScheduled, state: RunState) -> Trace:
    step = state.steps.get(event.step.step_id)
    context = {
        "source": "scheduler",
        "kind": RETRY_KIND,
        "reason": event.reason,
        "circuit": event.circuit,
        "dependency": event.dependency or event.step.node,
    }
    if step is not None and step.error is not None:
        context["error_class"] = step.error.error_class
    wait = int((event.next_attempt_at - event.occurred_at).total_seconds() * 1000)
    return Trace(
        run_id=state.run_id,
        seq=event.seq,
        workflow_id=state.workflow_id,
        workflow_version=state.workflow_version,
        step_id=event.step.step_id,
        node=event.step.node,
        node_version=event.step.node_version,
        invocation_id=None,
        status=TraceStatus.SKIPPED,
        start=event.occurred_at,
        end=event.next_attempt_at,
        latency_ms=max(wait, 0),
        inputs_hash=step.params_sha256 if step is not None else params_digest(None),
        retry_count=max(event.attempt - 1, 0),
        cache_hit=False,
        metrics={"backoff_ms": float(event.backoff_ms), "held_ms": float(event.held_ms)},
        context=context,
    )


def _trace(event: TracedEvent, state: RunState, status: TraceStatus) -> Trace:
    step = state.steps.get(event.step.step_id)
    attempt = getattr(event, "attempt", step.attempt if step else 0)
    start = event.occurred_at
    began = None if step is None else step.started_at or step.dispatched_at
    if isinstance(event, StepTimedOut | StepFailed) and began is not None:
        # From the worker's start (StepStarted); a queue timeout or a log without a start: from
        # the dispatch.
        start = min(began, event.occurred_at)
    latency = int((event.occurred_at - start).total_seconds() * 1000)
    error = None
    if isinstance(event, StepFailed):
        error = event.error
    elif isinstance(event, StepTimedOut) and step is not None:
        error = step.error
    return Trace(
        run_id=state.run_id,
        seq=event.seq,
        workflow_id=state.workflow_id,
        workflow_version=state.workflow_version,
        step_id=event.step.step_id,
        node=event.step.node,
        node_version=event.step.node_version,
        invocation_id=getattr(event, "invocation_id", None),
        status=status,
        start=start,
        end=event.occurred_at,
        latency_ms=max(latency, 0),
        inputs_hash=step.params_sha256 if step is not None else params_digest(None),
        error=error,
        retry_count=max(attempt - 1, 0),
        cache_hit=isinstance(event, StepSucceeded) and event.cache_hit,
        context={"source": "scheduler"},
    )
