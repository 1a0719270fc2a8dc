"""The engine benchmark's metrics from synthetic observations (no services)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from benchmarks import engine_metrics as em
from benchmarks.engine_metrics import RunTrace, Seen
from schemas.base import RefluxRecord
from schemas.models import (
    NodeInvocation,
    NodeResult,
    RunStarted,
    RunSucceeded,
    StepDispatched,
    StepRef,
    StepScheduled,
    StepStarted,
    StepSucceeded,
    TraceStatus,
)
from schemas.samples import sample_record

T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
EPOCH0 = T0.timestamp()
# Epoch seconds as floats resolve ~0.2 us: compare milliseconds to a microsecond.
US = 1e-3


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def rec(cls: type[RefluxRecord], **fields: Any) -> Any:
    return sample_record(cls).model_copy(update=fields)


def step_ref(i: int) -> StepRef:
    return StepRef(step_id=f"s{i}", node="transform", node_version="1.0.0")


def synthetic_run(
    run_id: str = "r1",
    steps: int = 3,
    *,
    cycle_ms: int = 20,
    exec_ms: int = 2,
    cache_hit: bool = False,
) -> RunTrace:
    """A run acked at t=0 ms, started at t=1 ms, then steps of ``cycle_ms`` each.

    Step i is dispatched at 1 + i*cycle (event time), visible on the invoke topic 3 ms later
    (watcher clock), started by the worker 4 ms after dispatch, runs ``exec_ms``, its result is
    produced 1 ms after it finished, and it succeeds at the end of its cycle.
    """
    trace = RunTrace(run_id, sent=EPOCH0 - 0.001, acked=EPOCH0)

    def see(received_ms: float, topic: str, record: Any, produced_ms: int | None = None) -> None:
        trace.seen.append(Seen(EPOCH0 + received_ms / 1000, topic, record, produced_ms))

    see(2, "runs", rec(RunStarted, run_id=run_id, seq=0, occurred_at=at(1)))
    seq = 1
    for i in range(steps):
        begin = 1 + i * cycle_ms
        inv = f"inv-{run_id}-{i}"
        see(
            begin + 3,
            "runs",
            rec(
                StepScheduled,
                run_id=run_id,
                seq=seq,
                occurred_at=at(begin),
                step=step_ref(i),
                attempt=1,
            ),
        )
        if cache_hit:
            see(
                begin + 3,
                "runs",
                rec(
                    StepSucceeded,
                    run_id=run_id,
                    seq=seq + 1,
                    occurred_at=at(begin + 2),
                    step=step_ref(i),
                    attempt=1,
                    invocation_id=None,
                    cache_hit=True,
                ),
            )
            seq += 2
            continue
        see(
            begin + 3,
            "runs",
            rec(
                StepDispatched,
                run_id=run_id,
                seq=seq + 1,
                occurred_at=at(begin),
                step=step_ref(i),
                attempt=1,
                invocation_id=inv,
            ),
        )
        see(
            begin + 3,
            "invoke",
            rec(NodeInvocation, run_id=run_id, invocation_id=inv, occurred_at=at(begin)),
        )
        started, finished = begin + 4, begin + 4 + exec_ms
        produced = int((T0 + timedelta(milliseconds=finished + 1)).timestamp() * 1000)
        see(
            finished + 2,
            "results",
            rec(
                NodeResult,
                run_id=run_id,
                invocation_id=inv,
                status=TraceStatus.OK,
                started_at=at(started),
                finished_at=at(finished),
            ),
            produced,
        )
        see(
            begin + cycle_ms + 3,
            "runs",
            rec(
                StepSucceeded,
                run_id=run_id,
                seq=seq + 2,
                occurred_at=at(begin + cycle_ms),
                step=step_ref(i),
                attempt=1,
                invocation_id=inv,
                cache_hit=False,
            ),
        )
        seq += 3
    end = 1 + steps * cycle_ms if not cache_hit else 1 + 2 * steps
    see(end + 5, "runs", rec(RunSucceeded, run_id=run_id, seq=seq, occurred_at=at(end)))
    return trace


def test_start_latency_is_ack_to_first_invocation_visible() -> None:
    assert em.start_latency_ms(synthetic_run()) == pytest.approx(4.0, abs=US)


def test_start_to_first_step_uses_the_worker_start_mid_millisecond() -> None:
    # Worker started at 5 ms (event time, truncated): read as 5.5 ms after the ack.
    assert em.start_to_first_step_ms(synthetic_run()) == pytest.approx(5.5, abs=US)


def test_step_overhead_subtracts_node_execution() -> None:
    run = synthetic_run(steps=3, cycle_ms=20, exec_ms=2)
    # RunStarted at 1 ms, RunSucceeded at 61 ms: 60 ms, minus 3 x 2 ms of execution, / 3.
    assert em.step_overhead_ms(run, 3) == pytest.approx(18.0, abs=US)
    slow_nodes = synthetic_run(steps=3, cycle_ms=20, exec_ms=10)
    assert em.step_overhead_ms(slow_nodes, 3) == pytest.approx(10.0, abs=US)


def test_end_to_end_step_is_sent_to_run_succeeded_visible() -> None:
    run = synthetic_run(steps=3, cycle_ms=20)
    # Sent at -1 ms, RunSucceeded visible at 66 ms.
    assert em.end_to_end_step_ms(run, 3) == pytest.approx(67 / 3, abs=US)


def test_step_overhead_needs_every_result() -> None:
    run = synthetic_run()
    run.seen = [s for s in run.seen if s.topic != "results"]
    with pytest.raises(ValueError, match="NodeResult for every succeeded step"):
        em.step_overhead_ms(run, 3)


def test_cache_hit_is_scheduled_to_succeeded() -> None:
    assert em.cache_hit_ms(synthetic_run(steps=1, cache_hit=True)) == pytest.approx(2.0, abs=US)
    with pytest.raises(ValueError, match="Expected a cache hit"):
        em.cache_hit_ms(synthetic_run(steps=1))


def test_steps_per_s_counts_succeeded_steps_until_the_last_run_ends() -> None:
    runs = [synthetic_run("a", steps=3), synthetic_run("b", steps=2)]
    # 5 steps; began 4 ms before T0; the last RunSucceeded ("a") visible at 66 ms.
    assert em.steps_per_s(runs, EPOCH0 - 0.004) == pytest.approx(5 / 0.070, rel=1e-4)


def test_first_names_what_was_seen_when_missing() -> None:
    run = synthetic_run()
    run.seen = [s for s in run.seen if not isinstance(s.record, RunSucceeded)]
    with pytest.raises(ValueError, match="Expected a RunSucceeded on runs for run r1"):
        em.end_to_end_step_ms(run, 3)


def test_hops_decompose_a_step() -> None:
    samples = em.hop_samples([synthetic_run(steps=3, cycle_ms=20, exec_ms=2)])
    assert samples["command"] == pytest.approx([1.5], abs=US)  # acked 0, RunStarted at 1 (+0.5)
    assert samples["dispatch_commit"] == pytest.approx([2.5] * 3, abs=US)
    assert samples["dispatch"] == pytest.approx([4.0] * 3, abs=US)
    assert samples["execute"] == pytest.approx([2.0] * 3, abs=US)
    assert samples["result_produce"] == pytest.approx([1.0] * 3, abs=US)
    assert samples["result"] == pytest.approx([13.0] * 3, abs=US)
    assert samples["step_cycle"] == pytest.approx([20.0] * 3, abs=US)
    # The hops of a step add up to its cycle.
    parts = ("dispatch", "execute", "result_produce", "result")
    assert sum(samples[h][0] for h in parts) == pytest.approx(samples["step_cycle"][0], abs=US)
    assert samples["end_commit"] == pytest.approx([4.5], abs=US)

    summary = em.summarize_hops(samples)
    assert summary["dispatch"] == pytest.approx(
        {"n": 3.0, "mean": 4.0, "p50": 4.0, "p99": 4.0}, abs=US
    )


def test_summarize_hops_leaves_out_empty_hops() -> None:
    assert em.summarize_hops({"a": [], "b": [1.0, 3.0]}) == {
        "b": {"n": 2.0, "mean": 2.0, "p50": 2.0, "p99": pytest.approx(2.98)}
    }


def test_latency_keys() -> None:
    assert em.latency_keys("x", [1.0, 2.0, 3.0]) == {"x_p50_ms": 2.0, "x_p99_ms": 2.98}
    with pytest.raises(ValueError, match="at least one sample"):
        em.latency_keys("x", [])


def test_latency_keys_with_p95() -> None:
    keys = em.latency_keys("x", [float(v) for v in range(1, 102)], p95=True)
    assert keys == {"x_p50_ms": 51.0, "x_p95_ms": 96.0, "x_p99_ms": 100.0}


def test_inline_step_share_counts_the_steps_the_scheduler_evaluated() -> None:
    trace = RunTrace("r1", sent=EPOCH0, acked=EPOCH0)
    for i, worker in enumerate(["scheduler-inline", "scheduler-inline", "worker-1"]):
        start = rec(StepStarted, run_id="r1", step=step_ref(i), invocation_id=f"a{i}")
        start = start.model_copy(update={"worker": worker})
        trace.seen.append(Seen(EPOCH0, "runs", start))
        trace.seen.append(Seen(EPOCH0, "runs", rec(StepSucceeded, run_id="r1", step=step_ref(i))))
    assert em.inline_step_share([trace]) == pytest.approx(2 / 3)
    assert em.inline_step_share([]) == 0.0
