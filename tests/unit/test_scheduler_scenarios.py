"""Scheduler scenarios driven through decide/evolve by the in-memory Simulation (pure, fast).

Every Simulation.send also asserts live state == fold(log); the golden-scenario test below
additionally checks it per scenario explicitly.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from processors.scheduler import (
    TIMEOUT_GRACE_MS,
    CacheHit,
    CacheMiss,
    DecisionContext,
    RunState,
    RunStatus,
    StepStatus,
    cache_key,
    decide,
    due_timers,
    fire_timer_command,
    fold,
    pending_cache_lookups,
)
from processors.scheduler.backoff import backoff_ms
from processors.scheduler.timers import next_due
from schemas.models import (
    CommandRejected,
    ErrorInfo,
    FireTimer,
    GraphMutationType,
    NodeHeartbeat,
    NodeInvocation,
    PauseRun,
    RunFailed,
    RunSucceeded,
    StepDispatched,
    StepFailed,
    StepRetryScheduled,
    StepSkipped,
    StepStarted,
    StepSucceeded,
    StepTimedOut,
    StepTimeoutExtended,
    TimerKind,
    TraceStatus,
)
from schemas.run_log import schedules_step
from tests.support.scheduler_golden import SCENARIOS, load_events
from tests.support.scheduler_simulation import NO_ANSWER, T0, WORKER, Simulation
from workflows import RetrySpec


def echo(inv: NodeInvocation) -> object:
    return {"step": inv.step.step_id, "params": inv.params}


def kinds(sim: Simulation) -> list[str]:
    return [type(e).__name__ for e in sim.log]


def events_of(sim: Simulation, cls: type) -> list[Any]:
    return [e for e in sim.log if isinstance(e, cls)]


def step_status(sim: Simulation, step_id: str) -> StepStatus:
    return sim.run.steps[step_id].status


def run_status(sim: Simulation) -> RunStatus:
    return sim.run.status


TWO = """
id: two
steps:
  - {id: first, node: transform@^1, params: {n: 1}}
  - {id: second, node: transform@^1, needs: [first], params: {n: "{{ steps.first.output.n }}"}}
outputs: {n: "{{ steps.second.output.params.n }}"}
"""

RETRY = """
id: retry
steps:
  - id: flaky
    node: http.request@^1
    timeout: 1s
    retry: {max_attempts: 3, initial_backoff: 100ms, max_backoff: 1s, jitter: 0,
            non_retryable: [HttpStatus400]}
