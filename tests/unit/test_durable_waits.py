"""meta.wait / meta.signal through the pure core (ADR 0057): waiting is run state, not a worker.

The in-memory engine of test_child_runs plays the runtime; every decision is checked against the
fold of its run's log (replay equality), and timers are fired the way the runtime does it
(``timers.due_timers`` at a chosen ``now``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from processors.scheduler.decide import Decision
from processors.scheduler.evolve import fold
from processors.scheduler.meta.waits import WAIT_TIMEOUT
from processors.scheduler.state import RunStatus, StepStatus
from processors.scheduler.timers import due_timers, next_due
from schemas import serde
from schemas.models import (
    CancelRun,
    CommandRejected,
    PauseRun,
    RedriveStep,
    ResumeRun,
    SignalRun,
    StepWaitStarted,
    TimerKind,
)
from tests.unit.test_child_runs import T0, Engine
from workflows.validation import WorkflowValidationError, parse_workflow

WAITER = """
id: waiter
inputs:
  delay: {type: string, default: "3d"}
steps:
  - id: nap
    node: meta.wait
    params: {duration: "{{ inputs.delay }}"}
  - id: after
    node: transform
    needs: [nap]
    params: {waited: "{{ steps.nap.output.waited_ms }}"}
outputs:
  waited: "{{ steps.nap.output.waited_ms }}"
"""

APPROVAL = """
id: approval
steps:
  - id: approve
    node: meta.signal
    params: {name: approval, timeout: 2h, on_timeout: ON_TIMEOUT}
  - id: ship
    node: transform
    needs: [approve]
    when: "steps.approve.output.payload.approved == `true`"
    params: {by: "{{ steps.approve.output.payload.by }}"}
outputs:
  decision: "{{ steps.approve.output }}"
"""


def approval(on_timeout: str = "fail") -> str:
    return APPROVAL.replace("ON_TIMEOUT", on_timeout)


def fire_due(engine: Engine, run_id: str) -> list[Decision]:
    """What the runtime's timer loop does at ``engine.now``."""
    return [engine.send(timer) for timer in due_timers(engine.run(run_id), engine.now)]


def signal(engine: Engine, run_id: str, name: str, payload: Any) -> Decision:
    decision = engine.command(SignalRun, run_id, signal=name, payload=payload, requested_by="ann")
    return decision


def test_a_timer_wait_holds_no_worker_and_ends_when_its_timer_fires() -> None:
    engine = Engine(WAITER)
    decision = engine.start("waiter", "w1")
    assert not decision.invocations  # the wait is not dispatched to any worker
    [started] = [e for e in decision.events if isinstance(e, StepWaitStarted)]
    assert started.due_at == T0 + timedelta(days=3) and started.signal is None
    nap = engine.run("w1").steps["nap"]
    assert nap.status is StepStatus.RUNNING and nap.invocation_id is None
    [timer] = engine.run("w1").timers.values()
    assert (timer.kind, timer.step_id, timer.due_at) == (TimerKind.WAIT, "nap", started.due_at)
    assert next_due(engine.run("w1")) == started.due_at

    engine.now = T0 + timedelta(days=3) - timedelta(milliseconds=1)
    assert fire_due(engine, "w1") == []  # not yet
    engine.now = T0 + timedelta(days=3)
    [fired] = fire_due(engine, "w1")
    assert engine.run("w1").steps["nap"].output == {
        "waited_ms": 3 * 86_400_000,
        "due_at": "2025-01-04T12:00:00.000+00:00",
    }
    assert [i.step.step_id for i in fired.invocations] == ["after"]  # the next step goes on
    engine.answer("w1", "after", {"ok": True})
    assert engine.run("w1").status is RunStatus.SUCCEEDED
    assert engine.run("w1").outputs == {"waited": 3 * 86_400_000}
    assert engine.run("w1").timers == {}
    # A FireTimer delivered twice (the runtime may re-emit after a crash) is a no-op.
    again = engine.send(fired_timer(engine, "w1", started))
    assert again.events == ()


def fired_timer(engine: Engine, run_id: str, started: StepWaitStarted) -> Any:
    from schemas.models import FireTimer

    assert started.timer_id is not None and started.due_at is not None
    return FireTimer(
        run_id=run_id,
        command_id=f"fire:{started.timer_id}",
        timer_id=started.timer_id,
        step_id=started.step.step_id,
        attempt=started.attempt,
        kind=TimerKind.WAIT,
        due_at=started.due_at,
    )


def test_wait_until_an_absolute_time_and_a_time_already_past_fires_at_once() -> None:
    text = WAITER.replace('duration: "{{ inputs.delay }}"', 'until: "{{ inputs.delay }}"')
    engine = Engine(text)
    engine.start("waiter", "w1", {"delay": "2025-01-01T13:00:00+01:00"})  # = T0: already due
    [timer] = engine.run("w1").timers.values()
    assert timer.due_at == T0
    fire_due(engine, "w1")
    assert engine.run("w1").steps["nap"].status is StepStatus.SUCCEEDED
    engine.start("waiter", "w2", {"delay": "2025-01-02T00:00:00Z"})
    [timer] = engine.run("w2").timers.values()
    assert timer.due_at == T0 + timedelta(hours=12)


