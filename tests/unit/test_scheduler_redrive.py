"""Re-drive from a step (RedriveStep downstream) and rebind (RebindRun): pure decide/fold.

Every ``Simulation.send`` also checks that folding the log gives the live state (replay
equality), so each test below checks it for every decision it makes.
"""

from __future__ import annotations

from typing import Any

from processors.scheduler import fold
from processors.scheduler.redrive import transitive_dependents
from processors.scheduler.state import RunStatus, StepStatus
from schemas.models import (
    CommandRejected,
    NodeInvocation,
    RunRebound,
    RunResumed,
    RunSucceeded,
    StepDispatched,
    StepScheduled,
    StepsReset,
)
from schemas.run_log import schedules_step
from tests.support.scheduler_simulation import Simulation
from workflows.validation import parse_workflow

CHAIN = """
id: chain
steps:
  - {id: a, node: transform@^1, params: {n: 1}}
  - {id: b, node: transform@^1, needs: [a], params: {n: "{{ steps.a.output.n }}"}}
  - {id: c, node: transform@^1, needs: [b], params: {n: "{{ steps.b.output.n }}"}}
  - {id: side, node: transform@^1, needs: [a], params: {n: 0}}
  - {id: gated, node: transform@^1, needs: [b], when: "inputs.go", params: {}}
inputs: {go: {type: boolean, default: false}}
outputs: {c: "{{ steps.c.output.n }}"}
"""


def plus_one(inv: NodeInvocation) -> object:
    params: Any = inv.params
    return {"n": (params.get("n") or 0) + 1}


def events_of(sim: Simulation, cls: type) -> list[Any]:
    return [e for e in sim.log if isinstance(e, cls)]


def run_status(sim: Simulation) -> RunStatus:
    return sim.run.status  # a call: mypy does not narrow it across the commands in between


def scheduled(sim: Simulation, step_id: str) -> list[StepScheduled | StepDispatched]:
    return [e for e in sim.log if schedules_step(e) and e.step.step_id == step_id]


def succeeded_chain() -> Simulation:
    sim = Simulation(CHAIN)
    sim.start()
    sim.run_workers(plus_one)
    assert run_status(sim) is RunStatus.SUCCEEDED
    assert sim.run.steps["gated"].status is StepStatus.SKIPPED
    return sim


def test_transitive_dependents_in_topological_order() -> None:
    graph = parse_workflow(CHAIN)
    assert transitive_dependents(graph, "a") == ["b", "side", "c", "gated"]
    assert transitive_dependents(graph, "b") == ["c", "gated"]
    assert transitive_dependents(graph, "c") == []


def test_redrive_from_a_middle_step_of_a_succeeded_run() -> None:
    sim = succeeded_chain()
    first_outputs = sim.run.outputs
    invocations_before = len(sim.sent)
    d = sim.redrive_from("b")
    kinds = [type(e).__name__ for e in d.events]
    assert kinds[:3] == ["StepsReset", "RunResumed", "StepDispatched"]  # scheduling (ADR 0075)
    reset = d.events[0]
    assert isinstance(reset, StepsReset)
    assert reset.step_ids == ["b", "c", "gated"] and reset.from_step == "b"
    assert run_status(sim) is RunStatus.RUNNING and sim.run.outputs is None
    # b runs again on a's original output; a and side keep theirs.
    assert sim.run.steps["a"].status is StepStatus.SUCCEEDED
    assert sim.run.steps["side"].status is StepStatus.SUCCEEDED
    assert sim.run.steps["c"].status is StepStatus.PENDING
    assert sim.run.steps["gated"].status is StepStatus.PENDING
    sim.run_workers(plus_one)
    assert run_status(sim) is RunStatus.SUCCEEDED
    assert sim.run.outputs == first_outputs
    # Attempts continue (2), with new invocations; a and side were not invoked again.
    assert [e.attempt for e in scheduled(sim, "b")] == [1, 2]
    assert [e.attempt for e in scheduled(sim, "c")] == [1, 2]
    assert [e.attempt for e in scheduled(sim, "a")] == [1]
    again = {inv.step.step_id for inv in sim.sent[invocations_before:]}
    assert again == {"b", "c"}
    ids = [inv.invocation_id for inv in sim.sent if inv.step.step_id == "b"]
    assert len(ids) == 2 and ids[0] != ids[1]
    # The run ended twice: its status is the last terminal event's.
    assert len(events_of(sim, RunSucceeded)) == 2
    assert sim.run.steps["gated"].status.value == "skipped"  # `when` judged again
    assert fold(sim.log) == sim.run


