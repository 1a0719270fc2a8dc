"""webhook.trigger end to end: the real engine, the API's resume endpoint and Redis.

One engine for the module (transform + webhook.trigger workers, a secret granted from a secrets
folder); every test uses its own run ids, so their mailboxes never meet. Redis is the one the
settings name for webhooks (``Settings.webhook_store_url``: the noeviction instance).
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
from api.signatures import callback_key, callback_path, sign, sign_callback
from foundation.settings import Settings
from foundation.signatures import SignatureError, parse_signature, replay_id, verify
from node_workers.node import NodeContext, RetryableNodeError
from node_workers.nodes import TransformNode
from node_workers.nodes.webhook_trigger import WebhookTriggerInput, WebhookTriggerNode
from node_workers.registry import NodeRegistry
from node_workers.webhooks import (
    MAX_BODY_BYTES,
    Delivery,
    MailboxFullError,
    NotWaitingError,
    ReplayedError,
    WebhookMailbox,
    WebhookWaiter,
    mailbox_keys,
)
from tests.integration.engine_fixtures import Harness, assert_replay_equivalent, running_engine
from tests.integration.kafka_fixtures import isolated_kafka
from tests.support.api_auth import key_headers
from tests.support.waiting import eventually, eventually_async

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
                "timeout": "100s",
                "params": {
                    "timeout_s": 90,  # long: a loaded machine must not end the wait mid-test
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
    (secrets_dir / "grants.yaml").write_text(  # sent nowhere: the waiting node only checks a MAC
        "APPROVAL_HOOK: {hosts: [], grants: [{workflow: approval, versions: [1]}]}\n"
    )
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
    client = redis.Redis.from_url(settings.webhook_store_url)
    yield client
    # The store is the ledger's instance (a million keys): large SCAN pages, once per module.
    for key in client.scan_iter(match=f"{settings.topic_prefix}:webhook*", count=10_000):
        client.delete(key)
    client.close()


def post(
    api: TestClient,
    run_id: str,
    step_id: str,
    payload: Any,
    *,
    secret: str | None = SECRET,
    status: int = 202,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST a call signed for this run's step (the way a sender does) and check the status."""
    body = json.dumps(payload).encode()
    sent = {"content-type": "application/json", **(headers or {})}
    if secret is not None:
        sent["Reflux-Signature"] = sign_callback(secret, run_id, step_id, body)
    response = api.post(callback_path(run_id, step_id), content=body, headers=sent)
    assert response.status_code == status, response.text
    return dict(response.json())


def stored_raw(rds: redis.Redis, key: str) -> list[bytes]:
    return cast(list[bytes], rds.lrange(key, 0, -1))


def written(
    rds: redis.Redis,
    settings: Settings,
    run_id: str,
    step_id: str,
    signatures: list[str] = [],  # noqa: B006  # read only
    body: bytes = b"",
) -> list[str]:
    """The keys of the step's mailbox space that exist (the waiting record aside, which the node
    owns): what a refused call must not create. ``signatures`` sent with ``body`` name their
    replay entries. By name, not SCAN: the store is the ledger's instance (a million keys)."""
    keys = mailbox_keys(settings.topic_prefix, run_id, step_id)
    path = callback_path(run_id, step_id)
    names = [keys.mailbox, keys.inflight, keys.bytes]
    for signature in signatures:
        try:
            timestamp, _ = parse_signature(signature)
        except SignatureError:
            continue
        names.append(keys.replay(replay_id(timestamp, "POST", path, body)))
    return [name for name in names if rds.exists(name)]


def wait_waiting(rds: redis.Redis, settings: Settings, run_id: str, step_id: str) -> int:
    """Until an attempt of the step announced its wait; its attempt number."""
    keys = mailbox_keys(settings.topic_prefix, run_id, step_id)
    record = eventually(
        lambda: cast(dict[bytes, bytes], rds.hgetall(keys.waiting)),
        20,
        f"step {step_id} of run {run_id} to announce its wait",
    )
    return int(record[b"attempt"])


