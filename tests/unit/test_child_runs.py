"""meta.workflow / meta.loop: the parent/child protocol through the pure core (decide/evolve).

A tiny in-memory "engine" plays the runtime for several runs at once: it keeps each run's state
and log, delivers each decision's outbox (``Decision.commands``) to the run it names, and
answers node invocations when a test says so. Every decision is checked against the fold of its
run's log (replay equality).
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest

from processors.scheduler.child_runs import child_run_id
from processors.scheduler.decide import (
    Decision,
    DecisionContext,
    RegisteredWorkflow,
    SchedulerInput,
    decide,
    fail_input,
)
from processors.scheduler.evolve import RunEvent, fold
from processors.scheduler.state import RunState, RunStatus, StepStatus
from schemas import serde
from schemas.models import (
    CancelRun,
    ChildRunEnded,
    ChildRunFinished,
    ChildRunRequested,
    ErrorInfo,
    FireTimer,
    NodeInvocation,
    NodeResult,
    PauseRun,
    ResumeRun,
    RunStarted,
    StartRun,
    TraceStatus,
)
from workflows.model import WorkflowDefinition
from workflows.node_catalog import StaticNodeCatalog
from workflows.validation import build_definition, check_definition, parse_workflow

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)

CHILD = """
id: child
inputs:
  n: {type: integer, required: true}
steps:
  - id: work
    node: transform
    params: {n: "{{ inputs.n }}"}
outputs:
  n: "{{ steps.work.output.n }}"
"""

PARENT = """
id: parent
inputs:
  n: {type: integer, default: 1}
steps:
  - id: sub
    node: meta.workflow
    params:
      workflow_id: child
      inputs: {n: "{{ inputs.n }}"}
  - id: after
    node: transform
    needs: [sub]
    params: {got: "{{ steps.sub.output.n }}"}
outputs:
  sub: "{{ steps.sub.output }}"
"""


def loop_parent(until: str | None, max_iterations: int, on_max: str = "fail") -> str:
    until_line = f"      until: {until!r}\n" if until is not None else ""
    return f"""
id: looper
inputs:
  start: {{type: integer, default: 1}}
steps:
  - id: grow
    node: meta.loop
    params:
      workflow_id: child
      inputs: {{n: "{{{{ loop.previous.n || inputs.start }}}}"}}
{until_line}      max_iterations: {max_iterations}
      on_max: {on_max}
outputs:
  grow: "{{{{ steps.grow.output }}}}"
