"""meta.workflow / meta.loop end to end: child runs through Kafka, workers and the projection.

Parent and child are separate runs (keys, so possibly partitions and scheduler instances): all
they say to each other goes through the commands topic, written in the same transaction as the
events that caused it (docs/decisions/0025-child-runs-and-the-scheduler-outbox.md).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from fastapi.testclient import TestClient

from processors.scheduler.child_runs import child_run_id
from processors.scheduler.runtime.loop import SchedulerRuntime
from projections.postgres import queries
from schemas.models import CancelRun, PauseRun, ResumeRun
from tests.integration.engine_fixtures import (
    Harness,
    HarnessFactory,
    assert_replay_equivalent,
    transform,
)
from tests.integration.http_fixtures import HttpTestServer
from tests.integration.test_e2e_api import api  # noqa: F401  (the API fixture)
from tests.support.waiting import eventually

ACTIVE_STEPS = {"scheduled", "dispatched", "running", "retry_wait"}

DOUBLE = {
    "id": "double",
    "inputs": {"n": {"type": "integer", "required": True}},
    "steps": [transform("work", "[n, n]", {"n": "{{ inputs.n }}"})],
    "outputs": {"pair": "{{ steps.work.output.result }}"},
}

ECHO_ITERATION = {
    "id": "echo_iteration",
    "inputs": {"i": {"type": "integer", "required": True}, "prev": {"type": "object"}},
    "steps": [transform("work", "i", {"i": "{{ inputs.i }}"})],
    "outputs": {"i": "{{ steps.work.output.result }}"},
}


def parent_of(
    child_workflow: str, inputs: dict[str, Any], *, after: bool = True, **step: Any
) -> dict[str, Any]:
    """A parent whose ``sub`` step runs ``child_workflow``; then (``after``) a transform of its
    output. Without ``after``, a cancelled parent has no pending step (the replay check
    compares live steps with projected rows, and a step never scheduled has no row)."""
    then = [transform("after", "pair", {"pair": "{{ steps.sub.output.pair }}"}, needs=["sub"])]
    return {
        "id": f"parent_of_{child_workflow}",
        "inputs": {"n": {"type": "integer", "default": 21}},
        "steps": [
            {
                "id": "sub",
                "node": "meta.workflow",
                "params": {"workflow_id": child_workflow, "inputs": inputs},
                **step,
            },
            *(then if after else []),
        ],
        "outputs": {"sub": "{{ steps.sub.output }}"},
    }


def slow_child(http: HttpTestServer, ms: int) -> dict[str, Any]:
    return {
        "id": "slow_child",
        "steps": [
            {"id": "wait", "node": "http.request@^1", "params": {"url": f"{http.url}/slow?ms={ms}"}}
        ],
        "outputs": {"pair": "{{ steps.wait.output.status }}"},
    }


def children(harness: Harness, run_id: str) -> list[queries.RunRow]:
    with harness.conn() as conn:
        return queries.get_children(conn, run_id, schema=harness.schema)


def nothing_left_running(harness: Harness, *run_ids: str) -> None:
    for run_id in run_ids:
        active = {s: r.status for s, r in harness.steps(run_id).items() if r.status in ACTIVE_STEPS}
        assert not active, f"run {run_id} still has steps in flight: {active}"
        live = harness.engine.scheduler.run_state(run_id)  # type: ignore[union-attr]
        assert live is not None
        assert not live.timers, f"run {run_id} keeps timers: {live.timers}"


def test_a_parent_waits_for_its_child_and_gets_its_outputs(harness: Harness) -> None:
    harness.register(DOUBLE)
    harness.register(parent_of("double", {"n": "{{ inputs.n }}"}))
    run_id = harness.start("parent_of_double", {"n": 21})
    run = harness.wait(run_id)
    assert run.status == "succeeded", run.error
    assert run.outputs == {"sub": {"pair": [21, 21]}}
    assert harness.steps(run_id)["after"].output == {"result": [21, 21]}
    child = child_run_id(run_id, "sub", 1, None)
    [row] = children(harness, run_id)
    assert (row.run_id, row.status, row.parent_step_id, row.parent_attempt) == (
        child,
        "succeeded",
        "sub",
        1,
    )
    assert row.outputs == {"pair": [21, 21]} and row.source == "parent"
    sub = harness.steps(run_id)["sub"]
    assert (sub.node, sub.invocation_id, sub.output) == ("meta.workflow", child, {"pair": [21, 21]})
    types = [e.event_type for e in harness.events(run_id)]
    assert "ChildRunRequested" in types and "StepDispatched" not in types[:3]
    assert_replay_equivalent(harness, run_id)
    assert_replay_equivalent(harness, child)


def test_a_child_workflow_cancelled_through_its_parent(
    harness: Harness, http: HttpTestServer
) -> None:
    harness.register(slow_child(http, 20_000))
    harness.register(parent_of("slow_child", {}, after=False))
    run_id = harness.start("parent_of_slow_child")
    child = child_run_id(run_id, "sub", 1, None)
    harness.wait_step(child, "wait", "running")
    harness.command(CancelRun(run_id=run_id, reason="test"))
    assert harness.wait(run_id).status == "cancelled"
    child_row = harness.wait(child)
    assert child_row.status == "cancelled"
    events = [e for e in harness.events(child) if e.event_type == "RunCancelled"]
    assert events and events[0].payload["requested_by"] == f"run:{run_id}"
    assert harness.steps(run_id)["sub"].status == "cancelled"
    assert harness.steps(child)["wait"].status == "cancelled"
    assert_replay_equivalent(harness, run_id)
    assert_replay_equivalent(harness, child)
    nothing_left_running(harness, run_id, child)


def test_pause_and_resume_propagate_to_the_child(harness: Harness, http: HttpTestServer) -> None:
    harness.register(slow_child(http, 1500))
    harness.register(parent_of("slow_child", {}))
    run_id = harness.start("parent_of_slow_child")
    child = child_run_id(run_id, "sub", 1, None)
    harness.wait_step(child, "wait", "running")
    harness.command(PauseRun(run_id=run_id, reason="hold"))
    harness.wait(run_id, {"paused"})
    harness.wait(child, {"paused"})
    # The child's slow call ends while it is paused: recorded, and nothing more happens.
    harness.wait_step(child, "wait", "succeeded")
    assert harness.run(child).status == "paused"  # type: ignore[union-attr]
    assert harness.run(run_id).status == "paused"  # type: ignore[union-attr]
    harness.command(ResumeRun(run_id=run_id))
    run = harness.wait(run_id)
    assert run.status == "succeeded", run.error
    assert harness.run(child).status == "succeeded"  # type: ignore[union-attr]
    resumed = [e for e in harness.events(child) if e.event_type == "RunResumed"]
    assert resumed and resumed[0].payload["requested_by"] == f"run:{run_id}"
    assert_replay_equivalent(harness, run_id)
    assert_replay_equivalent(harness, child)


def test_a_child_failure_fails_the_parent_step(harness: Harness, http: HttpTestServer) -> None:
    harness.register(
        {
            "id": "broken",
            "steps": [
                {
                    "id": "call",
                    "node": "http.request@^1",
                    "params": {"url": f"{http.url}/status/503"},
                }
            ],
        }
    )
    harness.register(parent_of("broken", {}, retry={"max_attempts": 2, "initial_backoff": "20ms"}))
    run_id = harness.start("parent_of_broken")
    run = harness.wait(run_id)
    assert run.status == "failed"
    assert run.failed_step == "sub"
    first, second = (child_run_id(run_id, "sub", a, None) for a in (1, 2))
    child_error = harness.wait(first).error
    assert child_error is not None and run.error is not None
    assert run.error["error_class"] == child_error["error_class"]
    assert second in run.error["message"]
    # The step's retry spec ran a second child: one child run per attempt.
    assert sorted(r.run_id for r in children(harness, run_id)) == sorted([first, second])
    assert all(r.status == "failed" for r in children(harness, run_id))
    assert_replay_equivalent(harness, run_id)
    assert_replay_equivalent(harness, second)


def loop_parent(until: str, max_iterations: int, on_max: str) -> dict[str, Any]:
    return {
        "id": f"loop_{on_max}",
        "steps": [
            {
                "id": "again",
                "node": "meta.loop",
                "params": {
                    "workflow_id": "echo_iteration",
                    "inputs": {"i": "{{ loop.iteration }}", "prev": "{{ loop.previous }}"},
                    "until": until,
                    "max_iterations": max_iterations,
                    "on_max": on_max,
                },
            }
        ],
        "outputs": {"again": "{{ steps.again.output }}"},
    }


def test_a_loop_stops_when_until_holds(harness: Harness) -> None:
    harness.register(ECHO_ITERATION)
    harness.register(loop_parent("output.i >= `3`", 10, "fail"))
    run_id = harness.start("loop_fail")
    run = harness.wait(run_id)
    assert run.status == "succeeded", run.error
    assert run.outputs == {"again": {"output": {"i": 3}, "iterations": 3, "completed": True}}
    rows = children(harness, run_id)
    assert [(r.parent_iteration, r.status) for r in rows] == [(i, "succeeded") for i in (1, 2, 3)]
    assert [r.run_id for r in rows] == [child_run_id(run_id, "again", 1, i) for i in (1, 2, 3)]
    # Each iteration sees the previous one's outputs.
    assert [r.inputs for r in rows] == [
        {"i": 1},  # loop.previous is null in the first iteration: the optional input is unset
        {"i": 2, "prev": {"i": 1}},
        {"i": 3, "prev": {"i": 2}},
    ]
    ended = [
        e.payload["iteration"] for e in harness.events(run_id) if e.event_type == "ChildRunEnded"
    ]
    assert ended == [1, 2, 3]
    assert_replay_equivalent(harness, run_id)
    for row in rows:
        assert_replay_equivalent(harness, row.run_id)


def test_a_loop_that_hits_max_iterations(harness: Harness) -> None:
    harness.register(ECHO_ITERATION)
    harness.register(loop_parent("output.i > `100`", 2, "fail"))
    harness.register({**loop_parent("output.i > `100`", 2, "succeed")})
    failing = harness.start("loop_fail")
    succeeding = harness.start("loop_succeed")
    run = harness.wait(failing)
    assert run.status == "failed"
    assert run.error is not None and run.error["error_class"] == "LoopMaxIterations"
    assert len(children(harness, failing)) == 2
    run = harness.wait(succeeding)
    assert run.status == "succeeded", run.error
    assert run.outputs == {"again": {"output": {"i": 2}, "iterations": 2, "completed": False}}
    assert_replay_equivalent(harness, failing)
    assert_replay_equivalent(harness, succeeding)


def test_get_run_shows_the_parent_child_link(harness: Harness) -> None:
    from api.readmodel import load_run_detail

    harness.register(DOUBLE)
    harness.register(parent_of("double", {"n": "{{ inputs.n }}"}))
    run_id = harness.start("parent_of_double", {"n": 2})
    assert harness.wait(run_id).status == "succeeded"
    child = child_run_id(run_id, "sub", 1, None)
    # The child's run log may sit on another partition than the parent's: the projection can
    # show the parent finished before it has applied the child's last events.
    assert harness.wait(child).status == "succeeded"
    with harness.conn() as conn:
        parent = load_run_detail(conn, run_id, schema=harness.schema)
        child_detail = load_run_detail(conn, child, schema=harness.schema)
    assert parent is not None and child_detail is not None
    assert [(c.run_id, c.step_id, c.status) for c in parent.children] == [
        (child, "sub", "succeeded")
    ]
    assert (child_detail.parent_run_id, child_detail.parent_step_id) == (run_id, "sub")
    assert child_detail.children == []


def _scheduler(
    harness: Harness, instance_id: str
) -> tuple[SchedulerRuntime, threading.Event, threading.Thread]:
    scheduler = SchedulerRuntime(harness.settings, instance_id=instance_id)
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,), name=f"sched-{instance_id}")
    thread.start()
    return scheduler, stop, thread


def test_one_child_per_attempt_across_a_scheduler_restart(
    engine_harness: HarnessFactory, http: HttpTestServer
) -> None:
    """The outbox commits with the events: a scheduler replaced while parents wait for their
    children (partitions rebuilt from snapshot + log) neither loses a child nor starts a
    second one, and the children's notifications reach the parents on the new instance."""
    harness = engine_harness(scheduler=False, trigger_router=False, client_id="child-restart")
    harness.register(slow_child(http, 1500))
    harness.register(parent_of("slow_child", {}))
    _, stop, thread = _scheduler(harness, "child-restart")
    try:
        run_ids = [harness.start("parent_of_slow_child") for _ in range(4)]
        for run_id in run_ids:
            harness.wait_step(run_id, "sub", "running", timeout=60)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    second, stop, thread = _scheduler(harness, "child-restart")
    try:
        for run_id in run_ids:
            run = harness.wait(run_id, timeout=60)
            assert run.status == "succeeded", run.error
    finally:
        stop.set()
        thread.join(30)
    for run_id in run_ids:
        child = child_run_id(run_id, "sub", 1, None)
        assert [r.run_id for r in children(harness, run_id)] == [child]
        parent_events = [e.event_type for e in harness.events(run_id)]
        assert parent_events.count("ChildRunRequested") == 1
        child_events = [e.event_type for e in harness.events(child)]
        assert child_events.count("RunStarted") == 1
        assert "CommandRejected" not in child_events
    assert second.stats.recoveries >= 1


