"""The SDK client's own logic: where the API key comes from, the requests it builds, and the
typed errors of the API's answers (an in-process transport answering as the API does; the
client against the real API and engine is tests/integration/test_sdk_client.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from reflux.sdk import (
    AsyncRefluxClient,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    RefluxApiError,
    RefluxClient,
    Unauthorized,
    WaitTimeoutError,
    Workflow,
)

Seen = list[httpx.Request]


def _transport(seen: Seen, status: int = 200, body: Any = None, **headers: str) -> Any:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body if body is not None else {}, headers=headers)

    return httpx.MockTransport(handle)


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("REFLUX_API_KEY", raising=False)
    monkeypatch.setenv("REFLUX_API_KEY_FILE", str(tmp_path / "absent"))


def test_key_from_argument_then_environment_then_the_cli_key_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def sent_auth(**kwargs: Any) -> str | None:
        seen: Seen = []
        with RefluxClient("http://api.test", transport=_transport(seen), **kwargs) as client:
            client.get_run("r1")
        auth: str | None = seen[0].headers.get("authorization")
        return auth

    assert sent_auth() is None
    key_file = tmp_path / "api-key"
    key_file.write_text("rfx_from_file\n")
    monkeypatch.setenv("REFLUX_API_KEY_FILE", str(key_file))
    assert sent_auth() == "Bearer rfx_from_file"
    monkeypatch.setenv("REFLUX_API_KEY", "rfx_from_env")
    assert sent_auth() == "Bearer rfx_from_env"
    assert sent_auth(api_key="rfx_arg") == "Bearer rfx_arg"


def test_base_url_from_reflux_api_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFLUX_API_URL", "http://elsewhere.test:9")
    seen: Seen = []
    with RefluxClient(api_key="k", transport=_transport(seen)) as client:
        client.list_runs(status="failed", limit=5)
    assert str(seen[0].url) == "http://elsewhere.test:9/v1/runs?status=failed&limit=5"


def test_requests_carry_what_the_api_expects() -> None:
    seen: Seen = []
    body = {"run_id": "r1", "command_id": "c", "workflow_id": "w", "version": 1}
    with RefluxClient("http://api.test", api_key="k", transport=_transport(seen, body=body)) as c:
        c.start_run("w", {"n": 1}, idempotency_key="k-1", wait_ms=500)
        c.signal("r1", "approval", {"ok": True}, reason="why", wait_ms=100)
        c.redrive("r1", "fetch", downstream=True)
        c.register_workflow("id: w\nsteps: []\n", wait_visible=0)
        wf = Workflow("w")
        wf.step("a", "condition@^1", params={"value": True})
        c.register_workflow(wf, wait_visible=0)
    start, signal, redrive, yaml_text, built = seen
    assert start.headers["idempotency-key"] == "k-1"
    assert json.loads(start.content) == {"workflow_id": "w", "inputs": {"n": 1}, "wait_ms": 500}
    assert signal.url.path == "/v1/runs/r1/signals/approval" and signal.url.params["wait_ms"]
    assert json.loads(signal.content) == {"reason": "why", "payload": {"ok": True}}
    assert redrive.url.path == "/v1/runs/r1/steps/fetch/redrive"
    assert json.loads(redrive.content) == {"downstream": True}
    assert yaml_text.headers["content-type"] == "application/yaml"
    assert json.loads(built.content) == wf.to_definition()


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, Unauthorized), (403, Forbidden), (404, NotFound), (409, Conflict), (500, None)],
)
def test_statuses_become_typed_errors(status: int, error: type[RefluxApiError] | None) -> None:
    seen: Seen = []
    transport = _transport(seen, status, {"detail": "no way"})
    client = RefluxClient("http://api.test", api_key="k", transport=transport)
    with client, pytest.raises(RefluxApiError) as raised:
        client.cancel("r1")
    assert type(raised.value) is (error or RefluxApiError)
    assert raised.value.status == status and raised.value.detail == "no way"
    assert "POST /v1/runs/r1/cancel" in str(raised.value)


def test_rate_limited_has_retry_after_and_invalid_has_field_paths() -> None:
    seen: Seen = []
    limited = _transport(seen, 429, {"detail": "slow down"}, **{"Retry-After": "7"})
    client = RefluxClient("http://api.test", api_key="k", transport=limited)
    with client, pytest.raises(RateLimited) as raised:
        client.start_run("w")
    assert raised.value.retry_after == 7.0
    detail = [{"loc": ["body", "steps", 1, "needs", 0], "msg": "unknown step 'x'", "type": "t"}]
    invalid = _transport(seen, 422, {"detail": detail})
    client = RefluxClient("http://api.test", api_key="k", transport=invalid)
    with client, pytest.raises(Invalid) as bad:
        client.register_workflow({"id": "w"})
    assert bad.value.paths == ["body.steps[1].needs[0]"]
    assert "body.steps[1].needs[0]: unknown step 'x'" in str(bad.value)


def test_async_stream_parses_server_sent_events() -> None:
    events = [{"seq": 0, "event_type": "RunStarted"}, {"seq": 1, "event_type": "RunSucceeded"}]
    sse = ": ping\n\n" + "".join(
        f"id: {e['seq']}\nevent: {e['event_type']}\ndata: {json.dumps(e)}\n\n" for e in events
    )

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/runs/r1/stream"
        return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})

    async def collect() -> list[dict[str, Any]]:
        transport = httpx.MockTransport(handle)
        async with AsyncRefluxClient("http://api.test", api_key="k", transport=transport) as c:
            return [e async for e in c.stream_events("r1")]

    assert asyncio.run(collect()) == events
    with RefluxClient("http://api.test", api_key="k", transport=httpx.MockTransport(handle)) as c:
        assert list(c.stream_events("r1")) == events


def test_wait_run_gives_up_with_the_run_as_far_as_it_got() -> None:
    seen: Seen = []
    running = _transport(seen, 200, {"run_id": "r1", "status": "running"})
    client = RefluxClient("http://api.test", api_key="k", transport=running)
    with client, pytest.raises(WaitTimeoutError) as raised:
        client.wait_run("r1", timeout=0.2, poll=0.05)
    assert raised.value.run == {"run_id": "r1", "status": "running"}
    assert "run r1 is still running after 0.2s" in str(raised.value)
    assert len(seen) >= 2  # it polled