"""


class Engine:
    """Several runs decided by the pure core; the outbox delivered in order (like the topic)."""

    def __init__(self, *definitions: str) -> None:
        self.workflows: dict[str, WorkflowDefinition] = {}
        for text in definitions:
            definition = parse_workflow(text)
            self.workflows[definition.id] = definition
        self.now = T0
        self._ids = count(1)
        self.states: dict[str, RunState] = {}
        self.logs: dict[str, list[RunEvent]] = {}
        self.outbox: deque[SchedulerInput] = deque()
        self.sent_commands: list[Any] = []
        self.invocations: dict[tuple[str, str], NodeInvocation] = {}
        self.decisions: list[Decision] = []

    def new_id(self) -> str:
        return f"id-{next(self._ids):05d}"

    def lookup(self, workflow_id: str, version: int | None) -> RegisteredWorkflow | None:
        definition = self.workflows.get(workflow_id)
        if definition is None or version not in (None, 1):
            return None
        return RegisteredWorkflow(1, definition)

    def context(self) -> DecisionContext:
        return DecisionContext(now=self.now, new_id=self.new_id, lookup_workflow=self.lookup)

    def send(self, input: SchedulerInput) -> Decision:
        state = self.states.get(input.run_id)
        decision = decide(state, input, self.context())
        self.decisions.append(decision)
        if decision.state is not None:
            self.states[input.run_id] = decision.state
        log = self.logs.setdefault(input.run_id, [])
        log.extend(decision.events)
        if decision.state is not None:
            assert fold(log) == decision.state, "live state differs from the replayed log"
        for invocation in decision.invocations:
            self.invocations[(invocation.run_id, invocation.step.step_id)] = invocation
        for command in decision.commands:
            # Every outbox record must encode (it goes to the commands topic as Avro).
            assert serde.decode(serde.encode(command)) == command
            self.sent_commands.append(command)
            self.outbox.append(command)
        return decision

    def pump(self, limit: int = 100) -> None:
        """Delivers the outbox until it is empty (each delivery may add more)."""
        for _ in range(limit):
            if not self.outbox:
                return
            self.send(self.outbox.popleft())
        raise AssertionError("the outbox did not drain")

    def start(self, workflow_id: str, run_id: str, inputs: Any = None) -> Decision:
        return self.send(
            StartRun(
                run_id=run_id,
                command_id=self.new_id(),
                occurred_at=self.now,
                workflow_id=workflow_id,
                inputs=inputs or {},
            )
        )

    def command(self, cls: type[Any], run_id: str, **fields: Any) -> Decision:
        return self.send(
            cls(run_id=run_id, command_id=self.new_id(), occurred_at=self.now, **fields)
        )

    def answer(
        self, run_id: str, step_id: str, output: Any = None, error: ErrorInfo | None = None
    ) -> Decision:
        invocation = self.invocations.pop((run_id, step_id))
        return self.send(
            NodeResult(
                run_id=run_id,
                seq=invocation.seq,
                event_id=self.new_id(),
                occurred_at=self.now,
                invocation_id=invocation.invocation_id,
                attempt=invocation.attempt,
                step=invocation.step,
                status=TraceStatus.OK if error is None else TraceStatus.ERROR,
                output=output,
                error=error,
                started_at=self.now,
                finished_at=self.now,
            )
        )

    def run(self, run_id: str) -> RunState:
        return self.states[run_id]

    def events(self, run_id: str, cls: type[Any]) -> list[Any]:
        return [e for e in self.logs.get(run_id, []) if isinstance(e, cls)]

    def child_of(self, run_id: str, step_id: str) -> str:
        child = self.run(run_id).steps[step_id].child_run_id
        assert child is not None
        return child

    def work_child(self, child: str, *, plus: int = 1) -> None:
        """The child's one step answers n + plus, then its notification reaches the parent."""
        params = self.invocations[(child, "work")].params
        self.answer(child, "work", {"n": params["n"] + plus})
        self.pump()


def test_a_parent_waits_for_its_child_and_gets_its_outputs() -> None:
    engine = Engine(CHILD, PARENT)
    decision = engine.start("parent", "p1", {"n": 41})
    child = child_run_id("p1", "sub", 1, None)
    [requested] = [e for e in decision.events if isinstance(e, ChildRunRequested)]
    assert (requested.child_run_id, requested.workflow_id, requested.inputs) == (
        child,
        "child",
        {"n": 41},
    )
    [start] = decision.commands
    assert isinstance(start, StartRun) and start.run_id == child
    assert start.parent is not None
    assert (start.parent.run_id, start.parent.step_id, start.parent.attempt) == ("p1", "sub", 1)
    assert engine.run("p1").steps["sub"].status is StepStatus.RUNNING
    assert not decision.invocations  # never dispatched to a worker

    engine.pump()
    started = engine.events(child, RunStarted)[0]
    assert started.parent == start.parent and started.schema_version == RunStarted.SCHEMA_VERSION
    assert engine.run("p1").steps["sub"].status is StepStatus.RUNNING  # still waiting

    engine.work_child(child)
    assert engine.run(child).status is RunStatus.SUCCEEDED
    [finished] = [c for c in engine.sent_commands if isinstance(c, ChildRunFinished)]
    assert (finished.run_id, finished.child_run_id, finished.status) == ("p1", child, "succeeded")
    sub = engine.run("p1").steps["sub"]
    assert sub.status is StepStatus.SUCCEEDED and sub.output == {"n": 42}
    engine.answer("p1", "after", {"ok": True})
    assert engine.run("p1").status is RunStatus.SUCCEEDED
    assert engine.run("p1").outputs == {"sub": {"n": 42}}


def test_the_child_run_id_is_derived_so_a_repeated_start_starts_one_child() -> None:
    assert child_run_id("p", "s", 1, None) == child_run_id("p", "s", 1, None)
    ids = {child_run_id("p", "s", a, i) for a in (1, 2) for i in (None, 1, 2)}
    assert len(ids) == 6  # every (attempt, iteration) names its own child
    engine = Engine(CHILD, PARENT)
    decision = engine.start("parent", "p1")
    [start] = decision.commands
    engine.pump()
    again = engine.send(start)  # the outbox record delivered twice
    assert again.events == () and again.rejection is None
    fresh = start.model_copy(update={"command_id": "another", "event_id": "another"})
    assert engine.send(fresh).events == ()  # same idempotency key: the same start
    assert len(engine.events(start.run_id, RunStarted)) == 1