"""


# -- every golden scenario: replay equivalence and outcome ----------------------------------------


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_live_state_equals_replay(name: str) -> None:
    sim = SCENARIOS[name]()
    assert sim.state is not None
    assert fold(sim.log) == sim.state
    assert [e.seq for e in sim.log] == list(range(len(sim.log)))
    assert len({e.event_id for e in sim.log}) == len(sim.log)
    # Snapshots (the runtime's table value) round-trip exactly.
    assert RunState.from_snapshot(sim.state.to_snapshot()) == sim.state


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenarios_are_deterministic(name: str) -> None:
    a, b = SCENARIOS[name](), SCENARIOS[name]()
    assert [e.model_dump() for e in a.log] == [e.model_dump() for e in b.log]


def test_linear() -> None:
    sim = SCENARIOS["linear"]()
    assert run_status(sim) is RunStatus.SUCCEEDED
    # Each step scheduled and dispatched in one event (ADR 0075).
    order = [(type(e).__name__, e.step.step_id) for e in sim.log if schedules_step(e)]
    assert order == [
        ("StepDispatched", "fetch"),
        ("StepDispatched", "parse"),
        ("StepDispatched", "store"),
    ]
    # Templates were rendered from the upstream output at dispatch time.
    assert sim.invocation("parse").params == {"body": "https://example.com/a"}
    assert sim.run.outputs == {"note": "parsed parse"}
    # The catalog resolver pinned concrete versions; topics follow the major.
    fetch = events_of(sim, StepDispatched)[0]
    assert (fetch.node_version, fetch.invoke_topic) == ("1.4.2", "reflux.invoke.http.request.v1")


def test_diamond_dispatches_both_branches_before_the_join() -> None:
    sim = Simulation(SCENARIOS["diamond"]().definition)
    sim.start()
    sim.succeed("a", {"params": {"n": 1}})
    assert {i.step.step_id for i in sim.outstanding.values()} == {"b", "c"}
    sim.succeed("b", {"params": {"n": 1}})
    assert step_status(sim, "d") is StepStatus.PENDING  # c still running
    sim.succeed("c", {"params": {"n": 3}})
    assert step_status(sim, "d") is StepStatus.DISPATCHED
    assert sim.invocation("d").params == {"sum": [1, 3]}


def test_fan_out_fan_in() -> None:
    sim = SCENARIOS["fan_out_fan_in"]()
    assert sim.run.outputs == {"shards": [1, 2, 3]}
    join = next(i for i in sim.sent if i.step.step_id == "join")
    answered_before_join = [
        e.step.step_id for e in sim.log if isinstance(e, StepSucceeded) and e.seq < join.seq
    ]
    assert {"w1", "w2", "w3"} <= set(answered_before_join)


def test_condition_skip_and_propagation() -> None:
    sim = SCENARIOS["condition_skip"]()
    steps = sim.run.steps
    assert steps["approve"].status is StepStatus.SKIPPED
    assert (
        steps["approve"].skip_reason
        == "condition 'steps.check.output.params.amount > `100`' was false"
    )
    assert steps["notify"].status is StepStatus.SKIPPED
    assert steps["notify"].skip_reason == "upstream step 'approve' was skipped"
    assert steps["auto"].status is StepStatus.SUCCEEDED
    assert run_status(sim) is RunStatus.SUCCEEDED
    assert sim.run.outputs == {"approved": "skipped", "notified": "skipped"}
    assert not any(i.step.step_id in ("approve", "notify") for i in sim.sent)


def test_condition_true_takes_the_other_branch() -> None:
    sim = Simulation(SCENARIOS["condition_skip"]().definition)
    sim.start({"amount": 500})
    sim.run_workers(echo)
    assert step_status(sim, "approve") is StepStatus.SUCCEEDED
    assert step_status(sim, "notify") is StepStatus.SUCCEEDED
    assert step_status(sim, "auto") is StepStatus.SKIPPED


def test_retry_then_success() -> None:
    sim = SCENARIOS["retry_then_success"]()
    retries = events_of(sim, StepRetryScheduled)
    assert [r.attempt for r in retries] == [2, 3]
    # Exponential: 100ms then 200ms, less up to 50% jitter (equal jitter), capped at 1s.
    assert 50 < retries[0].backoff_ms <= 100 and 100 < retries[1].backoff_ms <= 200
    assert all(
        r.next_attempt_at - r.occurred_at == timedelta(milliseconds=r.backoff_ms) for r in retries
    )
    assert [(r.reason, r.circuit, r.held_ms) for r in retries] == [("backoff", "closed", 0)] * 2
    invocations = [i for i in sim.sent if i.step.step_id == "flaky"]
    assert [i.attempt for i in invocations] == [1, 2, 3]
    assert len({i.invocation_id for i in invocations}) == 3  # a new id per attempt
    assert len({i.idempotency_key for i in invocations}) == 1  # same params, same key
    assert sim.run.outputs == {"attempts": 3}


def test_retries_exhausted_fails_the_run_with_the_error_class() -> None:
    sim = SCENARIOS["retries_exhausted"]()
    assert kinds(sim)[-2:] == ["StepFailed", "RunFailed"]
    failed = sim.log[-1]
    assert isinstance(failed, RunFailed)
    assert failed.error.error_class == "HttpStatus503"
    assert failed.failed_step is not None and failed.failed_step.step_id == "flaky"
    assert step_status(sim, "after") is StepStatus.PENDING  # never scheduled
    assert sim.run.timers == {}


def test_non_retryable_class_is_not_retried() -> None:
    sim = SCENARIOS["non_retryable"]()
    assert kinds(sim) == [
        "RunStarted",
        "StepDispatched",
        "StepStarted",
        "StepFailed",
        "RunFailed",
    ]
    assert sim.run.error is not None and sim.run.error.error_class == "HttpStatus400"


def test_worker_says_not_retryable() -> None:
    sim = Simulation(RETRY)
    sim.start()
    sim.fail("flaky", "Fatal", retryable=False)
    assert run_status(sim) is RunStatus.FAILED
    assert not events_of(sim, StepRetryScheduled)


def test_step_timeout_via_fire_timer_then_retry() -> None:
    # The step timeout counts from the worker's start (StepStarted), not from the dispatch: the
    # scheduler's timer is the step timeout plus TIMEOUT_GRACE_MS after the start.
    sim = Simulation(RETRY)
    sim.start()
    dispatched = events_of(sim, StepDispatched)[0]
    assert dispatched.timeout_at is None and dispatched.queue_timeout_at is None
    assert sim.run.timers == {}  # waiting for a worker: no timer at all
    sim.advance(3_000)  # three seconds in the queue
    sim.start_attempt(sim.invocation("flaky"))
    started = T0 + timedelta(seconds=3)
    (start,) = events_of(sim, StepStarted)
    assert (start.started_at, start.worker) == (started, WORKER)
    assert start.timeout_at == started + timedelta(milliseconds=1_000 + TIMEOUT_GRACE_MS)
    timer = next(iter(sim.run.timers.values()))
    assert (timer.kind, timer.attempt, timer.step_id) == (TimerKind.STEP_TIMEOUT, 1, "flaky")
    assert timer.due_at == start.timeout_at
    assert step_status(sim, "flaky") is StepStatus.RUNNING
    assert sim.run.steps["flaky"].started_at == started
    assert due_timers(sim.run, start.timeout_at - timedelta(milliseconds=1)) == []
    sim.advance_and_fire(1_000 + TIMEOUT_GRACE_MS)
    timed_out = events_of(sim, StepTimedOut)
    assert len(timed_out) == 1 and timed_out[0].timeout_ms == 1_000
    assert sim.run.steps["flaky"].error is not None
    assert sim.run.steps["flaky"].error.error_class == "StepTimeout"
    assert step_status(sim, "flaky") is StepStatus.RETRY_WAIT
    sim.advance_and_fire(100)
    assert sim.invocation("flaky").attempt == 2


def test_timeouts_exhaust_retries_and_fail_the_run() -> None:
    sim = Simulation(RETRY)
    sim.start()
    sim.run_workers(lambda inv: NO_ANSWER)
    assert run_status(sim) is RunStatus.FAILED
    assert sim.run.error is not None and sim.run.error.error_class == "StepTimeout"
    assert len(events_of(sim, StepTimedOut)) == 3


def test_stale_timers_and_late_or_duplicate_results_are_silent_noops() -> None:
    sim = SCENARIOS["stale_and_duplicate"]()
    noops = [d for d in sim.decisions if d.is_noop]
    assert len(noops) == 3  # re-fired timeout, late attempt-1 result, duplicate result
    assert not events_of(sim, CommandRejected)
    assert run_status(sim) is RunStatus.SUCCEEDED
    assert sim.run.steps["slow"].output == {"params": {"ok": True}}


def test_fire_timer_for_an_unknown_or_mismatched_timer_is_a_noop() -> None:
    sim = Simulation(RETRY)
    sim.start()
    sim.start_attempt(sim.invocation("flaky"))
    timer = next(iter(sim.run.timers.values()))
    for attempt, kind in ((2, timer.kind), (timer.attempt, TimerKind.BACKOFF)):
        d = sim.send(
            FireTimer(
                run_id=sim.run_id,
                timer_id=timer.timer_id,
                step_id=timer.step_id,
                attempt=attempt,
                kind=kind,
                due_at=timer.due_at,
            )
        )
        assert d.is_noop
    d = sim.send(
        FireTimer(
            run_id=sim.run_id, timer_id="nope", attempt=0, kind=TimerKind.RUN_DEADLINE, due_at=T0
        )
    )
    assert d.is_noop


def test_run_deadline() -> None:
    sim = SCENARIOS["run_deadline"]()
    failed = sim.log[-1]
    assert isinstance(failed, RunFailed)
    assert failed.error.error_class == "RunDeadlineExceeded" and failed.failed_step is None
    assert sim.now == T0 + timedelta(seconds=5)


def test_pause_stops_dispatch_and_resume_continues() -> None:
    sim = Simulation(TWO)
    sim.start()
    sim.pause()
    assert run_status(sim) is RunStatus.PAUSED
    d = sim.succeed("first", {"n": 7})
    assert [type(e).__name__ for e in d.events] == ["StepSucceeded"]  # recorded, nothing new
    assert step_status(sim, "second") is StepStatus.PENDING
    d = sim.resume()
    assert [type(e).__name__ for e in d.events] == ["RunResumed", "StepDispatched"]
    assert d.invocations[0].params == {"n": 7}
    sim.run_workers(echo)
    assert run_status(sim) is RunStatus.SUCCEEDED and sim.run.outputs == {"n": 7}


def test_retry_backoff_due_during_pause_is_dispatched_on_resume() -> None:
    sim = Simulation(RETRY)
    sim.start()
    sim.fail("flaky", "Flaky")
    sim.pause()
    sim.advance(500)
    assert due_timers(sim.run, sim.now) == []  # paused: backoffs are not due
    d = sim.resume()
    assert [type(e).__name__ for e in d.events] == ["RunResumed", "StepDispatched"]
    assert d.invocations[0].attempt == 2


def test_cancel_is_terminal_and_ignores_late_results() -> None:
    sim = SCENARIOS["cancel"]()
    assert run_status(sim) is RunStatus.CANCELLED
    assert step_status(sim, "first") is StepStatus.CANCELLED
    assert step_status(sim, "second") is StepStatus.CANCELLED
    assert sim.decisions[-1].is_noop  # the late result
    d = sim.resume()
    assert d.rejection == "Expected run to be paused, but it is cancelled"


def test_redrive_failed_step_to_success() -> None:
    sim = SCENARIOS["redrive"]()
    assert run_status(sim) is RunStatus.SUCCEEDED
    scheduled = [e for e in sim.log if schedules_step(e) and e.step.step_id == "fetch"]
    assert [e.attempt for e in scheduled] == [1, 2]  # the attempt counter continues
    assert scheduled[1].params == {"url": "https://good.example"}  # the mutation took effect
    assert sim.run.error is None and sim.run.failed_step is None
    assert sim.run.outputs == {"from": "https://good.example"}


def test_redrive_with_another_failed_step_fails_again_naming_it() -> None:
    sim = Simulation(
        """
