"""ai.meta end to end on the real services (ADR 0027): the whole engine (scheduler, workers with
the catalog registered, projector) and a local OpenAI-compatible server started by the test,
scripted to answer an invalid plan first.

The scheduler validates each plan against the run's graph and the live node catalog, fails the
attempt with ``InvalidPlan`` and retries it with the errors in the prompt (asserted on what the
server received), splices the accepted plan in as graph mutations, and completes the ai.meta
step with its sub-graph's result, which the downstream step reads. Every run ends with the
replay-equivalence check.
"""

# ruff: noqa: F401, F811  # pytest injects imported fixtures by parameter name

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from node_workers.node import NodeContext, NodeError, validate_params
from node_workers.nodes.ai_meta import AiMetaNode, AiMetaOutput
from tests.integration.engine_fixtures import (
    Harness,
    HarnessFactory,
    assert_replay_equivalent,
    engine_harness,
    transform,
)
from tests.integration.openai_fixtures import OpenAITestServer, openai_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

VALID_PLAN = {
    "steps": [
        {
            "id": "double",
            "node": "transform@^1",
            "params": {"expression": "[n, n]", "data": {"n": "{{ steps.seed.output.result }}"}},
        },
        {
            "id": "result",
            "node": "transform@^1",
            "needs": ["double"],
            "params": {"expression": "sum(@)", "data": "{{ steps.double.output.result }}"},
        },
    ]
}
# A typo in a node name (the catalog has no 'transfrom') and a cycle between the two steps.
INVALID_PLAN = {
    "steps": [
        {"id": "a", "node": "transfrom@^1", "params": {"expression": "@"}, "needs": ["result"]},
        {"id": "result", "node": "transform@^1", "params": {"expression": "@"}, "needs": ["a"]},
    ]
}
EXPECTED_ERRORS = [
    "plan.steps[0].needs: cycle: a -> result -> a",
    "plan.steps[0].node: unknown node 'transfrom' (did you mean 'transform'?)",
]


def _workflow(workflow_id: str, server: OpenAITestServer, attempts: int) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "inputs": {"n": {"type": "integer", "required": True}},
        "steps": [
            transform("seed", "n", {"n": "{{ inputs.n }}"}),
            {
                "id": "plan",
                "node": "ai.meta@^1",
                "needs": ["seed"],
                "retry": {"max_attempts": attempts, "initial_backoff": "50ms"},
                "timeout": "20s",
                "params": {
                    "goal": "double the number",
                    "inputs": {"n": "{{ steps.seed.output.result }}"},
                    "base_url": server.base_url,
                    "api_key": server.api_key,
                    "model": "planner",
                    "output_step": "result",
                    "timeout_s": 10,
                },
            },
            transform("after", "@", "{{ steps.plan.output.result }}", needs=["plan"]),
        ],
        "outputs": {"doubled": "{{ steps.after.output.result }}"},
    }


def _harness(engine_harness: HarnessFactory) -> Harness:
    # The workers publish the node catalog (with manifests): plans are checked against it.
    return engine_harness(register_nodes=True)


def _events(harness: Harness, run_id: str, event_type: str) -> list[dict[str, Any]]:
    return [e.payload for e in harness.events(run_id) if e.event_type == event_type]