def test_a_child_failure_fails_the_step_and_a_retry_starts_a_new_child() -> None:
    parent = PARENT.replace(
        "    node: meta.workflow\n",
        "    node: meta.workflow\n    retry: {max_attempts: 2, initial_backoff: 10}\n",
    )
    engine = Engine(CHILD, parent)
    engine.start("parent", "p1")
    engine.pump()
    first = engine.child_of("p1", "sub")
    boom = ErrorInfo(error_class="Boom", message="it broke", retryable=True)
    engine.answer(first, "work", error=boom)
    engine.pump()
    assert engine.run(first).status is RunStatus.FAILED
    sub = engine.run("p1").steps["sub"]
    assert sub.status is StepStatus.RETRY_WAIT
    assert sub.error is not None and sub.error.error_class == "Boom"
    assert first in sub.error.message
    [timer] = engine.run("p1").timers.values()
    engine.now = timer.due_at + timedelta(milliseconds=1)
    engine.send(
        FireTimer(
            run_id="p1",
            timer_id=timer.timer_id,
            kind=timer.kind,
            step_id=timer.step_id,
            attempt=timer.attempt,
            due_at=timer.due_at,
        )
    )
    second = engine.child_of("p1", "sub")
    assert second == child_run_id("p1", "sub", 2, None) != first
    engine.pump()
    engine.answer(second, "work", error=boom)
    engine.pump()
    run = engine.run("p1")
    assert run.status is RunStatus.FAILED and run.failed_step == "sub"
    assert run.error is not None and run.error.error_class == "Boom"


def test_cancelling_the_parent_cancels_the_child_in_flight() -> None:
    engine = Engine(CHILD, PARENT)
    engine.start("parent", "p1")
    engine.pump()
    child = engine.child_of("p1", "sub")
    decision = engine.command(CancelRun, "p1", reason="stop")
    [cancel] = decision.commands
    assert isinstance(cancel, CancelRun) and cancel.run_id == child
    assert cancel.requested_by == "run:p1" and "stop" in (cancel.reason or "")
    engine.pump()
    assert engine.run("p1").status is RunStatus.CANCELLED
    assert engine.run(child).status is RunStatus.CANCELLED
    # The child's notification reaches a cancelled parent: nothing changes there.
    [finished] = [c for c in engine.sent_commands if isinstance(c, ChildRunFinished)]
    assert finished.status == "cancelled"
    assert engine.logs["p1"][-1].__class__.__name__ == "RunCancelled"


def test_pause_and_resume_propagate_to_the_child() -> None:
    engine = Engine(CHILD, PARENT)
    engine.start("parent", "p1")
    engine.pump()
    child = engine.child_of("p1", "sub")
    assert [type(c) for c in engine.command(PauseRun, "p1").commands] == [PauseRun]
    engine.pump()
    assert engine.run(child).status is RunStatus.PAUSED
    assert [type(c) for c in engine.command(ResumeRun, "p1").commands] == [ResumeRun]
    engine.pump()
    assert engine.run(child).status is RunStatus.RUNNING
    engine.work_child(child)
    assert engine.run("p1").steps["sub"].status is StepStatus.SUCCEEDED


def test_a_child_that_ends_while_the_parent_is_paused_is_recorded() -> None:
    engine = Engine(CHILD, PARENT)
    engine.start("parent", "p1")
    engine.pump()
    child = engine.child_of("p1", "sub")
    engine.command(PauseRun, "p1")
    # The child's result was on its way: it ends before the pause reaches it.
    engine.answer(child, "work", {"n": 5})
    engine.pump()
    assert engine.run("p1").status is RunStatus.PAUSED
    assert engine.run("p1").steps["sub"].status is StepStatus.SUCCEEDED
    assert "after" not in {k for k, _ in engine.invocations}  # nothing scheduled while paused
    engine.command(ResumeRun, "p1")
    assert ("p1", "after") in engine.invocations


