"""openai.chat@1.0.0 against a local OpenAI-compatible server: the product code talks to it
through the real ``openai`` client; only ``base_url`` differs from production."""

# ruff: noqa: F401, F811  # pytest injects imported fixtures by parameter name

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from node_workers.attempt import run_attempt
from node_workers.node import NodeContext, NodeError, validate_params
from node_workers.nodes.openai_chat import OpenAIChatNode, OpenAIChatOutput
from node_workers.records import build_trace
from schemas.models import NodeInvocation, StepRef, TraceStatus
from tests.integration.openai_fixtures import OpenAITestServer, openai_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "summarize the run please"},
]


def _params(server: OpenAITestServer, **raw: Any) -> dict[str, Any]:
    return {
        "base_url": server.base_url,
        "api_key": server.api_key,
        "model": "gpt-test",
        "messages": MESSAGES,
        "timeout_s": 5,
        **raw,
    }


def _call(params: dict[str, Any], ctx: NodeContext | None = None) -> OpenAIChatOutput:
    async def go() -> OpenAIChatOutput:
        node = OpenAIChatNode()
        try:
            return await node.execute(
                validate_params(node, params), ctx or NodeContext("inv-1", "run-1", "ask", 1)
            )
        finally:
            await node.aclose()

    return asyncio.run(go())


def _error(params: dict[str, Any], ctx: NodeContext | None = None) -> NodeError:
    with pytest.raises(NodeError) as info:
        _call(params, ctx)
    return info.value


def test_chat_returns_content_usage_and_cost(openai_server: OpenAITestServer) -> None:
    ctx = NodeContext("inv-1", "run-1", "ask", 1)
    out = _call(_params(openai_server), ctx)
    assert out.content == "echo: summarize the run please"
    assert out.model == "gpt-test-test"  # as the server names it
    assert out.finish_reason == "stop"
    assert out.json_value is None
    # prompt: 3 + 4 words, completion: 5 words (the fixture counts words as tokens)
    assert out.usage.model_dump() == {
        "prompt_tokens": 7,
        "completion_tokens": 5,
        "total_tokens": 12,
    }
    assert ctx.cost_tokens == 12
    assert ctx.metrics["prompt_tokens"] == 7 and ctx.metrics["completion_tokens"] == 5
    (call,) = openai_server.calls
    assert call.path == "/v1/chat/completions"
    assert call.headers["authorization"] == f"Bearer {openai_server.api_key}"
    assert call.body["model"] == "gpt-test"
    assert call.body["messages"] == MESSAGES
    assert "temperature" not in call.body and "max_tokens" not in call.body
    assert out.model_dump(by_alias=True)["json"] is None


def test_sampling_params_and_length_finish(openai_server: OpenAITestServer) -> None:
    out = _call(_params(openai_server, temperature=0, max_tokens=2))
    assert out.content == "echo: summarize"
    assert out.finish_reason == "length"
    (call,) = openai_server.calls
    assert call.body["temperature"] == 0 and call.body["max_tokens"] == 2


def test_json_object_is_parsed(openai_server: OpenAITestServer) -> None:
    out = _call(_params(openai_server, response_format="json_object"))
    assert out.json_value == {"echo": "summarize the run please"}
    assert openai_server.calls[0].body["response_format"] == {"type": "json_object"}


def test_json_object_that_is_not_json_is_retryable(openai_server: OpenAITestServer) -> None:
    openai_server.reply = "Sure! Here is your JSON: {"
    error = _error(_params(openai_server, response_format="json_object"))
    assert (error.error_class, error.retryable) == ("LlmInvalidJson", True)


def test_missing_usage_costs_nothing(openai_server: OpenAITestServer) -> None:
    openai_server.omit_usage = True
    ctx = NodeContext("inv-1", "run-1", "ask", 1)
    out = _call(_params(openai_server), ctx)
    assert out.usage.total_tokens == 0 and ctx.cost_tokens is None


