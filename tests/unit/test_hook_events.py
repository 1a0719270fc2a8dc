"""api.hook_events: which webhook requests are CloudEvents, and the 422s of bad ones."""

from __future__ import annotations

import json
from typing import Any

import pytest

from api.errors import RequestInvalidError
from api.hook_events import hook_cloud_event

STRUCTURED = {"content-type": "application/cloudevents+json"}
BINARY = {
    "ce-specversion": "1.0",
    "ce-id": "d-1",
    "ce-source": "https://shop.example/orders",
    "ce-type": "com.shop.order.created",
    "content-type": "application/json",
}


def event(**overrides: Any) -> bytes:
    base = {"specversion": "1.0", "id": "d-1", "source": "/shop", "type": "t", "data": {"a": 1}}
    base.update(overrides)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def refused(headers: dict[str, str], body: bytes, key: str | None = None) -> dict[str, Any]:
    with pytest.raises(RequestInvalidError) as caught:
        hook_cloud_event(headers, body, key)
    (detail,) = caught.value.detail
    assert isinstance(detail, dict)
    return detail


def test_plain_json_is_not_a_cloud_event() -> None:
    assert hook_cloud_event({"content-type": "application/json"}, b"{}", None) is None
    assert hook_cloud_event({}, b"{}", "key-1") is None


def test_structured() -> None:
    found = hook_cloud_event(
        {"content-type": "application/cloudevents+json; charset=utf-8"}, event(), None
    )
    assert found is not None
    assert (found.payload, found.key, found.inputs_loc) == ({"a": 1}, "/shop:d-1", ("body", "data"))


def test_binary() -> None:
    found = hook_cloud_event(BINARY, b'{"order": 42}', "https://shop.example/orders:d-1")
    assert found is not None
    assert found.payload == {"order": 42}
    assert found.key == "https://shop.example/orders:d-1"  # an equal Idempotency-Key is fine
    assert found.inputs_loc == ("body",)


def test_binary_header_values_are_utf8_as_sent() -> None:
    # Starlette hands header bytes over as latin-1 text.
    source = "/boutique/é".encode().decode("latin-1")
    found = hook_cloud_event({**BINARY, "ce-source": source}, b"{}", None)
    assert found is not None and found.event.source == "/boutique/é"


def test_locations_of_refusals() -> None:
    missing = refused(STRUCTURED, event(id=None))
    assert missing["loc"] == ["body", "id"] and "'id', but it is missing" in missing["msg"]
    assert missing["type"] == "cloudevent_invalid"
    assert refused(STRUCTURED, b"{nope")["loc"] == ["body"]
    assert refused(STRUCTURED, event(data={"x": "\u0000"}))["loc"] == ["body", "data"]
    headers = {k: v for k, v in BINARY.items() if k != "ce-type"}
    assert refused(headers, b"{}")["loc"] == ["header", "ce-type"]
    assert refused({**BINARY, "ce-specversion": "0.3"}, b"{}")["loc"] == [
        "header",
        "ce-specversion",
    ]
    xml = refused({**BINARY, "content-type": "application/xml"}, b"<a/>")
    assert xml["loc"] == ["header", "content-type"]
    assert refused(BINARY, b"not json")["loc"] == ["body"]


def test_an_idempotency_key_that_contradicts_the_event() -> None:
    detail = refused(BINARY, b"{}", key="other")
    assert detail["loc"] == ["header", "Idempotency-Key"]
    assert "'https://shop.example/orders:d-1'" in detail["msg"]
