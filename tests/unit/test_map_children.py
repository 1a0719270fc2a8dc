"""meta.map over a sub-workflow (one child run per item) and a failed parent that cancels its
children, through the pure core (decide/evolve).

The in-memory engine of tests/unit/test_child_runs.py plays the runtime for the parent and its
children and checks every decision against the fold of its run's log (replay equality).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from processors.scheduler.child_runs import map_child_run_id
from processors.scheduler.decide import DecisionContext
from processors.scheduler.meta.map_children import child_batching, map_children_in_flight
from processors.scheduler.state import RunState, RunStatus, StepStatus
from schemas import serde
from schemas.base import canonical_json
from schemas.models import (
    CancelRun,
    ChildRunFinished,
    ErrorInfo,
    FireTimer,
    MapChildEnded,
    MapChunkDispatched,
    MapStarted,
    PauseRun,
    PayloadRef,
    ResumeRun,
    StartRun,
)
from tests.unit.test_child_runs import CHILD, Engine
from workflows.validation import WorkflowValidationError, parse_workflow


def mapper(
    *,
    concurrency: int = 2,
    on_failure: str = "fail_fast",
    retry: str = "",
    extra: str = "",
    outputs: str = "{{ steps.each.output }}",
) -> str:
    return f"""
id: mapper
inputs:
  xs: {{type: array, default: [1, 2, 3, 4, 5]}}
steps:
  - id: each
    node: meta.map
{retry}    params:
      items: "{{{{ inputs.xs }}}}"
      workflow: child
      inputs: {{n: "{{{{ item }}}}"}}
      concurrency: {concurrency}
      on_failure: {on_failure}
{extra}outputs:
  each: "{outputs}"
"""


def pending_children(engine: Engine) -> list[str]:
    """Child runs whose one step waits for its worker's answer."""
    return [run for (run, step) in engine.invocations if step == "work" and run != "p1"]


def answer_child(engine: Engine, child: str, *, error: ErrorInfo | None = None) -> None:
    params = engine.invocations[(child, "work")].params
    if error is None:
        engine.answer(child, "work", {"n": params["n"] * 10})
    else:
        engine.answer(child, "work", error=error)


def children_running(engine: Engine) -> int:
    return sum(
        1
        for run_id, state in engine.states.items()
        if run_id != "p1" and state.status is RunStatus.RUNNING
    )


def test_each_item_is_a_child_run_and_outputs_come_in_item_order() -> None:
    engine = Engine(CHILD, mapper(concurrency=2))
    decision = engine.start("mapper", "p1")
    [started] = [e for e in decision.events if isinstance(e, MapStarted)]
    assert (started.workflow_id, started.workflow_version, started.item_count) == ("child", 1, 5)
    assert started.max_chunks_in_flight == 2  # the cap of children in flight
    starts = [c for c in decision.commands if isinstance(c, StartRun)]
    assert [s.run_id for s in starts] == [map_child_run_id("p1", "each", 1, i, 1) for i in (0, 1)]
    assert [s.inputs for s in starts] == [{"n": 1}, {"n": 2}]
    assert starts[0].parent is not None and starts[0].parent.iteration == 0
    assert not decision.invocations  # nothing for a worker in the parent
    engine.pump()
    peak = children_running(engine)
    # Answer the youngest child first each time: ends come back out of order.
    while pending_children(engine):
        answer_child(engine, pending_children(engine)[-1])
        engine.pump()
        peak = max(peak, children_running(engine))
        assert engine.run("p1").maps["each"].children_running <= 2
    assert peak == 2
    run = engine.run("p1")
    assert run.status is RunStatus.SUCCEEDED
    assert run.outputs == {
        "each": {
            "results": [{"n": 10}, {"n": 20}, {"n": 30}, {"n": 40}, {"n": 50}],
            "errors": [],
            "succeeded": 5,
            "failed": 0,
        }
    }
    ended = engine.events("p1", MapChildEnded)
    assert len(ended) == 5 and {e.outcome for e in ended} == {"succeeded"}
    for event in engine.logs["p1"]:  # every run-log record encodes (Avro)
        assert serde.decode(serde.encode(event)) == event


