"""Identity, roles and audit of the HTTP API against real Kafka and Postgres (ADR 0046).

Each test gets its own topic prefix and Postgres schemas; keys are created the real way (the
bootstrap function of ``reflux api-keys create``, or ``POST /v1/api-keys``); OIDC tokens come
from a local issuer whose JWKS a real HTTP server serves; the audit log is read back through
``GET /v1/audit`` after the real ``Projector`` has projected the ``audit`` topic.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth.bootstrap import create_api_key
from api.auth.roles import ROUTE_ACCESS, SIGNED, Role
from api.config import ApiSettings
from foundation.settings import Settings
from projections.postgres import apply_migrations
from projections.projector import Projector
from schemas.models import StartRun
from streams.consumer import Consumer
from streams.topics import TopicCatalog
from tests.integration.kafka_fixtures import drain
from tests.support.oidc_issuer import LocalIssuer, local_issuer

pytestmark = pytest.mark.integration

DEFINITION: dict[str, Any] = {
    "id": "greet",
    "inputs": {"name": {"type": "string", "required": True}},
    "steps": [{"id": "say", "node": "transform@^1", "params": {"expression": "name"}}],
}


@dataclass
class Env:
    client: TestClient
    """No default credential: each call says who it is."""
    settings: Settings
    api: ApiSettings
    catalog: TopicCatalog
    project: Callable[[], None]
    issuer: LocalIssuer

    def key(self, role: Role, name: str | None = None, **fields: Any) -> dict[str, str]:
        _, key = create_api_key(
            self.settings,
            self.api,
            name=name or f"{role.value}-{uuid.uuid4().hex[:6]}",
            role=role,
            created_by="tests",
            **fields,
        )
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def env(kafka_settings: Settings, topics: TopicCatalog) -> Iterator[Env]:
    read_schema = f"t_read_{uuid.uuid4().hex[:10]}"
    api_schema = f"t_api_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(kafka_settings.postgres_dsn, autocommit=True) as conn:
        apply_migrations(conn, read_schema)
    name = f"identity-test-{uuid.uuid4().hex[:6]}"

    def project() -> None:
        with Projector(
            kafka_settings, read_schema, name, assignment="manual", migrate=False
        ) as projector:
            projector.run_until_caught_up(timeout=30)

    try:
        with local_issuer() as issuer:
            api = ApiSettings(
                read_schema=read_schema,
                api_schema=api_schema,
                poll_interval_s=0.05,
                clickhouse_enabled=False,
                oidc_issuer=issuer.url,
                oidc_audience=issuer.audience,
                oidc_jwks_url=issuer.jwks_url,
                oidc_leeway_s=0,
                oidc_jwks_min_refresh_s=0,  # the rotation test's new kid is read at once
            )
            with TestClient(create_app(kafka_settings, api)) as client:
                yield Env(client, kafka_settings, api, topics, project, issuer)
    finally:
        with psycopg.connect(kafka_settings.postgres_dsn, autocommit=True) as conn:
            for schema in (read_schema, api_schema):
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _register(env: Env, headers: dict[str, str]) -> None:
    response = env.client.post("/v1/workflows", json=DEFINITION, headers=headers)
    assert response.status_code == 201, response.text
    env.project()


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: "1" if m.group(1) == "version" else "x", path)


def test_every_v1_route_refuses_an_anonymous_call_with_401(env: Env) -> None:
    operations = []
    for context in iter_route_contexts(env.client.app.routes):  # type: ignore[attr-defined]
        path = context.path_format or ""
        if isinstance(context.original_route, APIRoute) and path.startswith("/v1/"):
            operations += [(m, path) for m in sorted(context.methods or ()) if m != "HEAD"]
    assert len(operations) == len(ROUTE_ACCESS)
    checked = 0
    for method, path in operations:
        if ROUTE_ACCESS[f"{method} {path}"] == SIGNED and "{workflow_id}" not in path:
            # The step-resume webhook is authenticated by the waiting step's HMAC signature in
            # the worker (api/routes/hooks.py), not by a key: it is open by design.
            continue
        response = env.client.request(method, _concrete(path), json={})
        assert response.status_code == 401, (method, path, response.status_code, response.text)
        if method != "GET":  # authentication comes before the body is even parsed
            garbled = env.client.request(
                method,
                _concrete(path),
                content=b"{not json",
                headers={"content-type": "application/json"},
            )
            assert garbled.status_code == 401, (method, path, garbled.text)
        assert response.headers["www-authenticate"].startswith('Bearer realm="reflux"')
        assert (
            "credential" in response.json()["detail"]
            or "webhook secret" in response.json()["detail"]
        ), (method, path)
        checked += 1
    assert checked == len(ROUTE_ACCESS) - 1
    # Health stays open.
    assert env.client.get("/healthz").status_code == 200
    assert env.client.get("/metrics").status_code == 200


def test_a_bad_credential_is_401_with_the_reason(env: Env) -> None:
    cases = {
        "Bearer rfx_nothing": "malformed API key",
        f"Bearer rfx_{'0' * 16}_{'A' * 43}": "unknown API key 0000000000000000",
        "Basic dXNlcjpwYXNz": "Expected 'Authorization: Bearer",
        "Bearer not-a-jwt": "OIDC token refused: malformed token",
    }
    for header, reason in cases.items():
        response = env.client.get("/v1/runs", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert reason in response.json()["detail"], (header, response.json())
        assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_a_viewer_reads_but_gets_403_on_a_write(env: Env) -> None:
    viewer = env.key(Role.VIEWER, "vera")
    assert env.client.get("/v1/workflows", headers=viewer).status_code == 200
    assert env.client.get("/v1/runs", headers=viewer).status_code == 200
    response = env.client.post("/v1/workflows", json=DEFINITION, headers=viewer)
    assert response.status_code == 403
    detail = response.json()["detail"]
    assert "needs role 'editor'" in detail and "user:vera has role 'viewer'" in detail
    # The same key in X-API-Key works the same.
    x_key = {"X-API-Key": viewer["Authorization"].removeprefix("Bearer ")}
    assert env.client.get("/v1/workflows", headers=x_key).status_code == 200
    assert env.client.get("/v1/api-keys", headers=viewer).status_code == 403
    assert env.client.get("/v1/audit", headers=viewer).status_code == 403


def test_me_says_who_the_caller_is_and_exactly_what_its_role_allows(env: Env) -> None:
    viewer = env.client.get("/v1/me", headers=env.key(Role.VIEWER, "vera"))
    assert viewer.status_code == 200, viewer.text
    body = viewer.json()
    assert {k: body[k] for k in ("kind", "name", "actor", "role")} == {
        "kind": "api_key",
        "name": "vera",
        "actor": "user:vera",
        "role": "viewer",
    }
    allowed = set(body["allowed"])
    assert "GET /v1/runs" in allowed and "GET /v1/me" in allowed
    assert "POST /v1/runs" not in allowed
    assert "POST /v1/mutations/{mutation_id}/approve" not in allowed
    operator = env.client.get("/v1/me", headers=env.key(Role.OPERATOR)).json()
    assert "POST /v1/mutations/{mutation_id}/approve" in operator["allowed"]
    assert "POST /v1/mutations" not in operator["allowed"]  # editors propose
    admin = env.client.get("/v1/me", headers=env.key(Role.ADMIN)).json()
    # An admin: every operation a key can be allowed (webhooks are signed, not keyed).
    keyed = {op for op, need in ROUTE_ACCESS.items() if need != SIGNED}
    assert set(admin["allowed"]) == keyed
    assert env.client.get("/v1/me").status_code == 401


def test_an_operator_starts_runs_but_cannot_register_or_touch_the_catalog(env: Env) -> None:
    _register(env, env.key(Role.EDITOR))
    operator = env.key(Role.OPERATOR, "otto")
    started = env.client.post(
        "/v1/runs", json={"workflow_id": "greet", "inputs": {"name": "x"}}, headers=operator
    )
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]
    refused = env.client.post("/v1/workflows", json=DEFINITION, headers=operator)
    assert refused.status_code == 403 and "needs role 'editor'" in refused.json()["detail"]
    node = {"name": "my.node", "version": "1.0.0"}
    refused = env.client.post("/v1/nodes", json=node, headers=operator)
    assert refused.status_code == 403 and "needs role 'admin'" in refused.json()["detail"]
    # Who started it is the principal, not something the request said.
    group = f"{env.settings.topic_prefix}.reader-{uuid.uuid4().hex[:6]}"
    with Consumer([env.catalog.commands.topic], group, env.settings, catalog=env.catalog) as c:
        records = drain(c, lambda rs: any(getattr(r.value, "run_id", "") == run_id for r in rs))
    [command] = [r.value for r in records if isinstance(r.value, StartRun)]
    assert command.requested_by == "user:otto"
    # Claiming to be someone else is refused; naming oneself is fine.
    cancel = f"/v1/runs/{run_id}/cancel"
    spoof = env.client.post(cancel, json={"requested_by": "mallory"}, headers=operator)
    assert spoof.status_code == 403 and "does not name the caller" in spoof.json()["detail"]
    own = env.client.post(cancel, json={"requested_by": "otto"}, headers=operator)
    # Past the claim check; the run itself is not projected here (no scheduler): 404.
    assert own.status_code == 404, own.text


def test_keys_are_created_once_listed_without_secrets_rotated_and_revoked(env: Env) -> None:
    admin = env.key(Role.ADMIN, "root")
    created = env.client.post("/v1/api-keys", json={"name": "ci", "role": "viewer"}, headers=admin)
    assert created.status_code == 201, created.text
    body = created.json()
    secret, key_id = body["key"], body["id"]
    assert secret.startswith(f"rfx_{key_id}_") and body["tenant"] == "default"
    assert body["created_by"] == "user:root" and body["status"] == "active"
    ci = {"Authorization": f"Bearer {secret}"}
    assert env.client.get("/v1/runs", headers=ci).status_code == 200

    listed = env.client.get("/v1/api-keys", headers=admin)
    assert listed.status_code == 200
    assert secret.split("_", 2)[2] not in listed.text and "rfx_" not in listed.text
    assert key_id in {k["id"] for k in listed.json()["data"]}
    with psycopg.connect(env.settings.postgres_dsn, autocommit=True) as conn:
        stored = conn.execute(
            f'SELECT secret_sha256 FROM "{env.api.api_schema}".api_keys WHERE key_id = %s',
            (key_id,),
        ).fetchone()
    assert stored is not None and secret.split("_", 2)[2] not in stored[0]

    rotated = env.client.post(f"/v1/api-keys/{key_id}/rotate", headers=admin)
    assert rotated.status_code == 200 and rotated.json()["key"] != secret
    old = env.client.get("/v1/runs", headers=ci)
    assert old.status_code == 401 and "wrong secret (rotated" in old.json()["detail"]
    new = {"Authorization": f"Bearer {rotated.json()['key']}"}
    assert env.client.get("/v1/runs", headers=new).status_code == 200

    revoked = env.client.delete(f"/v1/api-keys/{key_id}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    after = env.client.get("/v1/runs", headers=new)
    assert after.status_code == 401 and f"API key {key_id} was revoked" in after.json()["detail"]
    assert env.client.post(f"/v1/api-keys/{key_id}/rotate", headers=admin).status_code == 409
    assert env.client.delete("/v1/api-keys/0123456789abcdef", headers=admin).status_code == 404

    bad = env.client.post("/v1/api-keys", json={"name": "a b", "role": "boss"}, headers=admin)
    assert bad.status_code == 422
    assert {tuple(i["loc"]) for i in bad.json()["detail"]} == {("body", "name"), ("body", "role")}
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    bad = env.client.post(
        "/v1/api-keys", json={"name": "x", "role": "viewer", "expires_at": past}, headers=admin
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "expires_at"]
    # Only admins manage keys.
    editor = env.key(Role.EDITOR)
    refused = env.client.post("/v1/api-keys", json={"name": "x", "role": "admin"}, headers=editor)
    assert refused.status_code == 403


def test_an_expired_key_is_refused_with_when(env: Env) -> None:
    expired = env.key(Role.ADMIN, "old", expires_at=datetime.now(UTC) - timedelta(minutes=1))
    response = env.client.get("/v1/runs", headers=expired)
    assert response.status_code == 401 and "expired at" in response.json()["detail"]
    assert "expired" in response.headers["www-authenticate"]


def test_an_oidc_token_of_the_local_issuer_works_and_bad_ones_say_why(env: Env) -> None:
    issuer = env.issuer

    def call(token: str, method: str = "GET", path: str = "/v1/runs") -> Any:
        return env.client.request(
            method, path, headers={"Authorization": f"Bearer {token}"}, json=DEFINITION
        )

    assert call(issuer.token(roles=["viewer"])).status_code == 200
    editor = call(issuer.token(sub="ed", roles=["editor"]), "POST", "/v1/workflows")
    assert editor.status_code == 201, editor.text
    viewer = call(issuer.token(sub="vi", roles=["viewer"]), "POST", "/v1/workflows")
    assert viewer.status_code == 403 and "user:vi has role 'viewer'" in viewer.json()["detail"]
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for token, reason in (
        (issuer.token(key=other), "bad signature"),
        (issuer.token(audience="another-api"), "wrong audience"),
        (issuer.token(expires_in=-120), "token expired"),
        (issuer.token(roles=["root"]), "names no REFLUX role"),
    ):
        response = call(token)
        assert response.status_code == 401, reason
        detail = response.json()["detail"]
        assert detail.startswith("OIDC token refused: ") and reason in detail, detail
        assert "invalid_token" in response.headers["www-authenticate"]
    # The issuer rotates its key: a token under the new kid works (the JWKS is read again).
    issuer.rotate()
    assert call(issuer.token(roles=["viewer"])).status_code == 200


def test_every_write_is_in_the_audit_log_with_its_principal(env: Env) -> None:
    admin = env.key(Role.ADMIN, "auditor")
    editor = env.key(Role.EDITOR, "eddie")
    viewer = env.key(Role.VIEWER, "vic")
    since = datetime.now(UTC) - timedelta(seconds=5)
    writes = [
        env.client.post("/v1/workflows", json=DEFINITION, headers=editor),  # 201
        env.client.post("/v1/workflows", json=DEFINITION, headers=viewer),  # 403
        env.client.post("/v1/workflows", json=DEFINITION),  # 401 anonymous
        env.client.post("/v1/runs/r-404/cancel", json={}, headers=editor),  # 404 (no such run)
        env.client.post("/v1/workflows", json={"id": "bad"}, headers=editor),  # 422
    ]
    assert [w.status_code for w in writes] == [201, 403, 401, 404, 422]
    assert env.client.get("/v1/runs", headers=editor).status_code == 200  # a read: not audited
    token = env.issuer.token(sub="oidc-ed", roles=["editor"], tenant="acme")
    # Its own workflow id: "greet" is the default tenant's now (ADR 0051).
    oidc = env.client.post(
        "/v1/workflows",
        json={**DEFINITION, "id": "greet-acme"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert oidc.status_code == 201
    env.client.app.state.audit.flush()  # type: ignore[attr-defined]  # queued, not awaited
    env.project()

    page = env.client.get("/v1/audit", headers=admin, params={"since": since.isoformat()})
    assert page.status_code == 200, page.text
    entries = page.json()["data"]
    assert all(e["method"] != "GET" for e in entries)
    seen = {(e["actor"], e["method"], e["route"], e["status_code"]) for e in entries}
    assert seen == {
        ("user:eddie", "POST", "/v1/workflows", 201),
        ("user:vic", "POST", "/v1/workflows", 403),
        ("anonymous", "POST", "/v1/workflows", 401),
        ("user:eddie", "POST", "/v1/runs/{run_id}/cancel", 404),
        ("user:eddie", "POST", "/v1/workflows", 422),
        ("user:oidc-ed", "POST", "/v1/workflows", 201),
    }
    by_status = {(e["actor"], e["status_code"]): e for e in entries}
    refused = by_status[("user:vic", 403)]
    assert refused["role"] == "viewer" and "needs role 'editor'" in refused["reason"]
    assert refused["principal_kind"] == "api_key" and refused["client"]
    assert by_status[("anonymous", 401)]["reason"].startswith("Expected a credential")
    assert by_status[("user:eddie", 404)]["resource_ids"] == {"run_id": "r-404"}
    oidc_entry = by_status[("user:oidc-ed", 201)]
    assert (oidc_entry["principal_kind"], oidc_entry["tenant"]) == ("oidc", "acme")
    # Newest first, and the filters work.
    # As instants: a time on a whole second is written without a fraction ("...:30Z"), which
    # sorts after "...:30.064Z" as a string.
    times = [datetime.fromisoformat(e["occurred_at"]) for e in entries]
    assert times == sorted(times, reverse=True)
    mine = env.client.get("/v1/audit", headers=admin, params={"actor": "user:eddie"}).json()
    assert {e["status_code"] for e in mine["data"]} == {201, 404, 422}
    acme = env.client.get("/v1/audit", headers=admin, params={"tenant": "acme"}).json()
    assert [e["actor"] for e in acme["data"]] == ["user:oidc-ed"]
    one = env.client.get("/v1/audit", headers=admin, params={"limit": 1}).json()
    assert one["count"] == 1 and one["data"][0]["event_id"] == entries[0]["event_id"]
    bad = env.client.get("/v1/audit", headers=admin, params={"limit": 0})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "limit"]