def wait_taken(rds: redis.Redis, settings: Settings, run_id: str, step_id: str) -> None:
    """Until the waiting attempt took everything from the mailbox and dropped what it refused."""
    keys = mailbox_keys(settings.topic_prefix, run_id, step_id)
    eventually(
        lambda: (rds.llen(keys.mailbox), rds.llen(keys.inflight)),
        10,
        "the waiting step to take every delivery (mailbox, in flight)",
        until=lambda lengths: lengths == (0, 0),
    )


# -- the store ------------------------------------------------------------------------------------


def test_the_webhook_store_never_evicts_and_is_not_the_cache(
    settings: Settings, rds: redis.Redis
) -> None:
    # A delivery through the API's own client lands on the server the test inspects.
    run_id = str(uuid.uuid4())
    _announce(rds, settings, run_id, "s", attempt=1)
    mailbox = WebhookMailbox.from_settings(settings)
    try:
        mailbox.deliver(run_id, "s", Delivery(b"{}"), "k-1", attempt=1)
    finally:
        mailbox.close()
    keys = mailbox_keys(settings.topic_prefix, run_id, "s")
    assert rds.exists(keys.mailbox, keys.bytes, keys.seen("k-1"), keys.waiting) == 4
    policy = cast(dict[str, str], rds.config_get("maxmemory-policy"))
    assert policy["maxmemory-policy"] == "noeviction"
    cache = redis.Redis.from_url(settings.redis_url)
    try:
        cache_policy = cast(dict[str, str], cache.config_get("maxmemory-policy"))
        assert cache_policy["maxmemory-policy"] == "allkeys-lru"
        # Different servers, not two databases of one (eviction is per server).
        assert rds.config_get("port") != cache.config_get("port")
        assert cache.exists(keys.mailbox) == 0
    finally:
        cache.close()


# -- the run resumes ------------------------------------------------------------------------------


