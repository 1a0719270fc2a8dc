"""The scheduler's spans: a run, and each step attempt under it, exported when they end (ADR 0062).

The scheduler holds no span open: a run lives for seconds or for days, across restarts and
partition moves, and its state is rebuilt from its events. So a span is made whole from the
events at its end, with the ids :mod:`processors.scheduler.spans` derived for it when it began
(the attempt span's id is already in the worker's ``traceparent``) and the real start and end
times from the run's events: the run span when the run ends (``RunSucceeded``, ``RunFailed``,
``RunCancelled``), an attempt span when its result arrives (``StepSucceeded``, ``StepFailed``,
``StepTimedOut`` naming the invocation). An attempt the scheduler evaluated inline (ADR 0064:
its ``StepStarted(worker="scheduler-inline")`` is in the same decision) is an ``INTERNAL`` span
with ``reflux.worker = "scheduler-inline"``: no invocation went out, no worker span joins it.

Best effort: spans are queued for export only after the batch's transaction committed; a crash
between the commit and the exporter's send loses them (the run is unaffected), and a failed run
that is re-driven and ends again exports its run span again, with the same id.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from foundation.settings import Settings
from foundation.telemetry import SCOPE, tracing
from processors.scheduler.inline import INLINE_WORKER
from processors.scheduler.spans import RunTrace, attempt_span_id, run_trace
from processors.scheduler.state import RunState
from schemas.models import (
    RunCancelled,
    RunFailed,
    RunSucceeded,
    StepFailed,
    StepStarted,
    StepSucceeded,
    StepTimedOut,
)

log = logging.getLogger(__name__)

SERVICE: Final = "reflux-scheduler"
_SCOPE = InstrumentationScope(SCOPE)
_AttemptEnd = StepSucceeded | StepFailed | StepTimedOut
_RunEnd = RunSucceeded | RunFailed | RunCancelled


class SchedulerSpans:
    """Turns committed decisions into spans for the exporter; nothing at all when tracing is
    off (no endpoint configured)."""

    def __init__(self, settings: Settings) -> None:
        self._tracing = tracing(SERVICE, settings)

    @property
    def enabled(self) -> bool:
        return self._tracing is not None

    def of(
        self, before: RunState | None, after: RunState | None, events: Sequence[object]
    ) -> list[ReadableSpan]:
        if self._tracing is None or after is None or not events:
            return []
        return spans_for(before, after, events, self._tracing.resource)

    def export(self, spans: Sequence[ReadableSpan]) -> None:
        if self._tracing is None or not spans:
            return
        try:
            self._tracing.export(spans)
        except Exception:  # tracing never fails a batch (ADR 0062)
            log.warning("could not queue %d spans for export", len(spans), exc_info=True)


def spans_for(
    before: RunState | None, after: RunState, events: Sequence[object], resource: Resource
) -> list[ReadableSpan]:
    """The spans that ended with ``events`` (``before``: the run's state before them)."""
    trace = run_trace(after.run_id, after.trace_context)
    if not trace.sampled:
        return []
    spans: list[ReadableSpan] = []
    inline = {
        e.invocation_id for e in events if isinstance(e, StepStarted) and e.worker == INLINE_WORKER
    }
    for event in events:
        if isinstance(event, _AttemptEnd) and event.invocation_id:
            inlined = event.invocation_id in inline
            spans.append(_attempt_span(trace, before, after, event, resource, inline=inlined))
        elif isinstance(event, _RunEnd):
            spans.append(_run_span(trace, after, event, resource))
    return spans


def _attempt_span(
    trace: RunTrace,
    before: RunState | None,
    after: RunState,
    event: _AttemptEnd,
    resource: Resource,
    *,
    inline: bool = False,
) -> ReadableSpan:
    step_id = event.step.step_id
    assert event.invocation_id is not None
    step = before.steps.get(step_id) if before is not None else None
    dispatched = (
        step.dispatched_at
        if step is not None and step.invocation_id == event.invocation_id
        else None
    )
    error = event.error.error_class if isinstance(event, StepFailed) else None
    if isinstance(event, StepTimedOut):
        error = "StepTimedOut"
    attributes: dict[str, str | int] = {
        "reflux.run_id": after.run_id,
        "reflux.workflow_id": after.workflow_id,
        "reflux.step_id": step_id,
        "reflux.node": event.step.node,
        "reflux.attempt": event.attempt,
        "reflux.invocation_id": event.invocation_id,
    }
    if inline:
        attributes["reflux.worker"] = INLINE_WORKER
    return _span(
        f"step {step_id}",
        trace,
        attempt_span_id(after.run_id, step_id, event.invocation_id),
        trace.run_span_id,
        start=dispatched or event.occurred_at,
        end=event.occurred_at,
        # Remote: it dispatched the invocation the worker consumed. Inline: it ran the step.
        kind=SpanKind.INTERNAL if inline else SpanKind.PRODUCER,
        attributes=attributes,
        error=error,
        resource=resource,
    )


def _run_span(trace: RunTrace, state: RunState, event: _RunEnd, resource: Resource) -> ReadableSpan:
    error = None
    if isinstance(event, RunFailed):
        error = event.error.error_class if event.error is not None else "RunFailed"
    return _span(
        f"run {state.workflow_id}",
        trace,
        trace.run_span_id,
        trace.parent_span_id,
        start=state.started_at or event.occurred_at,
        end=event.occurred_at,
        kind=SpanKind.INTERNAL,
        attributes={
            "reflux.run_id": state.run_id,
            "reflux.workflow_id": state.workflow_id,
            "reflux.workflow_version": state.workflow_version,
            "reflux.run_status": type(event).__name__,
        },
        error=error,
        resource=resource,
    )


def _span(
    name: str,
    trace: RunTrace,
    span_id: str,
    parent_id: str | None,
    *,
    start: datetime,
    end: datetime,
    kind: SpanKind,
    attributes: dict[str, str | int],
    error: str | None,
    resource: Resource,
) -> ReadableSpan:
    flags = TraceFlags(TraceFlags.SAMPLED)
    trace_id = int(trace.trace_id, 16)
    parent = (
        SpanContext(trace_id, int(parent_id, 16), is_remote=True, trace_flags=flags)
        if parent_id is not None
        else None
    )
    if error is not None:
        attributes = {**attributes, "error.type": error}
    return ReadableSpan(
        name=name,
        context=SpanContext(trace_id, int(span_id, 16), is_remote=False, trace_flags=flags),
        parent=parent,
        resource=resource,
        attributes=attributes,
        kind=kind,
        status=Status(StatusCode.ERROR) if error is not None else Status(StatusCode.UNSET),
        start_time=_nanos(start),
        end_time=max(_nanos(end), _nanos(start)),
        instrumentation_scope=_SCOPE,
    )


def _nanos(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)
