"""CloudEvents over HTTP: ``POST /v1/hooks/{workflow_id}`` in structured and binary mode starts
runs that complete, on the real engine (ADR 0053). The signature rules stay those of ADR 0047."""

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
from api.ids import run_id_for
from tests.integration.engine_fixtures import Harness
from tests.support.api_auth import key_headers
from tests.support.waiting import eventually

SECRET = "cloudevents-hook-secret"


def echo(workflow_id: str) -> dict[str, Any]:
    return {
        "id": workflow_id,
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


@pytest.fixture
def api(harness: Harness) -> Iterator[TestClient]:
    api_schema = f"{harness.schema}_api"
    settings = ApiSettings(
        read_schema=harness.schema,
        api_schema=api_schema,
        webhook_secrets={"signed": SECRET},
        poll_interval_s=0.05,
        clickhouse_enabled=False,
    )
    headers = key_headers(harness.settings, settings)
    with TestClient(create_app(harness.settings, settings), headers=headers) as client:
        for workflow_id in ("signed", "open"):
            assert client.post("/v1/workflows", json=echo(workflow_id)).status_code == 201
        eventually(
            lambda: [client.get(f"/v1/workflows/{w}").status_code for w in ("signed", "open")],
            15,
            "both workflows in the projection",
            until=lambda statuses: statuses == [200, 200],
        )
        yield client
    with psycopg.connect(harness.settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{api_schema}" CASCADE')


def signature(path: str, body: bytes) -> str:
    """As docs/triggers.md tells a sender (not the project's helper)."""
    t = int(time.time())
    mac = hmac.new(SECRET.encode(), f"{t}.POST.{path}.".encode() + body, hashlib.sha256)
    return f"t={t},v1={mac.hexdigest()}"


def test_structured_cloud_event_signed_like_any_webhook(harness: Harness, api: TestClient) -> None:
    path = "/v1/hooks/signed"
    body = json.dumps(
        {
            "specversion": "1.0",
            "id": "delivery-1",
            "source": "https://shop.example/orders",
            "type": "com.shop.order.created",
            "datacontenttype": "application/json",
            "data": {"word": "structured"},
        }
    ).encode()
    headers = {"content-type": "application/cloudevents+json"}
    unsigned = api.post(path, content=body, headers=headers)
    assert unsigned.status_code == 401 and "refused (missing)" in unsigned.json()["detail"]
    accepted = api.post(
        path, content=body, headers={**headers, "Reflux-Signature": signature(path, body)}
    )
    assert accepted.status_code == 202, accepted.text
    key = "https://shop.example/orders:delivery-1"
    assert accepted.json()["idempotency_key"] == key
    run_id = accepted.json()["run_id"]
    assert run_id == run_id_for("webhook", key)
    run = harness.wait(run_id)
    assert (run.status, run.outputs, run.source) == ("succeeded", {"said": "structured"}, "webhook")


def test_binary_cloud_event_and_its_redelivery(harness: Harness, api: TestClient) -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "delivery-2",
        "ce-source": "/shop",
        "ce-type": "com.shop.order.created",
        "content-type": "application/json",
    }
    first = api.post("/v1/hooks/open", content=b'{"word": "binary"}', headers=headers)
    assert first.status_code == 202, first.text
    again = api.post("/v1/hooks/open", content=b'{"word": "binary"}', headers=headers)
    assert again.status_code == 202 and again.json()["run_id"] == first.json()["run_id"]
    run_id = first.json()["run_id"]
    assert run_id == run_id_for("webhook", "/shop:delivery-2")
    run = harness.wait(run_id)
    assert (run.status, run.outputs) == ("succeeded", {"said": "binary"})
    starts = [e for e in harness.events(run_id) if e.event_type == "RunStarted"]
    assert len(starts) == 1


def test_bad_cloud_events_are_422_naming_the_field(api: TestClient) -> None:
    headers = {"ce-specversion": "1.0", "ce-source": "/shop", "ce-type": "t"}
    missing = api.post("/v1/hooks/open", content=b'{"word": "x"}', headers=headers)
    assert missing.status_code == 422, missing.text
    (detail,) = missing.json()["detail"]
    assert detail["loc"] == ["header", "ce-id"] and "ce-id header" in detail["msg"]
    wrong_input = api.post(
        "/v1/hooks/open",
        content=json.dumps(
            {"specversion": "1.0", "id": "3", "source": "/s", "type": "t", "data": {"word": 5}}
        ),
        headers={"content-type": "application/cloudevents+json"},
    )
    assert wrong_input.status_code == 422, wrong_input.text
    assert wrong_input.json()["detail"][0]["loc"][:3] == ["body", "data", "word"]