def test_children_start_in_batches_not_one_record_per_item() -> None:
    assert child_batching(16) == (100, 4)
    assert child_batching(1) == (100, 1)
    assert child_batching(1000) == (100, 100)
    engine = Engine(CHILD, mapper(concurrency=8))
    engine.start("mapper", "p1", {"xs": list(range(40))})
    engine.pump(limit=1000)
    while pending_children(engine):
        answer_child(engine, pending_children(engine)[0])
        engine.pump(limit=1000)
        assert engine.run("p1").maps["each"].children_running <= 8
    assert engine.run("p1").status is RunStatus.SUCCEEDED
    batches = engine.events("p1", MapChunkDispatched)
    # Batches of >= 2 (a quarter of the cap): at most 40 / 2 records, not 40.
    assert len(batches) <= 20 and min(b.item_count for b in batches) >= 2
    assert sum(b.item_count for b in batches) == 40


def test_fail_fast_fails_the_step_and_cancels_the_children_in_flight() -> None:
    engine = Engine(CHILD, mapper(concurrency=3))
    engine.start("mapper", "p1")
    engine.pump()
    first, *others = pending_children(engine)
    boom = ErrorInfo(error_class="Boom", message="no", retryable=False)
    answer_child(engine, first, error=boom)
    # The child's end reaches the parent: the step fails, the others are cancelled.
    decision = engine.send(engine.outbox.popleft())
    cancels = [c for c in decision.commands if isinstance(c, CancelRun)]
    assert sorted(c.run_id for c in cancels) == sorted(others)
    assert all("failed fast" in (c.reason or "") for c in cancels)
    run = engine.run("p1")
    assert run.status is RunStatus.FAILED and run.failed_step == "each"
    assert run.error is not None and run.error.error_class == "Boom"
    assert run.error.message.startswith("item 0:")
    engine.pump()
    for child in others:
        assert engine.run(child).status is RunStatus.CANCELLED
    # Their ChildRunFinished (cancelled) reached the failed parent and changed nothing.
    assert len(engine.events("p1", MapChildEnded)) == 1
    assert map_children_in_flight(engine.run("p1")) == {}


def test_collect_gives_results_and_errors_by_index() -> None:
    engine = Engine(CHILD, mapper(concurrency=5, on_failure="collect"))
    engine.start("mapper", "p1")
    engine.pump()
    for child in pending_children(engine):
        params = engine.invocations[(child, "work")].params
        bad = params["n"] == 2
        error = ErrorInfo(error_class="Odd", message="two", retryable=False) if bad else None
        answer_child(engine, child, error=error)
        engine.pump()
    run = engine.run("p1")
    assert run.status is RunStatus.SUCCEEDED
    output = run.outputs["each"]
    assert output["results"] == [{"n": 10}, None, {"n": 30}, {"n": 40}, {"n": 50}]
    assert (output["succeeded"], output["failed"]) == (4, 1)
    [error] = output["errors"]
    assert error["index"] == 1 and error["error"]["error_class"] == "Odd"


def test_an_item_is_retried_as_a_new_child_with_the_steps_retry_spec() -> None:
    retry = "    retry: {max_attempts: 2, initial_backoff: 10}\n"
    engine = Engine(CHILD, mapper(concurrency=5, retry=retry))
    engine.start("mapper", "p1", {"xs": [7]})
    engine.pump()
    [first] = pending_children(engine)
    answer_child(engine, first, error=ErrorInfo(error_class="Flaky", message="x", retryable=True))
    engine.pump()
    [ended] = engine.events("p1", MapChildEnded)
    assert (ended.outcome, ended.item_attempt) == ("retry", 1)
    [timer] = engine.run("p1").timers.values()
    assert timer.timer_id == ended.retry_timer_id
    engine.now = timer.due_at + timedelta(milliseconds=1)
    decision = engine.send(
        FireTimer(
            run_id="p1",
            timer_id=timer.timer_id,
            kind=timer.kind,
            step_id=timer.step_id,
            attempt=timer.attempt,
            due_at=timer.due_at,
        )
    )
    [start] = [c for c in decision.commands if isinstance(c, StartRun)]
    assert start.run_id == map_child_run_id("p1", "each", 1, 0, 2) != first
    engine.pump()
    answer_child(engine, start.run_id)
    engine.pump()
    run = engine.run("p1")
    assert run.status is RunStatus.SUCCEEDED
    assert run.outputs["each"]["results"] == [{"n": 70}]


