"""Workflow mutation proposals end to end (issue 9, item 2): the API, the mutation processor,
the scheduler's routing between workflow versions and the read models, on the real services.

- a proposal through every state to ``kept``, with the canary split checked over 500 runs
  (counted from the runs read model, within a binomial tolerance, and run by run against the
  deterministic choice), then 100 % of new runs on the new version;
- another to ``rolled_back``: new runs on the base version again;
- an invalid proposal rejected with its validation report, illegal transitions (409 naming the
  current status), bad fields (422 with their path);
- policy ``auto`` approves and applies without a person; ``off`` refuses optimizer proposals,
  through the API and on Kafka (the processor's refusal is projected).

The engine here validates on the static checks only (``proposal_replay=None``): these tests are
about the lifecycle and the routing, on fresh workflows with no recorded runs, which a replay
would reject as not shown better (ADR 0033). The replay path: test_replay_ab.py and
test_canary_e2e.py.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from processors.mutations.lifecycle import MutationsState, evolve
from processors.mutations.routing import WorkflowRoute, choose_workflow_version
from processors.mutations.runtime import MUTATION_TOPIC_TYPES
from schemas import decode, record_type_of
from schemas.models import GraphMutation, GraphMutationType, MutationAction, MutationRequest
from streams.table import TopicTableReader
from tests.integration.engine_fixtures import (
    Harness,
    HarnessFactory,
    api_client,
    replayed_state,
    transform,
)
from tests.support.waiting import eventually

WAIT = 20_000


@pytest.fixture
def harness(engine_harness: HarnessFactory) -> Harness:
    """The whole engine, validating proposals on the static checks (see the module doc)."""
    return engine_harness(proposal_replay=None)


@pytest.fixture
def api(harness: Harness) -> Iterator[TestClient]:
    with api_client(harness) as client:
        yield client


def _workflow(workflow_id: str) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "steps": [transform("say", "word", {"word": "base"})],
        "outputs": {"said": "{{ steps.say.output.result }}"},
    }


def _register(api: TestClient, workflow_id: str) -> None:
    response = api.post("/v1/workflows", json=_workflow(workflow_id))
    assert response.status_code == 201, response.text
    eventually(
        lambda: api.get(f"/v1/workflows/{workflow_id}").status_code == 200,
        15,
        f"workflow {workflow_id} projected",
    )


_CHANGE_FIELDS: dict[str, Any] = {
    "step_id": "say",
    "data": {"expression": "word", "data": {"word": "improved"}},
}
_CHANGE = {"type": "update_params", **_CHANGE_FIELDS}


def _propose(api: TestClient, workflow_id: str, **extra: Any) -> dict[str, Any]:
    body = {
        "workflow_id": workflow_id,
        "changes": [_CHANGE],
        "rationale": "say it better",
        "evidence": {"runs_seen": 12, "failure_rate": 0.25},
        "wait_ms": WAIT,
        **extra,
    }
    response = api.post("/v1/mutations", json=body, headers={"X-Reflux-User": "ada"})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _decide(api: TestClient, mutation_id: str, action: str, **body: Any) -> dict[str, Any]:
    response = api.post(
        f"/v1/mutations/{mutation_id}/{action}",
        json={"wait_ms": WAIT, **body},
        headers={"X-Reflux-User": "grace"},
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def _start_runs(harness: Harness, workflow_id: str, count: int) -> list[str]:
    return [harness.start(workflow_id) for _ in range(count)]


def _api_runs(api: TestClient, workflow_id: str, count: int) -> list[str]:
    run_ids = []
    for _ in range(count):
        response = api.post("/v1/runs", json={"workflow_id": workflow_id})
        assert response.status_code == 202, response.text
        run_ids.append(response.json()["run_id"])
    return run_ids


def _versions(harness: Harness, run_ids: list[str], timeout: float = 120) -> dict[str, int]:
    """run id -> workflow version, once every run has finished (succeeded) in the read model."""

    def finished() -> dict[str, tuple[int, str]]:
        with harness.conn() as conn:
            rows = conn.execute(
                f'SELECT run_id, workflow_version, status FROM "{harness.schema}".runs '
                "WHERE run_id = ANY(%s)",
                (run_ids,),
            ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    rows = eventually(
        finished,
        timeout,
        f"{len(run_ids)} runs succeeded",
        until=lambda found: (
            len(found) == len(run_ids) and all(s == "succeeded" for _, s in found.values())
        ),
        describe=lambda: str(Counter(s for _, s in finished().values())),
    )
    return {run_id: version for run_id, (version, _) in rows.items()}


def _routed(harness: Harness, workflow_id: str, mutation_id: str, shares: Any) -> None:
    """Waits until the scheduler applies the route the proposal's last transition set (it
    reads reflux.mutations on its own, independently of the projection the API answers from)."""
    assert harness.engine.scheduler is not None
    scheduler = harness.engine.scheduler
    eventually(
        lambda: scheduler.workflow_route(workflow_id),
        15,
        f"the scheduler routing {workflow_id} as {shares}",
        until=lambda route: (
            route is not None and (route.mutation_id, route.shares) == (mutation_id, shares)
        ),
    )


def _statuses(detail: dict[str, Any]) -> list[str]:
    return [event["status"] for event in detail["history"]]


def test_a_proposal_goes_to_kept_and_splits_new_runs_by_run_id(
    harness: Harness, api: TestClient
) -> None:
    _register(api, "canary")
    proposed = _propose(api, "canary")
    assert proposed["status"] == "validated", proposed
    assert _statuses(proposed) == ["proposed", "validating", "validated"]
    assert proposed["author"] == "user:ada" and proposed["base_version"] == 1
    report = proposed["report"]
    assert report["passed"] is True
    # No replay validation here: the static checks decided, and the report says replay did not run.
    assert [c["name"] for c in report["checks"]] == ["base", "applies", "definition"]
    assert [n["name"] for n in report["not_run"]] == ["replay"]
    assert proposed["evidence"] == {"runs_seen": 12, "failure_rate": 0.25}
    mutation_id = proposed["mutation_id"]

    applied = _decide(api, mutation_id, "approve", canary_weight=0.3)
    assert applied["status"] == "applied" and applied["canary_weight"] == 0.3
    new_version = applied["applied_version"]
    assert (new_version, applied["previous_version"]) == (2, 1)
    assert _statuses(applied)[-2:] == ["approved", "applied"]
    registered = api.get(f"/v1/workflows/canary/versions/{new_version}").json()
    assert registered["registered_by"] == f"mutation:{mutation_id}"
    assert registered["definition"]["steps"][0]["params"]["data"] == {"word": "improved"}

    _routed(harness, "canary", mutation_id, ((2, 0.3), (1, 0.7)))
    runs = 500
    versions = _versions(harness, _start_runs(harness, "canary", runs))
    counts = Counter(versions.values())
    assert set(counts) == {1, 2}, counts
    # Binomial(500, 0.3): mean 150, sd 10.2; 4.5 sd leaves a false alarm at ~1e-5.
    tolerance = 4.5 * math.sqrt(runs * 0.3 * 0.7)
    assert abs(counts[2] - runs * 0.3) <= tolerance, counts
    # Deterministic by run id: every run got the version the pure choice gives it.
    route = WorkflowRoute(((2, 0.3), (1, 0.7)), mutation_id)
    registered_by = {1: None, 2: f"mutation:{mutation_id}"}
    expected = {
        run_id: choose_workflow_version("canary", run_id, route, registered_by)
        for run_id in versions
    }
    assert versions == expected
    # The log alone says which version a routed run got: folding it needs no route.
    routed = next(run_id for run_id, version in versions.items() if version == 2)
    folded = replayed_state(harness, routed)
    assert folded.workflow_version == 2 and folded.outputs == {"said": "improved"}
    assert folded.definition.to_json_dict() == registered["definition"]

    detail = api.get(f"/v1/mutations/{mutation_id}").json()
    effect = {e["version"]: e for e in detail["effect"]}
    assert effect[1]["runs"] == counts[1] and effect[2]["runs"] == counts[2]
    assert effect[2]["success_rate"] == 1.0 and effect[2]["p50_ms"] is not None

    kept = _decide(api, mutation_id, "keep", reason="better")
    assert kept["status"] == "kept" and kept["reason"] == "better"
    assert _statuses(kept) == [
        "proposed",
        "validating",
        "validated",
        "approved",
        "applied",
        "kept",
    ]
    _routed(harness, "canary", mutation_id, ((2, 1.0),))
    after = _versions(harness, _start_runs(harness, "canary", 100))
    assert Counter(after.values()) == {2: 100}
    listed = api.get("/v1/mutations", params={"workflow_id": "canary", "status": "kept"}).json()
    assert [m["mutation_id"] for m in listed["data"]] == [mutation_id]


def test_a_rolled_back_proposal_sends_new_runs_to_the_base_again(
    harness: Harness, api: TestClient
) -> None:
    _register(api, "rollme")
    mutation_id = _propose(api, "rollme")["mutation_id"]
    applied = _decide(api, mutation_id, "approve", canary_weight=0.5)
    assert applied["applied_version"] == 2
    _routed(harness, "rollme", mutation_id, ((2, 0.5), (1, 0.5)))
    during = Counter(_versions(harness, _start_runs(harness, "rollme", 60)).values())
    assert set(during) == {1, 2}, during  # P(all 60 on one side) = 2**-59
    # POST /v1/runs without a version follows the same split (the API pins the choice).
    route = WorkflowRoute(((2, 0.5), (1, 0.5)), mutation_id)
    registered_by = {1: None, 2: f"mutation:{mutation_id}"}
    through_api = _versions(harness, _api_runs(api, "rollme", 40))
    assert through_api == {
        run_id: choose_workflow_version("rollme", run_id, route, registered_by)
        for run_id in through_api
    }
    assert set(through_api.values()) == {1, 2}
    rolled = _decide(api, mutation_id, "rollback", reason="worse p95")
    assert rolled["status"] == "rolled_back" and rolled["reason"] == "worse p95"
    assert _statuses(rolled)[-1] == "rolled_back"
    _routed(harness, "rollme", mutation_id, ((1, 1.0),))
    after = _versions(harness, _start_runs(harness, "rollme", 100) + _api_runs(api, "rollme", 20))
    assert Counter(after.values()) == {1: 120}
    # A rolled back proposal stays rolled back.
    again = api.post(f"/v1/mutations/{mutation_id}/keep", json={})
    assert again.status_code == 409
    assert "it is rolled_back" in again.json()["detail"]


def test_invalid_proposals_illegal_transitions_and_policies(
    harness: Harness, api: TestClient
) -> None:
    _register(api, "strict")
    # An unknown step and an unknown node: rejected by the processor, with the report.
    bad = _propose(
        api,
        "strict",
        changes=[
            {"type": "remove_step", "step_id": "nope", "data": {}},
        ],
    )
    assert bad["status"] == "rejected" and _statuses(bad) == ["proposed", "validating", "rejected"]
    checks = {c["name"]: c for c in bad["report"]["checks"]}
    assert checks["base"]["passed"] is True
    assert checks["applies"]["passed"] is False
    assert checks["applies"]["errors"][0]["path"].startswith("changes[0]")
    assert checks["definition"]["skipped"] == "the diff did not apply"
    unknown_node = _propose(
        api,
        "strict",
        changes=[{"type": "replace_node", "step_id": "say", "data": {"node": "nosuch.node@^1"}}],
    )
    assert unknown_node["status"] == "rejected"
    definition = {c["name"]: c for c in unknown_node["report"]["checks"]}["definition"]
    assert definition["passed"] is False and "nosuch.node" in str(definition["errors"])

    # Illegal transitions: 409 naming the current status; unknown: 404; bad fields: 422.
    refused = api.post(f"/v1/mutations/{bad['mutation_id']}/approve", json={})
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        f"Cannot approve mutation {bad['mutation_id']!r}: it is rejected"
    )
    good = _propose(api, "strict")
    early_keep = api.post(f"/v1/mutations/{good['mutation_id']}/keep", json={})
    assert early_keep.status_code == 409 and "it is validated" in early_keep.json()["detail"]
    assert api.post("/v1/mutations/no-such/approve", json={}).status_code == 404
    assert api.get("/v1/mutations/no-such").status_code == 404
    weight = api.post(f"/v1/mutations/{good['mutation_id']}/approve", json={"canary_weight": 1.5})
    assert weight.status_code == 422
    assert weight.json()["detail"][0]["loc"] == ["body", "canary_weight"]
    bad_type = api.post(
        "/v1/mutations",
        json={
            "workflow_id": "strict",
            "changes": [{"type": "rename", "step_id": "say"}],
            "rationale": "x",
        },
    )
    assert bad_type.status_code == 422
    assert bad_type.json()["detail"][0]["loc"][:4] == ["body", "changes", 0, "type"]
    bad_author = api.post(
        "/v1/mutations",
        json={"workflow_id": "strict", "changes": [_CHANGE], "rationale": "x", "author": "bot"},
    )
    assert bad_author.status_code == 422 and bad_author.json()["detail"][0]["loc"] == [
        "body",
        "author",
    ]
    missing = api.post(
        "/v1/mutations",
        json={"workflow_id": "strict", "changes": [_CHANGE], "rationale": "x", "base_version": 9},
    )
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == [
        "body",
        "base_version",
    ]
    rejected = _decide(api, good["mutation_id"], "reject", reason="not now")
    assert rejected["status"] == "rejected" and rejected["reason"] == "not now"

    # Policy: unknown workflow 404, unknown policy 422 at its path, default 'propose'.
    assert api.put("/v1/workflows/ghost/improvement", json={"policy": "auto"}).status_code == 404
    wrong = api.put("/v1/workflows/strict/improvement", json={"policy": "sometimes"})
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["body", "policy"]
    assert api.get("/v1/workflows/strict/improvement").json()["policy"] == "propose"
    by_author = api.get("/v1/mutations", params={"workflow_id": "strict", "author": "user:ada"})
    assert by_author.json()["count"] == 3  # bad, unknown_node, good
    # Policy auto: a validated proposal is approved and applied without a person.
    policy = api.put("/v1/workflows/strict/improvement", json={"policy": "auto", "wait_ms": WAIT})
    assert policy.status_code == 200 and policy.json()["policy"] == "auto", policy.text
    auto = _propose(api, "strict", author="optimizer")
    assert auto["status"] == "applied", auto
    approved = next(e for e in auto["history"] if e["status"] == "approved")
    assert approved["actor"] == "policy:auto" and auto["canary_weight"] == 0.2
    assert auto["author"] == "optimizer"
    # One canary per workflow at a time: the next one waits, validated, with the reason.
    second = _propose(api, "strict")
    assert second["status"] == "validated" and "one canary at a time" in second["reason"]
    blocked = api.post(f"/v1/mutations/{second['mutation_id']}/approve", json={"wait_ms": WAIT})
    assert blocked.status_code == 409 and "keep or roll it back first" in blocked.json()["detail"]

    # Policy off: optimizer proposals refused by the API (409) and by the processor (Kafka).
    policy = api.put("/v1/workflows/strict/improvement", json={"policy": "off", "wait_ms": WAIT})
    assert policy.status_code == 200 and policy.json()["policy"] == "off"
    assert api.get("/v1/workflows/strict/improvement").json()["policy"] == "off"
    off = api.post(
        "/v1/mutations",
        json={
            "workflow_id": "strict",
            "changes": [_CHANGE],
            "rationale": "x",
            "author": "optimizer",
        },
    )
    assert off.status_code == 409 and "policy 'off'" in off.json()["detail"]
    direct = MutationRequest(
        workflow_id="strict",
        mutation_id=str(uuid.uuid4()),
        action=MutationAction.PROPOSE,
        actor="optimizer",
        base_version=1,
        changes=[],
        rationale="straight onto the topic",
    )
    harness.send(harness.engine.catalog.mutations.topic, "strict", direct)

    def refusal() -> Any:
        with psycopg.connect(harness.settings.postgres_dsn, autocommit=True) as conn:
            return conn.execute(
                f'SELECT refused_reason FROM "{harness.schema}".mutation_requests '
                "WHERE request_id = %s",
                (direct.event_id,),
            ).fetchone()

    row = eventually(refusal, 15, "the processor's refusal projected", until=lambda r: r and r[0])
    assert "policy 'off'" in row[0]
    assert api.get(f"/v1/mutations/{direct.mutation_id}").status_code == 404
    # People may still propose under 'off'.
    assert _propose(api, "strict")["status"] in {"validated", "applied"}


def test_a_redelivered_request_is_answered_once_and_the_state_is_the_fold_of_the_topic(
    harness: Harness, api: TestClient
) -> None:
    _register(api, "twice")
    request = MutationRequest(
        workflow_id="twice",
        mutation_id="twice-1",
        action=MutationAction.PROPOSE,
        actor="optimizer",
        base_version=1,
        changes=[GraphMutation(type=GraphMutationType.UPDATE_PARAMS, **_CHANGE_FIELDS)],
        rationale="sent twice (a producer retry)",
    )
    topic = harness.engine.catalog.mutations.topic
    harness.send(topic, "twice", request)
    harness.send(topic, "twice", request)
    # Validated on the static checks (this engine runs no replay validation); approve after it.
    eventually(
        lambda: api.get("/v1/mutations/twice-1").json(),
        20,
        "twice-1 validated",
        until=lambda body: body.get("status") == "validated",
    )
    approve = MutationRequest(
        workflow_id="twice", mutation_id="twice-1", action=MutationAction.APPROVE, actor="user:x"
    )
    harness.send(topic, "twice", approve)
    detail = eventually(
        lambda: api.get("/v1/mutations/twice-1").json(),
        20,
        "twice-1 applied",
        until=lambda body: body.get("status") == "applied",
    )
    assert _statuses(detail) == ["proposed", "validating", "validated", "approved", "applied"]
    assert detail["applied_version"] == 2
    versions = api.get("/v1/workflows/twice/versions").json()
    assert [v["version"] for v in versions["data"]] == [1, 2]  # registered once

    # What the processor holds equals the fold of the topic, read from the beginning.
    processor = harness.engine.mutation_processor
    assert processor is not None
    folded = MutationsState()

    def fold(data: bytes | None) -> None:
        if data is not None and record_type_of(data) != MutationRequest.AVRO_NAME:
            evolve(folded, decode(data, MUTATION_TOPIC_TYPES))

    reader = TopicTableReader(harness.settings, topic, fold, name="test-fold")
    try:
        assert reader.catch_up() == []
    finally:
        reader.close()
    live = processor.state.of("twice")
    assert folded.of("twice").proposals == live.proposals
    assert detail["history"][2]["request_id"] == request.event_id  # validated by the proposal
    assert folded.of("twice").handled == live.handled
    assert live.handled == {request.event_id, approve.event_id}
    assert folded.of("twice").route == live.route