def test_a_wait_that_renders_to_no_duration_fails_the_step_naming_the_field() -> None:
    engine = Engine(WAITER)
    engine.start("waiter", "w1", {"delay": "soon"})
    nap = engine.run("w1").steps["nap"]
    assert nap.status is StepStatus.FAILED and nap.error is not None
    assert nap.error.error_class == "InvalidWait" and not nap.error.retryable
    assert "steps.nap.params.duration" in nap.error.message
    assert engine.run("w1").status is RunStatus.FAILED


def test_a_signal_ends_the_wait_with_its_payload_as_output() -> None:
    engine = Engine(approval())
    decision = engine.start("approval", "a1")
    assert not decision.invocations
    approve = engine.run("a1").steps["approve"]
    assert approve.status is StepStatus.RUNNING and approve.wait is not None
    assert approve.wait.signal == "approval"
    cmd = SignalRun(
        run_id="a1", command_id="sig-1", signal="approval", payload={"approved": True, "by": "ann"}
    )
    done = engine.send(cmd)
    assert done.rejection is None
    assert engine.run("a1").steps["approve"].output == {
        "signal": "approval",
        "payload": {"approved": True, "by": "ann"},
        "timed_out": False,
    }
    assert all(e.causation_id == "sig-1" for e in done.events)
    assert engine.run("a1").timers == {}  # the timeout went with the wait
    assert [i.params for i in done.invocations] == [{"by": "ann"}]
    assert engine.send(cmd).events == ()  # the same command delivered twice: decided once


def test_a_rejecting_signal_skips_the_guarded_step() -> None:
    engine = Engine(approval())
    engine.start("approval", "a1")
    signal(engine, "a1", "approval", {"approved": False, "by": "bob"})
    run = engine.run("a1")
    assert run.steps["ship"].status is StepStatus.SKIPPED
    assert run.status is RunStatus.SUCCEEDED
    assert run.outputs == {
        "decision": {
            "signal": "approval",
            "payload": {"approved": False, "by": "bob"},
            "timed_out": False,
        }
    }


def test_a_signal_no_step_waits_for_is_refused_with_the_reason() -> None:
    engine = Engine(approval(), WAITER)
    engine.start("approval", "a1")
    wrong = signal(engine, "a1", "aproval", {})
    assert wrong.rejection == (
        "Expected a step waiting for signal 'aproval', but none is (the run waits for 'approval')"
    )
    [rejected] = [e for e in wrong.events if isinstance(e, CommandRejected)]
    assert rejected.command_type == "reflux.commands.SignalRun"
    engine.start("waiter", "w1")
    refused = signal(engine, "w1", "approval", {})
    assert refused.rejection is not None
    assert "no step of the run is waiting for a signal" in refused.rejection
    # Once the step got its signal, a second one is refused too (it no longer waits).
    signal(engine, "a1", "approval", {"approved": True, "by": "ann"})
    late = signal(engine, "a1", "approval", {"approved": True})
    assert late.rejection is not None
    assert late.rejection.startswith("Expected a step waiting for signal 'approval', but none is")


def test_a_signal_timeout_fails_the_step_or_continues_as_configured() -> None:
    engine = Engine(approval("fail"))
    engine.start("approval", "a1")
    engine.now = T0 + timedelta(hours=2)
    fire_due(engine, "a1")
    approve = engine.run("a1").steps["approve"]
    assert approve.status is StepStatus.FAILED and approve.error is not None
    assert approve.error.error_class == WAIT_TIMEOUT and not approve.error.retryable
    assert engine.run("a1").status is RunStatus.FAILED
    late = signal(engine, "a1", "approval", {"approved": True})
    assert late.rejection is not None  # timed out: nothing waits any more

    engine = Engine(approval("continue"))
    engine.start("approval", "a2")
    engine.now = T0 + timedelta(hours=2)
    fire_due(engine, "a2")
    run = engine.run("a2")
    assert run.steps["approve"].output == {"signal": "approval", "payload": None, "timed_out": True}
    assert run.steps["ship"].status is StepStatus.SKIPPED  # no approval: not shipped
    assert run.status is RunStatus.SUCCEEDED


def test_a_signal_before_its_timeout_makes_the_timer_a_noop() -> None:
    engine = Engine(approval())
    decision = engine.start("approval", "a1")
    [started] = [e for e in decision.events if isinstance(e, StepWaitStarted)]
    signal(engine, "a1", "approval", {"approved": True, "by": "ann"})
    engine.now = T0 + timedelta(hours=3)
    assert engine.send(fired_timer(engine, "a1", started)).events == ()


def test_a_paused_run_records_the_end_of_a_wait_and_moves_on_when_resumed() -> None:
    engine = Engine(WAITER)
    engine.start("waiter", "w1", {"delay": "10m"})
    engine.command(PauseRun, "w1")
    engine.now = T0 + timedelta(minutes=10)
    fire_due(engine, "w1")
    assert engine.run("w1").steps["nap"].status is StepStatus.SUCCEEDED
    assert ("w1", "after") not in engine.invocations  # paused: nothing dispatched
    resumed = engine.command(ResumeRun, "w1")
    assert [i.step.step_id for i in resumed.invocations] == ["after"]


