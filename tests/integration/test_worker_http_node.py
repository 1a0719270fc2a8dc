"""http.request@1.0.0 against a real local HTTP server (no Kafka)."""

# ruff: noqa: F401, F811  # pytest injects imported fixtures by parameter name

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from node_workers.node import NodeContext, NodeError, validate_params
from node_workers.nodes.http_request import HttpRequestNode, HttpRequestOutput
from tests.integration.http_fixtures import HttpTestServer, http_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def _call(params: dict[str, Any], ctx: NodeContext | None = None) -> HttpRequestOutput:
    async def go() -> HttpRequestOutput:
        node = HttpRequestNode()
        try:
            return await node.execute(
                validate_params(node, params), ctx or NodeContext("inv-1", "run-1", "step", 1)
            )
        finally:
            await node.aclose()

    return asyncio.run(go())


def _error(params: dict[str, Any]) -> NodeError:
    with pytest.raises(NodeError) as info:
        _call(params)
    return info.value


def test_get_decodes_json_and_reports_headers(http_server: HttpTestServer) -> None:
    out = _call({"url": f"{http_server.url}/echo", "query": {"a": 1, "b": ["x", "y"]}})
    assert out.status == 200
    assert out.headers["content-type"] == "application/json"
    assert out.body["method"] == "GET"
    assert out.body["query"] == {"a": ["1"], "b": ["x", "y"]}
    assert out.elapsed_ms > 0
    (request,) = http_server.requests_to("/echo")
    assert request.header("idempotency-key") is None  # safe method: no key
    assert (
        request.header(
            "user-agent",
        )
        == "reflux-worker/1.0"
    )


def test_post_json_sends_the_idempotency_key(http_server: HttpTestServer) -> None:
    ctx = NodeContext("inv-9", "run-1", "step", 2, idempotency_key="idem-9")
    out = _call(
        {
            "url": f"{http_server.url}/echo",
            "method": "POST",
            "json": {"n": 1},
            "headers": {"X-A": "b"},
        },
        ctx,
    )
    assert out.body["json"] == {"n": 1}
    (request,) = http_server.requests_to("/echo")
    assert request.method == "POST"
    assert request.header("idempotency-key") == "idem-9"
    assert request.header("x-a") == "b"
    assert request.header("content-type") == "application/json"


def test_form_and_raw_bodies(http_server: HttpTestServer) -> None:
    form = _call({"url": f"{http_server.url}/echo", "method": "PUT", "form": {"a": "1 2"}})
    assert form.body["body"] == "a=1+2"
    raw = _call({"url": f"{http_server.url}/echo", "method": "PATCH", "body": "plain"})
    assert raw.body["body"] == "plain"


def test_text_body_stays_text(http_server: HttpTestServer) -> None:
    out = _call({"url": f"{http_server.url}/big?bytes=10"})
    assert out.body == "x" * 10


@pytest.mark.parametrize(
    ("code", "error_class", "retryable"),
    [
        (503, "Http5xx", True),
        (500, "Http5xx", True),
        (429, "Http429", True),
        (404, "Http4xx", False),
        (400, "Http4xx", False),
    ],
)
def test_status_errors(
    http_server: HttpTestServer, code: int, error_class: str, retryable: bool
) -> None:
    error = _error({"url": f"{http_server.url}/status/{code}"})
    assert (error.error_class, error.retryable) == (error_class, retryable)
    assert f"HTTP {code}" in str(error) and f"status {code} on request" in str(error)


def test_expect_status_accepts_a_404(http_server: HttpTestServer) -> None:
    out = _call({"url": f"{http_server.url}/status/404", "expect_status": [404]})
    assert out.status == 404 and out.body["status"] == 404


def test_flaky_endpoint_recovers(http_server: HttpTestServer) -> None:
    url = f"{http_server.url}/flaky?key=k1&fail=2"
    assert _error({"url": url}).error_class == "Http5xx"
    assert _error({"url": url}).error_class == "Http5xx"
    assert _call({"url": url}).body == {"key": "k1", "calls": 3}


def test_timeout_is_retryable(http_server: HttpTestServer) -> None:
    error = _error({"url": f"{http_server.url}/slow?ms=2000", "timeout_s": 0.2})
    assert (error.error_class, error.retryable) == ("HttpTimeout", True)


def test_deadline_bounds_the_request(http_server: HttpTestServer) -> None:
    ctx = NodeContext("i", "r", "s", 1, deadline=datetime.now(UTC) + timedelta(milliseconds=200))
    with pytest.raises(NodeError) as info:
        _call({"url": f"{http_server.url}/slow?ms=2000", "timeout_s": 30}, ctx)
    assert info.value.error_class == "HttpTimeout"


def test_connection_refused_is_a_network_error() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago, nobody listens now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = _error({"url": f"http://127.0.0.1:{port}/x", "timeout_s": 2})
    assert (error.error_class, error.retryable) == ("NetworkError", True)


def test_response_too_large(http_server: HttpTestServer) -> None:
    error = _error({"url": f"{http_server.url}/big?bytes=5000", "max_response_bytes": 1000})
    assert (error.error_class, error.retryable) == ("ResponseTooLarge", False)
    ok = _call({"url": f"{http_server.url}/big?bytes=1000", "max_response_bytes": 1000})
    assert len(ok.body) == 1000


def test_redirects(http_server: HttpTestServer) -> None:
    followed = _call({"url": f"{http_server.url}/redirect?to=/echo"})
    assert followed.status == 200 and followed.body["path"] == "/echo"
    kept = _call({"url": f"{http_server.url}/redirect?to=/echo", "follow_redirects": False})
    assert kept.status == 302 and kept.headers["location"] == "/echo"
