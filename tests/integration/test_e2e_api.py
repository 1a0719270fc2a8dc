"""The API in front of the real engine: HTTP in, Kafka through, projections out."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiSettings
from tests.integration.engine_fixtures import Harness, assert_replay_equivalent
from tests.integration.http_fixtures import serve
from tests.support.api_auth import key_headers
from tests.support.waiting import eventually

SECRET = "s3cret-for-tests"


@pytest.fixture
def api(harness: Harness) -> Iterator[TestClient]:
    api_schema = f"{harness.schema}_api"
    settings = ApiSettings(
        read_schema=harness.schema,
        api_schema=api_schema,
        webhook_secrets={"hooked": SECRET},
        poll_interval_s=0.05,
        clickhouse_enabled=False,  # metrics are tested in test_traces.py (one chdb per process)
    )
    headers = key_headers(harness.settings, settings)
    with TestClient(create_app(harness.settings, settings), headers=headers) as client:
        yield client
    with psycopg.connect(harness.settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{api_schema}" CASCADE')


def _register(api: TestClient, definition: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/v1/workflows", json=definition)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _wait_visible(api: TestClient, workflow_id: str) -> None:
    eventually(
        lambda: api.get(f"/v1/workflows/{workflow_id}").status_code,
        15,
        f"workflow {workflow_id} in the projection (GET /v1/workflows/{workflow_id} = 200)",
        until=lambda status: status == 200,
    )


ECHO = {
    "id": "echo",
    "inputs": {"word": {"type": "string", "required": True}},
    "steps": [
        {
            "id": "say",
            "node": "transform@^1",
            "params": {"expression": "w", "data": {"w": "{{ inputs.word }}"}},
        }
    ],
    "outputs": {"said": "{{ steps.say.output.result }}"},
}


def test_start_a_run_and_wait_for_it(harness: Harness, api: TestClient) -> None:
    _register(api, ECHO)
    _wait_visible(api, "echo")
    response = api.post(
        "/v1/runs", json={"workflow_id": "echo", "inputs": {"word": "hi"}, "wait_ms": 20_000}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded" and body["outputs"] == {"said": "hi"}
    events = api.get(f"/v1/runs/{body['run_id']}/events").json()["data"]
    assert events[0]["event_type"] == "RunStarted"
    state = api.get(f"/v1/runs/{body['run_id']}/state", params={"seq": 0}).json()
    assert state["seq"] == 0 and state["state"]["status"] == "running"
    assert_replay_equivalent(harness, body["run_id"])


def _sender_signature(secret: str, path: str, body: bytes, timestamp: int) -> str:
    """What a sender computes, from docs/triggers.md alone (not the project's helper)."""
    message = f"{timestamp}.POST.{path}.".encode() + body
    return f"t={timestamp},v1=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def test_webhook_starts_a_signed_run(harness: Harness, api: TestClient) -> None:
    definition = {**ECHO, "id": "hooked"}
    _register(api, definition)
    _wait_visible(api, "hooked")
    payload = json.dumps({"word": "from-hook"}).encode()
    path = "/v1/hooks/hooked"
    now = int(time.time())

    def post(**headers: str) -> Any:
        return api.post(
            path, content=payload, headers={"content-type": "application/json", **headers}
        )

    refused = {
        "missing": post(),
        "wrong": post(**{"Reflux-Signature": _sender_signature("guess", path, payload, now)}),
        "too_old": post(
            **{"Reflux-Signature": _sender_signature(SECRET, path, payload, now - 301)}
        ),
        # Valid for another workflow's hook: the path is in the MAC.
        "wrong-path": post(
            **{"Reflux-Signature": _sender_signature(SECRET, "/v1/hooks/other", payload, now)}
        ),
        "legacy": post(
            **{
                "X-Reflux-Signature": "sha256="
                + hmac.new(SECRET.encode(), payload, hashlib.sha256).hexdigest()
            }
        ),
    }
    for case, response in refused.items():
        assert response.status_code == 401, (case, response.text)
        reason = "wrong" if case == "wrong-path" else case
        assert f"refused ({reason})" in response.json()["detail"], (case, response.text)
    good = {"Reflux-Signature": _sender_signature(SECRET, path, payload, now)}
    accepted = post(**good, **{"Idempotency-Key": "hook-1"})
    assert accepted.status_code == 202, accepted.text
    run = harness.wait(accepted.json()["run_id"])
    assert (run.status, run.outputs, run.source) == ("succeeded", {"said": "from-hook"}, "webhook")
    # The same signed request again (even with another Idempotency-Key) is a replay.
    again = post(**good, **{"Idempotency-Key": "hook-2"})
    assert again.status_code == 401 and "refused (replayed)" in again.json()["detail"]
    too_big = api.post(
        path,
        content=b'"' + b"x" * (1024 * 1024) + b'"',
        headers={"content-type": "application/json"},
    )
    assert too_big.status_code == 413 and "at most 1048576 bytes" in too_big.json()["detail"]


def test_illegal_command_is_a_409_with_the_reason(harness: Harness, api: TestClient) -> None:
    with serve() as http:
        _register(
            api,
            {
                "id": "busy",
                "steps": [
                    {
                        "id": "wait",
                        "node": "http.request@^1",
                        # Held until the test is done with the running run, however slowly
                        # the API answers on a busy machine.
                        "params": {"url": f"{http.url}/gate?name=busy"},
                    }
                ],
            },
        )
        _wait_visible(api, "busy")
        run_id = api.post("/v1/runs", json={"workflow_id": "busy", "inputs": {}}).json()["run_id"]
        harness.wait_step(run_id, "wait", "running")
        # The run view tells a step a worker runs from one still waiting for a worker.
        (step,) = api.get(f"/v1/runs/{run_id}").json()["steps"]
        assert (step["status"], step["attempt"]) == ("running", 1)
        assert step["dispatched_at"] <= step["started_at"] and step["worker"]
        events = api.get(f"/v1/runs/{run_id}/events").json()["data"]
        started = [e for e in events if e["event_type"] == "StepStarted"]
        assert len(started) == 1 and started[0]["payload"]["invocation_id"] == step["invocation_id"]
        response = api.post(f"/v1/runs/{run_id}/resume", params={"wait_ms": 10_000})
        assert response.status_code == 409, response.text
        assert "Expected run to be paused" in response.json()["detail"]
        paused = api.post(f"/v1/runs/{run_id}/pause", params={"wait_ms": 10_000})
        assert paused.status_code == 200, paused.text
        resumed = api.post(f"/v1/runs/{run_id}/resume", params={"wait_ms": 10_000})
        assert resumed.status_code == 200, resumed.text
        http.open_gate("busy")
        assert harness.wait(run_id).status == "succeeded"


def test_bad_input_gets_precise_errors(api: TestClient) -> None:
    cyclic = {
        "id": "cyc",
        "steps": [
            {"id": "a", "node": "transform@^1", "needs": ["b"], "params": {}},
            {"id": "b", "node": "transform@^1", "needs": ["a"], "params": {}},
        ],
    }
    response = api.post("/v1/workflows", json=cyclic)
    assert response.status_code == 422
    assert any("cycle" in d["msg"] for d in response.json()["detail"]), response.json()
    unknown_node = {"id": "un", "steps": [{"id": "a", "node": "nope@^1", "params": {}}]}
    detail = api.post("/v1/workflows", json=unknown_node).json()["detail"]
    assert detail and detail[0]["loc"][:4] == ["body", "steps", 0, "node"], detail
    missing = api.get("/v1/runs/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and "not found" in missing.json()["detail"]