def test_a_failed_run_keeps_its_wait_timer_and_a_redrive_can_finish_it() -> None:
    text = """
id: both
steps:
  - id: nap
    node: meta.wait
    params: {duration: 1h}
  - id: work
    node: transform
    params: {}
"""
    engine = Engine(text)
    engine.start("both", "b1")
    from schemas.models import ErrorInfo

    engine.answer("b1", "work", error=ErrorInfo(error_class="Boom", message="x", retryable=False))
    assert engine.run("b1").status is RunStatus.FAILED
    assert [t.kind for t in engine.run("b1").timers.values()] == [TimerKind.WAIT]
    engine.now = T0 + timedelta(hours=1)
    fire_due(engine, "b1")
    assert engine.run("b1").steps["nap"].status is StepStatus.SUCCEEDED
    engine.command(RedriveStep, "b1", step_id="work")
    engine.answer("b1", "work", {"ok": 1})
    assert engine.run("b1").status is RunStatus.SUCCEEDED


def test_cancel_ends_a_wait_and_its_timer() -> None:
    engine = Engine(approval())
    engine.start("approval", "a1")
    engine.command(CancelRun, "a1")
    run = engine.run("a1")
    assert run.status is RunStatus.CANCELLED and run.timers == {}
    assert run.steps["approve"].status is StepStatus.CANCELLED


def test_replay_of_a_waiting_run_rebuilds_the_same_state_and_snapshot() -> None:
    engine = Engine(approval(), WAITER)
    engine.start("approval", "a1")
    engine.start("waiter", "w1")
    for run_id in ("a1", "w1"):
        state = engine.run(run_id)
        assert fold(engine.logs[run_id]) == state
        assert type(state).from_snapshot(state.to_snapshot()) == state
        for event in engine.logs[run_id]:  # every event encodes and decodes as Avro
            assert serde.decode(serde.encode(event)) == event
    cmd = SignalRun(run_id="a1", command_id="c1", signal="approval", payload={"x": [1, 2]})
    assert serde.decode(serde.encode(cmd)) == cmd


@pytest.mark.parametrize(
    ("node", "params", "path", "words"),
    [
        ("meta.wait", {}, "steps[0].params.duration", "exactly one of"),
        (
            "meta.wait",
            {"duration": "1s", "until": "2030-01-01T00:00:00Z"},
            "steps[0].params.duration",
            "exactly one of",
        ),
        ("meta.wait", {"duration": "soon"}, "steps[0].params.duration", "expected a duration"),
        ("meta.wait", {"until": "2030-01-01T00:00:00"}, "steps[0].params.until", "offset"),
        ("meta.wait", {"duration": "{{ inputs.nope }}"}, "steps[0].params.duration", "nope"),
        ("meta.signal", {"name": "has space"}, "steps[0].params.name", "pattern"),
        (
            "meta.signal",
            {"name": "ok", "timeout": "3 weeks"},
            "steps[0].params.timeout",
            "duration",
        ),
        (
            "meta.signal",
            {"name": "ok", "on_timeout": "shrug"},
            "steps[0].params.on_timeout",
            "fail",
        ),
        ("meta.signal", {"name": "ok", "extra": 1}, "steps[0].params.extra", "unknown field"),
    ],
)
def test_bad_wait_params_are_refused_with_the_field_path(
    node: str, params: dict[str, Any], path: str, words: str
) -> None:
    import json

    text = json.dumps({"id": "bad", "steps": [{"id": "s", "node": node, "params": params}]})
    with pytest.raises(WorkflowValidationError) as caught:
        parse_workflow(text)
    found = {e.path: e.message for e in caught.value.errors}
    assert path in found, found
    assert words in found[path]


def test_the_durable_approval_example_runs_as_documented() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "examples" / "durable-approval.yaml").read_text()
    engine = Engine(text)
    engine.start("durable-approval", "ok")
    engine.answer("ok", "ask_approver", {"status": 200})
    signal(engine, "ok", "approval", {"approved": True, "by": "ana"})
    assert engine.run("ok").steps["cool_off"].status is StepStatus.RUNNING
    engine.now = T0 + timedelta(hours=1)
    fire_due(engine, "ok")
    engine.answer("ok", "fulfil", {"status": 200})
    assert engine.run("ok").status is RunStatus.SUCCEEDED

    engine.now = T0
    engine.start("durable-approval", "silent")
    engine.answer("silent", "ask_approver", {"status": 200})
    engine.now = T0 + timedelta(days=3)
    fire_due(engine, "silent")  # no answer in 3 days: not approved, nothing fulfilled
    run = engine.run("silent")
    assert run.status is RunStatus.SUCCEEDED
    assert run.steps["approval"].output == {
        "signal": "approval",
        "payload": None,
        "timed_out": True,
    }
    assert [run.steps[s].status for s in ("cool_off", "fulfil")] == [StepStatus.SKIPPED] * 2
