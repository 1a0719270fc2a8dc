"""Tenancy through the API in front of the real engine (ADR 0051): DevEngine on the local Kafka
and Postgres, keys of two tenants created the real way, runs started, run, projected and read.

A tenant's workflows, runs, mutations, nodes, keys and audit entries are invisible to another
tenant: another tenant's resource is answered exactly as a missing one (same status, same
words), so not even its id leaks. The secrets side (a run of another tenant's workflow does not
get the secret) is in test_secret_grants_engine.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiSettings
from tests.integration.engine_fixtures import Harness
from tests.support.api_auth import key_headers
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def _echo(workflow_id: str) -> dict[str, Any]:
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


@dataclass
class Tenants:
    client: TestClient
    acme: dict[str, str]
    beta: dict[str, str]
    platform: dict[str, str]
    """An admin key of the platform tenant ('default')."""


@pytest.fixture
def tenants(harness: Harness) -> Iterator[Tenants]:
    api_schema = f"{harness.schema}_api"
    api = ApiSettings(
        read_schema=harness.schema,
        api_schema=api_schema,
        poll_interval_s=0.05,
        clickhouse_enabled=False,
    )
    keys = {
        tenant: key_headers(harness.settings, api, name=f"{tenant}-admin", tenant=tenant)
        for tenant in ("acme", "beta", "default")
    }
    with TestClient(create_app(harness.settings, api)) as client:
        yield Tenants(client, keys["acme"], keys["beta"], keys["default"])
    with psycopg.connect(harness.settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{api_schema}" CASCADE')


def _register(t: Tenants, headers: dict[str, str], workflow_id: str) -> None:
    response = t.client.post("/v1/workflows", json=_echo(workflow_id), headers=headers)
    assert response.status_code == 201, response.text
    eventually(
        lambda: t.client.get(f"/v1/workflows/{workflow_id}", headers=headers).status_code,
        15,
        f"workflow {workflow_id} in the projection",
        until=lambda status: status == 200,
    )


def _finished_run(t: Tenants, headers: dict[str, str], workflow_id: str, **extra: Any) -> str:
    body = {"workflow_id": workflow_id, "inputs": {"word": "hi"}, "wait_ms": 30_000, **extra}
    response = t.client.post("/v1/runs", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"
    return str(response.json()["run_id"])


def _missing(response: Any, words: str) -> None:
    assert response.status_code == 404, (response.status_code, response.text)
    assert response.json()["detail"] == words


def test_a_tenant_cannot_see_or_touch_another_tenants_workflows_and_runs(
    harness: Harness, tenants: Tenants
) -> None:
    t, acme, beta = tenants, tenants.acme, tenants.beta
    _register(t, acme, "acme-echo")
    _register(t, beta, "beta-echo")
    run = _finished_run(t, acme, "acme-echo")

    # acme reads its run; the run, its workflow and its invocations are acme's.
    assert t.client.get(f"/v1/runs/{run}", headers=acme).json()["status"] == "succeeded"
    started = t.client.get(f"/v1/runs/{run}/events", headers=acme).json()["data"][0]
    assert started["event_type"] == "RunStarted" and started["payload"]["tenant"] == "acme"

    # beta: acme's run is answered as a run that does not exist, on every route naming it.
    unknown = str(uuid.uuid4())
    for path in ("", "/events", "/state?seq=0", "/graph", "/export"):
        _missing(t.client.get(f"/v1/runs/{run}{path}", headers=beta), f"run {run!r} not found")
        _missing(
            t.client.get(f"/v1/runs/{unknown}{path}", headers=beta), f"run {unknown!r} not found"
        )
    _missing(t.client.get(f"/v1/runs/{run}/diff/{run}", headers=beta), f"run {run!r} not found")
    for action in ("cancel", "pause", "resume"):
        _missing(t.client.post(f"/v1/runs/{run}/{action}", headers=beta), f"run {run!r} not found")
    _missing(
        t.client.post(f"/v1/runs/{run}/feedback", json={"score": 1.0}, headers=beta),
        f"run {run!r} not found",
    )
    assert [r["run_id"] for r in t.client.get("/v1/runs", headers=beta).json()["data"]] == []
    assert run in [r["run_id"] for r in t.client.get("/v1/runs", headers=acme).json()["data"]]

    # ... and so is its workflow: not listed, not readable, not startable, not mutable.
    listed = [w["workflow_id"] for w in t.client.get("/v1/workflows", headers=beta).json()["data"]]
    assert listed == ["beta-echo"]
    not_found = "workflow 'acme-echo' not found"
    _missing(t.client.get("/v1/workflows/acme-echo", headers=beta), not_found)
    _missing(t.client.get("/v1/workflows/acme-echo/versions/1", headers=beta), not_found)
    _missing(t.client.get("/v1/workflows/acme-echo/improvement", headers=beta), not_found)
    start = {"workflow_id": "acme-echo", "inputs": {"word": "x"}}
    _missing(t.client.post("/v1/runs", json=start, headers=beta), not_found)
    proposal = {
        "workflow_id": "acme-echo",
        "changes": [{"type": "update_params", "step_id": "say", "data": {"expression": "w"}}],
        "rationale": "steal",
    }
    _missing(t.client.post("/v1/mutations", json=proposal, headers=beta), not_found)
    # Its id is taken: registering it again in beta is refused, not a second owner.
    taken = t.client.post("/v1/workflows", json=_echo("acme-echo"), headers=beta)
    assert taken.status_code == 409 and "taken by another tenant" in taken.json()["detail"]
    assert t.client.get("/v1/workflows/acme-echo", headers=acme).json()["latest_version"] == 1


def test_the_same_idempotency_key_in_two_tenants_names_two_runs(
    harness: Harness, tenants: Tenants
) -> None:
    t = tenants
    _register(t, t.acme, "acme-keyed")
    _register(t, t.beta, "beta-keyed")
    key = f"order-{uuid.uuid4().hex[:8]}"
    acme_run = _finished_run(t, t.acme, "acme-keyed", idempotency_key=key)
    beta_run = _finished_run(t, t.beta, "beta-keyed", idempotency_key=key)
    assert acme_run != beta_run
    # Within a tenant the key still names one run.
    assert _finished_run(t, t.acme, "acme-keyed", idempotency_key=key) == acme_run
    control = t.client.post(
        "/v1/runs",
        json={"workflow_id": "acme-keyed", "inputs": {"word": "x"}, "idempotency_key": "a\x1fb"},
        headers=t.acme,
    )
    assert control.status_code == 422 and control.json()["detail"][0]["loc"] == [
        "body",
        "idempotency_key",
    ]


def test_nodes_keys_and_audit_are_per_tenant(harness: Harness, tenants: Tenants) -> None:
    t = tenants
    # The platform's catalog is everyone's to use and no one else's to change.
    http_node = {"name": "http.request", "version": "9.0.0", "manifest": {}}
    builtin = t.client.post("/v1/nodes", json=http_node, headers=t.beta)
    assert builtin.status_code == 403 and "platform catalog" in builtin.json()["detail"]
    mine = {"name": "beta.tool", "version": "1.0.0", "manifest": {}}
    registered = t.client.post("/v1/nodes", json=mine, params={"wait_ms": 15_000}, headers=t.beta)
    assert registered.status_code in (200, 202) and registered.json()["applied"], registered.text
    beta_nodes = {n["name"] for n in t.client.get("/v1/nodes", headers=t.beta).json()["data"]}
    acme_nodes = {n["name"] for n in t.client.get("/v1/nodes", headers=t.acme).json()["data"]}
    assert "beta.tool" in beta_nodes and "beta.tool" not in acme_nodes
    _missing(
        t.client.get("/v1/nodes/beta.tool/versions", headers=t.acme), "node 'beta.tool' not found"
    )
    _missing(
        t.client.post("/v1/nodes/beta.tool/versions/1.0.0/deprecate", headers=t.acme),
        "node 'beta.tool' not found",
    )
    taken = t.client.post("/v1/nodes", json={**mine, "version": "1.1.0"}, headers=t.acme)
    assert taken.status_code == 409 and "taken by another tenant" in taken.json()["detail"]

    # Keys: an admin makes keys of its own tenant; the platform's admins provision others.
    ci = {"name": "acme-ci", "role": "operator"}
    own = t.client.post("/v1/api-keys", json=ci, headers=t.acme)
    assert own.status_code == 201 and own.json()["tenant"] == "acme"
    other = {"name": "x", "role": "admin", "tenant": "beta"}
    refused = t.client.post("/v1/api-keys", json=other, headers=t.acme)
    assert refused.status_code == 403 and "tenant 'acme'" in refused.json()["detail"]
    provisioned = t.client.post(
        "/v1/api-keys",
        json={"name": "gamma-admin", "role": "admin", "tenant": "gamma"},
        headers=t.platform,
    )
    assert provisioned.status_code == 201 and provisioned.json()["tenant"] == "gamma"
    acme_keys = {k["tenant"] for k in t.client.get("/v1/api-keys", headers=t.acme).json()["data"]}
    assert acme_keys == {"acme"}
    beta_key_id = next(
        k["id"]
        for k in t.client.get("/v1/api-keys", headers=t.beta).json()["data"]
        if k["name"] == "beta-admin"
    )
    _missing(
        t.client.delete(f"/v1/api-keys/{beta_key_id}", headers=t.acme),
        f"API key {beta_key_id!r} not found",
    )
    assert t.client.get("/v1/workflows", headers=t.beta).status_code == 200  # still valid

    # Audit: each tenant reads its own writes only.
    def audit(headers: dict[str, str], **params: str) -> list[dict[str, Any]]:
        return list(t.client.get("/v1/audit", params=params, headers=headers).json()["data"])

    eventually(
        lambda: audit(t.acme),
        15,
        "acme's key creation in the audit log",
        until=lambda rows: any(r["route"] == "/v1/api-keys" for r in rows),
    )
    assert {r["tenant"] for r in audit(t.acme)} == {"acme"}
    assert audit(t.acme, tenant="beta") == []
    assert {r["tenant"] for r in audit(t.platform)} >= {"acme", "beta"}
