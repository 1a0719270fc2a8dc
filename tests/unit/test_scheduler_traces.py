"""Traces the scheduler writes for steps that ended without a worker reporting them."""

from __future__ import annotations

from datetime import timedelta

from processors.scheduler import TIMEOUT_GRACE_MS
from processors.scheduler.runtime.traces import traces_for
from schemas.models import Trace, TraceStatus
from tests.support.scheduler_golden import SCENARIOS
from tests.support.scheduler_simulation import T0


def _traces(name: str) -> list[Trace]:
    sim = SCENARIOS[name]()
    return [t for d in sim.decisions if d.state is not None for t in traces_for(d.events, d.state)]


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
    assert _traces("backlog") == []
    assert _traces("retries_exhausted") == []  # StepFailed from workers: they traced them
