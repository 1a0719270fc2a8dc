"""http.request@1.0.0, pure parts: param validation, status and transport-error classification,
body decoding, idempotency headers. The request path itself is tested against a real local
server in tests/integration/test_worker_http_node.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from node_workers.node import NodeContext, NonRetryableNodeError, validate_params
from node_workers.nodes.http_request import (
    DEFAULT_MAX_RESPONSE_BYTES,
    HttpRequestInput,
    HttpRequestNode,
    classify_status,
    classify_transport_error,
    decode_body,
    is_json_content_type,
)


def _params(**raw: Any) -> HttpRequestInput:
    return validate_params(HttpRequestNode(), {"url": "http://127.0.0.1:9/x", **raw})


def test_defaults() -> None:
    params = _params()
    assert params.method == "GET"
    assert params.verify_tls is True
    assert params.max_response_bytes == DEFAULT_MAX_RESPONSE_BYTES == 1024 * 1024
    assert params.expect_status is None
    assert not params.has_json


def test_method_is_case_insensitive_and_checked() -> None:
    assert _params(method="post").method == "POST"
    with pytest.raises(NonRetryableNodeError, match=r"params\.method: Input should be"):
        _params(method="FETCH")


def test_json_body_alias_and_explicit_null() -> None:
    params = _params(method="POST", json=None)
    assert params.has_json and params.json_body is None
    assert _params(method="POST", json={"a": 1}).json_body == {"a": 1}


@pytest.mark.parametrize(
    "raw",
    [
        {"json": {}, "body": "x"},
        {"form": {"a": "b"}, "json": 1},
        {"form": {"a": "b"}, "body": "x"},
    ],
)
def test_at_most_one_body(raw: dict[str, Any]) -> None:
    with pytest.raises(NonRetryableNodeError, match="at most one of json, form, body"):
        _params(method="POST", **raw)


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"timeout_s": 0}, "params.timeout_s"),
        ({"max_response_bytes": -1}, "params.max_response_bytes"),
        ({"expect_status": [200, 700]}, "params.expect_status"),
        ({"expect_status": []}, "params.expect_status"),
        ({"query": {"a": {"nested": 1}}}, "params.query"),
        ({"headers": {"x": 1}}, "params.headers.x"),
        ({"url": "ftp://example.com/"}, "params.url"),
    ],
)
def test_invalid_params_name_their_path(raw: dict[str, Any], path: str) -> None:
    with pytest.raises(NonRetryableNodeError) as info:
        _params(**raw)
    assert info.value.error_class == "ValidationError"
    assert str(info.value).startswith(path + ":"), str(info.value)


def test_query_accepts_scalars_and_lists() -> None:
    assert _params(query={"a": 1, "b": ["x", 2, True], "c": 1.5}).query["b"] == ["x", 2, True]


@pytest.mark.parametrize(
    ("status", "error_class", "retryable"),
    [
        (500, "Http5xx", True),
        (503, "Http5xx", True),
        (599, "Http5xx", True),
        (429, "Http429", True),
        (400, "Http4xx", False),
        (404, "Http4xx", False),
        (422, "Http4xx", False),
    ],
)
def test_status_classification(status: int, error_class: str, retryable: bool) -> None:
    error = classify_status(status, method="GET", url="http://h/p", body_text='{"e": "nope"}')
    assert error is not None
    assert (error.error_class, error.retryable) == (error_class, retryable)
    assert f"HTTP {status}" in str(error) and '{"e": "nope"}' in str(error)


@pytest.mark.parametrize("status", [200, 201, 204, 301, 304])
def test_success_statuses(status: int) -> None:
    assert classify_status(status, method="GET", url="u") is None


def test_expect_status_overrides_the_default_success_range() -> None:
    assert classify_status(404, method="GET", url="u", expect_status=[404]) is None
    unexpected = classify_status(200, method="GET", url="u", expect_status=[201])
    assert unexpected is not None and unexpected.error_class == "UnexpectedStatus"
    assert not unexpected.retryable
    still_5xx = classify_status(502, method="GET", url="u", expect_status=[201])
    assert still_5xx is not None and still_5xx.error_class == "Http5xx"


def test_error_message_excerpt_is_short() -> None:
    error = classify_status(400, method="POST", url="u", body_text="word " * 1000)
    assert error is not None and len(str(error)) < 300 and str(error).endswith("...")


@pytest.mark.parametrize(
    ("exc", "error_class", "retryable"),
    [
        (httpx.ReadTimeout("slow"), "HttpTimeout", True),
        (httpx.ConnectTimeout("slow"), "HttpTimeout", True),
        (httpx.PoolTimeout("slow"), "HttpTimeout", True),
        (TimeoutError(), "HttpTimeout", True),
        (httpx.ConnectError("refused"), "NetworkError", True),
        (httpx.RemoteProtocolError("reset"), "NetworkError", True),
        (httpx.ReadError("eof"), "NetworkError", True),
        (ConnectionResetError(), "NetworkError", True),
        (httpx.TooManyRedirects("loop"), "TooManyRedirects", False),
        (httpx.UnsupportedProtocol("ftp"), "InvalidUrl", False),
        (httpx.DecodingError("gzip"), "ResponseDecodeError", False),
    ],
)
def test_transport_error_classification(
    exc: BaseException, error_class: str, retryable: bool
) -> None:
    error = classify_transport_error(exc, method="GET", url="http://h/")
    assert (error.error_class, error.retryable) == (error_class, retryable)
    assert "GET http://h/" in str(error)


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/problem+json", True),
        ("APPLICATION/JSON", True),
        ("text/plain", False),
        ("text/json-ish", False),
        (None, False),
    ],
)
def test_json_content_types(content_type: str | None, expected: bool) -> None:
    assert is_json_content_type(content_type) is expected


def test_body_decoding() -> None:
    assert decode_body(b'{"a": [1]}', "application/json") == {"a": [1]}
    assert decode_body(b'{"a": [1]}', "text/plain") == '{"a": [1]}'
    assert decode_body(b"not json", "application/json") == "not json"
    assert decode_body(b"", "application/json") == ""
    assert decode_body("caf\u00e9".encode("latin-1"), "text/plain", "latin-1") == "caf\u00e9"
    assert decode_body(b"ok", "text/plain", "no-such-charset") == "ok"


def test_idempotency_key_only_on_unsafe_methods() -> None:
    node = HttpRequestNode()
    ctx = NodeContext("inv-7", "run", "step", 1, idempotency_key="key-7")
    assert "Idempotency-Key" not in node._headers(_params(), ctx)
    assert node._headers(_params(method="POST"), ctx)["Idempotency-Key"] == "key-7"
    assert node._headers(_params(method="DELETE"), ctx)["Idempotency-Key"] == "key-7"
    # A key the workflow sets itself wins.
    own = node._headers(_params(method="PUT", headers={"idempotency-key": "mine"}), ctx)
    assert own == {"idempotency-key": "mine", "X-Reflux-Invocation-Id": "inv-7"}


def test_every_request_names_its_attempt() -> None:
    node = HttpRequestNode()
    ctx = NodeContext("inv-9", "run", "step", 1, idempotency_key="key-9")
    assert node._headers(_params(), ctx)["X-Reflux-Invocation-Id"] == "inv-9"