def test_plan_rejected_once_is_accepted_on_retry_and_its_result_flows_on(
    engine_harness: HarnessFactory, openai_server: OpenAITestServer
) -> None:
    harness = _harness(engine_harness)
    workflow_id = f"ai-meta-{uuid.uuid4().hex[:6]}"
    harness.register(_workflow(workflow_id, openai_server, attempts=3))
    openai_server.script(json.dumps(INVALID_PLAN), json.dumps(VALID_PLAN))

    run_id = harness.start(workflow_id, {"n": 21})
    run = harness.wait(run_id, timeout=60)
    assert run.status == "succeeded", (run.error, run.failed_step)
    assert run.outputs == {"doubled": 42}

    # What the model was asked: the catalog's nodes with their params' schemas, then, on the
    # retry, its rejected plan and the validation errors of that plan.
    first, second = (call.body for call in openai_server.calls)
    system = first["messages"][0]["content"]
    assert "- transform@^1:" in system and '"expression"' in system
    assert "ai.meta" not in system.split("Nodes you may use:")[1]
    assert first["messages"][1]["content"].startswith("Goal: double the number")
    assert '{"n": 21}' in first["messages"][1]["content"]
    assert len(first["messages"]) == 2
    retry = second["messages"]
    assert [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
    assert json.loads(retry[2]["content"]) == INVALID_PLAN
    for error in EXPECTED_ERRORS:
        assert f"- {error}" in retry[3]["content"]

    # The log: attempt 1 failed with InvalidPlan (the errors in its message), the plan of
    # attempt 2 was spliced in, namespaced, and the meta step ended with its sub-graph.
    failed = _events(harness, run_id, "StepFailed")
    assert [(f["step"]["step_id"], f["attempt"], f["error"]["error_class"]) for f in failed] == [
        ("plan", 1, "InvalidPlan")
    ]
    assert all(error in failed[0]["error"]["message"] for error in EXPECTED_ERRORS)
    mutated = _events(harness, run_id, "GraphMutated")
    assert [(m["mutation"]["type"], m["mutation"]["step_id"]) for m in mutated] == [
        ("add_step", "plan__double"),
        ("add_step", "plan__result"),
    ]
    order = [s["step"]["step_id"] for s in _events(harness, run_id, "StepSucceeded")]
    assert order == ["seed", "plan__double", "plan__result", "plan", "after"]
    steps = harness.steps(run_id)
    assert {s: row.status for s, row in steps.items()} == {
        "seed": "succeeded",
        "plan": "succeeded",
        "plan__double": "succeeded",
        "plan__result": "succeeded",
        "after": "succeeded",
    }
    assert steps["plan"].attempt == 2
    assert_replay_equivalent(harness, run_id)


def test_plan_invalid_on_every_attempt_fails_the_step_with_the_last_errors(
    engine_harness: HarnessFactory, openai_server: OpenAITestServer
) -> None:
    harness = _harness(engine_harness)
    workflow_id = f"ai-meta-bad-{uuid.uuid4().hex[:6]}"
    harness.register(_workflow(workflow_id, openai_server, attempts=2))
    openai_server.script(json.dumps(INVALID_PLAN), "I would rather not plan this.")

    run_id = harness.start(workflow_id, {"n": 1})
    run = harness.wait(run_id, timeout=60)
    assert run.status == "failed", run
    assert run.failed_step == "plan"
    assert run.error is not None and run.error["error_class"] == "InvalidPlan"
    message = run.error["message"]
    assert message.startswith("the plan of attempt 2 was rejected (1 error(s)):")
    not_json = '- plan: expected a JSON object {"steps": [...]}, got nothing (the answer is not'
    assert not_json in message
    assert len(openai_server.calls) == 2
    # The second attempt was told about the first plan's errors all the same.
    retry = openai_server.calls[1].body["messages"]
    assert all(f"- {error}" in retry[-1]["content"] for error in EXPECTED_ERRORS)
    assert "after" not in harness.steps(run_id)  # never scheduled
    assert not _events(harness, run_id, "GraphMutated")
    assert_replay_equivalent(harness, run_id)


def _plan_once(server: OpenAITestServer, ctx: NodeContext, **params: Any) -> AiMetaOutput:
    async def go() -> AiMetaOutput:
        node = AiMetaNode()
        raw = {"goal": "g", "base_url": server.base_url, "api_key": server.api_key, **params}
        try:
            return await node.execute(validate_params(node, {"model": "m", **raw}), ctx)
        finally:
            await node.aclose()

    return asyncio.run(go())


def test_the_node_returns_the_parsed_plan_or_why_not_and_counts_tokens(
    openai_server: OpenAITestServer,
) -> None:
    openai_server.script("```json\n" + json.dumps(VALID_PLAN) + "\n```", "no plan today")
    ctx = NodeContext("inv-1", "run-1", "plan", 1)
    out = _plan_once(openai_server, ctx)
    assert out.plan == VALID_PLAN and out.parse_error is None
    assert out.model == "m-test" and ctx.cost_tokens == out.usage.total_tokens > 0
    out = _plan_once(openai_server, NodeContext("inv-2", "run-1", "plan", 2))
    assert out.plan is None and out.content == "no plan today"
    assert out.parse_error is not None and out.parse_error.startswith("the answer is not JSON")
    # The model's own errors keep openai.chat's classes (here: a bad key, not retryable).
    with pytest.raises(NodeError) as info:
        _plan_once(openai_server, NodeContext("inv-3", "run-1", "plan", 3), api_key="wrong")
    assert info.value.error_class == "LlmAuth"
