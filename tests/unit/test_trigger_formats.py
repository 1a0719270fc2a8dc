"""processors.triggers.formats: every accepted shape, and every reason a record is refused."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from processors.triggers.formats import (
    HTTP_BINDING,
    TriggerFormatError,
    cloud_event_from_headers,
    decode_trigger,
    trigger_format,
)
from processors.triggers.mapping import run_id_for_trigger, start_command
from schemas import encode
from schemas.errors import MalformedRecordError, UnknownSchemaError
from schemas.models import Trigger

NOW = datetime(2026, 12, 6, 18, 0, tzinfo=UTC)
TYPE_MAP = {"com.shop.order.created": "order_quote"}

Headers = list[tuple[str, bytes]]


def decode(
    value: bytes | None, headers: Headers | None = None, key: bytes | None = b"order-42"
) -> tuple[str, Trigger]:
    return decode_trigger(value, headers or [], key=key, received_at=NOW, type_map=TYPE_MAP)


def refused(value: bytes | None, headers: Headers | None = None) -> TriggerFormatError:
    with pytest.raises(TriggerFormatError) as caught:
        decode(value, headers)
    return caught.value


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "urn:shop",
        "type": "com.shop.order.updated",
        "subject": "order_quote",
        "datacontenttype": "application/json",
        "data": {"city": "Lyon", "quantity": 12},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def as_json(document: Any) -> bytes:
    return json.dumps(document).encode()


def binary_headers(**overrides: str | None) -> Headers:
    attributes: dict[str, str | None] = {
        "ce_specversion": "1.0",
        "ce_id": "evt-1",
        "ce_source": "urn:shop",
        "ce_type": "com.shop.order.updated",
        "ce_subject": "order_quote",
        "content-type": "application/json",
    }
    attributes.update(overrides)
    return [(k, v.encode()) for k, v in attributes.items() if v is not None]


# -- the four shapes ------------------------------------------------------------------------------
def test_avro_triggers_decode_as_before() -> None:
    trigger = Trigger(
        source="orders", source_key="k", workflow_id="w", payload={"n": 1}, idempotency_key="e1"
    )
    shape, decoded = decode(encode(trigger))
    assert shape == "avro"
    assert decoded == trigger


def test_structured_cloud_event_by_content_type_header() -> None:
    shape, trigger = decode(
        as_json(event()), [("content-type", b"application/cloudevents+json; charset=utf-8")]
    )
    assert shape == "cloudevent-structured"
    assert (trigger.source, trigger.idempotency_key) == ("urn:shop", "evt-1")
    assert trigger.workflow_id == "order_quote"
    assert trigger.payload == {"city": "Lyon", "quantity": 12}
    assert trigger.source_key == "order-42"  # the Kafka key
    command = start_command(trigger)
    assert command.run_id == run_id_for_trigger("urn:shop", "evt-1")
    assert command.idempotency_key == "urn:shop:evt-1"
    assert command.inputs == {"city": "Lyon", "quantity": 12}
    assert command.tenant is None  # the workflow's tenant, decided by the scheduler


def test_structured_cloud_event_without_any_header() -> None:
    shape, trigger = decode(as_json(event()), key=None)
    assert shape == "cloudevent-structured"
    assert trigger.source_key == "order_quote"  # no key: the workflow id


def test_binary_cloud_event_from_ce_headers() -> None:
    shape, trigger = decode(b'{"city": "Lyon"}', binary_headers())
    assert shape == "cloudevent-binary"
    assert (trigger.source, trigger.idempotency_key, trigger.workflow_id) == (
        "urn:shop",
        "evt-1",
        "order_quote",
    )
    assert trigger.payload == {"city": "Lyon"}


def test_binary_header_names_are_case_insensitive_and_the_last_repeat_wins() -> None:
    headers = [("CE_SPECVERSION", b"1.0"), *binary_headers()[1:], ("ce_id", b"evt-2")]
    assert decode(b"{}", headers)[1].idempotency_key == "evt-2"


def test_a_redelivered_cloud_event_is_the_same_trigger() -> None:
    first = decode(as_json(event()))[1]
    again = decode(as_json(event()))[1]
    assert first == again  # event_id and occurred_at included: nothing random
    binary = decode(b'{"city": "Lyon", "quantity": 12}', binary_headers())[1]
    assert start_command(binary).run_id == start_command(first).run_id  # same source + id


def test_plain_json_trigger() -> None:
    document = {
        "source": "orders-system",
        "source_key": "order-42",
        "workflow_id": "order_quote",
        "workflow_version": 2,
        "payload": {"city": "Lyon"},
        "idempotency_key": "order-42-created",
    }
    shape, trigger = decode(as_json(document))
    assert shape == "json"
    assert trigger.model_dump(include=set(document)) == document
    assert start_command(trigger).run_id == run_id_for_trigger("orders-system", "order-42-created")
    assert decode(as_json(document))[1] == trigger


def test_plain_json_trigger_defaults() -> None:
    document = {"source": "s", "workflow_id": "w", "idempotency_key": "k"}
    trigger = decode(as_json(document))[1]
    assert (trigger.source_key, trigger.workflow_version, trigger.payload) == ("order-42", None, {})
    assert decode(as_json(document), key=None)[1].source_key == "w"
    assert decode(b'  \n{"source": "s", "workflow_id": "w", "idempotency_key": "k"}')[0] == "json"


# -- CloudEvent data ------------------------------------------------------------------------------
def test_type_map_wins_over_subject() -> None:
    trigger = decode(as_json(event(type="com.shop.order.created", subject="order-42")))[1]
    assert trigger.workflow_id == "order_quote"
    unmapped = decode(as_json(event(subject=None, type="com.shop.order.created")))[1]
    assert unmapped.workflow_id == "order_quote"


def test_data_shapes() -> None:
    assert decode(as_json(event(data=[1, 2])))[1].payload == [1, 2]
    assert start_command(decode(as_json(event(data=[1, 2])))[1]).inputs == {"payload": [1, 2]}
    no_data = {k: v for k, v in event().items() if k != "data"}
    assert decode(as_json(no_data))[1].payload == {}
    text = event(datacontenttype="text/plain", data="hello")
    assert decode(as_json(text))[1].payload == "hello"
    encoded = base64.b64encode(b'{"a": 1}').decode()
    assert decode(as_json(event(data=None, data_base64=encoded)))[1].payload == {"a": 1}
    assert decode(as_json(event(datacontenttype="application/vnd.x+json")))[1].payload == {
        "city": "Lyon",
        "quantity": 12,
    }
    assert decode(b"hello", binary_headers(**{"content-type": "text/plain"}))[1].payload == "hello"
    assert decode(b"[1]", binary_headers(**{"content-type": None}))[1].payload == [1]
    assert decode(None, binary_headers())[1].payload == {}  # binary mode, no data
    assert decode(b"", binary_headers())[1].payload == {}


def test_time_becomes_occurred_at() -> None:
    trigger = decode(as_json(event(time="2026-12-01T10:00:00Z")))[1]
    assert trigger.occurred_at == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert decode(as_json(event()))[1].occurred_at == NOW


def test_extension_attributes_are_allowed() -> None:
    assert decode(as_json(event(traceparent="00-abc-01", partitionkey="p")))[0] == (
        "cloudevent-structured"
    )


def test_http_binding_spells_headers_with_a_dash() -> None:
    headers = {
        "ce-specversion": b"1.0",
        "ce-id": b"1",
        "ce-source": b"/s",
        "ce-type": b"t",
        "content-type": b"application/json",
    }
    parsed = cloud_event_from_headers(headers, b'{"x": 1}', HTTP_BINDING)
    assert (parsed.idempotency_key, parsed.payload, parsed.mode) == ("/s:1", {"x": 1}, "binary")
    with pytest.raises(TriggerFormatError, match="ce-type header"):
        cloud_event_from_headers({**headers, "ce-type": b""}, b"{}", HTTP_BINDING)


# -- dead-letter reasons --------------------------------------------------------------------------


@pytest.mark.parametrize("attribute", ["specversion", "id", "source", "type"])
def test_structured_missing_required_attribute(attribute: str) -> None:
    document = {k: v for k, v in event().items() if k != attribute}
    headers = [("content-type", b"application/cloudevents+json")]
    error = refused(as_json(document), headers)
    assert error.field == attribute
    assert f"required attribute {attribute!r}, but it is missing" in str(error)


@pytest.mark.parametrize("attribute", ["id", "source", "type"])
def test_binary_missing_required_header(attribute: str) -> None:
    error = refused(b"{}", binary_headers(**{f"ce_{attribute}": None}))
    assert error.field == attribute
    assert f"required ce_{attribute} header, but it is missing" in str(error)


def test_wrong_specversion() -> None:
    error = refused(as_json(event(specversion="0.3")))
    assert error.field == "specversion"
    assert "Expected CloudEvents specversion '1.0'" in str(error) and "'0.3'" in str(error)
    assert "ce_specversion header" in str(refused(b"{}", binary_headers(ce_specversion="2.0")))


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"id": ""}, "id", "to be non-empty"),
        ({"id": 7}, "id", "'id' to be a string, but got a number (7)"),
        ({"source": "a\nb"}, "source", "without control characters"),
        ({"subject": ""}, "subject", "non-empty when present"),
        ({"time": "yesterday"}, "time", "RFC 3339"),
        ({"time": "2026-12-01T10:00:00"}, "time", "with a time zone"),
        ({"data_base64": "AAAA"}, "data", "has both"),
        ({"data": None, "data_base64": "***"}, "data_base64", "to be base64"),
        ({"data": None, "data_base64": 5}, "data_base64", "base64 string"),
        ({"datacontenttype": "application/xml", "data": "<a/>"}, "datacontenttype", "xml"),
        ({"datacontenttype": "text/plain", "data": {"a": 1}}, "data", "to be a string"),
        ({"data": {"a": "x\u0000y"}}, "data", "data.a: Expected text without NUL"),
    ],
)
def test_structured_refusals(overrides: dict[str, Any], field: str, words: str) -> None:
    error = refused(as_json(event(**overrides)))
    assert error.field == field, str(error)
    assert words in str(error)


def test_no_workflow_named() -> None:
    error = refused(as_json(event(subject=None)))
    assert error.field == "subject"
    message = str(error)
    assert "type 'com.shop.order.updated'" in message
    assert "REFLUX_TRIGGER_TYPE_MAP" in message and "com.shop.order.created" in message


@pytest.mark.parametrize(
    ("value", "overrides", "words"),
    [
        (b"not json", {"content-type": None}, "(no content-type: read as JSON) to be JSON"),
        (b"{oops", {}, "to be JSON, but it does not parse"),
        (b"\xff", {"content-type": "text/plain"}, "UTF-8 text"),
        (b"<a/>", {"content-type": "application/xml"}, "'application/xml'"),
        (b"[" * 100 + b"]" * 100, {}, "within limits"),
    ],
)
def test_binary_data_refusals(value: bytes, overrides: dict[str, str | None], words: str) -> None:
    assert words in str(refused(value, binary_headers(**overrides)))


def test_binary_header_that_is_not_utf8() -> None:
    headers = [(k, b"\xff" if k == "ce_id" else v) for k, v in binary_headers()]
    assert "Expected header 'ce_id' to be UTF-8 text" in str(refused(b"{}", headers))


def test_batch_mode_is_refused() -> None:
    error = refused(b"[]", [("content-type", b"application/cloudevents-batch+json")])
    assert "batch mode" in str(error)


def test_structured_event_that_is_not_an_object() -> None:
    headers = [("content-type", b"application/cloudevents+json")]
    assert "as a JSON object, but got an array" in str(refused(b"[1]", headers))
    assert "does not parse" in str(refused(b"{", headers))


def test_neither_avro_nor_json() -> None:
    error = refused(b"hello world")
    assert "starts with 68656c6c6f20776f" in str(error)
    assert "is empty" in str(refused(b""))
    assert "is empty" in str(refused(None))


@pytest.mark.parametrize(
    ("document", "field", "words"),
    [
        ({"workflow_id": "w", "idempotency_key": "k"}, "source", "field 'source', but it is"),
        ({"source": "s", "idempotency_key": "k"}, "workflow_id", "'workflow_id', but it is"),
        ({"source": "s", "workflow_id": "w"}, "idempotency_key", "'idempotency_key', but"),
        ({"source": 1, "workflow_id": "w", "idempotency_key": "k"}, "source", "a number"),
        ({"source": "", "workflow_id": "w", "idempotency_key": "k"}, "source", "non-empty"),
        (
            {"source": "s", "workflow_id": "w", "idempotency_key": "k", "workflow": "x"},
            "workflow",
            "Unknown field(s) 'workflow'",
        ),
        (
            {"source": "s", "workflow_id": "w", "idempotency_key": "k", "workflow_version": 0},
            "workflow_version",
            "whole number >= 1",
        ),
        (
            {"source": "s", "workflow_id": "w", "idempotency_key": "k", "workflow_version": True},
            "workflow_version",
            "True",
        ),
        (
            {"source": "s", "workflow_id": "w", "idempotency_key": "k", "payload": {"\u0000": 1}},
            "payload",
            "without NUL",
        ),
    ],
)
def test_plain_json_refusals(document: dict[str, Any], field: str, words: str) -> None:
    error = refused(as_json(document))
    assert error.field == field, str(error)
    assert words in str(error)


def test_bad_avro_is_still_a_schema_error() -> None:
    with pytest.raises(MalformedRecordError):
        decode(b"\xc3\x01short")
    with pytest.raises(UnknownSchemaError):
        decode(b"\xc3\x01" + b"\x00" * 8 + b"body")
    assert trigger_format(b"\xc3\x01", []) == "avro"