@pytest.mark.parametrize(
    ("status", "error_class", "retryable"),
    [
        (429, "LlmRateLimited", True),
        (500, "LlmServerError", True),
        (503, "LlmServerError", True),
        (400, "LlmRequestError", False),
    ],
)
def test_status_errors_are_classified_and_not_retried_by_the_client(
    openai_server: OpenAITestServer, status: int, error_class: str, retryable: bool
) -> None:
    openai_server.fail_next(status, times=3)
    ctx = NodeContext("inv-1", "run-1", "ask", 1)
    error = _error(_params(openai_server), ctx)
    assert (error.error_class, error.retryable) == (error_class, retryable)
    assert f"HTTP {status}" in str(error) and f"injected failure {status}" in str(error)
    assert len(openai_server.calls) == 1  # max_retries=0: REFLUX's retry policy owns retries
    if status in {429, 503}:
        assert ctx.metrics["retry_after_s"] == 2


def test_recovers_on_the_next_attempt(openai_server: OpenAITestServer) -> None:
    openai_server.fail_next(503)
    assert _error(_params(openai_server)).error_class == "LlmServerError"
    assert _call(_params(openai_server)).content.startswith("echo:")


def test_wrong_key_is_an_auth_error_without_the_key(openai_server: OpenAITestServer) -> None:
    error = _error(_params(openai_server, api_key="sk-wrong-key-9876"))
    assert (error.error_class, error.retryable) == ("LlmAuth", False)
    assert "HTTP 401" in str(error) and "sk-wrong-key-9876" not in str(error)


def test_unknown_model_is_a_request_error(openai_server: OpenAITestServer) -> None:
    error = _error(_params(openai_server, model="missing-model"))
    assert (error.error_class, error.retryable) == ("LlmRequestError", False)
    assert "does not exist" in str(error)


def test_slow_server_times_out(openai_server: OpenAITestServer) -> None:
    openai_server.delay_s = 2
    error = _error(_params(openai_server, timeout_s=0.3))
    assert (error.error_class, error.retryable) == ("LlmUnavailable", True)
    assert len(openai_server.calls) == 1


def test_deadline_bounds_the_request(openai_server: OpenAITestServer) -> None:
    openai_server.delay_s = 2
    ctx = NodeContext("i", "r", "s", 1, deadline=datetime.now(UTC) + timedelta(milliseconds=300))
    error = _error(_params(openai_server, timeout_s=30), ctx)
    assert error.error_class == "LlmUnavailable"


def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as sock:  # free a moment ago, nobody listens now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = _error(
        {
            "base_url": f"http://127.0.0.1:{port}/v1",
            "api_key": "k-123",
            "model": "m",
            "messages": MESSAGES,
            "timeout_s": 2,
        }
    )
    assert (error.error_class, error.retryable) == ("LlmUnavailable", True)


def test_one_node_serves_many_calls_on_one_pool(openai_server: OpenAITestServer) -> None:
    async def go() -> list[OpenAIChatOutput]:
        node = OpenAIChatNode()
        try:
            ctx = NodeContext("inv", "run", "ask", 1)
            calls = [
                node.execute(
                    validate_params(
                        node,
                        _params(openai_server, messages=[{"role": "user", "content": f"q{i}"}]),
                    ),
                    ctx,
                )
                for i in range(5)
            ]
            return await asyncio.gather(*calls)
        finally:
            await node.aclose()

    outs = asyncio.run(go())
    assert sorted(o.content for o in outs) == [f"echo: q{i}" for i in range(5)]


def test_through_the_worker_attempt_tokens_become_the_trace_cost(
    openai_server: OpenAITestServer,
) -> None:
    node = OpenAIChatNode()
    invocation = NodeInvocation(
        run_id="run-1",
        seq=3,
        invocation_id="inv-1",
        attempt=1,
        workflow_id="wf",
        workflow_version=1,
        step=StepRef(step_id="ask", node="openai.chat", node_version="1.0.0"),
        params=_params(openai_server, response_format="json_object"),
        idempotency_key="idem-1",
    )

    async def go() -> Any:
        try:
            return await run_attempt(node, invocation)
        finally:
            await node.aclose()

    attempt = asyncio.run(go())
    assert attempt.status is TraceStatus.OK, attempt.error
    assert attempt.output["json"] == {"echo": "summarize the run please"}
    assert attempt.output["usage"]["total_tokens"] == 12
    trace = build_trace(node, invocation, attempt)
    assert trace.cost_tokens == 12
    assert trace.metrics["prompt_tokens"] == 7 and trace.metrics["completion_tokens"] == 5