id: two-failures
steps:
  - {id: a, node: transform@^1}
  - {id: b, node: transform@^1}
  - {id: c, node: transform@^1, needs: [a, b]}
"""
    )
    sim.start()
    sim.fail("a", "A", retryable=False)  # the run fails; b is still in flight
    d = sim.fail("b", "B", retryable=False)  # recorded, no second RunFailed
    assert [type(e).__name__ for e in d.events] == ["StepFailed"]
    sim.redrive("a")
    assert run_status(sim) is RunStatus.RUNNING
    d = sim.succeed("a", {})
    assert isinstance(d.events[-1], RunFailed)
    assert d.events[-1].failed_step is not None and d.events[-1].failed_step.step_id == "b"
    sim.redrive("b")
    sim.run_workers(echo)
    assert run_status(sim) is RunStatus.SUCCEEDED


def test_rejections_have_reasons() -> None:
    sim = SCENARIOS["rejections"]()
    rejected = events_of(sim, CommandRejected)
    assert [r.reason for r in rejected] == [
        "Expected run to be paused, but it is running",
        "Expected step 'first' to be failed or timed_out, but it is dispatched",
        "Expected step 'nope' to exist, but the run has no such step (steps: first, second)",
        "Expected step 'first' to be pending, but it is dispatched",
        "Expected run to be failed or running, but it is succeeded",
        "Expected run to be running, but it is succeeded",
    ]
    assert [r.command_type for r in rejected][:2] == [
        "reflux.commands.ResumeRun",
        "reflux.commands.RedriveStep",
    ]
    assert sim.rejections == [r.reason for r in rejected]
    # A rejection only advances seq: the state is otherwise unchanged.
    assert run_status(sim) is RunStatus.SUCCEEDED


def test_redrive_of_a_succeeded_step_in_a_failed_run_is_rejected() -> None:
    sim = Simulation(TWO)
    sim.start()
    sim.succeed("first", {"n": 1})
    sim.fail("second", "X", retryable=False)
    d = sim.redrive("first")
    assert d.rejection == "Expected step 'first' to be failed or timed_out, but it is succeeded"


def test_pause_paused_and_resume_running() -> None:
    sim = Simulation(TWO)
    sim.start()
    assert sim.resume().rejection == "Expected run to be paused, but it is running"
    sim.pause()
    assert sim.pause().rejection == "Expected run to be running, but it is paused"


def test_duplicate_command_id_is_a_noop() -> None:
    sim = Simulation(TWO)
    sim.start()
    pause = PauseRun(run_id=sim.run_id, command_id="cmd-1")
    assert len(sim.send(pause).events) == 1
    assert sim.send(pause).is_noop
    rejected = PauseRun(run_id=sim.run_id, command_id="cmd-2")
    assert sim.send(rejected).rejection is not None
    assert sim.send(rejected).is_noop  # a rejected command is not rejected twice


def test_start_run_rejections_and_idempotency() -> None:
    sim = SCENARIOS["start_rejected"]()
    assert isinstance(sim.log[0], CommandRejected) and sim.log[0].seq == 0
    assert (
        sim.log[0].reason == "Expected valid inputs, but inputs.url: expected string, got integer"
    )
    assert run_status(sim) is RunStatus.SUCCEEDED
    d = sim.start({"url": "https://x"})
    assert d.rejection == "Expected run 'run-1' not to exist, but it is succeeded"

    keyed = Simulation(TWO)
    keyed.start(idempotency_key="k")
    assert keyed.start(idempotency_key="k").is_noop


def test_commands_for_a_run_without_events() -> None:
    d = decide(None, PauseRun(run_id="ghost"), DecisionContext(now=T0))
    assert d.state is None and not d.events
    assert d.rejection == "Expected run 'ghost' to exist, but it has no events"
    d = decide(
        None,
        FireTimer(run_id="ghost", timer_id="t", attempt=0, kind=TimerKind.RUN_DEADLINE, due_at=T0),
        DecisionContext(now=T0),
    )
    assert d.is_noop


def test_cache_hit_skips_the_worker() -> None:
    sim = SCENARIOS["cache_hit"]()
    second = sim.run.steps["second"]
    assert second.cache_hit and second.status is StepStatus.SUCCEEDED
    assert second.output == sim.run.steps["first"].output
    assert not any(i.step.step_id == "second" for i in sim.sent)
    hit = next(e for e in events_of(sim, StepSucceeded) if e.step.step_id == "second")
    assert hit.cache_hit and hit.invocation_id is None and hit.duration_ms == 0
    keys = {e.step.step_id: e.cache_key for e in sim.log if schedules_step(e)}
    assert keys["first"] == keys["second"] == cache_key("llm.summarize", "0.3.0", {"text": "hello"})
    assert keys["fresh"] is None  # cache disabled on that step


def test_cache_answers_are_validated() -> None:
    sim = Simulation(SCENARIOS["cache_hit"]().definition)
    sim.start()
    (lookup,) = sim.lookups
    assert pending_cache_lookups(sim.run) == [lookup]
    wrong = CacheHit(sim.run_id, "first", lookup.attempt, "other-key", output=1)
    assert sim.send(wrong).is_noop
    sim.pause()
    miss = CacheMiss(sim.run_id, "first", lookup.attempt, lookup.cache_key)
    assert sim.send(miss).is_noop  # paused: dropped, resume asks again
    d = sim.resume()
    assert d.cache_lookups == (lookup,)
    d = sim.send(miss)
    assert [type(e).__name__ for e in d.events] == ["StepDispatched"]
    assert sim.send(miss).is_noop  # a second answer is late


def test_cache_write_after_a_fresh_success() -> None:
    sim = Simulation(SCENARIOS["cache_hit"]().definition)
    sim.start()
    sim.answer_lookups()
    d = sim.succeed("first", {"summary": "hi"})
    (write,) = d.cache_writes
    assert write.output == {"summary": "hi"} and write.ttl_ms == 3_600_000


def test_template_runtime_error_fails_the_step_without_retry() -> None:
    sim = Simulation(
        """