def test_a_signed_call_resumes_the_run_and_bad_ones_are_refused(
    harness: Harness, api: TestClient, rds: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    settings = harness.settings
    run_id = harness.start("approval", {"order": "o-42"})
    step = "wait_for_approval"
    assert wait_waiting(rds, settings, run_id, step) == 1
    path = callback_path(run_id, step)
    body = json.dumps({"approved": True, "by": "ana"}).encode()
    now = int(time.time())
    other_run = str(uuid.uuid4())

    sent: list[str] = []

    def refused(signature: str | None, *, to: str = path, **extra: str) -> str:
        headers = {"content-type": "application/json", **extra}
        if signature is not None:
            headers["Reflux-Signature"] = signature
            sent.append(signature)
        response = api.post(to, content=body, headers=headers)
        assert response.status_code == 401, response.text
        return str(response.json()["detail"])

    assert "(missing)" in refused(None)
    assert "(malformed)" in refused("v1=abc")
    assert "(wrong)" in refused(sign_callback("guessed", run_id, step, body))
    assert "(wrong)" in refused(sign(SECRET, "POST", path, body))  # the secret, not the key
    assert "(too_old)" in refused(sign_callback(SECRET, run_id, step, body, timestamp=now - 301))
    legacy = "sha256=" + "0" * 64
    assert "(legacy)" in refused(None, **{"X-Reflux-Signature": legacy})
    # Mis-addressed: valid for another run's step, sent to this one's path.
    assert "(wrong)" in refused(sign_callback(SECRET, other_run, step, body))
    # Nothing of the refused calls was written, and the step still waits.
    assert written(rds, settings, run_id, step, sent, body) == []
    harness.wait_step(run_id, step, "running")
    waiting = harness.steps(run_id)[step]
    assert (waiting.status, waiting.attempt) == ("running", 1), waiting.error

    # A signed call the condition refuses: stored, then dropped by the node; sent again as it
    # is, it is a replay.
    unmet_body = json.dumps({"note": "no decision yet"}).encode()
    unmet = sign_callback(SECRET, run_id, step, unmet_body)
    headers = {"content-type": "application/json", "Reflux-Signature": unmet}
    first = api.post(path, content=unmet_body, headers=headers)
    assert first.status_code == 202 and first.json()["attempt"] == 1, first.text
    again = api.post(path, content=unmet_body, headers=headers)
    assert again.status_code == 401 and "(replayed)" in again.json()["detail"], again.text
    keys = mailbox_keys(settings.topic_prefix, run_id, step)
    unmet_t, _ = parse_signature(unmet)
    replay_ttl = int(rds.ttl(keys.replay(replay_id(unmet_t, "POST", path, unmet_body))))
    assert 0 < replay_ttl <= 301, "kept until the signature is too old anyway"
    eventually(
        lambda: [
            r.getMessage()
            for r in caplog.records
            if f"for step {step} of run {run_id} refused" in r.getMessage()
        ],
        10,
        "the waiting attempt to refuse the delivery that does not meet `expect`",
    )
    wait_taken(rds, settings, run_id, step)
    assert harness.run(run_id).status == "running"  # type: ignore[union-attr]

    good = post(
        api,
        run_id,
        step,
        {"approved": True, "by": "ana"},
        headers={"Idempotency-Key": "approval-1", "X-GitHub-Event": "review", "Authorization": "x"},
    )
    run = harness.wait(run_id)
    assert run.status == "succeeded", run
    assert run.outputs == {"decision": {"order": "o-42", "approved": True, "by": "ana"}}
    waited = harness.steps(run_id)[step]
    assert waited.attempt == 1
    output = waited.output
    assert output["payload"] == {"approved": True, "by": "ana"}
    assert output["delivery_id"] == good["delivery_id"] and output["verified"] is True
    assert output["headers"]["idempotency-key"] == "approval-1"
    assert output["headers"]["x-github-event"] == "review"
    assert "authorization" not in output["headers"]
    assert datetime.fromisoformat(output["received_at"]) <= datetime.now(UTC)
    # The step's params keep the placeholder; the secret value is nowhere in the run, nor in
    # Redis (the waiting record held the derived key, and is gone now).
    assert waited.params["secret"] == "{{ secrets.APPROVAL_HOOK }}"
    assert SECRET not in json.dumps([e.payload for e in harness.events(run_id)], default=str)
    eventually(
        lambda: rds.exists(keys.waiting), 10, "the wait's record to go", until=lambda n: n == 0
    )
    for key in (keys.mailbox, keys.inflight):
        assert all(SECRET.encode() not in raw for raw in stored_raw(rds, key))
    # The step no longer waits: a new, correctly signed call is refused and stores nothing.
    before = [rds.llen(keys.mailbox), rds.llen(keys.inflight), rds.get(keys.bytes)]
    late_body = json.dumps({"approved": False}).encode()
    late_signature = sign_callback(SECRET, run_id, step, late_body)
    late = api.post(
        path,
        content=late_body,
        headers={"content-type": "application/json", "Reflux-Signature": late_signature},
    )
    assert late.status_code == 409 and "no attempt of it waits" in late.json()["detail"]
    assert [rds.llen(keys.mailbox), rds.llen(keys.inflight), rds.get(keys.bytes)] == before
    late_t, _ = parse_signature(late_signature)
    assert not rds.exists(keys.replay(replay_id(late_t, "POST", path, late_body)))
    assert_replay_equivalent(harness, run_id)


def test_calls_for_a_step_that_is_not_waiting_are_refused_and_change_nothing(
    harness: Harness, api: TestClient, rds: redis.Redis
) -> None:
    settings = harness.settings
    # A run that does not exist (yet): refused, not kept for later.
    unknown = str(uuid.uuid4())
    early = post(api, unknown, "wait_for_approval", {"approved": True}, status=409)
    assert "nothing was stored" in early["detail"]
    assert written(rds, settings, unknown, "wait_for_approval") == []

    # A running run: another step of it (not a webhook wait), and another run's waiting step
    # with a call signed for this run (mis-addressed to a run that waits too).
    run_a = harness.start("approval", {"order": "a"})
    run_b = harness.start("approval", {"order": "b"})
    wait_waiting(rds, settings, run_a, "wait_for_approval")
    wait_waiting(rds, settings, run_b, "wait_for_approval")
    harness.wait_step(run_b, "wait_for_approval", "running")
    post(api, run_a, "prepare", {"approved": True}, status=409)
    body = json.dumps({"approved": True, "by": "mallory"}).encode()
    for_a = sign_callback(SECRET, run_a, "wait_for_approval", body)
    to_b = api.post(
        callback_path(run_b, "wait_for_approval"),
        content=body,
        headers={"content-type": "application/json", "Reflux-Signature": for_a},
    )
    assert to_b.status_code == 401 and "(wrong)" in to_b.json()["detail"], to_b.text
    assert written(rds, settings, run_b, "wait_for_approval", [for_a], body) == []
    assert written(rds, settings, run_a, "prepare") == []
    assert harness.steps(run_b)["wait_for_approval"].status == "running"
    # Sent where it belongs, the same call resumes run A only.
    to_a = api.post(
        callback_path(run_a, "wait_for_approval"),
        content=body,
        headers={"content-type": "application/json", "Reflux-Signature": for_a},
    )
    assert to_a.status_code == 202, to_a.text
    assert harness.wait(run_a).outputs["decision"]["by"] == "mallory"
    assert harness.steps(run_b)["wait_for_approval"].status == "running"
    post(api, run_b, "wait_for_approval", {"approved": False, "by": "bo"})
    assert harness.wait(run_b).outputs["decision"]["by"] == "bo"


def test_a_payload_taken_by_a_lost_attempt_resumes_the_next(
    harness: Harness, rds: redis.Redis
) -> None:
    # As if an earlier attempt took the delivery (BLMOVE) and its worker died before reporting.
    run_id = str(uuid.uuid4())
    step = "wait_for_approval"
    keys = mailbox_keys(harness.settings.topic_prefix, run_id, step)
    body = json.dumps({"approved": True, "by": "recovered"}).encode()
    signature = sign_callback(SECRET, run_id, step, body)
    rds.rpush(keys.inflight, Delivery(body, signature, path=callback_path(run_id, step)).encode())
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


def _announce(
    rds: redis.Redis, settings: Settings, run_id: str, step_id: str, attempt: int
) -> None:
    keys = mailbox_keys(settings.topic_prefix, run_id, step_id)
    rds.hset(keys.waiting, mapping={"attempt": str(attempt), "key": ""})
    rds.expire(keys.waiting, 60)


def test_mailbox_bounds_and_order(settings: Settings, rds: redis.Redis) -> None:
    mailbox = WebhookMailbox.from_settings(settings, max_queued=2)
    run_id = str(uuid.uuid4())
    keys = mailbox_keys(settings.topic_prefix, run_id, "s")
    try:
        with pytest.raises(NotWaitingError, match="stopped waiting"):
            mailbox.deliver(run_id, "s", Delivery(b"0"), attempt=1)
        _announce(rds, settings, run_id, "s", attempt=2)
        with pytest.raises(NotWaitingError):  # another attempt waits now
            mailbox.deliver(run_id, "s", Delivery(b"0"), attempt=1)
        assert not rds.exists(keys.mailbox, keys.bytes)
        ids = [
            mailbox.deliver(run_id, "s", Delivery(b"1"), attempt=2).delivery_id for _ in range(2)
        ]
        with pytest.raises(MailboxFullError, match="mailbox is full"):
            mailbox.deliver(run_id, "s", Delivery(b"3"), idempotency_key="k", attempt=2)
        # The refused call did not burn its idempotency key.
        rds.lpop(keys.mailbox)
        third = mailbox.deliver(run_id, "s", Delivery(b"3"), idempotency_key="k", attempt=2)
        assert not third.duplicate
        stored = [Delivery.decode(raw).delivery_id for raw in stored_raw(rds, keys.mailbox)]
        assert stored[0] == ids[1] and len(stored) == 2
    finally:
        mailbox.close()


def test_mailbox_bytes_are_bounded_and_replays_refused(
    settings: Settings, rds: redis.Redis
) -> None:
    one = Delivery(b"x" * 1000)
    mailbox = WebhookMailbox.from_settings(settings, max_bytes=3 * len(one.encode()))
    run_id = str(uuid.uuid4())
    keys = mailbox_keys(settings.topic_prefix, run_id, "s")
    _announce(rds, settings, run_id, "s", attempt=1)
    try:
        for _ in range(3):
            mailbox.deliver(run_id, "s", Delivery(b"x" * 1000), attempt=1)
        with pytest.raises(MailboxFullError, match="bytes"):
            mailbox.deliver(run_id, "s", Delivery(b"x" * 1000), attempt=1)
        assert rds.llen(keys.mailbox) == 3
        # The node's drop frees the bytes of what it refused.
        waiter = WebhookWaiter(settings.webhook_store_url, settings.topic_prefix)

        async def take_and_drop() -> None:
            try:
                raw = await waiter.take(keys, 1)
                assert raw is not None
                await waiter.drop(keys, raw)
            finally:
                await waiter.aclose()

        asyncio.run(take_and_drop())
        mailbox.deliver(run_id, "s", Delivery(b"x" * 1000), attempt=1)

        body = b"{}"
        signature = sign_callback(SECRET, run_id, "s", body)
        key = callback_key(SECRET, run_id, "s")
        path = callback_path(run_id, "s")
        verified = verify(signature, key, "POST", path, body)
        small = WebhookMailbox.from_settings(settings)
        try:
            _announce(rds, settings, run_id, "r", attempt=1)
            small.deliver(run_id, "r", Delivery(body), attempt=1, verified=verified)
            with pytest.raises(ReplayedError, match="delivered before"):
                small.deliver(run_id, "r", Delivery(body), attempt=1, verified=verified)
        finally:
            small.close()
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


def test_node_announces_its_wait_and_drops_refused_calls(
    settings: Settings, rds: redis.Redis
) -> None:
    run_id = str(uuid.uuid4())
    keys = mailbox_keys(settings.topic_prefix, run_id, "s")
    path = callback_path(run_id, "s")

    def signed(body: bytes, secret: str = SECRET, to: str = run_id) -> Delivery:
        return Delivery(body, sign_callback(secret, to, "s", body), path=callback_path(to, "s"))

    accepted = signed(b'{"n": 2}')
    refused = [
        b"not a delivery",
        signed(b'{"n": 5}', "wrong").encode(),
        signed(b'{"n": 6}', to="other-run").encode(),  # written into this mailbox by hand
        Delivery(b'{"n": 7}', sign(SECRET, "POST", path, b'{"n": 7}'), path=path).encode(),
        signed(b'{"n": 0}').encode(),
    ]
    node = WebhookTriggerNode(settings, poll_s=0.1)
    params = WebhookTriggerInput(timeout_s=5, secret=SECRET, expect="n > `0`")
    ctx = _ctx(run_id, "s")

    async def go() -> Any:
        try:
            waiting = asyncio.create_task(node.execute(params, ctx))
            record = await eventually_async(
                lambda: cast(dict[bytes, bytes], rds.hgetall(keys.waiting)),
                5,
                "the node to announce its wait",
            )
            # The attempt and the key derived for this run's step; never the secret itself.
            assert record == {
                b"attempt": b"1",
                b"key": callback_key(SECRET, run_id, "s").encode(),
            }
            assert 0 < int(rds.ttl(keys.waiting)) <= 5 + 5
            rds.rpush(keys.mailbox, *refused, accepted.encode())
            return await waiting
        finally:
            await node.aclose()

    output = asyncio.run(go())
    assert (output.payload, output.verified) == ({"n": 2}, True)
    assert ctx.metrics["rejected"] == len(refused)
    assert rds.llen(keys.mailbox) == 0
    assert rds.lrange(keys.inflight, 0, -1) == [accepted.encode()]
    assert not rds.exists(keys.waiting), "the attempt withdrew its record when it stopped"


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
    waiter = WebhookWaiter(settings.webhook_store_url, settings.topic_prefix)

    async def go() -> int:
        try:
            return await waiter.recover(keys)
        finally:
            await waiter.aclose()

    assert asyncio.run(go()) == 2
    assert rds.lrange(keys.mailbox, 0, -1) == [b"a", b"b", b"c"]
    assert rds.llen(keys.inflight) == 0
