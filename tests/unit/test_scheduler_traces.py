"""Traces the scheduler writes for steps that ended without a worker reporting them."""

from __future__ import annotations

from datetime import timedelta

from processors.scheduler import TIMEOUT_GRACE_MS
from processors.scheduler.runtime.traces import RETRY_KIND, traces_for
from schemas.models import StepRetryScheduled, Trace, TraceStatus
from tests.support.scheduler_golden import SCENARIOS
from tests.support.scheduler_simulation import T0


def _all_traces(name: str) -> list[Trace]:
    sim = SCENARIOS[name]()
    return [t for d in sim.decisions if d.state is not None for t in traces_for(d.events, d.state)]


def _traces(name: str) -> list[Trace]:
    """The traces of steps (not those of retry decisions)."""
    return [t for t in _all_traces(name) if t.context.get("kind") != RETRY_KIND]


def _retry_traces(name: str) -> list[Trace]:
    return [t for t in _all_traces(name) if t.context.get("kind") == RETRY_KIND]


def test_a_step_timeout_is_traced_from_the_workers_start() -> None:
    (trace,) = _traces("step_timeout")
    assert trace.status is TraceStatus.TIMEOUT and trace.error is not None
    assert trace.error.error_class == "StepTimeout"
    assert trace.start == T0  # the simulated worker started it at once
    assert trace.latency_ms == 1_000 + TIMEOUT_GRACE_MS
    assert trace.context == {"source": "scheduler"}


def test_a_queue_timeout_is_traced_from_the_dispatch() -> None:
    (trace,) = _traces("queue_timeout")
    assert trace.status is TraceStatus.TIMEOUT and trace.error is not None
    assert (trace.error.error_class, trace.error.retryable) == ("QueueTimeout", False)
    assert (trace.start, trace.end) == (T0, T0 + timedelta(seconds=5))
    assert trace.latency_ms == 5_000 and trace.retry_count == 0
    assert trace.invocation_id is not None


def test_worker_reported_outcomes_get_no_scheduler_trace() -> None:
    assert _all_traces("backlog") == []
    assert _traces("retries_exhausted") == []  # StepFailed from workers: they traced them


def test_every_retry_decision_is_traced_with_the_gates_answer() -> None:
    sim = SCENARIOS["retries_exhausted"]()
    retries = [e for e in sim.log if isinstance(e, StepRetryScheduled)]
    traces = _retry_traces("retries_exhausted")
    assert len(traces) == len(retries) == 2
    for trace, event in zip(traces, retries, strict=True):
        assert trace.status is TraceStatus.SKIPPED and trace.error is None
        assert (trace.seq, trace.step_id, trace.node) == (event.seq, "flaky", "http.request")
        assert (trace.start, trace.end) == (event.occurred_at, event.next_attempt_at)
        assert trace.latency_ms == event.backoff_ms and trace.retry_count == event.attempt - 1
        assert trace.invocation_id is None
        assert trace.context == {
            "source": "scheduler",
            "kind": "retry",
            "reason": "backoff",
            "circuit": "closed",
            "dependency": "http.request flaky.example",
            "error_class": "HttpStatus503",
        }
        assert trace.metrics == {"backoff_ms": float(event.backoff_ms), "held_ms": 0.0}


def test_a_held_retry_is_traced_over_its_whole_wait_with_the_circuit_state() -> None:
    first, held = _retry_traces("circuit_held")
    assert (first.context["reason"], first.context["circuit"]) == ("backoff", "closed")
    assert (held.context["reason"], held.context["circuit"]) == ("circuit_open", "open")
    assert held.metrics["backoff_ms"] == 0 and held.metrics["held_ms"] == held.latency_ms > 2_000
    assert held.start == first.end  # held again when its timer fired
    assert held.context["dependency"] == "http.request sick.example"