id: bad-template
steps:
  - {id: a, node: transform@^1}
  - id: b
    node: transform@^1
    needs: [a]
    retry: {max_attempts: 5}
    params: {n: "{{ length(steps.a.output.n) }}"}
"""
    )
    sim.start()
    d = sim.succeed("a", {"n": 5})
    assert [type(e).__name__ for e in d.events] == ["StepSucceeded", "StepFailed", "RunFailed"]
    failed = d.events[1]
    assert isinstance(failed, StepFailed)
    assert failed.error.error_class == "TemplateError" and not failed.error.retryable
    assert "steps.b.params.n" in failed.error.message


def test_output_template_failure() -> None:
    sim = Simulation(
        """
id: bad-output
steps: [{id: a, node: transform@^1}]
outputs: {n: "{{ abs(steps.a.output) }}"}
"""
    )
    sim.start()
    d = sim.succeed("a", "text")
    assert isinstance(d.events[-1], RunFailed)
    assert d.events[-1].error.error_class == "OutputTemplate"


def test_run_succeeded_duration_and_outputs() -> None:
    sim = Simulation(TWO)
    sim.start()
    sim.advance(1_000)
    sim.run_workers(lambda inv: {"n": 4, "params": inv.params})
    done = sim.log[-1]
    assert isinstance(done, RunSucceeded)
    assert done.outputs == {"n": 4}
    assert done.duration_ms == int((sim.now - T0).total_seconds() * 1000)


def test_worker_reported_skip_and_worker_timeout_status() -> None:
    sim = Simulation(TWO)
    sim.start()
    d = sim.result(sim.invocation("first"), TraceStatus.SKIPPED)
    assert isinstance(d.events[0], StepSkipped)
    assert step_status(sim, "second") is StepStatus.SKIPPED
    assert run_status(sim) is RunStatus.SUCCEEDED

    sim = Simulation(TWO)
    sim.start()
    d = sim.result(sim.invocation("first"), TraceStatus.TIMEOUT)
    assert isinstance(d.events[0], StepFailed) and d.events[0].error.error_class == "WorkerTimeout"


def test_decide_does_not_modify_its_input_state() -> None:
    sim = Simulation(TWO)
    sim.start()
    before = sim.run
    snapshot = before.to_snapshot()
    sim.succeed("first", {"n": 1})
    assert before.to_snapshot() == snapshot
    assert sim.run is not before


def test_timers_diff_in_decisions() -> None:
    sim = Simulation(RETRY)
    d = sim.start()
    assert d.timers_armed == ()  # no queue_timeout: nothing bounds the wait for a worker
    d = sim.start_attempt(sim.invocation("flaky"))
    assert [t.kind for t in d.timers_armed] == [TimerKind.STEP_TIMEOUT]
    d = sim.fail("flaky", "Flaky")
    assert [t.kind for t in d.timers_armed] == [TimerKind.BACKOFF]
    assert d.timers_cancelled == (f"timeout:{sim.invocation('flaky').invocation_id}:0",)


def test_backoff_grows_caps_and_jitters() -> None:
    policy = RetrySpec(initial_backoff=100, max_backoff=1_000, multiplier=3, jitter=0.5)
    assert [backoff_ms(policy, n, 0.0) for n in (1, 2, 3, 4)] == [100, 300, 900, 1_000]
    assert backoff_ms(policy, 1, 0.999) == 50
    # The cap is an upper bound, and the jitter survives it (below, not above, the base).
    assert backoff_ms(policy, 4, 0.999) == 500 and backoff_ms(policy, 9, 0.5) == 750
    assert backoff_ms(policy.model_copy(update={"jitter": 1.0}), 2, 0.999) == 0  # full jitter
    assert RetrySpec().jitter == 0.5  # equal jitter by default


def test_graph_mutations_via_commands() -> None:
    sim = SCENARIOS["graph_mutation"]()
    graph = sim.run.graph
    assert graph.step_ids == ["a", "b", "c", "e"]
    assert graph.step("c").node == "http.request@^2"
    assert sim.invocation("c").step.node_version == "2.0.0"
    assert sim.invocation("c").idempotency_key.startswith("run-1:c:")
    assert sim.invocation("b").params == {"v": 20, "from_a": 1}
    assert sim.invocation("e").params == {"b": 20}
    assert run_status(sim) is RunStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("kind", "step_id", "data", "reason"),
    [
        ("add_step", "a", {"node": "transform@^1"}, "Expected step 'a' not to exist, but it is dispatched"),  # noqa: E501
        ("remove_step", "a", {}, "Expected step 'a' to be pending, but it is dispatched"),
        ("remove_step", "b", {}, "Expected no step to need 'b', but 'c' needs it"),
        ("update_params", "a", {"v": 1}, "Expected step 'a' to be pending, retry_wait, failed or timed_out, but it is dispatched"),  # noqa: E501
        ("update_params", "zz", {}, "Expected step 'zz' to exist, but the run has no such step (steps: a, b, c)"),  # noqa: E501
        ("add_step", "x", {"node": "transform@^1", "needs": ["c"], "params": {"q": "{{ steps.b.output }}"}}, None),  # noqa: E501
        ("add_step", "y", {"node": "transform@^1", "params": {"q": "{{ steps.b.output }}"}}, "Expected a valid graph after the mutation, but steps[3].params.q: step 'b' is not upstream of 'y'; add it to needs"),  # noqa: E501
        ("replace_node", "b", {"node": "http.request", "node_version": "^9"}, "Expected a valid graph after the mutation, but steps[1].node: no version of 'http.request' satisfies '^9' (available: 1.0.0)"),  # noqa: E501
        ("replace_node", "b", {"nope": 1}, 'Expected a valid graph mutation, but mutation.data: expected {"node": "<name>", "node_version": "<constraint>"}'),  # noqa: E501
    ],
)  # fmt: skip
def test_graph_mutation_rules(kind: str, step_id: str, data: object, reason: str | None) -> None:
    from workflows import StaticNodeCatalog

    sim = Simulation(
        """
