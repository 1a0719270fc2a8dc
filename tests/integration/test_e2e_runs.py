"""End to end on the real services: scheduler, workers and projector through Kafka."""

from __future__ import annotations

from tests.integration.engine_fixtures import Harness, harness  # noqa: F401

LINEAR = {
    "id": "linear",
    "inputs": {"n": {"type": "integer", "required": True}},
    "steps": [
        {"id": "a", "node": "transform@^1",
         "params": {"expression": "n", "data": {"n": "{{ inputs.n }}"}}},
        {"id": "b", "node": "transform@^1", "needs": ["a"],
         "params": {"expression": "[x, x]", "data": {"x": "{{ steps.a.output.result }}"}}},
    ],
    "outputs": {"pair": "{{ steps.b.output.result }}"},
}


def test_linear_run_succeeds_and_projects(harness: Harness) -> None:
    harness.register(LINEAR)
    run_id = harness.start("linear", {"n": 21})
    run = harness.wait(run_id)
    assert run.status == "succeeded", run
    assert run.outputs == {"pair": [21, 21]}
    steps = harness.steps(run_id)
    assert {s: steps[s].status for s in steps} == {"a": "succeeded", "b": "succeeded"}
