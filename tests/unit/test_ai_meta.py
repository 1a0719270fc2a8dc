"""ai.meta (ADR 0027): prompt building, plan parsing, plan validation with field paths, the
feedback a retry carries, the pure splice (GraphMutated add_steps) and the fold (the meta step
completes when its sub-graph does). Scenarios run through the in-memory Simulation, which checks
live state == fold(log) after every input."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from node_workers.node import validate_params
from node_workers.nodes.ai_meta import AiMetaNode, build_messages, parse_plan
from processors.scheduler import RunState, RunStatus, StepStatus, fold
from processors.scheduler.meta import ai_plan
from schemas.models import (
    ErrorInfo,
    GraphMutated,
    GraphMutationType,
    NodeInvocation,
    StepFailed,
    StepSucceeded,
    TraceStatus,
)
from tests.support.scheduler_simulation import Simulation
from workflows import parse_workflow
from workflows.node_catalog import StaticNodeCatalog
from workflows.validation import FieldError

_OK = TraceStatus.OK

TRANSFORM_SCHEMA = {
    "type": "object",
    "title": "TransformInput",
    "properties": {"expression": {"type": "string", "title": "Expression"}, "data": {}},
    "required": ["expression"],
}


class _Catalog(StaticNodeCatalog):
    """A static catalog that also has manifests (like the live CatalogState)."""

    def manifest(self, name: str, version: str) -> Mapping[str, Any] | None:
        if name == "transform":
            return {"description": "reshape JSON", "input_schema": TRANSFORM_SCHEMA}
        return {"description": name, "input_schema": {"type": "object"}}


CATALOG = _Catalog({"transform": ["1.0.0"], "ai.meta": ["1.0.0"], "http.request": ["1.2.0"]})

WORKFLOW = {
    "id": "planned",
    "inputs": {"n": {"type": "integer", "default": 21}},
    "steps": [
        {"id": "seed", "node": "transform@^1", "params": {"expression": "@", "data": 1}},
        {
            "id": "plan",
            "node": "ai.meta@^1",
            "needs": ["seed"],
            "retry": {"max_attempts": 3, "initial_backoff": "10ms"},
            "params": {
                "goal": "double n",
                "inputs": {"n": "{{ inputs.n }}"},
                "base_url": "http://llm.test/v1",
                "api_key": "k-123",
                "model": "planner",
                "nodes": ["transform"],
                "output_step": "result",
            },
        },
        {
            "id": "after",
            "node": "transform@^1",
            "needs": ["plan"],
            "params": {"expression": "result", "data": "{{ steps.plan.output }}"},
        },
    ],
    "outputs": {"final": "{{ steps.after.output.result }}"},
}

GOOD_PLAN = {
    "steps": [
        {
            "id": "double",
            "node": "transform@^1",
            "params": {"expression": "n * `2`", "data": {"n": "{{ inputs.n }}"}},
        },
        {
            "id": "result",
            "node": "transform@^1",
            "needs": ["double"],
            "params": {"expression": "result", "data": "{{ steps.double.output }}"},
        },
    ]
}
BAD_PLAN = {
    "steps": [
        {"id": "a", "node": "transfrom@^1", "params": {"expression": "@"}, "needs": ["result"]},
        {"id": "result", "node": "transform@^1", "params": {"expression": "@"}, "needs": ["a"]},
    ]
}


def _graph() -> Any:
    return parse_workflow(WORKFLOW, node_catalog=CATALOG)


def _check(plan: Any, **params: Any) -> ai_plan.PlanCheck:
    opts = {"nodes": ["transform"], "output_step": "result", **params}
    return ai_plan.check_plan(_graph(), "plan", {"plan": plan}, params=opts, catalog=CATALOG)


def _errors(check: ai_plan.PlanCheck) -> list[str]:
    return [str(e) for e in check.errors]


# -- the worker side: prompt and parsing ----------------------------------------------------------


def test_prompt_has_goal_context_catalog_schemas_and_rules() -> None:
    node = AiMetaNode()
    params = validate_params(
        node,
        {
            "goal": "double n",
            "inputs": {"n": 21},
            "api_key": "k",
            "model": "m",
            "output_step": "result",
            "max_steps": 7,
            "catalog": ai_plan.catalog_for_prompt(CATALOG, ["transform"]),
        },
    )
    system, user = build_messages(params)
    assert system["role"] == "system" and user["role"] == "user"
    assert "- transform@^1: reshape JSON" in system["content"]
    assert '"required":["expression"]' in system["content"]  # the params schema, compact
    assert "Title" not in system["content"]  # pydantic titles stripped
    assert "http.request" not in system["content"]  # not in the step's allowed nodes
    assert "at most 7 steps" in system["content"]
    assert 'one step must have the id "result"' in system["content"]
    assert user["content"] == 'Goal: double n\nContext (JSON): {"n": 21}'


def test_prompt_on_a_retry_shows_the_rejected_plan_and_its_errors() -> None:
    params = validate_params(
        AiMetaNode(),
        {
            "goal": "g",
            "api_key": "k",
            "model": "m",
            "feedback": {"attempt": 1, "errors": ["plan.steps[0].node: unknown"], "plan": "{}"},
        },
    )
    messages = build_messages(params)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == "{}"
    assert "attempt 1" in messages[3]["content"]
    assert "- plan.steps[0].node: unknown" in messages[3]["content"]
    assert "No node catalog was supplied" in messages[0]["content"]


def test_parse_plan_accepts_json_and_fenced_json_and_says_why_not() -> None:
    assert parse_plan('{"steps": []}') == ({"steps": []}, None)
    assert parse_plan('```json\n{"steps": [1]}\n```') == ({"steps": [1]}, None)
    plan, why = parse_plan("here is my plan: steps")
    assert plan is None and why is not None and why.startswith("the answer is not JSON")


# -- validation: paths into the plan --------------------------------------------------------


def test_valid_plan_becomes_namespaced_add_steps() -> None:
    check = _check(GOOD_PLAN)
    assert check.ok, check.errors
    assert [m.type for m in check.mutations] == [GraphMutationType.ADD_STEP] * 2
    double, result = (m.data for m in check.mutations)
    assert [m.step_id for m in check.mutations] == ["plan__double", "plan__result"]
    assert double["needs"] == ["seed"]  # a root inherits the meta step's needs
    assert result["needs"] == ["plan__double"]
    assert result["params"]["data"] == "{{ steps.plan__double.output }}"
    assert double["params"]["data"] == {"n": "{{ inputs.n }}"}


def test_only_template_and_when_references_are_namespaced() -> None:
    plan = {
        "steps": [
            {"id": "double", "node": "transform@^1", "params": {"expression": "@"}},
            {
                "id": "result",
                "node": "transform@^1",
                "needs": ["double"],
                "when": "steps.double.status == 'succeeded'",
                "params": {
                    "expression": "@",
                    "data": ["see steps.double", "{{ steps.double.output }} and {{ inputs.n }}"],
                },
            },
        ]
    }
    check = _check(plan)
    assert check.ok, check.errors
    result = check.mutations[1].data
    assert result["when"] == "steps.plan__double.status == 'succeeded'"
    assert result["params"]["data"] == [
        "see steps.double",
        "{{ steps.plan__double.output }} and {{ inputs.n }}",
    ]


def test_invalid_plan_reports_every_error_with_plan_paths() -> None:
    check = _check(BAD_PLAN)
    assert _errors(check) == [
        "plan.steps[0].node: node 'transfrom' is not allowed (allowed: transform)",
    ]
    # Without an allow-list the catalog check names the typo, and the cycle is found.
    check = _check(BAD_PLAN, nodes=None)
    errors = _errors(check)
    assert "plan.steps[0].needs: cycle: a -> result -> a" in errors
    assert "plan.steps[0].node: unknown node 'transfrom' (did you mean 'transform'?)" in errors


@pytest.mark.parametrize(
    ("plan", "params", "expected"),
    [
        (None, {}, 'plan: expected a JSON object {"steps": [...]}, got nothing'),
        ({"steps": []}, {}, "plan.steps: expected a non-empty list of steps"),
        ({"steps": [], "extra": 1}, {}, "plan: unknown field(s) ['extra'] (allowed: steps)"),
        (
            {"steps": [{"id": "x", "node": "ai.meta@^1"}]},
            {"nodes": None, "output_step": None},
            "plan.steps[0].node: node 'ai.meta' is not allowed (an ai.meta plan cannot plan again)",
        ),
        (
            {"steps": [{"id": "x", "node": "transform@^1", "params": {"expression": "@"}}]},
            {},
            "plan.steps: no step has id 'result': the step's output_step names the planned "
            "step whose output is the result",
        ),
        (
            {"steps": [{"id": "result", "node": "transform@^1", "needs": ["nope"]}]},
            {},
            "plan.steps[0].needs[0]: unknown plan step 'nope' (plan steps: result)",
        ),
        (
            {"steps": [{"id": "result", "node": "transform@^1", "bogus": 1}]},
            {},
            "plan.steps[0].bogus: unknown field 'bogus' (allowed: id, node, description, "
            "params, needs, when, retry, timeout, queue_timeout, cache, checker, inline)",
        ),
        (
            {
                "steps": [
                    {
                        "id": "result",
                        "node": "transform@^1",
                        "params": {"expression": "@", "data": "{{ steps.after.output }}"},
                    }
                ]
            },
            {},
            "plan.steps[0].params.data: step 'after' is not upstream of 'result'; add it to needs",
        ),
        (
            {"steps": [{"id": "result", "node": "transform@^1"}] * 3},
            {"max_steps": 2},
            "plan.steps: 3 steps, but max_steps is 2",
        ),
    ],
)
def test_plan_errors(plan: Any, params: dict[str, Any], expected: str) -> None:
    assert expected in _errors(_check(plan, **params))


def test_invalid_plan_error_round_trips_into_feedback() -> None:
    check = _check(BAD_PLAN, nodes=None)
    error = ai_plan.invalid_plan_error(check.errors, {"plan": BAD_PLAN}, attempt=1)
    assert error.error_class == "InvalidPlan" and error.retryable
    feedback = ai_plan.feedback_from(error, 1)
    assert feedback is not None
    assert feedback["errors"] == [str(e) for e in check.errors]
    assert feedback["plan"] is not None and '"transfrom@^1"' in feedback["plan"]
    other = ErrorInfo(error_class="LlmUnavailable", message="x", retryable=True)
    assert ai_plan.feedback_from(other, 1) is None


def test_invocation_params_add_catalog_and_feedback_and_replace_user_values() -> None:
    error = ai_plan.invalid_plan_error(
        [FieldError("plan.steps[0].node", "unknown node 'x'")], {"plan": {}}, 1
    )
    params = ai_plan.invocation_params(
        {"goal": "g", "catalog": "mine", "nodes": ["transform", "ai.meta"]},
        attempt=2,
        previous_error=error,
        catalog=CATALOG,
    )
    assert params["catalog"] == [
        {
            "node": "transform@^1",
            "version": "1.0.0",
            "description": "reshape JSON",
            "params_schema": {
                "type": "object",
                "properties": {"expression": {"type": "string"}, "data": {}},
                "required": ["expression"],
            },
        }
    ]
    assert params["feedback"] == {
        "attempt": 1,
        "errors": ["plan.steps[0].node: unknown node 'x'"],
        "plan": "{}",
    }
    first = ai_plan.invocation_params({"goal": "g"}, attempt=1, previous_error=None, catalog=None)
    assert first == {"goal": "g", "catalog": []}


# -- scenarios through decide/evolve --------------------------------------------------------


def _workers(plans: Sequence[Any]) -> Any:
    """ai.meta answers the scripted plans in order; transform evaluates nothing, it echoes a
    fixed shape good enough to follow data through the graph."""
    queue = list(plans)
    seen: list[NodeInvocation] = []

    def work(inv: NodeInvocation) -> Any:
        if inv.step.node == "ai.meta":
            seen.append(inv)
            return {"plan": queue.pop(0), "content": "...", "model": "m", "usage": {}}
        params = inv.params
        assert isinstance(params, dict)
        if inv.step.step_id == "plan__double":
            return {"result": params["data"]["n"] * 2}
        if params.get("expression") == "result":
            return {"result": params["data"]["result"]}
        return {"result": params.get("data")}

    work.seen = seen  # type: ignore[attr-defined]
    return work


def test_rejected_plan_is_retried_with_feedback_then_spliced_and_awaited() -> None:
    sim = Simulation(WORKFLOW, node_catalog=CATALOG)
    sim.start()
    worker = _workers([BAD_PLAN, GOOD_PLAN])
    run = sim.run_workers(worker)
    assert run.status is RunStatus.SUCCEEDED, run.summary()
    first, second = worker.seen
    assert "feedback" not in first.params
    assert first.params["catalog"][0]["node"] == "transform@^1"
    feedback = second.params["feedback"]
    assert feedback["attempt"] == 1
    assert feedback["errors"] == [
        "plan.steps[0].node: node 'transfrom' is not allowed (allowed: transform)"
    ]
    failed = [e for e in sim.log if isinstance(e, StepFailed)]
    assert [(e.step.step_id, e.error.error_class, e.attempt) for e in failed] == [
        ("plan", "InvalidPlan", 1)
    ]
    spliced = [e.mutation.step_id for e in sim.log if isinstance(e, GraphMutated)]
    assert spliced == ["plan__double", "plan__result"]
    # The meta step succeeded after its planned steps, with the output_step's output, and the
    # downstream step ran on it.
    order = [e.step.step_id for e in sim.log if isinstance(e, StepSucceeded)]
    assert order == ["seed", "plan__double", "plan__result", "plan", "after"]
    assert run.steps["plan"].output == {"result": 42}
    assert run.steps["plan"].attempt == 2
    assert run.outputs == {"final": 42}
    assert run.timers == {}


def test_meta_step_runs_while_its_subgraph_runs_and_late_results_are_ignored() -> None:
    sim = Simulation(WORKFLOW, node_catalog=CATALOG)
    sim.start()
    sim.succeed("seed", {"result": 1})
    planner = sim.invocation("plan")
    sim.result(planner, status=_OK, output={"plan": GOOD_PLAN})
    plan = sim.run.steps["plan"]
    assert plan.status is StepStatus.RUNNING and plan.invocation_id is None
    assert not [t for t in sim.run.timers.values() if t.step_id == "plan"]
    assert sim.run.steps["after"].status is StepStatus.PENDING
    assert sim.run.steps["plan__double"].status is StepStatus.DISPATCHED
    before = len(sim.log)
    sim.result(planner, status=_OK, output={"plan": GOOD_PLAN})  # a redelivered result
    assert len(sim.log) == before


def test_plan_invalid_on_every_attempt_fails_the_step_clearly() -> None:
    sim = Simulation(WORKFLOW, node_catalog=CATALOG)
    sim.start()
    run = sim.run_workers(_workers([BAD_PLAN, {"steps": []}, "not a plan"]))
    assert run.status is RunStatus.FAILED
    assert run.failed_step == "plan"
    assert run.error is not None and run.error.error_class == "InvalidPlan"
    assert run.error.message.startswith("the plan of attempt 3 was rejected (1 error(s)):")
    assert '- plan: expected a JSON object {"steps": [...]}, got str' in run.error.message
    assert run.steps["after"].status is StepStatus.PENDING


def test_default_output_is_the_leaves_by_local_id() -> None:
    steps: list[Any] = list(WORKFLOW["steps"])
    meta = dict(steps[1])
    meta["params"] = {k: v for k, v in meta["params"].items() if k != "output_step"}
    steps[1] = meta
    workflow: dict[str, Any] = {**WORKFLOW, "steps": steps}
    workflow["outputs"] = {"final": "{{ steps.plan.output }}"}
    sim = Simulation(workflow, node_catalog=CATALOG)
    sim.start()
    run = sim.run_workers(_workers([GOOD_PLAN]))
    assert run.status is RunStatus.SUCCEEDED
    assert run.outputs == {"final": {"result": {"result": 42}}}


def test_a_failed_planned_step_fails_the_run_and_a_redrive_finishes_the_meta_step() -> None:
    sim = Simulation(WORKFLOW, node_catalog=CATALOG)
    sim.start()
    sim.succeed("seed", {"result": 1})
    sim.result(sim.invocation("plan"), status=_OK, output={"plan": GOOD_PLAN})
    sim.fail("plan__double", retryable=False)
    assert sim.run.status is RunStatus.FAILED
    assert sim.run.failed_step == "plan__double"
    sim.redrive("plan__double")
    run = sim.run_workers(_workers([]))
    assert run.status is RunStatus.SUCCEEDED
    assert run.steps["plan"].output == {"result": 42}


def test_a_subgraph_failure_found_after_a_redrive_fails_the_meta_step_until_redriven() -> None:
    steps: list[Any] = [
        *WORKFLOW["steps"],
        {"id": "other", "node": "transform@^1", "params": {"expression": "@"}},
    ]
    sim = Simulation({**WORKFLOW, "steps": steps}, node_catalog=CATALOG)
    sim.start()
    sim.succeed("seed", {"result": 1})
    sim.result(sim.invocation("plan"), status=_OK, output={"plan": GOOD_PLAN})
    sim.fail("other", retryable=False)  # the run fails on another branch first
    assert sim.run.status is RunStatus.FAILED
    sim.fail("plan__double", retryable=False)  # recorded; the run has failed already
    sim.redrive("other")
    sim.succeed("other", {"result": 0})
    # Nothing of the plan can move: the meta step fails, naming its failed planned step.
    assert sim.run.status is RunStatus.FAILED and sim.run.failed_step == "plan"
    error = sim.run.steps["plan"].error
    assert error is not None and error.error_class == "SubgraphFailed"
    assert "'plan__double'" in error.message
    sim.redrive("plan__double")
    run = sim.run_workers(_workers([]))
    assert run.status is RunStatus.SUCCEEDED
    assert run.steps["plan"].status is StepStatus.SUCCEEDED


def test_plan_namespace_is_reserved_and_a_second_plan_is_refused() -> None:
    sim = Simulation(WORKFLOW, node_catalog=CATALOG)
    sim.start()
    sim.mutate("add_step", "plan__x", {"node": "transform@^1", "params": {"expression": "@"}})
    assert sim.rejections == [
        "Expected a step id outside plan__*, the ai.meta step's plan",
    ]
    sim.succeed("seed", {"result": 1})
    sim.result(sim.invocation("plan"), status=_OK, output={"plan": GOOD_PLAN})
    graph = sim.run.graph
    again = ai_plan.check_plan(graph, "plan", {"plan": GOOD_PLAN}, params={}, catalog=CATALOG)
    assert [str(e) for e in again.errors] == [
        "plan: step 'plan' already spliced a plan (double, result); re-drive its steps instead"
    ]


def test_a_cache_enabled_planner_is_never_served_from_the_cache() -> None:
    steps: list[Any] = list(WORKFLOW["steps"])
    steps[1] = {**steps[1], "cache": {"enabled": True}}
    sim = Simulation({**WORKFLOW, "steps": steps}, node_catalog=CATALOG)
    sim.start()
    sim.succeed("seed", {"result": 1})
    assert sim.run.steps["plan"].cache_key is None
    assert sim.run.steps["plan"].status is StepStatus.DISPATCHED


def test_the_spliced_run_survives_a_snapshot_and_a_replay() -> None:
    sim = Simulation(WORKFLOW, node_catalog=CATALOG)
    sim.start()
    sim.succeed("seed", {"result": 1})
    sim.result(sim.invocation("plan"), status=_OK, output={"plan": GOOD_PLAN})
    state = sim.run
    # Mid sub-graph: the graph holds the planned steps, the meta step runs, nothing pending lost.
    assert fold(sim.log) == state
    assert RunState.from_snapshot(state.to_snapshot()) == state
    assert ai_plan.subgraph_ids(state.graph, "plan") == ["plan__double", "plan__result"]
    assert ai_plan.owner_of(state.graph, "plan__result") == "plan"
    assert ai_plan.owner_of(state.graph, "after") is None
    assert ai_plan.has_ai_meta(state.graph)
    seed_only: list[Any] = list(WORKFLOW["steps"])[:1]
    assert not ai_plan.has_ai_meta(parse_workflow({"id": "x", "steps": seed_only}))
