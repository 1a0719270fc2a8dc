"""The ids of a run's spans, derived without I/O (ADR 0062).

A run is one span; each step attempt is a span under it. ``decide`` cannot export spans (no I/O),
but it must give a worker its attempt's span as the parent (``NodeInvocation.trace_context``),
so the ids are fixed by what identifies the span: the run span by the run id, an attempt span by
its invocation id (unique per attempt, re-drives included). The runtime exports those spans when
they end (:mod:`processors.scheduler.runtime.spans`) with the same ids; a replay derives the same
invocations, so tracing changes no decision.

The trace is the starter's (the ``traceparent`` recorded in ``RunStarted``) or, for a run nobody
traced, one derived from the run id: every run has a trace, and the worker's spans join it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from foundation.trace_context import (
    TRACESTATE,
    TraceParent,
    derive_span_id,
    derive_trace_id,
    parse_traceparent,
)
from schemas.quality import checker_context


@dataclass(frozen=True)
class RunTrace:
    """Where a run's spans go: its trace, its own span and the starter's span above it."""

    trace_id: str
    run_span_id: str
    parent_span_id: str | None
    """The starter's span (an API request, a trigger's producer); ``None``: the run is the root."""
    sampled: bool
    tracestate: str | None

    def attempt_context(self, run_id: str, step_id: str, invocation_id: str) -> dict[str, str]:
        """The trace context an invocation carries: its attempt span as the worker's parent."""
        parent = TraceParent(
            self.trace_id, attempt_span_id(run_id, step_id, invocation_id), self.sampled
        )
        context = {"traceparent": parent.header()}
        if self.tracestate:
            context[TRACESTATE] = self.tracestate
        return context

    def run_context(self) -> dict[str, str]:
        """The trace context under the run span (a child run started by one of its steps)."""
        context = {
            "traceparent": TraceParent(self.trace_id, self.run_span_id, self.sampled).header()
        }
        if self.tracestate:
            context[TRACESTATE] = self.tracestate
        return context


def run_trace(run_id: str, trace_context: Mapping[str, str]) -> RunTrace:
    """The run's trace from its recorded context (already cleaned by ``decide``)."""
    parent = parse_traceparent(trace_context.get("traceparent"))
    run_span_id = derive_span_id("run", run_id)
    if parent is None:
        return RunTrace(derive_trace_id("run", run_id), run_span_id, None, True, None)
    return RunTrace(
        parent.trace_id, run_span_id, parent.span_id, parent.sampled, trace_context.get(TRACESTATE)
    )


def attempt_span_id(run_id: str, step_id: str, invocation_id: str) -> str:
    return derive_span_id("attempt", run_id, step_id, invocation_id)


def invocation_trace_context(
    run_id: str,
    trace_context: Mapping[str, str],
    step_id: str,
    invocation_id: str,
    *,
    checker: bool = False,
) -> dict[str, str]:
    """``NodeInvocation.trace_context``: the attempt's traceparent, plus the checker mark."""
    context = run_trace(run_id, trace_context).attempt_context(run_id, step_id, invocation_id)
    return {**context, **checker_context()} if checker else context