id: m
steps:
  - {id: a, node: transform@^1}
  - {id: b, node: transform@^1, needs: [a]}
  - {id: c, node: transform@^1, needs: [b]}
""",
        node_catalog=StaticNodeCatalog({"transform": ["1.0.0"], "http.request": ["1.0.0"]}),
    )
    sim.start()
    d = sim.mutate(kind, step_id, data)
    assert d.rejection == reason
    if reason is None:
        assert step_id in sim.run.graph.step_ids


def test_mutation_on_a_finished_run_is_rejected() -> None:
    sim = SCENARIOS["cancel"]()
    d = sim.mutate(GraphMutationType.UPDATE_PARAMS, "second", {"n": 1})
    assert d.rejection == "Expected run to be running, paused or failed, but it is cancelled"


def test_removing_the_last_pending_step_completes_the_run() -> None:
    sim = Simulation(TWO)
    sim.start()
    sim.pause()
    sim.succeed("first", {"n": 1})
    d = sim.mutate("remove_step", "second")
    assert d.rejection == (  # the outputs still reference it
        "Expected a valid graph after the mutation, but outputs.n: unknown step 'second' "
        "(known: first)"
    )
    sim.mutate("update_params", "second", {"n": 2})
    sim = Simulation(TWO.replace('outputs: {n: "{{ steps.second.output.params.n }}"}', ""))
    sim.start()
    sim.pause()
    sim.succeed("first", {"n": 1})
    assert sim.mutate("remove_step", "second").rejection is None
    d = sim.resume()
    assert isinstance(d.events[-1], RunSucceeded)
    assert sim.run.steps.keys() == {"first"}


def test_fire_timer_commands_come_from_state() -> None:
    sim = Simulation(RETRY)
    sim.start()
    sim.start_attempt(sim.invocation("flaky"))
    (command,) = due_timers(sim.run, T0 + timedelta(seconds=3))
    assert command.kind is TimerKind.STEP_TIMEOUT and command.attempt == 1
    assert command.command_id == f"fire:{command.timer_id}"
    assert next_due(sim.run) == T0 + timedelta(milliseconds=1_000 + TIMEOUT_GRACE_MS)


def test_redrive_re_evaluates_when_after_a_fix() -> None:
    sim = Simulation(
        """