def test_an_unknown_child_workflow_fails_the_step_at_once() -> None:
    engine = Engine(PARENT)  # "child" is not registered
    decision = engine.start("parent", "p1")
    assert not decision.commands
    run = engine.run("p1")
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.error_class == "ChildWorkflowNotFound"


def test_a_rejected_child_start_fails_the_parent_step() -> None:
    engine = Engine(CHILD, PARENT)
    engine.start("parent", "p1")
    del engine.workflows["child"]  # gone by the time the child's StartRun is read
    engine.pump()
    run = engine.run("p1")
    assert run.steps["sub"].status is StepStatus.FAILED
    assert run.error is not None and run.error.error_class == "ChildRunRejected"


def test_a_loop_stops_when_until_holds() -> None:
    engine = Engine(CHILD, loop_parent("output.n >= `4`", 10))
    engine.start("looper", "l1", {"start": 1})
    engine.pump()
    children = []
    while engine.run("l1").steps["grow"].status is StepStatus.RUNNING:
        child = engine.child_of("l1", "grow")
        children.append(child)
        engine.work_child(child)
    assert children == [child_run_id("l1", "grow", 1, i) for i in (1, 2, 3)]
    requested = engine.events("l1", ChildRunRequested)
    assert [(e.iteration, e.inputs) for e in requested] == [
        (1, {"n": 1}),
        (2, {"n": 2}),
        (3, {"n": 3}),
    ]
    assert [e.iteration for e in engine.events("l1", ChildRunEnded)] == [1, 2, 3]
    for i, child in enumerate(children, start=1):
        parent = engine.events(child, RunStarted)[0].parent
        assert parent is not None and parent.iteration == i
    run = engine.run("l1")
    assert run.status is RunStatus.SUCCEEDED
    assert run.outputs == {"grow": {"output": {"n": 4}, "iterations": 3, "completed": True}}


@pytest.mark.parametrize("on_max", ["fail", "succeed"])
def test_a_loop_that_reaches_max_iterations(on_max: str) -> None:
    engine = Engine(CHILD, loop_parent("output.n > `100`", 2, on_max))
    engine.start("looper", "l1")
    engine.pump()
    while engine.run("l1").steps["grow"].status is StepStatus.RUNNING:
        engine.work_child(engine.child_of("l1", "grow"))
    run = engine.run("l1")
    assert len(engine.events("l1", ChildRunRequested)) == 2
    if on_max == "fail":
        assert run.status is RunStatus.FAILED
        assert run.error is not None and run.error.error_class == "LoopMaxIterations"
    else:
        assert run.status is RunStatus.SUCCEEDED
        assert run.outputs == {"grow": {"output": {"n": 3}, "iterations": 2, "completed": False}}


def test_a_loop_without_until_runs_max_iterations_and_completes() -> None:
    engine = Engine(CHILD, loop_parent(None, 3))
    engine.start("looper", "l1")
    engine.pump()
    while engine.run("l1").steps["grow"].status is StepStatus.RUNNING:
        engine.work_child(engine.child_of("l1", "grow"))
    assert engine.run("l1").outputs == {
        "grow": {"output": {"n": 4}, "iterations": 3, "completed": True}
    }


def test_a_loop_paused_between_iterations_goes_on_when_resumed() -> None:
    engine = Engine(CHILD, loop_parent("output.n >= `3`", 5))
    engine.start("looper", "l1")
    engine.pump()
    first = engine.child_of("l1", "grow")
    engine.command(PauseRun, "l1")
    engine.answer(first, "work", {"n": 2})  # ends before the pause reaches it
    engine.pump()
    grow = engine.run("l1").steps["grow"]
    assert grow.status is StepStatus.RUNNING and grow.child_run_id is None
    assert len(engine.events("l1", ChildRunRequested)) == 1  # no iteration while paused
    decision = engine.command(ResumeRun, "l1")
    [start] = [c for c in decision.commands if isinstance(c, StartRun)]
    assert start.inputs == {"n": 2} and start.parent is not None and start.parent.iteration == 2
    engine.pump()
    engine.work_child(start.run_id)
    assert engine.run("l1").status is RunStatus.SUCCEEDED


