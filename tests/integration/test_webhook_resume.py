"""webhook.trigger end to end: the real engine, the API's resume endpoint and Redis.

One engine for the module (transform + webhook.trigger workers, a secret granted from a secrets
folder); every test uses its own run ids, so their mailboxes never meet.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiSettings
from api.signatures import sign
from foundation.settings import Settings
from node_workers.node import NodeContext, RetryableNodeError
from node_workers.nodes import TransformNode
from node_workers.nodes.webhook_trigger import WebhookTriggerInput, WebhookTriggerNode
from node_workers.registry import NodeRegistry
from node_workers.webhooks import (
    MAX_BODY_BYTES,
    Delivery,
    MailboxFullError,
    WebhookMailbox,
    WebhookWaiter,
    mailbox_keys,
)
from tests.integration.engine_fixtures import Harness, assert_replay_equivalent, running_engine
from tests.integration.kafka_fixtures import isolated_kafka
from tests.support.api_auth import key_headers
from tests.support.waiting import eventually

SECRET = "whsec-integration-7f3a"


def approval(workflow_id: str = "approval", **wait: Any) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "inputs": {"order": {"type": "string", "required": True}},
        "steps": [
            {
                "id": "prepare",
                "node": "transform@^1",
                "params": {"expression": "order", "data": {"order": "{{ inputs.order }}"}},
            },
            {
                "id": "wait_for_approval",
                "node": "webhook.trigger@^1",
                "needs": ["prepare"],
                "timeout": "20s",
                "params": {
                    "timeout_s": 15,
                    "secret": "{{ secrets.APPROVAL_HOOK }}",
                    "expect": "approved != null",
                    **wait,
                },
            },
            {
                "id": "finish",
                "node": "transform@^1",
                "needs": ["wait_for_approval"],
                "params": {
                    "expression": "@",
                    "data": {
                        "order": "{{ steps.prepare.output.result }}",
                        "approved": "{{ steps.wait_for_approval.output.payload.approved }}",
                        "by": "{{ steps.wait_for_approval.output.payload.by }}",
                    },
                },
            },
        ],
        "outputs": {"decision": "{{ steps.finish.output.result }}"},
    }


SHORT_WAIT = {
    "id": "short-wait",
    "steps": [
        {
            "id": "wait",
            "node": "webhook.trigger@^1",
            "timeout": "10s",
            "retry": {"max_attempts": 2, "initial_backoff": "100ms"},
            "params": {"timeout_s": 1},
        }
    ],
}


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(
    local_services: Settings,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Settings]:
    """The module's settings: its own topic prefix (every topic of it is deleted at the end of
    the module) and a secrets folder."""
    secrets_dir: Path = tmp_path_factory.mktemp("secrets")
    (secrets_dir / "APPROVAL_HOOK").write_text(SECRET + "\n")
    (secrets_dir / "grants.yaml").write_text("APPROVAL_HOOK: [approval]\n")
    with isolated_kafka(
        local_services, request.node.nodeid, default_partitions=3, secrets_dir=secrets_dir
    ) as isolated:
        yield isolated


@pytest.fixture(scope="module")
def harness(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Harness]:
    # The node gets the engine's settings: the mailbox namespace is the topic prefix, and this
    # test's prefix is not the environment's.
    nodes = NodeRegistry([TransformNode(), WebhookTriggerNode(settings, poll_s=0.2)])
    with running_engine(
        settings, request.node.nodeid, nodes=nodes, client_id="webhook-resume-test"
    ) as harness:
        harness.register(approval())
        harness.register(SHORT_WAIT)
        yield harness


@pytest.fixture(scope="module")
def api(harness: Harness) -> Iterator[TestClient]:
    api_schema = f"{harness.schema}_api"
    api_settings = ApiSettings(
        read_schema=harness.schema, api_schema=api_schema, clickhouse_enabled=False
    )
    headers = key_headers(harness.settings, api_settings)
    with TestClient(create_app(harness.settings, api_settings), headers=headers) as client:
        yield client
    with psycopg.connect(harness.settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{api_schema}" CASCADE')


@pytest.fixture(scope="module")
def rds(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    for key in client.scan_iter(match=f"{settings.topic_prefix}:webhook:*"):
        client.delete(key)
    client.close()


def post(
    api: TestClient,
    run_id: str,
    step_id: str,
    payload: Any,
    *,
    secret: str | None = SECRET,
    **headers: str,
) -> dict[str, Any]:
    body = json.dumps(payload).encode()
    sent = {"content-type": "application/json", **headers}
    if secret is not None:
        sent["X-Reflux-Signature"] = sign(secret, body)
    response = api.post(f"/v1/hooks/runs/{run_id}/steps/{step_id}", content=body, headers=sent)
    assert response.status_code == 202, response.text
    return dict(response.json())


def stored_raw(rds: redis.Redis, key: str) -> list[bytes]:
    return cast(list[bytes], rds.lrange(key, 0, -1))


def wait_taken(rds: redis.Redis, settings: Settings, run_id: str, step_id: str) -> None:
    """Until the waiting attempt took everything from the mailbox and dropped what it refused."""
    keys = mailbox_keys(settings.topic_prefix, run_id, step_id)
    eventually(
        lambda: (rds.llen(keys.mailbox), rds.llen(keys.inflight)),
        10,
        "the waiting step to take every delivery (mailbox, in flight)",
        until=lambda lengths: lengths == (0, 0),
    )


# -- the run resumes ------------------------------------------------------------------------------


def test_a_signed_call_resumes_the_run_and_bad_ones_do_not(
    harness: Harness, api: TestClient, rds: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    run_id = harness.start("approval", {"order": "o-42"})
    harness.wait_step(run_id, "wait_for_approval", "running")

    forged = post(api, run_id, "wait_for_approval", {"approved": True}, secret="guessed")
    unsigned = post(api, run_id, "wait_for_approval", {"approved": True}, secret=None)
    unmet = post(api, run_id, "wait_for_approval", {"note": "no decision yet"})
    assert forged["status"] == unsigned["status"] == unmet["status"] == "accepted"
    # The attempt decides on each delivery as it takes it: all three are refused (its warning
    # per delivery), and none stays in flight (an accepted one would, until its TTL).
    refusals = eventually(
        lambda: [
            r.getMessage()
            for r in caplog.records
            if f"for step wait_for_approval of run {run_id} refused" in r.getMessage()
        ],
        10,
        "the waiting attempt to refuse the forged, unsigned and unmet deliveries",
        until=lambda refused: len(refused) >= 3,
    )
    assert len(refusals) == 3, refusals
    wait_taken(rds, harness.settings, run_id, "wait_for_approval")
    assert harness.steps(run_id)["wait_for_approval"].status == "running"
    assert harness.run(run_id).status == "running"  # type: ignore[union-attr]

    good = post(
        api,
        run_id,
        "wait_for_approval",
        {"approved": True, "by": "ana"},
        **{"Idempotency-Key": "approval-1", "X-GitHub-Event": "review", "Authorization": "x"},
    )
    run = harness.wait(run_id)
    assert run.status == "succeeded", run
    assert run.outputs == {"decision": {"order": "o-42", "approved": True, "by": "ana"}}
    waited = harness.steps(run_id)["wait_for_approval"]
    assert waited.attempt == 1
    output = waited.output
    assert output["payload"] == {"approved": True, "by": "ana"}
    assert output["delivery_id"] == good["delivery_id"] and output["verified"] is True
    assert output["headers"]["idempotency-key"] == "approval-1"
    assert output["headers"]["x-github-event"] == "review"
    assert "authorization" not in output["headers"]
    assert datetime.fromisoformat(output["received_at"]) <= datetime.now(UTC)
    # The step's params keep the placeholder; the secret value is nowhere in the run.
    assert waited.params["secret"] == "{{ secrets.APPROVAL_HOOK }}"
    assert SECRET not in json.dumps([e.payload for e in harness.events(run_id)], default=str)
    assert_replay_equivalent(harness, run_id)


def test_a_call_before_the_step_waits_is_kept(
    harness: Harness, api: TestClient, rds: redis.Redis
) -> None:
    run_id = str(uuid.uuid4())
    first = post(
        api,
        run_id,
        "wait_for_approval",
        {"approved": False, "by": "bo"},
        **{"Idempotency-Key": "early"},
    )
    again = post(
        api, run_id, "wait_for_approval", {"approved": True}, **{"Idempotency-Key": "early"}
    )
    assert (first["status"], first["queued"]) == ("accepted", 1)
    assert (again["status"], again["queued"]) == ("duplicate", 0)
    keys = mailbox_keys(harness.settings.topic_prefix, run_id, "wait_for_approval")
    assert rds.llen(keys.mailbox) == 1 and 0 < rds.ttl(keys.mailbox) <= 7 * 24 * 3600

    harness.start("approval", {"order": "early-bird"}, run_id=run_id)
    run = harness.wait(run_id)
    assert run.status == "succeeded", run
    assert run.outputs == {"decision": {"order": "early-bird", "approved": False, "by": "bo"}}
    assert rds.llen(keys.mailbox) == 0


def test_a_payload_taken_by_a_lost_attempt_resumes_the_next(
    harness: Harness, rds: redis.Redis
) -> None:
    # As if an earlier attempt took the delivery (BLMOVE) and its worker died before reporting.
    run_id = str(uuid.uuid4())
    keys = mailbox_keys(harness.settings.topic_prefix, run_id, "wait_for_approval")
    body = json.dumps({"approved": True, "by": "recovered"}).encode()
    rds.rpush(keys.inflight, Delivery(body, sign(SECRET, body)).encode())
    harness.start("approval", {"order": "o-7"}, run_id=run_id)
    run = harness.wait(run_id)
    assert run.status == "succeeded", run
    assert run.outputs["decision"]["by"] == "recovered"


def test_no_call_fails_the_step_with_webhook_timeout(harness: Harness) -> None:
    run_id = harness.start("short-wait")
    run = harness.wait(run_id, timeout=20)
    assert run.status == "failed" and run.failed_step == "wait"
    step = harness.steps(run_id)["wait"]
    assert step.attempt == 2, "WebhookTimeout is retryable: the retry policy waits again"
    assert step.error is not None
    assert (step.error["error_class"], step.error["retryable"]) == ("WebhookTimeout", True)
    assert f"/v1/hooks/runs/{run_id}/steps/wait" in step.error["message"]


# -- the endpoint ---------------------------------------------------------------------------------


def test_the_endpoint_refuses_what_it_cannot_store(api: TestClient) -> None:
    run_id = str(uuid.uuid4())
    bad_step = api.post(f"/v1/hooks/runs/{run_id}/steps/Bad-Step", json={})
    assert bad_step.status_code == 422
    assert bad_step.json()["detail"][0]["loc"] == ["path", "step_id"]
    not_json = api.post(
        f"/v1/hooks/runs/{run_id}/steps/approve",
        content=b"approved=1",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert not_json.status_code == 422 and not_json.json()["detail"][0]["type"] == "content_type"
    junk = api.post(
        f"/v1/hooks/runs/{run_id}/steps/approve",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    assert junk.status_code == 422 and junk.json()["detail"][0]["type"] == "json_invalid"
    huge = api.post(
        f"/v1/hooks/runs/{run_id}/steps/approve",
        content=b'"' + b"x" * MAX_BODY_BYTES + b'"',
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 413
    spec = api.get("/openapi.json").json()["paths"]
    assert "/v1/hooks/runs/{run_id}/steps/{step_id}" in spec
    assert "/v1/hooks/{workflow_id}" in spec


# -- the mailbox and the node on Redis, without the engine ----------------------------------------


def test_mailbox_bounds_and_order(settings: Settings, rds: redis.Redis) -> None:
    mailbox = WebhookMailbox.from_settings(settings, max_queued=2)
    run_id = str(uuid.uuid4())
    try:
        ids = [mailbox.deliver(run_id, "s", Delivery(b"1")).delivery_id for _ in range(2)]
        with pytest.raises(MailboxFullError, match="mailbox is full"):
            mailbox.deliver(run_id, "s", Delivery(b"3"), idempotency_key="k")
        # The refused call did not burn its idempotency key.
        keys = mailbox_keys(settings.topic_prefix, run_id, "s")
        rds.lpop(keys.mailbox)
        assert not mailbox.deliver(run_id, "s", Delivery(b"3"), idempotency_key="k").duplicate
        stored = [Delivery.decode(raw).delivery_id for raw in stored_raw(rds, keys.mailbox)]
        assert stored[0] == ids[1] and len(stored) == 2
    finally:
        mailbox.close()


def _ctx(run_id: str, step_id: str, deadline_s: float | None = None) -> NodeContext:
    deadline = None if deadline_s is None else datetime.now(UTC) + timedelta(seconds=deadline_s)
    return NodeContext(
        invocation_id=str(uuid.uuid4()),
        run_id=run_id,
        step_id=step_id,
        attempt=1,
        deadline=deadline,
    )


def test_node_takes_the_oldest_acceptable_call_and_recovers_in_flight(
    settings: Settings, rds: redis.Redis
) -> None:
    run_id = str(uuid.uuid4())
    keys = mailbox_keys(settings.topic_prefix, run_id, "s")
    older = Delivery(b'{"n": 1}', received_at=datetime(2025, 1, 1, tzinfo=UTC))
    rds.rpush(keys.inflight, older.encode())  # an earlier attempt's, never reported
    rds.rpush(keys.mailbox, Delivery(b'{"n": 0}').encode(), Delivery(b'{"n": 2}').encode())
    node = WebhookTriggerNode(settings, poll_s=0.1)
    params = WebhookTriggerInput(timeout_s=2, expect="n > `0`")

    async def go() -> None:
        try:
            ctx = _ctx(run_id, "s")
            first = await node.execute(params, ctx)
            assert (first.payload, first.received_at) == ({"n": 1}, older.received_at)
            assert ctx.metrics["recovered"] == 1 and ctx.metrics["rejected"] == 0
            # Until an attempt's result is accepted, the next attempt gets the same payload.
            again = await node.execute(params, _ctx(run_id, "s"))
            assert again.delivery_id == first.delivery_id
        finally:
            await node.aclose()

    asyncio.run(go())
    assert [json.loads(Delivery.decode(r).body) for r in stored_raw(rds, keys.mailbox)] == [
        {"n": 0},
        {"n": 2},
    ]


def test_node_drops_refused_calls_and_keeps_waiting(settings: Settings, rds: redis.Redis) -> None:
    run_id = str(uuid.uuid4())
    keys = mailbox_keys(settings.topic_prefix, run_id, "s")
    accepted = Delivery(b'{"n": 2}', sign(SECRET, b'{"n": 2}'))
    rds.rpush(
        keys.mailbox,
        b"not a delivery",
        Delivery(b'{"n": 5}', sign("wrong", b'{"n": 5}')).encode(),
        Delivery(b'{"n": 0}', sign(SECRET, b'{"n": 0}')).encode(),
        accepted.encode(),
    )
    node = WebhookTriggerNode(settings, poll_s=0.1)
    params = WebhookTriggerInput(timeout_s=2, secret=SECRET, expect="n > `0`")
    ctx = _ctx(run_id, "s")

    async def go() -> Any:
        try:
            return await node.execute(params, ctx)
        finally:
            await node.aclose()

    output = asyncio.run(go())
    assert (output.payload, output.verified) == ({"n": 2}, True)
    assert ctx.metrics["rejected"] == 3
    assert rds.llen(keys.mailbox) == 0
    assert rds.lrange(keys.inflight, 0, -1) == [accepted.encode()]


def test_node_times_out_before_the_deadline(settings: Settings) -> None:
    node = WebhookTriggerNode(settings, poll_s=0.2)

    async def go() -> tuple[float, RetryableNodeError]:
        started = time.monotonic()
        try:
            # The deadline (1.5 s) is shorter than timeout_s: the node stops 0.5 s before it.
            await node.execute(WebhookTriggerInput(timeout_s=30), _ctx(str(uuid.uuid4()), "s", 1.5))
        except RetryableNodeError as exc:
            return time.monotonic() - started, exc
        finally:
            await node.aclose()
        raise AssertionError("expected WebhookTimeout")

    elapsed, error = asyncio.run(go())
    assert error.error_class == "WebhookTimeout" and "none arrived" in str(error)
    assert 0.8 <= elapsed < 1.5


def test_waiter_recover_keeps_the_order(settings: Settings, rds: redis.Redis) -> None:
    keys = mailbox_keys(settings.topic_prefix, str(uuid.uuid4()), "s")
    rds.rpush(keys.inflight, b"a", b"b")
    rds.rpush(keys.mailbox, b"c")
    waiter = WebhookWaiter(settings.redis_url, settings.topic_prefix)

    async def go() -> int:
        try:
            return await waiter.recover(keys)
        finally:
            await waiter.aclose()

    assert asyncio.run(go()) == 2
    assert rds.lrange(keys.mailbox, 0, -1) == [b"a", b"b", b"c"]
    assert rds.llen(keys.inflight) == 0
