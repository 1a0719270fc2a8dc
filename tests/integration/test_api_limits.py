"""Request limits and "accepted means applied" on the live API (real Kafka and Postgres).

Each write that used to be accepted and then lost (or blown up) is now refused before the 2xx,
with the field path; a write that is accepted shows up in the read model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.integration.engine_fixtures import Harness, api_client
from tests.support.allocation import peak_allocation
from tests.support.waiting import eventually
from tests.unit.test_parse_limits import billion_laughs


@pytest.fixture
def api(harness: Harness) -> Iterator[TestClient]:
    with api_client(harness) as client:
        yield client


def _loc(response: object) -> list[object]:
    return list(response.json()["detail"][0]["loc"])  # type: ignore[attr-defined]


def test_a_yaml_bomb_workflow_is_refused_before_it_expands(api: TestClient) -> None:
    with peak_allocation() as peak:
        response = api.post(
            "/v1/workflows",
            content="id: bomb\n" + billion_laughs(),
            headers={"content-type": "application/yaml"},
        )
    assert response.status_code == 422, response.text
    assert "alias expansion limit" in response.json()["detail"][0]["msg"]
    # The request, the app and the refusal together; the expanded bomb would take gigabytes.
    assert peak[0] < 10_000_000, f"allocated {peak[0]:,} bytes"


def test_deep_json_is_422_on_routes_that_decode_bodies_themselves(api: TestClient) -> None:
    deep = b"[" * 1000 + b"]" * 1000
    for url in ("/v1/workflows", "/v1/hooks/anything", "/v1/runs"):
        response = api.post(url, content=deep, headers={"content-type": "application/json"})
        assert response.status_code == 422, (url, response.text)
        assert response.json()["detail"][0]["type"] == "too_deep"


def test_a_body_over_the_limit_is_413_on_the_start_webhook(api: TestClient) -> None:
    body = json.dumps({"blob": "x" * (1024 * 1024)}).encode()
    response = api.post(
        "/v1/hooks/anything", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "at most 1048576 bytes (1 MiB) for POST /v1/hooks/anything" in response.json()["detail"]


def test_node_version_overflow_true_weight_and_nul_are_422_and_good_ones_apply(
    api: TestClient,
) -> None:
    overflow = api.post("/v1/nodes", json={"name": "fuzz.node", "version": "4294967296.0.0"})
    assert overflow.status_code == 422 and _loc(overflow) == ["body", "version"]
    weight = api.post(
        "/v1/nodes", json={"name": "fuzz.node", "version": "1.0.0", "rollout_weight": True}
    )
    assert weight.status_code == 422 and _loc(weight) == ["body", "rollout_weight"]
    nul = api.post(
        "/v1/nodes",
        json={"name": "fuzz.node", "version": "1.0.0", "manifest": {"category": "a\u0000"}},
    )
    assert nul.status_code == 422 and _loc(nul) == ["body", "manifest", "category"]
    assert nul.json()["detail"][0]["type"] == "nul_character"

    accepted = api.post(
        "/v1/nodes", json={"name": "fuzz.node", "version": "2147483647.0.0"}, params={"wait_ms": 0}
    )
    assert accepted.status_code == 202, accepted.text
    eventually(
        lambda: api.get("/v1/nodes/fuzz.node/versions/2147483647.0.0").status_code,
        15,
        "the largest version that fits to be applied",
        until=lambda status: status == 200,
    )
    rollout = api.put("/v1/nodes/fuzz.node/versions/2147483647.0.0/rollout", json={"weight": True})
    assert rollout.status_code == 422 and _loc(rollout) == ["body", "weight"]


def test_405_carries_allow(api: TestClient) -> None:
    response = api.delete("/v1/workflows")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, POST"
