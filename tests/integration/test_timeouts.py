"""Timeouts that mean what users expect, on the real engine (docs/decisions/0013).

A backlog delays runs but never fails them: the step ``timeout`` counts from the moment a worker
starts the attempt, so waiting in the invoke topic or for one of the worker's lanes is not
execution. Only ``queue_timeout`` bounds that wait, and it fails the step with its own error
class (``QueueTimeout``), not retried, without the attempt ever running.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from node_workers.runtime import WorkerConfig
from processors.scheduler import TIMEOUT_GRACE_MS
from tests.integration.engine_fixtures import HarnessFactory, assert_replay_equivalent
from tests.integration.http_fixtures import HttpTestServer
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RUNS = 40
CALL_MS = 250
TIMEOUT = timedelta(milliseconds=1_500)


def test_a_backlog_longer_than_the_step_timeout_fails_no_run(
    engine_harness: HarnessFactory, http: HttpTestServer
) -> None:
    # One worker with two I/O slots, 40 runs at once of a 250 ms call with a 1.5 s timeout and
    # retries: the last runs wait ~5 s for a lane, three times their timeout. Every call runs
    # longer than the start signal's delay (100 ms), so every attempt is signalled.
    harness = engine_harness(
        worker_config=WorkerConfig(
            io_concurrency=2, commit_interval_s=0.1, poll_timeout_s=0.05, start_signal_delay_s=0.1
        )
    )
    harness.register(
        {
            "id": "backlog",
            "inputs": {"n": {"type": "integer", "required": True}},
            "steps": [
                {
                    "id": "call",
                    "node": "http.request@^1",
                    "params": {"url": f"{http.url}/slow?ms={CALL_MS}&n={{{{ inputs.n }}}}"},
                    "timeout": "1500ms",
                    "retry": {"max_attempts": 4, "initial_backoff": "100ms"},
                }
            ],
        }
    )
    run_ids = [harness.start("backlog", {"n": n}) for n in range(RUNS)]
    runs = {run_id: harness.wait(run_id, timeout=60) for run_id in run_ids}

    statuses = Counter(run.status for run in runs.values())
    assert statuses == {"succeeded": RUNS}, {
        r: (run.status, run.error) for r, run in runs.items() if run.status != "succeeded"
    }
    events = Counter(e.event_type for run_id in run_ids for e in harness.events(run_id))
    assert events["StepTimedOut"] == 0 and events["StepRetryScheduled"] == 0
    assert events["StepFailed"] == 0
    assert events["StepDispatched"] == events["StepStarted"] == events["StepSucceeded"] == RUNS
    # Exactly one call per run reached the service: none lost, none repeated.
    calls = Counter(r.query["n"][0] for r in http.requests_to("/slow"))
    assert calls == {str(n): 1 for n in range(RUNS)}

    steps = [harness.steps(run_id)["call"] for run_id in run_ids]
    assert {(s.status, s.attempt) for s in steps} == {("succeeded", 1)}
    waits = []
    for step in steps:
        assert step.dispatched_at is not None and step.started_at is not None
        assert step.finished_at is not None and step.worker is not None
        waits.append(step.started_at - step.dispatched_at)
        assert step.finished_at - step.started_at < TIMEOUT  # execution stayed within it
    # The backlog was real: some runs waited for a lane much longer than their timeout.
    assert max(waits) > 2 * TIMEOUT, sorted(waits)
    longest = run_ids[waits.index(max(waits))]
    assert_replay_equivalent(harness, longest)


def test_only_an_attempt_running_past_the_start_signal_delay_is_started(
    engine_harness: HarnessFactory, http: HttpTestServer
) -> None:
    # A sub-millisecond transform ends long before the delay (500 ms): the scheduler goes from
    # dispatched to succeeded on its result alone. The 1.5 s call is signalled after the delay,
    # with the worker's true start; the scheduler's backstop timer counts from the signal.
    harness = engine_harness(
        worker_config=WorkerConfig(
            commit_interval_s=0.1, poll_timeout_s=0.05, start_signal_delay_s=0.5
        )
    )
    harness.register(
        {
            "id": "lazy",
            "steps": [
                {
                    "id": "fast",
                    "node": "transform@^1",
                    "params": {"expression": "`1`"},
                    "timeout": "5s",
                },
                {
                    "id": "slow",
                    "node": "http.request@^1",
                    "params": {"url": f"{http.url}/slow?ms=1500"},
                    "timeout": "5s",
                    "needs": ["fast"],
                },
            ],
        }
    )
    run_id = harness.start("lazy")
    run = harness.wait(run_id, timeout=30)
    assert run.status == "succeeded", run.error
    events = harness.events(run_id)
    started = [e for e in events if e.event_type == "StepStarted"]
    assert [e.payload["step"]["step_id"] for e in started] == ["slow"]
    fast = [e.event_type for e in events if e.payload.get("step", {}).get("step_id") == "fast"]
    assert fast == ["StepDispatched", "StepSucceeded"], fast  # scheduled by the dispatch
    steps = harness.steps(run_id)
    assert steps["fast"].status == "succeeded" and steps["fast"].started_at is None
    assert steps["fast"].duration_ms is not None

    (start,) = started
    worker_start = datetime.fromisoformat(start.payload["started_at"])
    assert steps["slow"].started_at == worker_start  # the true start, not the signal's time
    # Recorded no sooner than the delay after the start (worker and scheduler share a clock; how
    # much later depends on the scheduler's lag, which a loaded machine makes unbounded).
    assert start.occurred_at - worker_start >= timedelta(milliseconds=450)
    timer = datetime.fromisoformat(start.payload["timeout_at"])
    grace = timedelta(milliseconds=TIMEOUT_GRACE_MS)
    assert timer - start.occurred_at >= timedelta(seconds=5) + grace - timedelta(milliseconds=1)
    assert_replay_equivalent(harness, run_id)


def test_queue_timeout_fails_the_step_when_no_worker_starts_it(
    engine_harness: HarnessFactory, http: HttpTestServer
) -> None:
    harness = engine_harness(workers=False)  # nobody serves the invoke topics yet
    harness.register(
        {
            "id": "unserved",
            "steps": [
                {
                    "id": "call",
                    "node": "http.request@^1",
                    "params": {"url": f"{http.url}/echo"},
                    "timeout": "5s",
                    "queue_timeout": "1s",
                    "retry": {"max_attempts": 3, "initial_backoff": "100ms"},
                },
                {"id": "after", "node": "transform@^1", "needs": ["call"]},
            ],
        }
    )
    run_id = harness.start("unserved")
    run = harness.wait(run_id, timeout=30)
    assert run.status == "failed" and run.failed_step == "call"
    assert run.error is not None
    assert (run.error["error_class"], run.error["retryable"]) == ("QueueTimeout", False)
    step = harness.steps(run_id)["call"]
    assert (step.status, step.attempt, step.started_at) == ("failed", 1, None)
    assert step.error is not None and step.error["error_class"] == "QueueTimeout"
    assert "after" not in harness.steps(run_id)
    kinds = Counter(e.event_type for e in harness.events(run_id))
    assert kinds["StepDispatched"] == 1 and kinds["StepFailed"] == 1
    assert kinds["StepRetryScheduled"] == kinds["StepStarted"] == kinds["StepTimedOut"] == 0
    assert_replay_equivalent(harness, run_id)

    # A worker arrives after the queue timeout: it answers the stale invocation without running
    # it (the service never sees the call), and the failed run stays as it was.
    worker = harness.engine.start_workers()
    eventually(lambda: worker.stats.results, 30, "the late worker to answer the invocation")
    assert (worker.stats.results, worker.stats.started) == (1, 0)
    assert http.requests_to("/echo") == []
    assert_replay_equivalent(harness, run_id)
    after = harness.run(run_id)
    assert after is not None and (after.status, after.last_seq) == ("failed", run.last_seq)


def test_a_scheduler_restart_reads_the_results_before_timing_attempts_out(
    engine_harness: HarnessFactory, http: HttpTestServer
) -> None:
    # The attempts finish while the scheduler is down and their step-timeout timers fall due
    # before it is back: it must read the results waiting for it before firing those timers.
    # Frequent heartbeats (every 20 ms) leave the restarted scheduler a backlog of about a
    # thousand records to read before the results.
    runs = 8
    harness = engine_harness(worker_config=WorkerConfig(heartbeat_interval_s=0.02))
    harness.register(
        {
            "id": "restart",
            "inputs": {"n": {"type": "integer", "required": True}},
            "steps": [
                {
                    "id": "call",
                    "node": "http.request@^1",
                    # 2 s of work against a 6 s timeout: a margin a loaded machine (a full
                    # suite beside other work) keeps; 1 s of margin did not, once.
                    "params": {"url": f"{http.url}/slow?ms=2000&n={{{{ inputs.n }}}}"},
                    "timeout": "6s",  # no retry: a timer fired too early would fail the run
                }
            ],
        }
    )
    engine = harness.engine
    scheduler, worker = engine.scheduler, engine.worker
    assert scheduler is not None and worker is not None
    run_ids = [harness.start("restart", {"n": n}) for n in range(runs)]

    def running() -> list[str]:
        """The runs whose step the live scheduler has seen started (not the projection)."""
        states = [scheduler.run_state(run_id) for run_id in run_ids]
        return [s.run_id for s in states if s and s.steps["call"].status.value == "running"]

    eventually(running, 30, f"{runs} steps running", until=lambda ids: len(ids) == runs)
    first = next(c for c in engine.components if c.name.startswith("scheduler-"))
    first.stop()
    first.join(30)
    assert not first.is_alive()
    # Every timer it armed (at a start or a heartbeat, before it stopped) is due by then.
    due = datetime.now(UTC) + timedelta(seconds=6, milliseconds=TIMEOUT_GRACE_MS)

    eventually(lambda: worker.stats.results, 30, f"{runs} results", until=lambda n: n >= runs)
    eventually(
        lambda: datetime.now(UTC),
        30,
        f"the step timers to be due ({due})",
        until=lambda now: now > due,
    )

    engine.scheduler = engine.start_scheduler(instance_id="restarted")
    finished = {run_id: harness.wait(run_id, timeout=60) for run_id in run_ids}
    assert Counter(r.status for r in finished.values()) == {"succeeded": runs}, {
        r: run.error for r, run in finished.items()
    }
    events = Counter(e.event_type for run_id in run_ids for e in harness.events(run_id))
    assert events["StepTimedOut"] == events["StepFailed"] == 0
    assert events["StepStarted"] == events["StepSucceeded"] == runs
    assert Counter(r.query["n"][0] for r in http.requests_to("/slow")) == {
        str(n): 1 for n in range(runs)
    }
    assert_replay_equivalent(harness, run_ids[0])
