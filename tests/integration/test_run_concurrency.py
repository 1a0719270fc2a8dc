"""Concurrent-run limits per workflow (ADR 0052) on the real engine: the API admits starts
against a sorted set per workflow on the noeviction Redis and asks the read model which
admitted runs have finished. Runs are held in flight by a ``webhook.trigger`` step that waits
(90 s, far beyond the test) and finished by cancelling them through the API.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiSettings, TenantRateLimits
from api.ratelimit import concurrency
from api.ratelimit.concurrency import concurrency_key
from tests.integration.engine_fixtures import Harness
from tests.support.api_auth import key_headers
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def held(workflow_id: str, limit: int | None) -> dict[str, Any]:
    """One step that waits for a webhook call, so its runs stay in flight until cancelled."""
    definition: dict[str, Any] = {
        "id": workflow_id,
        "inputs": {"n": {"type": "integer", "required": False}},
        "steps": [
            {
                "id": "wait",
                "node": "webhook.trigger@^1",
                "timeout": "100s",
                "params": {"timeout_s": 90},
            }
        ],
    }
    if limit is not None:
        definition["max_concurrent_runs"] = limit
    return definition


def _api(harness: Harness, **fields: Any) -> TestClient:
    settings = ApiSettings(
        read_schema=harness.schema,
        api_schema=f"{harness.schema}_api",
        poll_interval_s=0.05,
        clickhouse_enabled=False,
        **fields,
    )
    headers = key_headers(harness.settings, settings, name="concurrency-admin")
    return TestClient(create_app(harness.settings, settings), headers=headers)


@pytest.fixture
def api(harness: Harness) -> Iterator[TestClient]:
    with _api(harness) as client:
        yield client


def _register(api: TestClient, definition: dict[str, Any]) -> None:
    response = api.post("/v1/workflows", json=definition)
    assert response.status_code == 201, response.text
    eventually(
        lambda: api.get(f"/v1/workflows/{definition['id']}").status_code,
        15,
        f"workflow {definition['id']} in the projection",
        until=lambda status: status == 200,
    )


def _start(api: TestClient, workflow_id: str, key: str | None = None) -> Any:
    headers = {"Idempotency-Key": key} if key else {}
    return api.post("/v1/runs", json={"workflow_id": workflow_id}, headers=headers)


def _status(api: TestClient, run_id: str) -> str | None:
    response = api.get(f"/v1/runs/{run_id}")
    return str(response.json()["status"]) if response.status_code == 200 else None


def _members(harness: Harness, workflow_id: str) -> set[str]:
    store = redis.Redis.from_url(harness.settings.webhook_store_url, decode_responses=True)
    key = concurrency_key(harness.settings.topic_prefix, workflow_id)
    return {str(m) for m in store.zrange(key, 0, -1)}


def test_the_third_start_is_refused_until_a_run_finishes(harness: Harness, api: TestClient) -> None:
    _register(api, held("held", 2))
    first = _start(api, "held", "first")
    second = _start(api, "held", "second")
    assert (first.status_code, second.status_code) == (202, 202), (first.text, second.text)
    run_a, run_b = first.json()["run_id"], second.json()["run_id"]

    refused = _start(api, "held", "third")
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == "5"
    detail = refused.json()["detail"]
    assert "Concurrent-run limit reached" in detail
    assert "workflow 'held' allows 2 runs in flight at once and has 2" in detail
    # A start webhook is an API start too.
    hook = api.post("/v1/hooks/held", json={"n": 1})
    assert hook.status_code == 429, hook.text
    assert "workflow 'held' allows 2" in hook.json()["detail"]

    # An idempotent replay of an admitted start is that start, not a third run.
    replay = _start(api, "held", "second")
    assert replay.status_code == 202, replay.text
    assert replay.json()["run_id"] == run_b
    # ... also once the scheduler has it (the read model knows the run id).
    eventually(lambda: _status(api, run_b), 30, "run b running", until=lambda s: s == "running")
    assert _start(api, "held", "second").status_code == 202
    assert _members(harness, "held") == {run_a, run_b}

    # One run finishes (cancelled, projected): the next start passes.
    eventually(lambda: _status(api, run_a), 30, "run a running", until=lambda s: s == "running")
    cancel = api.post(f"/v1/runs/{run_a}/cancel", json={"reason": "make room"})
    assert cancel.status_code == 202, cancel.text
    eventually(lambda: _status(api, run_a), 30, "run a cancelled", until=lambda s: s == "cancelled")
    # The set of a full workflow is checked against the read model at most once a second
    # (rate_concurrency_recheck_s): a client retries after Retry-After, as this one does.
    third = eventually(
        lambda: _start(api, "held", "third"),
        15,
        "the start after a run finished",
        until=lambda response: response.status_code == 202,
    )
    run_c = third.json()["run_id"]
    assert _members(harness, "held") == {run_b, run_c}
    assert _start(api, "held", "fourth").status_code == 429

    # Refusals are counted; the set lives on the noeviction Redis.
    refused_total = re.search(
        r"^reflux_api_run_concurrency_refused_total ([0-9.]+)$", api.get("/metrics").text, re.M
    )
    assert refused_total is not None and float(refused_total.group(1)) >= 3
    store = redis.Redis.from_url(harness.settings.webhook_store_url)
    assert store.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"

    # Workflows without a limit are not limited, and keep no set.
    _register(api, held("free", None))
    assert all(_start(api, "free").status_code == 202 for _ in range(3))
    assert _members(harness, "free") == set()

    for run_id in (run_b, run_c):  # do not leave waiting steps behind
        api.post(f"/v1/runs/{run_id}/cancel")


def test_a_start_that_never_appears_stops_counting_after_the_grace_period(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two run ids per read-model query, so the check has to go on to a second chunk.
    monkeypatch.setattr(concurrency, "CHUNK", 2)
    with _api(harness, rate_concurrency_recheck_s=0) as api:
        _grace_period(harness, api)


def _grace_period(harness: Harness, api: TestClient) -> None:
    _register(api, held("triple", 3))
    store = redis.Redis.from_url(harness.settings.webhook_store_url)
    key = concurrency_key(harness.settings.topic_prefix, "triple")
    finished = _start(api, "triple").json()["run_id"]
    eventually(lambda: _status(api, finished), 30, "running", until=lambda s: s == "running")
    api.post(f"/v1/runs/{finished}/cancel")
    eventually(lambda: _status(api, finished), 30, "cancelled", until=lambda s: s == "cancelled")
    now_ms = int(time.time() * 1000)
    # Admitted 5 minutes ago, never seen by the read model: still counted (grace 600 s). They
    # are older than the cancelled run, so it is only found in the second chunk.
    store.zadd(key, {"ghost-a": now_ms - 300_000, "ghost-b": now_ms - 290_000})
    assert _members(harness, "triple") == {"ghost-a", "ghost-b", finished}
    ok = _start(api, "triple")
    assert ok.status_code == 202, ok.text
    running = ok.json()["run_id"]
    assert _members(harness, "triple") == {"ghost-a", "ghost-b", running}
    refused = _start(api, "triple")
    assert refused.status_code == 429, refused.text
    assert "allows 3 runs in flight at once and has 3" in refused.json()["detail"]
    # Admitted 11 minutes ago and never seen (the scheduler rejected it): no longer counted.
    store.zadd(key, {"ghost-a": now_ms - 660_000})
    again = _start(api, "triple")
    assert again.status_code == 202, again.text
    assert _members(harness, "triple") == {"ghost-b", running, again.json()["run_id"]}
    for run_id in (running, again.json()["run_id"]):
        api.post(f"/v1/runs/{run_id}/cancel")


def test_the_tenant_ceiling_limits_workflows_that_declare_more_or_nothing(
    harness: Harness,
) -> None:
    with _api(
        harness,
        rate_max_concurrent_runs=1000,
        rate_tenants={"default": TenantRateLimits(max_concurrent_runs=1)},
    ) as api:
        _register(api, held("roomy", 5))
        # A start webhook is admitted under the run id it answers (the one its run will have).
        first = api.post("/v1/hooks/roomy", json={"n": 1})
        assert first.status_code == 202, first.text
        assert _members(harness, "roomy") == {first.json()["run_id"]}
        refused = _start(api, "roomy")
        assert refused.status_code == 429
        assert "allows 1 run in flight" in refused.json()["detail"]
        api.post(f"/v1/runs/{first.json()['run_id']}/cancel")


def test_a_bad_limit_is_refused_at_registration_with_its_path(api: TestClient) -> None:
    response = api.post("/v1/workflows", json=held("bad", 0))
    assert response.status_code == 422, response.text
    [issue] = response.json()["detail"]
    assert issue["loc"][-1] == "max_concurrent_runs", issue
    assert "expected 1..100000" in issue["msg"]
    response = api.post(
        "/v1/workflows",
        content=json.dumps({**held("bad", None), "max_concurrent_runs": True}),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422, response.text


def test_unreachable_redis_refuses_limited_starts_with_503(harness: Harness) -> None:
    nowhere = "redis://127.0.0.1:1/0"  # nothing listens on port 1: refused at once
    with _api(harness, rate_quota_redis_url=nowhere, rate_starts_per_day=None) as api:
        _register(api, held("limited", 3))
        refused = _start(api, "limited")
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "5"
        detail = refused.json()["detail"]
        assert "concurrent-run limit of workflow 'limited' is unreachable" in detail
        assert "fails closed" in detail
        assert "127.0.0.1:1" not in detail  # no store address in answers
        # A workflow without a limit does not need that Redis.
        _register(api, held("unlimited", None))
        ok = _start(api, "unlimited")
        assert ok.status_code == 202, ok.text
        api.post(f"/v1/runs/{ok.json()['run_id']}/cancel")


def test_a_start_kafka_does_not_accept_is_taken_back(harness: Harness) -> None:
    definition = held("big", 1)
    definition["inputs"]["blob"] = {"type": "string", "required": False}
    # The body limit raised above Kafka's record limit, so the publish is what refuses.
    with _api(harness, max_body_bytes=4 * 1024 * 1024) as api:
        _register(api, definition)
        too_big = api.post(
            "/v1/runs", json={"workflow_id": "big", "inputs": {"blob": "x" * 2_000_000}}
        )
        assert too_big.status_code == 413, too_big.text
        assert _members(harness, "big") == set()
        ok = _start(api, "big")
        assert ok.status_code == 202, ok.text
        assert _members(harness, "big") == {ok.json()["run_id"]}
        api.post(f"/v1/runs/{ok.json()['run_id']}/cancel")