def test_stale_notifications_change_nothing() -> None:
    engine = Engine(CHILD, PARENT)
    engine.start("parent", "p1")
    engine.pump()
    child = engine.child_of("p1", "sub")
    before = engine.run("p1")
    for changes in ({"attempt": 2}, {"child_run_id": "someone-else"}, {"step_id": "after"}):
        fields: dict[str, Any] = {
            "child_run_id": child,
            "step_id": "sub",
            "attempt": 1,
            "status": "succeeded",
            "outputs": {"n": 1},
            **changes,
        }
        decision = engine.command(ChildRunFinished, "p1", **fields)
        assert decision.events == () and decision.rejection is None
    assert engine.run("p1") == before


def test_a_child_failed_by_fail_input_still_tells_its_parent() -> None:
    engine = Engine(CHILD, PARENT)
    engine.start("parent", "p1")
    engine.pump()
    child = engine.child_of("p1", "sub")
    invocation = engine.invocations[(child, "work")]
    result = NodeResult(
        run_id=child,
        seq=invocation.seq,
        occurred_at=engine.now,
        invocation_id=invocation.invocation_id,
        attempt=1,
        step=invocation.step,
        status=TraceStatus.OK,
        output={"n": 1},
        started_at=engine.now,
        finished_at=engine.now,
    )
    error = ErrorInfo(error_class="PayloadTooLarge", message="too big", retryable=False)
    decision = fail_input(engine.run(child), result, error, engine.context())
    [notify] = decision.commands
    assert isinstance(notify, ChildRunFinished) and notify.status == "failed"
    assert notify.error == error


def test_validation_names_the_field_paths_of_meta_params() -> None:
    definition = build_definition(
        {
            "id": "bad",
            "steps": [
                {"id": "a", "node": "meta.workflow", "params": {"inputs": {}}},
                {
                    "id": "b",
                    "node": "meta.loop",
                    "timeout": 1000,
                    "params": {
                        "workflow_id": "c",
                        "inputs": {"x": "{{ loop.previous }}", "y": "{{ nope.z }}"},
                        "until": "output.n > `3` && bogus.x",
                        "max_iterations": 0,
                        "on_max": "explode",
                        "extra": 1,
                    },
                },
                {
                    "id": "c",
                    "node": "meta.workflow",
                    "params": {"workflow_id": "c", "inputs": {"i": "{{ loop.iteration }}"}},
                },
            ],
        }
    )
    errors = {(e.path, e.message.split(" (")[0]) for e in check_definition(definition)}
    paths = {path for path, _ in errors}
    assert "steps[0].params.workflow_id" in paths
    assert "steps[1].timeout" in paths
    assert "steps[1].params.max_iterations" in paths
    assert "steps[1].params.on_max" in paths
    assert ("steps[1].params.extra", "unknown param") in errors
    assert "steps[1].params.inputs.y" in paths  # unknown root
    assert "steps[1].params.until" in paths  # bogus root in until
    assert "steps[1].params.inputs.x" not in paths  # loop.* is allowed in a loop's inputs
    assert "steps[2].params.inputs.i" in paths  # but not in meta.workflow's


def test_meta_nodes_are_not_looked_up_in_the_node_catalog() -> None:
    catalog = StaticNodeCatalog({"transform": ["1.0.0"]})
    assert check_definition(parse_workflow(PARENT), node_catalog=catalog) == []


def test_the_timeline_names_the_child_and_the_iteration() -> None:
    from reflux.client import describe_event

    line = describe_event(
        {
            "event_type": "ChildRunEnded",
            "seq": 7,
            "occurred_at": "2025-01-01T12:00:00+00:00",
            "payload": {
                "step": {"step_id": "grow"},
                "attempt": 1,
                "iteration": 2,
                "child_run_id": "c-2",
                "status": "succeeded",
            },
        }
    )
    assert "grow" in line and "iteration 2" in line and "child c-2 succeeded" in line


MIDDLE = """
id: middle
inputs:
  n: {type: integer, required: true}
steps:
  - id: inner
    node: meta.workflow
    params: {workflow_id: child, inputs: {n: "{{ inputs.n }}"}}
outputs:
  n: "{{ steps.inner.output.n }}"
"""

TOP = PARENT.replace("workflow_id: child", "workflow_id: middle")