class _Crash(BaseException):
    """Not an Exception: the loop's error handling does not catch it (like a kill)."""


class _CrashBeforeCommit(SchedulerRuntime):
    """Dies once, in the first transaction that holds an outbox record (a child's StartRun),
    after every record of the batch was produced and before the commit."""

    crashed = False
    _outbox = False

    def _send(self, records: Sequence[Any]) -> None:
        super()._send(records)
        if any(r.topic == self.catalog.commands.topic for r in records):
            self._outbox = True

    def _commit(self, cycle: Any) -> None:
        if self._outbox and not _CrashBeforeCommit.crashed:
            _CrashBeforeCommit.crashed = True
            raise _Crash
        super()._commit(cycle)


def test_a_crash_between_deciding_and_committing_starts_the_child_once(
    engine_harness: HarnessFactory,
) -> None:
    """The child's StartRun is in the transaction of ChildRunRequested: a scheduler that dies
    before the commit leaves neither (read_committed readers never see them); the next one
    decides the StartRun again and sends it once."""
    harness = engine_harness(scheduler=False, trigger_router=False, client_id="child-crash")
    harness.register(DOUBLE)
    harness.register(parent_of("double", {"n": "{{ inputs.n }}"}))
    crashing = _CrashBeforeCommit(harness.settings, instance_id="child-crash")
    died: list[BaseException] = []

    def run_until_it_dies() -> None:
        try:
            crashing.run(threading.Event())
        except _Crash as exc:
            died.append(exc)

    thread = threading.Thread(target=run_until_it_dies, name="sched-crash")
    thread.start()
    run_id = harness.start("parent_of_double", {"n": 7})
    thread.join(60)
    assert not thread.is_alive() and died, "the scheduler should have died before its commit"
    child = child_run_id(run_id, "sub", 1, None)
    assert harness.run(child) is None  # nothing of the aborted transaction is visible
    _, stop, restarted = _scheduler(harness, "child-crash")
    try:
        run = harness.wait(run_id, timeout=60)
        assert run.status == "succeeded", run.error
    finally:
        stop.set()
        restarted.join(30)
    assert [r.run_id for r in children(harness, run_id)] == [child]
    assert [e.event_type for e in harness.events(run_id)].count("ChildRunRequested") == 1
    child_events = [e.event_type for e in harness.events(child)]
    assert child_events.count("RunStarted") == 1 and "CommandRejected" not in child_events