id: bad-when
steps:
  - {id: a, node: transform@^1}
  - {id: b, node: transform@^1, needs: [a], when: "abs(steps.a.output)"}
"""
    )
    sim.start()
    d = sim.succeed("a", "not a number")
    assert [type(e).__name__ for e in d.events] == ["StepSucceeded", "StepFailed", "RunFailed"]
    d = sim.redrive("b")  # the condition still fails: the step fails again, attempt 2
    assert [type(e).__name__ for e in d.events] == ["RunResumed", "StepFailed", "RunFailed"]
    assert sim.run.steps["b"].attempt == 2


EXAMPLE_INPUTS: dict[str, dict[str, Any]] = {
    "linear": {"url": "https://example.com"},
    "condition": {"amount": 5000},
    "http-call": {"user_id": 7, "token": "t"},
    "order-quote": {"city": "Lyon", "service": "http://127.0.0.1:9"},
}


IDENTITY_PLAN = {"plan": {"steps": [{"id": "result", "node": "transform@^1"}]}}


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml")),
    ids=lambda p: p.stem,
)
def test_examples_run_to_success_with_an_identity_worker(path: Path) -> None:
    sim = Simulation(path.read_text())
    sim.start(EXAMPLE_INPUTS.get(path.stem, {}))

    # Each step outputs its own rendered params (each item of a meta.map chunk too); an
    # ai.meta planner plans one such step.
    def identity(inv: NodeInvocation) -> Any:
        if inv.step.node == "ai.meta":
            return IDENTITY_PLAN
        if inv.chunk is not None:
            return [{"output": p} for p in inv.params]
        return inv.params

    sim.run_workers(identity)
    assert run_status(sim) is RunStatus.SUCCEEDED, sim.run.error
    assert fold(sim.log) == sim.state


def test_a_worker_timeout_on_a_step_with_a_timeout_ends_like_the_timer() -> None:
    # Worker deadline and step-timeout timer race; either way the step is StepTimedOut.
    sim = Simulation(RETRY)
    sim.start()
    d = sim.result(sim.invocation("flaky"), TraceStatus.TIMEOUT)
    assert isinstance(d.events[0], StepTimedOut)
    assert sim.run.steps["flaky"].error is not None
    assert sim.run.steps["flaky"].error.error_class == "StepTimeout"
    assert step_status(sim, "flaky") is StepStatus.RETRY_WAIT


# -- execution timeout vs queue wait (docs/decisions/0013-execution-and-queue-timeouts.md) ------

QUEUED = """
id: queued
steps:
  - id: call
    node: http.request@^1
    timeout: 1s
    queue_timeout: 5s
    retry: {max_attempts: 3, initial_backoff: 100ms, jitter: 0}
  - {id: other, node: transform@^1}
