"""openai.chat@1.0.0, pure parts: params validation and the classification of the ``openai``
client's errors. Calls run against a local OpenAI-compatible server in
tests/integration/test_node_openai.py."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import pytest

from node_workers.node import NonRetryableNodeError, validate_params
from node_workers.nodes.openai_chat import (
    DEFAULT_BASE_URL,
    OpenAIChatInput,
    OpenAIChatNode,
    classify_llm_error,
)

URL = "http://llm.internal/v1"
KEY = "sk-live-abcdef123456"


def _params(**raw: Any) -> OpenAIChatInput:
    base = {"api_key": KEY, "model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}
    return validate_params(OpenAIChatNode(), {**base, **raw})


def test_defaults() -> None:
    params = _params()
    assert str(params.base_url) == DEFAULT_BASE_URL
    assert params.response_format == "text"
    assert params.timeout_s == 60
    assert params.temperature is None and params.max_tokens is None
    assert params.messages[0].model_dump(exclude_none=True) == {"role": "user", "content": "hi"}


def test_flags_and_key_hygiene() -> None:
    node = OpenAIChatNode()
    assert (node.cacheable, node.side_effects) == (True, False)
    assert KEY not in repr(_params())
    manifest = node.manifest()
    assert manifest["input_schema"]["properties"]["api_key"]["writeOnly"] is True
    assert "json" in manifest["output_schema"]["properties"]


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"messages": []}, "params.messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "params.messages[0].role"),
        ({"messages": [{"role": "user"}]}, "params.messages[0].content"),
        ({"messages": [{"role": "user", "content": "x", "extra": 1}]}, "params.messages[0].extra"),
        ({"temperature": 3}, "params.temperature"),
        ({"max_tokens": 0}, "params.max_tokens"),
        ({"timeout_s": 0}, "params.timeout_s"),
        ({"model": ""}, "params.model"),
        ({"api_key": ""}, "params.api_key"),
        ({"base_url": "ftp://llm/v1"}, "params.base_url"),
        ({"response_format": "yaml"}, "params.response_format"),
    ],
)
def test_invalid_params_name_their_path(raw: dict[str, Any], path: str) -> None:
    with pytest.raises(NonRetryableNodeError) as info:
        _params(**raw)
    assert info.value.error_class == "ValidationError"
    assert str(info.value).startswith(path + ":"), str(info.value)


def _request() -> httpx2.Request:
    return httpx2.Request("POST", f"{URL}/chat/completions")


def _status(
    cls: type[openai.APIStatusError], status: int, message: str = "nope"
) -> openai.APIStatusError:
    response = httpx2.Response(status, request=_request())
    return cls(message, response=response, body=None)


@pytest.mark.parametrize(
    ("exc", "error_class", "retryable"),
    [
        (openai.APITimeoutError(request=_request()), "LlmUnavailable", True),
        (openai.APIConnectionError(request=_request()), "LlmUnavailable", True),
        (_status(openai.RateLimitError, 429), "LlmRateLimited", True),
        (_status(openai.InternalServerError, 500), "LlmServerError", True),
        (_status(openai.InternalServerError, 503), "LlmServerError", True),
        (_status(openai.APIStatusError, 502), "LlmServerError", True),
        (_status(openai.ConflictError, 409), "LlmServerError", True),
        (_status(openai.APIStatusError, 408), "LlmUnavailable", True),
        (_status(openai.AuthenticationError, 401), "LlmAuth", False),
        (_status(openai.PermissionDeniedError, 403), "LlmAuth", False),
        (_status(openai.BadRequestError, 400), "LlmRequestError", False),
        (_status(openai.NotFoundError, 404), "LlmRequestError", False),
        (_status(openai.UnprocessableEntityError, 422), "LlmRequestError", False),
        (
            openai.APIResponseValidationError(httpx2.Response(200, request=_request()), None),
            "LlmServerError",
            True,
        ),
        (openai.OpenAIError("something else"), "LlmRequestError", False),
    ],
)
def test_error_classification(exc: BaseException, error_class: str, retryable: bool) -> None:
    error = classify_llm_error(exc, base_url=URL, api_key=KEY)
    assert (error.error_class, error.retryable) == (error_class, retryable)
    assert URL in str(error)


def test_status_errors_name_the_status_and_the_server_message() -> None:
    error = classify_llm_error(_status(openai.RateLimitError, 429, "Slow down"), base_url=URL)
    assert str(error) == f"HTTP 429 from {URL}: Slow down"


def test_the_api_key_never_reaches_the_message() -> None:
    exc = _status(openai.AuthenticationError, 401, f"Incorrect API key provided: {KEY}")
    error = classify_llm_error(exc, base_url=URL, api_key=KEY)
    assert KEY not in str(error) and "***" in str(error)


def test_long_server_messages_are_cut() -> None:
    error = classify_llm_error(_status(openai.BadRequestError, 400, "word " * 500), base_url=URL)
    assert len(str(error)) < 400 and str(error).endswith("...")