def test_redrive_from_in_a_failed_run_reruns_downstream() -> None:
    sim = Simulation(CHAIN)
    sim.start()
    sim.succeed("a", {"n": 1})
    sim.succeed("side", {"n": 0})
    sim.fail("b", "Boom", retryable=False)
    assert run_status(sim) is RunStatus.FAILED
    d = sim.redrive_from("b")
    assert [type(e).__name__ for e in d.events][:2] == ["StepsReset", "RunResumed"]
    sim.run_workers(plus_one)
    assert run_status(sim) is RunStatus.SUCCEEDED
    assert sim.run.outputs == {"c": 3}


def test_redrive_from_in_a_running_run_does_not_reopen() -> None:
    sim = Simulation(CHAIN)
    sim.start()
    sim.succeed("a", {"n": 1})
    sim.succeed("b", {"n": 2})  # c and gated now in flight / skipped; side dispatched
    sim.succeed("c", {"n": 3})
    d = sim.redrive_from("c")
    assert not any(isinstance(e, RunResumed) for e in d.events)
    assert sim.run.steps["c"].attempt == 2


def test_redrive_from_refusals_name_the_reason() -> None:
    sim = Simulation(CHAIN)
    sim.start()
    assert sim.redrive_from("nope").rejection == (
        "Expected step 'nope' to exist, but the run has no such step (steps: a, b, c, side, gated)"
    )
    assert sim.redrive_from("a").rejection == (
        "Expected step 'a' to have ended (succeeded, skipped, failed or timed_out) to re-drive "
        "from it, but it is dispatched"
    )
    sim.succeed("a", {"n": 1})
    assert sim.redrive_from("a").rejection == (
        "Expected step 'a' and the steps downstream of it not to be in flight, but 'b' is "
        "dispatched, 'side' is dispatched (wait for it to end, or cancel the run)"
    )
    sim.pause()
    assert sim.redrive_from("a").rejection == (
        "Expected run to be running, failed or succeeded to re-drive from a step, but it is "
        "paused (resume it first)"
    )
    sim.cancel()
    assert sim.redrive_from("a").rejection == (
        "Expected run to be running, failed or succeeded to re-drive from a step, but it is "
        "cancelled (a cancelled run is never reopened)"
    )
    assert len(events_of(sim, CommandRejected)) == 5


def test_plain_redrive_keeps_its_v1_behaviour() -> None:
    sim = succeeded_chain()
    assert sim.redrive("b").rejection == "Expected run to be failed or running, but it is succeeded"


def test_redrive_from_of_a_cached_step_may_be_answered_from_the_cache() -> None:
    # The step opted into caching: same params, same output (docs/decisions/0026).
    sim = Simulation(
        """
id: cached
steps:
  - {id: a, node: transform@^1, params: {n: 1}, cache: {enabled: true, ttl: 1h}}
"""
    )
    sim.start()
    sim.answer_lookups()
    sim.run_workers(plus_one)
    assert run_status(sim) is RunStatus.SUCCEEDED
    d = sim.redrive_from("a")
    assert d.cache_lookups and not d.invocations
    sim.answer_lookups()
    assert run_status(sim) is RunStatus.SUCCEEDED
    assert sim.run.steps["a"].cache_hit is True and sim.run.steps["a"].attempt == 2


# -- rebind ---------------------------------------------------------------------------------------

V1 = """
id: fixme
steps:
  - {id: fetch, node: transform@^1, params: {n: 1}}
  - {id: parse, node: transform@^1, needs: [fetch], params: {bad: true}}
  - {id: store, node: transform@^1, needs: [parse], params: {n: "{{ steps.parse.output.n }}"}}
outputs: {n: "{{ steps.store.output.n }}"}
"""

V2 = """
id: fixme
steps:
  - {id: fetch, node: transform@^1, params: {n: 1}}
  - {id: clean, node: transform@^1, needs: [fetch], params: {n: "{{ steps.fetch.output.n }}"}}
  - {id: parse, node: transform@^1, needs: [clean], params: {n: "{{ steps.clean.output.n }}"}}
  - {id: store, node: transform@^1, needs: [parse], params: {n: "{{ steps.parse.output.n }}"}}
outputs: {n: "{{ steps.store.output.n }}"}
"""


def broken(inv: NodeInvocation) -> object:
    params: Any = inv.params
    if params.get("bad"):
        raise ValueError("cannot parse")
    return plus_one(inv)


def failed_v1() -> Simulation:
    sim = Simulation(V1)
    sim.start()
    sim.versions[2] = parse_workflow(V2)
    sim.succeed("fetch", {"n": 1})
    sim.fail("parse", "ParseError", retryable=False)
    assert run_status(sim) is RunStatus.FAILED
    return sim