"""


def test_a_backlog_delays_a_step_but_does_not_time_it_out() -> None:
    sim = SCENARIOS["backlog"]()
    assert run_status(sim) is RunStatus.SUCCEEDED
    assert not events_of(sim, StepTimedOut) and not events_of(sim, StepRetryScheduled)
    assert [e.attempt for e in events_of(sim, StepDispatched)] == [1]
    (start,) = events_of(sim, StepStarted)
    assert start.started_at == T0 + timedelta(seconds=30)  # 30x the timeout spent in the queue
    assert sim.run.steps["call"].attempt == 1


def test_a_long_backlog_fires_no_timer_at_all_without_queue_timeout() -> None:
    sim = Simulation(RETRY)
    sim.start()
    assert next_due(sim.run) is None
    sim.advance(3_600_000)
    assert sim.fire_due() == []
    assert step_status(sim, "flaky") is StepStatus.DISPATCHED


def test_queue_timeout_fails_the_step_with_its_own_error_class_and_no_retry() -> None:
    sim = SCENARIOS["queue_timeout"]()
    failed = events_of(sim, StepFailed)
    assert len(failed) == 1 and failed[0].attempt == 1
    assert failed[0].error.error_class == "QueueTimeout" and not failed[0].error.retryable
    assert failed[0].invocation_id == sim.invocation("call").invocation_id
    assert "queue_timeout of 5000 ms" in failed[0].error.message
    assert sim.now == T0 + timedelta(seconds=5)
    assert not events_of(sim, StepTimedOut) and not events_of(sim, StepRetryScheduled)
    assert run_status(sim) is RunStatus.FAILED
    assert sim.run.error is not None and sim.run.error.error_class == "QueueTimeout"
    assert step_status(sim, "call") is StepStatus.FAILED
    assert sim.decisions[-1].is_noop  # the worker's start after the queue timeout
    assert not events_of(sim, StepStarted)


def test_a_start_within_the_queue_timeout_cancels_it_and_arms_the_step_timeout() -> None:
    sim = Simulation(QUEUED)
    sim.start()
    invocation = sim.invocation("call")
    assert invocation.start_by == T0 + timedelta(seconds=5)
    assert invocation.timeout_ms == 1_000 and invocation.deadline is None
    (queue,) = [t for t in sim.run.timers.values() if t.step_id == "call"]
    assert (queue.kind, queue.due_at) == (TimerKind.QUEUE_TIMEOUT, T0 + timedelta(seconds=5))
    sim.advance(4_900)
    d = sim.start_attempt(invocation)
    assert d.timers_cancelled == (queue.timer_id,)
    assert [t.kind for t in d.timers_armed] == [TimerKind.STEP_TIMEOUT]
    # The queue timer's FireTimer, already on its way when the start arrived: a no-op.
    stale = sim.send(
        FireTimer(
            run_id=sim.run_id,
            timer_id=queue.timer_id,
            step_id="call",
            attempt=1,
            kind=TimerKind.QUEUE_TIMEOUT,
            due_at=queue.due_at,
        )
    )
    assert stale.is_noop
    sim.advance(900)  # 5.8 s after dispatch, 0.9 s of execution
    assert sim.fire_due() == []
    sim.succeed("call", {"ok": 1})
    sim.run_workers(echo)
    assert run_status(sim) is RunStatus.SUCCEEDED
    assert not events_of(sim, StepFailed) and not events_of(sim, StepTimedOut)


def test_the_worker_refusing_a_start_after_start_by_ends_like_the_queue_timer() -> None:
    sim = Simulation(QUEUED)
    sim.start()
    error = ErrorInfo(error_class="QueueTimeout", message="start_by passed", retryable=False)
    d = sim.result(sim.invocation("call"), TraceStatus.ERROR, error=error, start=False)
    assert [type(e).__name__ for e in d.events] == ["StepFailed", "RunFailed"]
    assert sim.run.error is not None and sim.run.error.error_class == "QueueTimeout"
    assert not any(t.step_id == "call" for t in sim.run.timers.values())


def test_a_failed_run_keeps_the_queue_timers_of_attempts_in_flight() -> None:
    sim = Simulation(
        """
id: two-queued
steps:
  - {id: a, node: http.request@^1, queue_timeout: 5s}
  - {id: b, node: http.request@^1, queue_timeout: 5s}