def test_parents_and_children_on_two_scheduler_instances(engine_harness: HarnessFactory) -> None:
    """Two schedulers split the partitions: parents and children meet only on the commands
    topic, whichever instance owns each."""
    harness = engine_harness(schedulers=2)
    eventually(
        lambda: [set(s.states) for s in harness.engine.schedulers],
        60,
        "both scheduler instances to own partitions",
        until=all,
    )
    harness.register(DOUBLE)
    harness.register(parent_of("double", {"n": "{{ inputs.n }}"}))
    run_ids = [harness.start("parent_of_double", {"n": n}) for n in range(12)]
    for n, run_id in enumerate(run_ids):
        run = harness.wait(run_id, timeout=60)
        assert run.status == "succeeded", run.error
        assert run.outputs == {"sub": {"pair": [n, n]}}
    partitions = {
        run_id: (which(harness, run_id), which(harness, child_run_id(run_id, "sub", 1, None)))
        for run_id in run_ids
    }
    # Somewhere a parent and its child are owned by different instances.
    assert any(parent != child for parent, child in partitions.values()), partitions


def which(harness: Harness, run_id: str) -> int:
    """The index of the scheduler instance holding ``run_id``."""
    found = [n for n, s in enumerate(harness.engine.schedulers) if s.run_state(run_id)]
    assert len(found) == 1, f"{run_id} held by instances {found}"
    return found[0]