def test_pause_resume_and_cancel_of_the_parent_reach_the_item_children() -> None:
    engine = Engine(CHILD, mapper(concurrency=2))
    engine.start("mapper", "p1")
    engine.pump()
    children = pending_children(engine)
    paused = engine.command(PauseRun, "p1")
    assert sorted(c.run_id for c in paused.commands) == sorted(children)
    # A child whose result was on its way ends before the pause reaches it: recorded in the
    # paused parent, and no new child starts.
    answer_child(engine, children[0])
    engine.pump()
    assert engine.run(children[1]).status is RunStatus.PAUSED
    assert engine.run("p1").maps["each"].children_running == 1
    assert not any(isinstance(c, StartRun) for c in engine.decisions[-1].commands)
    resumed = engine.command(ResumeRun, "p1")
    assert any(isinstance(c, ResumeRun) for c in resumed.commands)
    assert any(isinstance(c, StartRun) for c in resumed.commands)  # the free slot refills
    engine.pump()
    cancelled = engine.command(CancelRun, "p1", reason="enough")
    targets = sorted(c.run_id for c in cancelled.commands if isinstance(c, CancelRun))
    assert targets == sorted(pending_children(engine))
    engine.pump()
    assert engine.run("p1").status is RunStatus.CANCELLED
    assert all(engine.run(c).status is RunStatus.CANCELLED for c in targets)


def test_stale_child_ends_change_nothing() -> None:
    engine = Engine(CHILD, mapper(concurrency=2))
    engine.start("mapper", "p1")
    engine.pump()
    child = pending_children(engine)[0]
    answer_child(engine, child)
    notification = engine.outbox[0]
    assert isinstance(notification, ChildRunFinished)
    engine.pump()
    before = engine.run("p1")
    again = engine.send(notification.model_copy(update={"command_id": "dup"}))
    assert again.events == ()  # the item already has its outcome
    wrong = notification.model_copy(update={"command_id": "x", "child_run_id": "someone-else"})
    assert engine.send(wrong).events == ()
    assert engine.run("p1").maps == before.maps


def test_a_thousand_items_write_bounded_records_and_bounded_state() -> None:
    store: dict[str, Any] = {}

    def store_payload(value: Any) -> PayloadRef | None:
        data = canonical_json(value).encode()
        if len(data) <= 4096:  # a small claim-check threshold, to exercise the references
            return None
        digest = hashlib.sha256(data).hexdigest()
        store[digest] = value
        return PayloadRef(
            uri=f"mem://{digest}",
            sha256=digest,
            size_bytes=len(data),
            content_type="application/json",
        )

    def load_payload(ref: PayloadRef) -> Any:
        return store[ref.sha256]

    class PayloadEngine(Engine):
        def context(self) -> DecisionContext:
            return DecisionContext(
                now=self.now,
                new_id=self.new_id,
                lookup_workflow=self.lookup,
                store_payload=store_payload,
                load_payload=load_payload,
            )

    # The child's whole step output is its output: ~130 bytes per item, 130 KB in all, so the
    # map's inline results go over its 64 KiB budget and spill.
    wide = CHILD.replace('n: "{{ steps.work.output.n }}"', 'n: "{{ steps.work.output }}"')
    # (The run's outputs are not claim-checked: they take the count, not the 130 KB list.)
    parent = mapper(concurrency=50, outputs="{{ steps.each.output.succeeded }}")
    engine = PayloadEngine(wide, parent)
    engine.start("mapper", "p1", {"xs": list(range(1000))})
    engine.pump(limit=100_000)
    peak_state = 0
    while pending_children(engine):
        for child in pending_children(engine):
            n = engine.invocations[(child, "work")].params["n"]
            engine.answer(child, "work", {"n": n * 10, "pad": "x" * 100})
        engine.pump(limit=100_000)
        state: RunState = engine.run("p1")
        assert state.maps["each"].children_running <= 50
        peak_state = max(peak_state, len(state.model_dump_json()))
    run = engine.run("p1")
    assert run.status is RunStatus.SUCCEEDED and run.outputs == {"each": 1000}
    output = run.steps["each"]
    assert output.output_ref is not None  # the assembled output is claim-checked
    results = store[output.output_ref.sha256]["results"]
    assert results == [{"n": {"n": i * 10, "pad": "x" * 100}} for i in range(1000)]
    log = engine.logs["p1"]
    biggest = max(len(serde.encode(e)) for e in log)
    assert biggest < 16 * 1024, biggest
    assert len(engine.events("p1", MapChunkDispatched)) <= 1000 // 13 + 1  # batches of >= 13
    # Spills keep the state near the 64 KiB inline budget (+ one small entry per batch).
    assert peak_state < 128 * 1024, peak_state
    assert run.maps["each"].spills