"""
    )
    sim.start()
    sim.fail("a", "Fatal", retryable=False)
    assert run_status(sim) is RunStatus.FAILED
    (timer,) = sim.run.timers.values()
    assert (timer.kind, timer.step_id) == (TimerKind.QUEUE_TIMEOUT, "b")
    (d,) = sim.advance_and_fire(5_000)
    assert [type(e).__name__ for e in d.events] == ["StepFailed"]  # the run stays failed
    assert step_status(sim, "b") is StepStatus.FAILED and sim.run.timers == {}


def test_late_or_duplicate_starts_and_heartbeats_are_noops() -> None:
    sim = Simulation(RETRY)
    sim.start()
    first = sim.invocation("flaky")
    assert events_of(sim, StepStarted) == []
    sim.start_attempt(first)
    assert sim.start_attempt(first).is_noop  # duplicate start
    assert sim.heartbeat(first, 1).is_noop  # too early to move the timer by half the timeout
    sim.fail("flaky", "Flaky")
    assert sim.start_attempt(first).is_noop  # attempt 1 ended
    sim.advance_and_fire(100)
    second = sim.invocation("flaky")
    assert second.attempt == 2 and step_status(sim, "flaky") is StepStatus.DISPATCHED
    assert sim.heartbeat(first, 2).is_noop  # an old attempt's heartbeat does not start attempt 2
    assert step_status(sim, "flaky") is StepStatus.DISPATCHED
    assert len(events_of(sim, StepStarted)) == 1


def test_a_heartbeat_starts_the_attempt_when_the_start_signal_is_missing() -> None:
    sim = Simulation(RETRY)
    sim.start()
    invocation = sim.invocation("flaky")
    sim.start_times[invocation.invocation_id] = T0 + timedelta(milliseconds=200)
    sim.advance(700)
    d = sim.heartbeat(invocation, 3)
    (start,) = d.events
    assert isinstance(start, StepStarted)
    assert start.started_at == T0 + timedelta(milliseconds=200)  # the worker's start
    assert start.timeout_at == sim.now + timedelta(milliseconds=1_000 + TIMEOUT_GRACE_MS)
    assert step_status(sim, "flaky") is StepStatus.RUNNING


def test_heartbeats_push_the_step_timeout_forward_with_few_events() -> None:
    sim = SCENARIOS["heartbeats"]()
    assert run_status(sim) is RunStatus.SUCCEEDED
    (extended,) = events_of(sim, StepTimeoutExtended)
    assert extended.beat == 3  # beats 1, 2 and 4 moved the timer by less than 30 s
    assert extended.timeout_at == T0 + timedelta(seconds=32 + 60) + timedelta(
        milliseconds=TIMEOUT_GRACE_MS
    )
    heartbeats = [d for d in sim.decisions if d.is_noop]
    assert len(heartbeats) == 3
    assert not events_of(sim, StepTimedOut)


def test_a_worker_that_stops_heartbeating_times_out_from_its_last_recorded_heartbeat() -> None:
    sim = Simulation(SCENARIOS["heartbeats"]().definition)
    sim.start()
    invocation = sim.invocation("wait")
    sim.start_attempt(invocation)
    first_timer = next(iter(sim.run.timers.values()))
    sim.advance(30_000)
    d = sim.heartbeat(invocation, 3)
    assert [type(e).__name__ for e in d.events] == ["StepTimeoutExtended"]
    assert d.timers_cancelled == (first_timer.timer_id,)
    (timer,) = sim.run.timers.values()
    assert timer.timer_id != first_timer.timer_id and timer.kind is TimerKind.STEP_TIMEOUT
    # The first timer's FireTimer, written before the extension: no timer by that id any more.
    assert sim.send(fire_timer_command(sim.run, first_timer)).is_noop
    sim.advance(59_999 + TIMEOUT_GRACE_MS)  # the worker died right after beat 3
    assert sim.fire_due() == []
    (d,) = sim.advance_and_fire(1)
    assert [type(e).__name__ for e in d.events] == ["StepTimedOut", "RunFailed"]
    assert events_of(sim, StepTimedOut)[0].timeout_ms == 60_000


def test_a_step_without_timeout_starts_without_a_timer_and_heartbeats_log_nothing() -> None:
    sim = Simulation(TWO)
    sim.start()
    invocation = sim.invocation("first")
    d = sim.start_attempt(invocation)
    assert isinstance(d.events[0], StepStarted) and d.events[0].timeout_at is None
    assert sim.run.timers == {}
    sim.advance(600_000)
    assert sim.heartbeat(invocation, 60).is_noop


def test_starts_are_recorded_while_paused_and_running_steps_are_cancelled() -> None:
    sim = Simulation(RETRY)
    sim.start()
    sim.pause()
    d = sim.start_attempt(sim.invocation("flaky"))
    assert [type(e).__name__ for e in d.events] == ["StepStarted"]
    assert step_status(sim, "flaky") is StepStatus.RUNNING
    sim.cancel("stop")
    assert step_status(sim, "flaky") is StepStatus.CANCELLED and sim.run.timers == {}


def test_a_run_in_flight_from_before_step_started_keeps_its_dispatch_timer() -> None:
    # A log written by an older scheduler: the step timeout was armed at dispatch. After an
    # upgrade the new scheduler still honours it, and a new worker's start replaces it.
    legacy = Path(__file__).resolve().parents[1] / "fixtures" / "runs" / "before-step-started"
    events = load_events((legacy / "step_timeout.jsonl").read_text(encoding="utf-8"))
    dispatched = next(e for e in events if isinstance(e, StepDispatched))
    assert dispatched.schema_version == 1 and dispatched.timeout_at == T0 + timedelta(seconds=1)
    in_flight = fold(events[: events.index(dispatched) + 1])
    assert in_flight is not None
    (timer,) = in_flight.timers.values()
    assert timer.kind is TimerKind.STEP_TIMEOUT and timer.due_at == dispatched.timeout_at

    ctx = DecisionContext(now=T0 + timedelta(seconds=1), new_id=lambda: "x")
    fired = decide(in_flight, fire_timer_command(in_flight, timer), ctx)
    assert [type(e).__name__ for e in fired.events] == ["StepTimedOut", "StepRetryScheduled"]
    assert fired.events[0].timeout_ms == 1_000  # type: ignore[union-attr]

    beat = NodeHeartbeat(
        run_id=in_flight.run_id,
        seq=dispatched.seq,
        invocation_id=dispatched.invocation_id,
        attempt=1,
        step=dispatched.step,
        started_at=T0 + timedelta(milliseconds=500),
        beat=0,
    )
    started = decide(in_flight, beat, DecisionContext(now=T0 + timedelta(milliseconds=600)))
    assert [type(e).__name__ for e in started.events] == ["StepStarted"]
    assert started.timers_cancelled == (timer.timer_id,)
    assert started.state is not None
    (new_timer,) = started.state.timers.values()
    assert new_timer.due_at == T0 + timedelta(milliseconds=600 + 1_000 + TIMEOUT_GRACE_MS)