def test_rebind_a_failed_run_to_a_fixed_version() -> None:
    sim = failed_v1()
    d = sim.rebind(2)
    kinds = [type(e).__name__ for e in d.events]
    assert kinds[:4] == ["RunRebound", "StepsReset", "RunResumed", "StepDispatched"]
    rebound = d.events[0]
    assert isinstance(rebound, RunRebound)
    assert (rebound.workflow_version, rebound.previous_version) == (2, 1)
    assert rebound.kept_steps == ["fetch", "parse", "store"]
    assert rebound.added_steps == ["clean"]
    assert rebound.removed_steps == []
    assert rebound.changed_steps == ["parse"]
    assert sim.run.workflow_version == 2
    # parse gained a need (clean): it waits for it; clean runs first on fetch's output.
    assert sim.run.steps["parse"].status is StepStatus.PENDING
    assert scheduled(sim, "clean")[-1].params == {"n": 1}
    sim.run_workers(plus_one)
    assert run_status(sim) is RunStatus.SUCCEEDED
    assert sim.run.outputs == {"n": 4}
    assert [e.attempt for e in scheduled(sim, "fetch")] == [1]  # not run again
    assert [e.attempt for e in scheduled(sim, "parse")] == [1, 2]


def test_rebind_latest_without_redrive_keeps_the_run_failed() -> None:
    sim = failed_v1()
    d = sim.rebind(None, redrive_failed=False)
    assert [type(e).__name__ for e in d.events] == ["RunRebound"]
    assert run_status(sim) is RunStatus.FAILED and sim.run.workflow_version == 2
    sim.redrive("parse")  # later, by hand: it waits for clean (new need) to run first
    sim.run_workers(plus_one)
    assert run_status(sim) is RunStatus.SUCCEEDED


def test_rebind_a_paused_run_picks_up_new_steps_on_resume() -> None:
    sim = Simulation(V1)
    sim.start()
    sim.versions[2] = parse_workflow(V2)
    sim.pause()
    d = sim.rebind(2)
    assert [type(e).__name__ for e in d.events] == ["RunRebound"]
    assert run_status(sim) is RunStatus.PAUSED
    sim.resume()
    sim.run_workers(plus_one)
    assert run_status(sim) is RunStatus.SUCCEEDED


def test_rebind_refusals_name_the_step_and_the_rule() -> None:
    sim = failed_v1()
    sim.versions[3] = parse_workflow(
        """
id: fixme
steps:
  - {id: parse, node: http.request@^1, params: {url: "https://x.example"}}
"""
    )
    sim.versions[4] = parse_workflow(
        """
id: fixme
steps:
  - {id: first, node: transform@^1}
  - {id: fetch, node: transform@^1, needs: [first]}
  - {id: parse, node: transform@^1, needs: [fetch]}
"""
    )
    sim.versions[5] = parse_workflow(
        V2.replace("inputs:", "x:") + "inputs: {need: {type: string, required: true}}\n"
    )
    assert sim.rebind(3).rejection == (
        "Expected run to map onto version 3, but step 'fetch' (succeeded) is missing from "
        "version 3 (rule has-run-stays: a step that has run must stay); step 'parse' (failed) "
        "runs node 'transform' but version 3 gives it 'http.request' (rule same-node: a step "
        "that has run keeps its node)"
    )
    assert sim.rebind(4).rejection == (
        "Expected run to map onto version 4, but step 'fetch' (succeeded) needs 'first' in "
        "version 4, which is new in this run (rule needs-ended: a step whose result stands "
        "needs only steps that succeeded or were skipped)"
    )
    rejection = sim.rebind(5).rejection
    assert rejection is not None and "(rule inputs)" in rejection and "need" in rejection
    assert sim.rebind(1).rejection == (
        "Expected a version other than the run's own (1) to rebind to, but got version 1"
    )
    assert sim.rebind(9).rejection == (
        "Expected workflow 'fixme' (version 9) to be registered, but it is not"
    )
    assert sim.run.workflow_version == 1 and run_status(sim) is RunStatus.FAILED


def test_rebind_refused_for_running_and_succeeded_runs() -> None:
    sim = Simulation(V1)
    sim.start()
    sim.versions[2] = parse_workflow(V2)
    assert sim.rebind(2).rejection == (
        "Expected run to be failed or paused to rebind it, but it is running (pause it first)"
    )
    sim.run_workers(plus_one)
    assert run_status(sim) is RunStatus.SUCCEEDED
    assert sim.rebind(2).rejection == (
        "Expected run to be failed or paused to rebind it, but it is succeeded"
    )


def test_rebind_drops_pending_steps_that_are_gone() -> None:
    sim = failed_v1()
    sim.versions[2] = parse_workflow(
        """
id: fixme
steps:
  - {id: fetch, node: transform@^1, params: {n: 1}}
  - {id: parse, node: transform@^1, needs: [fetch], params: {n: 5}}
outputs: {n: "{{ steps.parse.output.n }}"}
"""
    )
    d = sim.rebind(2)
    rebound = d.events[0]
    assert isinstance(rebound, RunRebound) and rebound.removed_steps == ["store"]
    assert "store" not in sim.run.steps
    sim.run_workers(plus_one)
    assert run_status(sim) is RunStatus.SUCCEEDED and sim.run.outputs == {"n": 6}