def test_a_failed_parent_cancels_its_children_and_ignores_their_ends() -> None:
    parent = """
id: parent
steps:
  - id: sub
    node: meta.workflow
    params: {workflow_id: child, inputs: {n: 1}}
  - id: sibling
    node: transform
    params: {x: 1}
"""
    engine = Engine(CHILD, parent)
    engine.start("parent", "p1")
    engine.pump()
    child = engine.child_of("p1", "sub")
    boom = ErrorInfo(error_class="Boom", message="sibling broke", retryable=False)
    decision = engine.answer("p1", "sibling", error=boom)
    run = engine.run("p1")
    assert run.status is RunStatus.FAILED and run.failed_step == "sibling"
    sub = run.steps["sub"]
    assert sub.status is StepStatus.FAILED
    assert sub.error is not None and sub.error.error_class == "ChildRunCancelled"
    assert "parent run p1 failed (step 'sibling')" in sub.error.message
    [cancel] = [c for c in decision.commands if isinstance(c, CancelRun)]
    assert cancel.run_id == child and "sibling broke" in (cancel.reason or "")
    engine.pump()
    assert engine.run(child).status is RunStatus.CANCELLED
    [finished] = [c for c in engine.sent_commands if isinstance(c, ChildRunFinished)]
    assert finished.status == "cancelled"
    assert engine.run("p1") == run  # the end of the cancelled child was a no-op
    assert map_children_in_flight(run) == {}


def test_a_failed_parent_cancels_its_map_children() -> None:
    parent = mapper(concurrency=2, extra="  - id: sibling\n    node: transform\n    params: {}\n")
    engine = Engine(CHILD, parent)
    engine.start("mapper", "p1")
    engine.pump()
    children = pending_children(engine)
    boom = ErrorInfo(error_class="Boom", message="sibling broke", retryable=False)
    decision = engine.answer("p1", "sibling", error=boom)
    assert sorted(c.run_id for c in decision.commands if isinstance(c, CancelRun)) == sorted(
        children
    )
    engine.pump()
    assert {engine.run(c).status for c in children} == {RunStatus.CANCELLED}
    each = engine.run("p1").steps["each"]
    assert each.status is StepStatus.FAILED and each.error is not None
    assert not engine.events("p1", MapChildEnded)


def _errors(text: str) -> dict[str, str]:
    try:
        parse_workflow(text)
    except WorkflowValidationError as exc:
        return {e.path: e.message for e in exc.errors}
    return {}


def test_validation_names_the_field_paths_of_a_map_over_a_workflow() -> None:
    assert _errors(mapper()) == {}
    line = "      workflow: child\n"
    both = mapper().replace(line, line + "      node: transform\n")
    assert "exactly one" in _errors(both)["steps[0].params.workflow"]
    neither = mapper().replace(line, "")
    assert "exactly one" in _errors(neither)["steps[0].params.node"]
    mixed = mapper().replace(line, line + "      params: {}\n")
    assert "inputs" in _errors(mixed)["steps[0].params.params"]
    bad_root = mapper().replace("{{ item }}", "{{ nope }}")
    assert any(p.startswith("steps[0].params.inputs") for p in _errors(bad_root))