def test_nested_children_cancel_all_the_way_down_and_report_all_the_way_up() -> None:
    engine = Engine(CHILD, MIDDLE, TOP)
    engine.start("parent", "top")
    engine.pump()
    middle = engine.child_of("top", "sub")
    leaf = engine.child_of(middle, "inner")
    parent = engine.run(leaf).parent
    assert parent is not None and (parent.run_id, parent.depth) == (middle, 2)
    engine.command(CancelRun, "top")
    engine.pump()
    assert {engine.run(r).status for r in ("top", middle, leaf)} == {RunStatus.CANCELLED}

    engine = Engine(CHILD, MIDDLE, TOP)
    engine.start("parent", "top", {"n": 3})
    engine.pump()
    leaf = engine.child_of(engine.child_of("top", "sub"), "inner")
    engine.work_child(leaf)
    assert engine.run("top").steps["sub"].output == {"n": 4}


def test_a_workflow_that_starts_itself_stops_at_the_depth_limit() -> None:
    selfish = """
id: selfish
steps:
  - id: again
    node: meta.workflow
    params: {workflow_id: selfish}
"""
    engine = Engine(selfish)
    engine.start("selfish", "s0")
    engine.pump(limit=200)
    runs = list(engine.states.values())
    assert len(runs) == 17  # the top-level run and 16 levels of children
    assert all(r.status is RunStatus.FAILED for r in runs)
    deepest = max(runs, key=lambda r: r.parent.depth if r.parent else 0)
    assert deepest.error is not None and deepest.error.error_class == "ChildDepthExceeded"
    assert engine.run("s0").error is not None


# -- tenancy (ADR 0051) ---------------------------------------------------------------------------


class TenantEngine(Engine):
    """The engine with each workflow registered in a tenant."""

    def __init__(self, tenants: dict[str, str], *definitions: str) -> None:
        super().__init__(*definitions)
        self.tenants = tenants

    def lookup(self, workflow_id: str, version: int | None) -> RegisteredWorkflow | None:
        found = super().lookup(workflow_id, version)
        return None if found is None else found._replace(tenant=self.tenants[workflow_id])


def test_a_run_and_its_children_carry_the_workflows_tenant_to_every_invocation() -> None:
    engine = TenantEngine({"parent": "acme", "child": "acme"}, CHILD, PARENT)
    engine.send(
        StartRun(
            run_id="p1",
            command_id=engine.new_id(),
            occurred_at=engine.now,
            workflow_id="parent",
            inputs={"n": 1},
            tenant="acme",
        )
    )
    assert engine.events("p1", RunStarted)[0].tenant == "acme"
    [start] = [c for c in engine.sent_commands if isinstance(c, StartRun)]
    assert start.tenant == "acme"  # the child is started for the parent's tenant
    engine.pump()
    child = engine.child_of("p1", "sub")
    assert engine.events(child, RunStarted)[0].tenant == "acme"
    assert engine.invocations[(child, "work")].tenant == "acme"
    engine.work_child(child)
    assert engine.invocations[("p1", "after")].tenant == "acme"


def test_a_start_for_another_tenant_is_rejected_in_the_words_of_a_missing_workflow() -> None:
    engine = TenantEngine({"child": "acme"}, CHILD)
    decision = engine.send(
        StartRun(
            run_id="r1",
            command_id=engine.new_id(),
            occurred_at=engine.now,
            workflow_id="child",
            inputs={"n": 1},
            tenant="beta",
        )
    )
    assert not engine.events("r1", RunStarted) and not decision.invocations
    assert decision.rejection == (
        "Expected workflow 'child' (latest) to be registered in tenant 'beta', but it is not"
    )
    # Null: the workflow's own tenant (a trigger bound to the workflow).
    engine.start("child", "r2", {"n": 1})
    assert engine.events("r2", RunStarted)[0].tenant == "acme"


def test_a_run_cannot_start_a_child_of_another_tenants_workflow() -> None:
    engine = TenantEngine({"parent": "acme", "child": "beta"}, CHILD, PARENT)
    engine.start("parent", "p1", {"n": 1})
    engine.pump()
    run = engine.run("p1")
    assert run.steps["sub"].status is StepStatus.FAILED
    assert run.error is not None and run.error.error_class == "ChildRunRejected"
    assert "registered in tenant 'acme'" in run.error.message
    assert not engine.events(child_run_id("p1", "sub", 1, None), RunStarted)
