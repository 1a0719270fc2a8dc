"""The learning loop's rollout without the critic, end to end on the real services (issue 11,
item 3; ADR 0033): a proposal -> A/B replay validation -> applied as a canary by policy
``auto`` -> judged on its live runs by the canary judge -> kept; and a bad one rolled back.

The engine is the whole DevEngine (scheduler, workers, projector, mutation processor, replay
runner, canary judge) and the API through its TestClient. The workflow shapes one input with a
JMESPath expression:

- version 1, ``abs(value.x)``, fails on a string ``x``;
- the good proposal, ``value.x``, never fails: the replay of recorded runs is ``better`` (it
  fixes them), and live, against version 1 on the same traffic, it is kept;
- the bad proposal, ``length(value.x)``, fixes strings but fails on numbers. The recorded runs
  the replay sees are strings, so the replay says ``better``; the live traffic after the apply
  is numbers, where it fails every run: the judge rolls it back within a few canary runs and
  new runs go to version 1 again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from processors.canary.judge import CanaryConfig
from processors.mutations.validation import RESCUE_CANARY_WEIGHT
from tests.integration.engine_fixtures import Harness, HarnessFactory, api_client, transform
from tests.support.waiting import eventually

WAIT = 20_000
CONFIG = CanaryConfig(min_runs=8, max_runs=30)


@pytest.fixture
def harness(engine_harness: HarnessFactory) -> Harness:
    return engine_harness(canary=True, canary_config=CONFIG)


@pytest.fixture
def api(harness: Harness) -> Iterator[TestClient]:
    with api_client(harness) as client:
        yield client


def _setup(api: TestClient, workflow_id: str) -> None:
    definition = {
        "id": workflow_id,
        "inputs": {"item": {"type": "object", "required": True}},
        "steps": [transform("shape", "abs(value.x)", {"value": "{{ inputs.item }}"})],
        "outputs": {"result": "{{ steps.shape.output.result }}"},
    }
    assert api.post("/v1/workflows", json=definition).status_code == 201
    eventually(lambda: api.get(f"/v1/workflows/{workflow_id}").status_code == 200, 15, "registered")
    policy = api.put(
        f"/v1/workflows/{workflow_id}/improvement", json={"policy": "auto", "wait_ms": WAIT}
    )
    assert policy.status_code == 200 and policy.json()["policy"] == "auto", policy.text


def _run_all(harness: Harness, workflow_id: str, xs: list[Any]) -> list[str]:
    """Starts one run per ``x`` and waits until every one finished (in the read model)."""
    run_ids = [harness.start(workflow_id, {"item": {"x": x}}) for x in xs]
    for run_id in run_ids:
        harness.wait(run_id, timeout=60)
    return run_ids


def _propose(api: TestClient, workflow_id: str, expression: str) -> str:
    response = api.post(
        "/v1/mutations",
        json={
            "workflow_id": workflow_id,
            "author": "optimizer",
            "rationale": f"shape with {expression}",
            "evidence": {"diagnosis_id": "d-1", "strategy": "test"},
            "changes": [
                {
                    "type": "update_params",
                    "step_id": "shape",
                    "data": {"expression": expression, "data": {"value": "{{ inputs.item }}"}},
                }
            ],
        },
    )
    assert response.status_code in {200, 202}, response.text
    return str(response.json()["mutation_id"])


def _detail(api: TestClient, mutation_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/mutations/{mutation_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _until_status(
    api: TestClient, mutation_id: str, wanted: set[str], timeout: float = 120
) -> dict[str, Any]:
    body: dict[str, Any] = eventually(
        lambda: _detail(api, mutation_id),
        timeout,
        f"mutation {mutation_id} in {sorted(wanted)}",
        until=lambda d: d["status"] in wanted or d["status"] == "rejected",
    )
    assert body["status"] in wanted, (body["status"], body.get("reason"))
    return body


def _drive_until_decided(
    harness: Harness, api: TestClient, workflow_id: str, mutation_id: str, xs: list[Any]
) -> tuple[dict[str, Any], int]:
    """Runs the live traffic ``xs`` in batches until the judge decided; ``(detail, runs)``."""
    started = 0
    for _ in range(30):
        _run_all(harness, workflow_id, xs)
        started += len(xs)
        body = _detail(api, mutation_id)
        if body["status"] in {"kept", "rolled_back"}:
            return body, started
        assert body["status"] == "applied", body
    # The judge looks every 0.2 s; its request is then decided and projected.
    return _until_status(api, mutation_id, {"kept", "rolled_back"}, timeout=15), started


def _statuses(detail: dict[str, Any]) -> list[str]:
    return [event["status"] for event in detail["history"]]


def test_a_validated_proposal_applied_by_policy_auto_is_kept_by_the_canary_judge(
    harness: Harness, api: TestClient
) -> None:
    _setup(api, "judged")
    # Recorded runs for the replay: numbers succeed, strings fail on version 1.
    _run_all(harness, "judged", [1, -2, "a", "b", 3, "c", "d", -4, "e", "f"])
    mutation_id = _propose(api, "judged", "value.x")
    applied = _until_status(api, mutation_id, {"applied"})
    report = applied["report"]
    assert report["replay"]["verdict"] == "better", report
    assert "replay verdict better" in next(
        e["reason"] for e in applied["history"] if e["status"] == "validated"
    )
    # A rescue (40% -> 100% on replay): policy auto gives it half the new runs.
    assert applied["canary_weight"] == RESCUE_CANARY_WEIGHT and applied["applied_version"] == 2

    # Live traffic like the recorded one: the canary fixes the strings and slows nothing.
    detail, started = _drive_until_decided(
        harness, api, "judged", mutation_id, [5, "g", -6, "h", 7, 8, "i", -9, 10, "j"]
    )
    assert detail["status"] == "kept", detail["reason"]
    assert _statuses(detail) == [
        "proposed",
        "validating",
        "validated",
        "approved",
        "applied",
        "kept",
    ]
    kept = detail["history"][-1]
    assert kept["actor"] == "canary" and kept["reason"].startswith("canary: ")
    canary = detail["report"]["canary"]
    assert canary["judge"] == "canary" and canary["decision"] == "keep"
    assert CONFIG.min_runs <= canary["canary_runs"] <= CONFIG.max_runs
    assert canary["canary_runs"] + canary["baseline_runs"] <= started
    stats = canary["statistics"]["metrics"]
    assert stats["success"]["significant_regression"] is False
    assert stats["success"]["regression_estimate"] < 0  # the canary fails less
    effect = canary["effect"]
    assert effect["canary"]["success_rate"] == 1.0
    assert effect["baseline"]["success_rate"] < 0.8
    assert effect["canary"]["runs"] == canary["canary_runs"]
    # The replay report is still on the record, next to the canary's.
    assert detail["report"]["replay"]["verdict"] == "better"
    assert detail["evidence"] == {"diagnosis_id": "d-1", "strategy": "test"}
    # Kept: every new run gets the new version.
    after = _run_all(harness, "judged", [1, "a", 2, "b"])
    assert {harness.wait(r).workflow_version for r in after} == {2}
    assert {harness.wait(r).status for r in after} == {"succeeded"}


def test_a_bad_canary_is_rolled_back_by_the_judge_and_runs_go_back(
    harness: Harness, api: TestClient
) -> None:
    _setup(api, "regress")
    # The recorded runs are strings (and one number): version 1 fails all but one of them.
    _run_all(harness, "regress", ["a", "b", "c", "d", 1, "e", "f", "g", "h", "i"])
    mutation_id = _propose(api, "regress", "length(value.x)")
    applied = _until_status(api, mutation_id, {"applied"})
    assert applied["report"]["replay"]["verdict"] == "better"  # the replay was fooled

    # The traffic turned to numbers: version 1 succeeds on every one, the canary on none.
    detail, started = _drive_until_decided(harness, api, "regress", mutation_id, list(range(10)))
    assert detail["status"] == "rolled_back", detail["reason"]
    last = detail["history"][-1]
    assert last["actor"] == "canary"
    assert "significant regression in success rate" in last["reason"]
    canary = detail["report"]["canary"]
    assert canary["decision"] == "rollback"
    # Rolled back as soon as the evidence was significant: at the minimum number of runs (of
    # the canary, or of the baseline in the unlikely case the canary's runs came first).
    assert CONFIG.min_runs in {canary["canary_runs"], canary["baseline_runs"]}, canary
    assert canary["canary_runs"] < started
    success = canary["statistics"]["metrics"]["success"]
    assert success["significant_regression"] is True and success["ci_low"] > 0
    assert success["always_valid_p"] < CONFIG.alpha / 3
    assert canary["effect"]["canary"]["success_rate"] == 0.0
    assert canary["effect"]["baseline"]["success_rate"] == 1.0

    # Rolled back: new runs get version 1 again (once the scheduler has read the route).
    def route() -> object:
        scheduler = harness.engine.scheduler
        found = None if scheduler is None else scheduler.workflow_route("regress")
        return None if found is None else found.shares

    eventually(route, 15, "new runs routed to version 1", until=lambda r: r == ((1, 1.0),))
    after = _run_all(harness, "regress", [1, 2, 3, 4])
    assert {harness.wait(r).workflow_version for r in after} == {1}
