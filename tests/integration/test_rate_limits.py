"""Rate limits and daily quotas on the real app, real Redis, Kafka and Postgres (ADR 0049).

Keys are created the real way, per tenant; each test has its own topic prefix (so its own
Redis keys) and Postgres schemas. Waiting for a bucket to refill polls the API with
``eventually``; a refused request takes no token, so polling does not delay the success.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis
import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth.bootstrap import create_api_key
from api.auth.roles import Role
from api.config import ApiSettings, TenantRateLimits
from api.ratelimit.bucket import TAKE_LUA, BucketLimit, BucketState, take
from api.ratelimit.store import take_in_redis
from foundation.settings import Settings
from foundation.signatures import SIGNATURE_HEADER, sign
from projections.postgres import apply_migrations
from projections.projector import Projector
from streams.topics import TopicCatalog
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

DEFINITION: dict[str, Any] = {
    "id": "greet",
    "inputs": {"name": {"type": "string", "required": False}},
    "steps": [{"id": "say", "node": "transform@^1", "params": {"expression": "name"}}],
}

Headers = dict[str, str]
AppFactory = Callable[..., AbstractContextManager[TestClient]]


def _workflow(i: int) -> dict[str, Any]:
    return {**DEFINITION, "id": f"w{i}"}


@pytest.fixture
def schemas(kafka_settings: Settings) -> Iterator[tuple[str, str]]:
    read_schema = f"t_read_{uuid.uuid4().hex[:10]}"
    api_schema = f"t_api_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(kafka_settings.postgres_dsn, autocommit=True) as conn:
        apply_migrations(conn, read_schema)
    try:
        yield read_schema, api_schema
    finally:
        with psycopg.connect(kafka_settings.postgres_dsn, autocommit=True) as conn:
            for schema in (read_schema, api_schema):
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def app_with(
    kafka_settings: Settings, topics: TopicCatalog, schemas: tuple[str, str]
) -> AppFactory:
    """``app_with(**ApiSettings fields)`` -> a started ``TestClient`` (no default credential)."""
    read_schema, api_schema = schemas

    @contextmanager
    def factory(**fields: Any) -> Iterator[TestClient]:
        api = ApiSettings(
            read_schema=read_schema,
            api_schema=api_schema,
            poll_interval_s=0.05,
            clickhouse_enabled=False,
            **fields,
        )
        with TestClient(create_app(kafka_settings, api)) as client:
            client.app_api = api  # type: ignore[attr-defined]
            yield client

    return factory


def _key(settings: Settings, client: TestClient, tenant: str, role: Role = Role.ADMIN) -> Headers:
    api: ApiSettings = client.app_api  # type: ignore[attr-defined]
    _, key = create_api_key(
        settings,
        api,
        name=f"{tenant}-{uuid.uuid4().hex[:6]}",
        role=role,
        tenant=tenant,
        created_by="tests",
    )
    return {"Authorization": f"Bearer {key}"}


def _project(settings: Settings, client: TestClient) -> None:
    api: ApiSettings = client.app_api  # type: ignore[attr-defined]
    name = f"ratelimit-test-{uuid.uuid4().hex[:6]}"
    with Projector(
        settings, api.read_schema, name, assignment="manual", migrate=False
    ) as projector:
        projector.run_until_caught_up(timeout=30)


def test_the_lua_script_and_the_pure_function_agree(kafka_settings: Settings) -> None:
    asyncio.run(_lua_against_pure(kafka_settings))


async def _lua_against_pure(kafka_settings: Settings) -> None:
    client = aioredis.Redis.from_url(kafka_settings.redis_url)
    script = client.register_script(TAKE_LUA)
    keys = (f"{kafka_settings.topic_prefix}:t:a", f"{kafka_settings.topic_prefix}:t:b")
    rng = random.Random(12)
    for limits in (
        (BucketLimit(5, 2), BucketLimit(3, 0.7)),
        (BucketLimit(1, 0.001), BucketLimit(10_000_000, 1_000_000)),
    ):
        await client.delete(*keys)
        states: list[BucketState | None] = [None, None]
        now = 1_700_000_000_000
        for step in range(300):
            now += rng.choice([0, 0, 1, 7, 150, 333, 1000, 2500])
            cost = rng.choice([1, 1, 1, 2])
            expected = take(states, limits, now, cost)
            got = await take_in_redis(script, keys, limits, now, cost)
            assert (got.allowed, got.limiting, got.wait_ms, got.remaining, got.full_ms) == (
                expected.allowed,
                expected.limiting,
                expected.wait_ms,
                expected.remaining,
                expected.full_ms,
            ), (limits, step)
            if expected.allowed:
                states = list(expected.states)
                stored = [await client.hgetall(k) for k in keys]
                assert [int(s[b"l"]) for s in stored] == [s.level for s in expected.states]
                ttl = await client.pttl(keys[0])
                assert 0 < ttl <= expected.full_ms[0] + 1000
    await client.delete(*keys)
    # The server's clock when none is given.
    got = await take_in_redis(script, keys[:1], (BucketLimit(2, 1),), None)
    assert got.allowed and got.remaining == (1,)
    await client.delete(*keys)
    await client.aclose()


def test_the_write_after_the_burst_gets_429_and_passes_after_retry_after(
    kafka_settings: Settings, app_with: AppFactory
) -> None:
    tenants = {"acme": TenantRateLimits(write_burst=3, write_per_s=1)}
    with app_with(rate_tenants=tenants) as client:
        acme = _key(kafka_settings, client, "acme")
        for i in range(3):
            ok = client.post("/v1/workflows", json=_workflow(i), headers=acme)
            assert ok.status_code == 201, ok.text
            assert ok.headers["ratelimit-limit"] == "3"
            assert ok.headers["ratelimit-remaining"] == str(2 - i)
        refused = client.post("/v1/workflows", json=_workflow(3), headers=acme)
        refused_at = time.monotonic()
        assert refused.status_code == 429, refused.text
        retry = int(refused.headers["retry-after"])
        # Three tokens were taken within well under a second at 1/s: the 4th needs <= 1 s.
        assert retry == 1
        assert refused.headers["ratelimit-remaining"] == "0"
        assert refused.headers["ratelimit-policy"] == '3;w=3;name="write"'
        detail = refused.json()["detail"]
        assert "'write' bucket of tenant 'acme'" in detail
        assert "3 requests in a burst and 1 per second" in detail
        assert "retry in 1 s" in detail
        # Reads are another bucket.
        assert client.get("/v1/workflows", headers=acme).status_code == 200
        passed = eventually(
            lambda: client.post("/v1/workflows", json=_workflow(3), headers=acme),
            timeout=retry + 2,
            what="the refused write to pass once its bucket refilled",
            until=lambda r: r.status_code != 429,
        )
        waited = time.monotonic() - refused_at
        assert passed.status_code == 201, passed.text
        # Not before a token could be there, and not much after Retry-After said.
        assert 0.5 < waited <= retry + 0.5, waited
        metrics = client.get("/metrics").text
        assert 'reflux_api_rate_limited_total{bucket="write"}' in metrics


def test_two_tenants_do_not_share_a_bucket_and_anonymous_calls_take_nothing(
    kafka_settings: Settings, app_with: AppFactory
) -> None:
    with app_with(rate_write_burst=2, rate_write_per_s=0.001) as client:
        acme, globex = (_key(kafka_settings, client, t) for t in ("acme", "globex"))
        began = time.monotonic()
        for i in range(2):
            assert client.post("/v1/workflows", json=_workflow(i), headers=acme).status_code == 201
        refused = client.post("/v1/workflows", json=_workflow(2), headers=acme)
        elapsed = time.monotonic() - began
        assert refused.status_code == 429 and "tenant 'acme'" in refused.json()["detail"]
        # 0.001 tokens/s: a token in 1000 s, less what refilled while these writes ran
        # (ceil(1000 - t) for t <= elapsed; 999 was seen when they took over a second).
        assert math.floor(1000 - elapsed) <= int(refused.headers["retry-after"]) <= 1000
        # globex has its own bucket, full.
        own = client.post("/v1/workflows", json=_workflow(5), headers=globex)
        assert own.status_code == 201 and own.headers["ratelimit-remaining"] == "1"
        # Anonymous and badly authenticated writes are 401 and cost no one a token.
        for headers in ({}, {"Authorization": "Bearer rfx_nope"}):
            for _ in range(3):
                anonymous = client.post("/v1/workflows", json=_workflow(6), headers=headers)
                assert anonymous.status_code == 401
        last = client.post("/v1/workflows", json=_workflow(6), headers=globex)
        assert last.status_code == 201 and last.headers["ratelimit-remaining"] == "0"


def test_each_principal_gets_its_share_of_its_tenant(
    kafka_settings: Settings, app_with: AppFactory
) -> None:
    with app_with(rate_write_burst=4, rate_write_per_s=0.001, rate_principal_share=0.5) as client:
        first, second = (_key(kafka_settings, client, "acme") for _ in range(2))
        for i in range(2):
            assert client.post("/v1/workflows", json=_workflow(i), headers=first).status_code == 201
        refused = client.post("/v1/workflows", json=_workflow(2), headers=first)
        assert refused.status_code == 429
        assert "principal 'api_key:" in refused.json()["detail"]
        assert refused.headers["ratelimit-limit"] == "2"
        # The second key still has its half (and the tenant's bucket has 2 left).
        for i in range(2):
            ok = client.post("/v1/workflows", json=_workflow(10 + i), headers=second)
            assert ok.status_code == 201
        # Now the tenant's bucket is empty too.
        assert client.post("/v1/workflows", json=_workflow(3), headers=second).status_code == 429


def _seconds_to_midnight() -> float:
    now = datetime.now(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    return (midnight - now).total_seconds()


def test_the_daily_quota_refuses_the_next_start_until_midnight_utc(
    kafka_settings: Settings, app_with: AppFactory
) -> None:
    tenants = {"acme": TenantRateLimits(starts_per_day=2)}
    with app_with(rate_tenants=tenants) as client:
        acme, globex = (_key(kafka_settings, client, t) for t in ("acme", "globex"))
        assert client.post("/v1/workflows", json=DEFINITION, headers=acme).status_code == 201
        _project(kafka_settings, client)
        start = {"workflow_id": "greet", "inputs": {}}
        # Refused starts (404, 422) are not counted.
        unknown = client.post("/v1/runs", json={"workflow_id": "nope"}, headers=acme)
        assert unknown.status_code == 404
        bad = client.post("/v1/runs", json={**start, "inputs": {"name": 1}}, headers=acme)
        assert bad.status_code == 422
        for _ in range(2):
            ok = client.post("/v1/runs", json=start, headers=acme)
            assert ok.status_code == 202, ok.text
        refused = client.post("/v1/runs", json=start, headers=acme)
        to_midnight = _seconds_to_midnight()
        assert refused.status_code == 429, refused.text
        retry = int(refused.headers["retry-after"])
        assert to_midnight <= retry <= to_midnight + 2, (retry, to_midnight)
        detail = refused.json()["detail"]
        assert "tenant 'acme' may start 2 runs per UTC day" in detail
        assert "retry after midnight UTC" in detail
        assert refused.headers["ratelimit-policy"] == '2;w=86400;name="starts"'
        # Other writes are not starts; other tenants have their own quota (and workflows).
        assert client.post("/v1/workflows", json=_workflow(1), headers=acme).status_code == 201
        assert client.post("/v1/workflows", json=_workflow(2), headers=globex).status_code == 201
        _project(kafka_settings, client)
        theirs = {"workflow_id": "w2", "inputs": {}}
        assert client.post("/v1/runs", json=theirs, headers=globex).status_code == 202
        # The counter is on the noeviction store and goes an hour after the day ends.
        store = redis.Redis.from_url(kafka_settings.webhook_store_url)
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        key = f"{kafka_settings.topic_prefix}:ratelimit:{{acme}}:starts:{day}"
        assert store.get(key) == b"2"
        assert to_midnight < store.ttl(key) <= to_midnight + 3600 + 2
        assert store.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"


def test_start_webhooks_are_limited_per_workflow_even_without_a_credential(
    kafka_settings: Settings, app_with: AppFactory
) -> None:
    secret = "s3cret-for-tests"
    with app_with(
        rate_hook_burst=2,
        rate_hook_per_s=0.001,
        rate_write_per_s=0.001,
        webhook_secrets={"greet": secret, "other": secret},
    ) as client:
        editor = _key(kafka_settings, client, "acme")
        assert client.post("/v1/workflows", json=DEFINITION, headers=editor).status_code == 201
        _project(kafka_settings, client)

        def hook(workflow: str, i: int) -> Any:
            body = json.dumps({"name": f"n{i}"}).encode()
            path = f"/v1/hooks/{workflow}"
            headers = {
                SIGNATURE_HEADER: sign(secret, "POST", path, body),
                "content-type": "application/json",
            }
            return client.post(path, content=body, headers=headers)

        assert [hook("greet", i).status_code for i in range(2)] == [202, 202]
        refused = hook("greet", 2)
        assert refused.status_code == 429
        assert "'hook' bucket of workflow 'greet'" in refused.json()["detail"]
        # Another workflow's hook has its own bucket (404 here: it is not registered).
        assert hook("other", 3).status_code == 404
        # The tenant's write bucket was not touched by the anonymous hooks.
        ok = client.post("/v1/workflows", json=_workflow(1), headers=editor)
        assert ok.headers["ratelimit-remaining"] == str(2000 - 2)


def test_an_anonymous_start_hook_counts_against_its_workflows_tenant(
    kafka_settings: Settings, app_with: AppFactory
) -> None:
    secret = "s3cret-for-tests"
    tenants = {"acme": TenantRateLimits(starts_per_day=1)}
    with app_with(rate_tenants=tenants, webhook_secrets={"greet": secret}) as client:
        acme = _key(kafka_settings, client, "acme")
        assert client.post("/v1/workflows", json=DEFINITION, headers=acme).status_code == 201
        _project(kafka_settings, client)

        def hook(i: int) -> Any:
            body = json.dumps({"name": f"n{i}"}).encode()
            headers = {
                SIGNATURE_HEADER: sign(secret, "POST", "/v1/hooks/greet", body),
                "content-type": "application/json",
            }
            return client.post("/v1/hooks/greet", content=body, headers=headers)

        assert hook(0).status_code == 202
        refused = hook(1)
        assert refused.status_code == 429, refused.text
        assert "tenant 'acme' may start 1 runs per UTC day" in refused.json()["detail"]


def test_unreachable_redis_fails_open_for_requests_and_closed_for_the_quota(
    kafka_settings: Settings, app_with: AppFactory
) -> None:
    nowhere = "redis://127.0.0.1:1/0"  # nothing listens on port 1: refused at once
    with app_with(
        rate_redis_url=nowhere, rate_quota_redis_url=nowhere, rate_write_burst=1
    ) as client:
        acme = _key(kafka_settings, client, "acme")
        for i in range(3):  # burst 1, but the buckets fail open
            ok = client.post("/v1/workflows", json=_workflow(i), headers=acme)
            assert ok.status_code == 201, ok.text
            assert "ratelimit-remaining" not in ok.headers
        refused = client.post("/v1/runs", json={"workflow_id": "w0"}, headers=acme)
        assert refused.status_code == 503, refused.text
        assert "'starts' limit is unreachable" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "5"
        metrics = client.get("/metrics").text
        # Three registrations and the start (a write too, before its quota).
        assert (
            'reflux_api_rate_store_unavailable_total{bucket="write",policy="open"} 4.0' in metrics
        )
        assert (
            'reflux_api_rate_store_unavailable_total{bucket="starts",policy="closed"} 1.0'
            in metrics
        )


def test_rate_enabled_off_means_no_buckets(kafka_settings: Settings, app_with: AppFactory) -> None:
    with app_with(rate_enabled=False, rate_write_burst=1) as client:
        acme = _key(kafka_settings, client, "acme")
        for i in range(3):
            ok = client.post("/v1/workflows", json=_workflow(i), headers=acme)
            assert ok.status_code == 201 and "ratelimit-limit" not in ok.headers