def test_through_the_api_meta_steps_register_and_runs_show_the_link(
    harness: Harness,
    api: TestClient,  # noqa: F811  (the fixture imported above)
) -> None:
    """POST /v1/workflows accepts meta steps (not in the node catalog) and refuses bad params
    with the field path; GET /v1/runs/{id} shows the children and the parent."""
    bad = parent_of("double", {"n": "{{ inputs.n }}"})
    bad["id"] = "bad_parent"
    del bad["steps"][0]["params"]["workflow_id"]
    response = api.post("/v1/workflows", json=bad)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "steps", 0, "params", "workflow_id"]
    assert error["msg"] == "required"
    for definition in (DOUBLE, parent_of("double", {"n": "{{ inputs.n }}"})):
        assert api.post("/v1/workflows", json=definition).status_code == 201
    eventually(
        lambda: api.get("/v1/workflows/parent_of_double").status_code,
        15,
        "the parent workflow in the projection",
        until=lambda status: status == 200,
    )
    response = api.post(
        "/v1/runs", json={"workflow_id": "parent_of_double", "inputs": {"n": 4}, "wait_ms": 20_000}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded" and body["outputs"] == {"sub": {"pair": [4, 4]}}
    child = child_run_id(body["run_id"], "sub", 1, None)
    assert [(c["run_id"], c["step_id"], c["status"]) for c in body["children"]] == [
        (child, "sub", "succeeded")
    ]
    child_body = api.get(f"/v1/runs/{child}").json()
    assert (child_body["parent_run_id"], child_body["parent_step_id"]) == (body["run_id"], "sub")
    assert child_body["parent_attempt"] == 1 and child_body["children"] == []