def test_a_parent_whose_deadline_passes_cancels_its_children() -> None:
    parent = mapper(concurrency=2).replace("id: mapper\n", "id: mapper\ndeadline: 60000\n")
    engine = Engine(CHILD, parent)
    engine.start("mapper", "p1")
    engine.pump()
    children = pending_children(engine)
    [timer] = [t for t in engine.run("p1").timers.values() if t.kind.value == "run_deadline"]
    engine.now = timer.due_at
    decision = engine.send(
        FireTimer(
            run_id="p1",
            timer_id=timer.timer_id,
            kind=timer.kind,
            step_id=None,
            attempt=timer.attempt,
            due_at=timer.due_at,
        )
    )
    run = engine.run("p1")
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.error_class == "RunDeadlineExceeded"
    cancels = [c for c in decision.commands if isinstance(c, CancelRun)]
    assert sorted(c.run_id for c in cancels) == sorted(children)
    assert all("deadline" in (c.reason or "") for c in cancels)
    engine.pump()
    assert {engine.run(c).status for c in children} == {RunStatus.CANCELLED}
    assert engine.run("p1") == run  # their ends changed nothing


def test_the_timeline_names_the_child_workflow_and_each_items_child() -> None:
    from reflux.client import describe_event

    def line(kind: str, payload: dict[str, Any]) -> str:
        event = {"event_type": kind, "seq": 3, "occurred_at": "2025-01-01T12:00:00+00:00"}
        return describe_event({**event, "payload": {"step": {"step_id": "each"}, **payload}})

    started = line(
        "MapStarted",
        {
            "item_count": 1000,
            "workflow_id": "square",
            "workflow_version": 2,
            "max_chunks_in_flight": 100,
            "on_failure": "fail_fast",
        },
    )
    assert "1000 items, a child run of square v2 each (100 in flight), fail_fast" in started
    ended = line(
        "MapChildEnded",
        {
            "item": 7,
            "item_attempt": 1,
            "child_run_id": "c-7",
            "status": "failed",
            "outcome": "retry",
        },
    )
    assert "item 7 (attempt 1): child run c-7 failed -> retry" in ended


def test_an_item_whose_inputs_do_not_validate_fails_the_map_and_cancels_its_children() -> None:
    engine = Engine(CHILD, mapper(concurrency=2))
    engine.start("mapper", "p1", {"xs": [1, 2, "three"]})  # the child wants an integer
    engine.pump()
    first, second = pending_children(engine)
    answer_child(engine, first)
    decision = engine.send(engine.outbox.popleft())  # first's end: the next batch is "three"
    [cancel] = [c for c in decision.commands if isinstance(c, CancelRun)]
    assert cancel.run_id == second
    assert "item 2" in (cancel.reason or "") and "inputs.n" in (cancel.reason or "")
    run = engine.run("p1")
    assert run.status is RunStatus.FAILED and run.failed_step == "each"
    assert run.error is not None and run.error.error_class == "ChildInputsInvalid"
    assert not any(isinstance(c, StartRun) for c in decision.commands)
    engine.pump()
    assert engine.run(second).status is RunStatus.CANCELLED


def test_no_items_succeed_at_once_and_an_unknown_workflow_fails_the_step() -> None:
    engine = Engine(CHILD, mapper())
    decision = engine.start("mapper", "p1", {"xs": []})
    assert not decision.commands
    run = engine.run("p1")
    assert run.status is RunStatus.SUCCEEDED
    assert run.outputs["each"] == {"results": [], "errors": [], "succeeded": 0, "failed": 0}
    engine = Engine(mapper())  # "child" is not registered
    decision = engine.start("mapper", "p2")
    assert not decision.commands
    run = engine.run("p2")
    assert run.status is RunStatus.FAILED and run.failed_step == "each"
    assert run.error is not None and run.error.error_class == "ChildWorkflowNotFound"
    assert "'child' (latest)" in run.error.message
