"""What may arrive on ``<prefix>.triggers``, decoded into a ``Trigger``: pure, no I/O (ADR 0053).

Four shapes are accepted, told apart in this order (the first that fits decides):

1. **CloudEvent, structured mode**: a ``content-type`` header ``application/cloudevents+json``;
   the value is the event as JSON (CloudEvents 1.0 JSON format).
2. **CloudEvent, binary mode** (Kafka protocol binding): a ``ce_specversion`` header; the other
   attributes are ``ce_*`` headers, ``content-type`` is ``datacontenttype``, the value is the data.
3. **Avro single-object** (``C3 01`` + fingerprint): today's ``Trigger`` record.
4. **JSON object**: with ``specversion`` it is a structured CloudEvent (a producer that sets no
   header); otherwise the ``Trigger`` record's fields as JSON (a *plain JSON trigger*).

A CloudEvent starts the workflow that ``REFLUX_TRIGGER_TYPE_MAP`` maps its ``type`` to, else the
one its ``subject`` names; its data is the payload; ``source`` and ``id`` are the trigger's source
and idempotency key, so a redelivered event names the same run. Everything else is refused with a
:class:`TriggerFormatError` that says which attribute or field is wrong: the router dead-letters
the record with that reason. The same CloudEvent parsing serves the webhook endpoint
(:mod:`api.hook_events`), whose binding spells the headers ``ce-*``.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from foundation.parse_limits import ParseLimitError, load_json, storage_issues
from foundation.trace_context import clean_trace_context
from processors.triggers.mapping import TRIGGER_NAMESPACE
from schemas import serde
from schemas.errors import SchemaError
from schemas.models import Trigger

__all__ = [
    "CLOUDEVENTS_JSON",
    "HTTP_BINDING",
    "KAFKA_BINDING",
    "PLAIN_FIELDS",
    "CloudEvent",
    "CloudEventBinding",
    "TriggerFormat",
    "TriggerFormatError",
    "cloud_event_from_headers",
    "cloud_event_from_json",
    "decode_trigger",
    "json_value",
    "plain_trigger",
    "trigger_format",
    "trigger_from_cloud_event",
    "trigger_trace_context",
    "workflow_of",
]

TriggerFormat = Literal["cloudevent-structured", "cloudevent-binary", "avro", "json"]
EventMode = Literal["structured", "binary"]

CLOUDEVENTS_JSON: Final = "application/cloudevents+json"
_CLOUDEVENTS_BATCH: Final = "application/cloudevents-batch+json"
SPEC_VERSION: Final = "1.0"
_REQUIRED: Final = ("specversion", "id", "source", "type")
_OPTIONAL_STRINGS: Final = ("subject", "datacontenttype", "dataschema", "time")

PLAIN_FIELDS: Final = frozenset(
    {"source", "source_key", "workflow_id", "workflow_version", "payload", "idempotency_key"}
)
"""The fields a plain JSON trigger may have: the ``Trigger`` record's, without the envelope."""

TYPE_MAP_SETTING: Final = "REFLUX_TRIGGER_TYPE_MAP"


class TriggerFormatError(SchemaError):
    """A trigger that cannot start a run; the message names what is wrong. ``field`` is the
    attribute or field at fault (``id``, ``data``, ``workflow_id``...; ``""`` for the whole)."""

    error_class = "TriggerFormat"

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class CloudEventBinding:
    """How a protocol binding spells attributes in binary mode."""

    name: str
    header_prefix: str
    content_type_header: str = "content-type"

    def header(self, attribute: str) -> str:
        return self.header_prefix + attribute


KAFKA_BINDING: Final = CloudEventBinding("Kafka", "ce_")
HTTP_BINDING: Final = CloudEventBinding("HTTP", "ce-")


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """A validated CloudEvents 1.0 event; ``payload`` is its data decoded (``{}`` without data)."""

    id: str
    source: str
    type: str
    subject: str | None
    datacontenttype: str | None
    time: datetime | None
    payload: Any
    mode: EventMode

    @property
    def idempotency_key(self) -> str:
        """``source`` + ``id``: CloudEvents says the pair is unique per distinct event."""
        return f"{self.source}:{self.id}"


# -- telling the shapes apart ---------------------------------------------------------------------
def _headers(headers: Sequence[tuple[str, bytes]]) -> dict[str, bytes]:
    """Lower-cased names (tools differ in case) -> the last value (Kafka allows repeats)."""
    return {name.lower(): value for name, value in headers}


def media_type(content_type: str | None) -> str | None:
    """``"application/json; charset=utf-8"`` -> ``"application/json"``; missing/blank -> None."""
    if content_type is None:
        return None
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind or None


def _is_json(kind: str | None) -> bool:
    return kind is None or kind in ("application/json", "text/json") or kind.endswith("+json")


def _text_header(headers: Mapping[str, bytes], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TriggerFormatError(
            f"Expected header {name!r} to be UTF-8 text, but it is not ({exc.reason})",
            field=name,
        ) from exc


def trigger_format(value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> TriggerFormat:
    """Which of the four shapes a record is (see the module docstring); refused if none."""
    named = _headers(headers)
    kind = media_type(_text_header(named, KAFKA_BINDING.content_type_header))
    if kind == _CLOUDEVENTS_BATCH:
        raise TriggerFormatError(
            "CloudEvents batch mode (application/cloudevents-batch+json) is not accepted: "
            "publish one event per record",
            field="content-type",
        )
    if kind == CLOUDEVENTS_JSON:
        return "cloudevent-structured"
    if KAFKA_BINDING.header("specversion") in named:
        return "cloudevent-binary"
    if value is not None and value[:2] == serde.MAGIC:
        return "avro"
    if value is not None and value.lstrip()[:1] == b"{":
        return "json"
    start = (value or b"")[:8]
    raise TriggerFormatError(
        "Expected a trigger as Avro single-object (c301...), a JSON object (a Trigger's fields or "
        "a CloudEvent), or a binary-mode CloudEvent (ce_specversion header), but the value "
        + (f"starts with {start.hex()} ({start!r})" if start else "is empty")
        + " and no header says CloudEvent"
    )


def decode_trigger(
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    *,
    key: bytes | None,
    received_at: datetime,
    type_map: Mapping[str, str],
) -> tuple[TriggerFormat, Trigger]:
    """The record as a ``Trigger`` (and which shape it had); :class:`SchemaError` otherwise.

    ``received_at`` stands in for the creation time a format does not carry (the record's
    timestamp); ``type_map`` is ``REFLUX_TRIGGER_TYPE_MAP``.
    """
    shape = trigger_format(value, headers)
    if shape == "avro":
        assert value is not None
        return shape, serde.decode(value, Trigger)
    source_key = _key_text(key)
    if shape == "cloudevent-binary":
        event = cloud_event_from_headers(_headers(headers), value, KAFKA_BINDING)
    else:
        document = json_value(value or b"", "the record's value")
        if shape == "json" and not (isinstance(document, dict) and "specversion" in document):
            return shape, plain_trigger(document, source_key=source_key, received_at=received_at)
        shape = "cloudevent-structured"
        event = cloud_event_from_json(document)
    workflow_id = workflow_of(event, type_map)
    return shape, trigger_from_cloud_event(
        event,
        workflow_id=workflow_id,
        source_key=source_key or workflow_id,
        received_at=received_at,
    )


def _key_text(key: bytes | None) -> str | None:
    if not key:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None  # a binary key partitions; it names nothing


def json_value(raw: bytes | str, what: str) -> Any:
    try:
        return load_json(raw)
    except ParseLimitError as exc:
        raise TriggerFormatError(f"Expected {what} to be JSON within limits: {exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise TriggerFormatError(
            f"Expected {what} to be JSON, but it does not parse: {exc}"
        ) from exc


# -- plain JSON triggers --------------------------------------------------------------------------
def plain_trigger(document: Any, *, source_key: str | None, received_at: datetime) -> Trigger:
    """A JSON object with the ``Trigger`` record's fields (:data:`PLAIN_FIELDS`).

    Required: ``source``, ``workflow_id``, ``idempotency_key``. ``source_key`` defaults to the
    Kafka key (else the workflow id), ``workflow_version`` to null (the latest), ``payload`` to
    ``{}``; the payload is the JSON value itself (not JSON text as in the Avro record).
    """
    if not isinstance(document, dict):
        raise TriggerFormatError(
            f"Expected a JSON object with a Trigger's fields, but got {_json_kind(document)}"
        )
    unknown = sorted(set(document) - PLAIN_FIELDS)
    if unknown:
        raise TriggerFormatError(
            f"Unknown field(s) {', '.join(map(repr, unknown))} in a JSON trigger; expected only "
            f"{', '.join(sorted(PLAIN_FIELDS))} (a CloudEvent needs 'specversion')",
            field=unknown[0],
        )
    source = _required_text(document, "source", "JSON trigger field")
    workflow_id = _required_text(document, "workflow_id", "JSON trigger field")
    idempotency_key = _required_text(document, "idempotency_key", "JSON trigger field")
    given_key = _optional_text(document, "source_key", "JSON trigger field")
    version = document.get("workflow_version")
    if version is not None and (type(version) is not int or version < 1):
        raise TriggerFormatError(
            "Expected JSON trigger field 'workflow_version' to be a whole number >= 1 or null "
            f"(the latest), but got {version!r}",
            field="workflow_version",
        )
    payload = document.get("payload", {})
    _check_storable(payload, "payload")
    return Trigger(
        event_id=_event_id("json", source, idempotency_key),
        occurred_at=received_at,
        source=source,
        source_key=given_key or source_key or workflow_id,
        workflow_id=workflow_id,
        workflow_version=version,
        payload=payload,
        idempotency_key=idempotency_key,
    )


# -- CloudEvents ----------------------------------------------------------------------------------
def cloud_event_from_json(document: Any) -> CloudEvent:
    """A structured-mode event (CloudEvents JSON format), validated."""
    if not isinstance(document, dict):
        raise TriggerFormatError(
            f"Expected a CloudEvent as a JSON object, but got {_json_kind(document)}"
        )
    for name in (*_REQUIRED, *_OPTIONAL_STRINGS):
        value = document.get(name)
        if value is not None and not isinstance(value, str):
            raise TriggerFormatError(
                f"Expected CloudEvent attribute {name!r} to be a string, but got "
                f"{_json_kind(value)}",
                field=name,
            )
    attributes: dict[str, str] = {
        name: value
        for name in (*_REQUIRED, *_OPTIONAL_STRINGS)
        if isinstance(value := document.get(name), str)
    }
    _check_attributes(attributes, lambda name: f"attribute {name!r}")
    kind = media_type(attributes.get("datacontenttype"))
    if "data" in document and "data_base64" in document:
        raise TriggerFormatError(
            "Expected a CloudEvent with 'data' or 'data_base64', but it has both", field="data"
        )
    if "data_base64" in document:
        encoded = document["data_base64"]
        if not isinstance(encoded, str):
            raise TriggerFormatError(
                "Expected CloudEvent 'data_base64' to be a base64 string, but got "
                f"{_json_kind(encoded)}",
                field="data_base64",
            )
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise TriggerFormatError(
                f"Expected CloudEvent 'data_base64' to be base64, but it is not: {exc}",
                field="data_base64",
            ) from exc
        payload = _payload_from_bytes(raw, kind, "data_base64")
    elif "data" in document:
        payload = _payload_from_json(document["data"], kind)
    else:
        payload = {}
    return _event(attributes, payload, "structured")


def cloud_event_from_headers(
    headers: Mapping[str, bytes], data: bytes | None, binding: CloudEventBinding
) -> CloudEvent:
    """A binary-mode event: attributes from ``<prefix><name>`` headers (names lower-cased),
    ``content-type`` as ``datacontenttype``, ``data`` (the value or body) as the data."""
    attributes: dict[str, str] = {}
    for name in (*_REQUIRED, *_OPTIONAL_STRINGS):
        text = _text_header(headers, binding.header(name))
        if text is not None:
            attributes[name] = text
    content_type = _text_header(headers, binding.content_type_header)
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    _check_attributes(attributes, lambda name: f"{binding.header(name)} header")
    kind = media_type(attributes.get("datacontenttype"))
    payload = {} if not data else _payload_from_bytes(data, kind, "data")
    return _event(attributes, payload, "binary")


def _check_attributes(attributes: Mapping[str, str], spelled: Callable[[str], str]) -> None:
    """CloudEvents 1.0's required attributes, each a non-empty string without control
    characters (they become keys and ids here)."""
    for name in _REQUIRED:
        value = attributes.get(name)
        if value is None:
            raise TriggerFormatError(
                f"Expected the CloudEvent's required {spelled(name)}, but it is missing",
                field=name,
            )
        if not value:
            raise TriggerFormatError(
                f"Expected the CloudEvent's {spelled(name)} to be non-empty, but it is ''",
                field=name,
            )
    if attributes["specversion"] != SPEC_VERSION:
        raise TriggerFormatError(
            f"Expected CloudEvents specversion {SPEC_VERSION!r} in {spelled('specversion')}, "
            f"but got {attributes['specversion']!r}",
            field="specversion",
        )
    for name, value in attributes.items():
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise TriggerFormatError(
                f"Expected the CloudEvent's {spelled(name)} without control characters, but "
                f"got {value!r}",
                field=name,
            )
    if attributes.get("subject") == "":
        raise TriggerFormatError(
            f"Expected the CloudEvent's {spelled('subject')} to be non-empty when present",
            field="subject",
        )


def _event(attributes: Mapping[str, str], payload: Any, mode: EventMode) -> CloudEvent:
    _check_storable(payload, "data")
    return CloudEvent(
        id=attributes["id"],
        source=attributes["source"],
        type=attributes["type"],
        subject=attributes.get("subject"),
        datacontenttype=attributes.get("datacontenttype"),
        time=_time(attributes.get("time")),
        payload=payload,
        mode=mode,
    )


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or "T" not in text.upper():
        raise TriggerFormatError(
            f"Expected CloudEvent attribute 'time' to be an RFC 3339 timestamp with a time zone "
            f"(2026-12-06T17:00:00Z), but got {text!r}",
            field="time",
        )
    return parsed


def _unsupported(kind: str, field: str) -> TriggerFormatError:
    return TriggerFormatError(
        f"Expected CloudEvent data as JSON (application/json, */*+json) or text (text/*), but "
        f"datacontenttype is {kind!r}",
        field=field,
    )


def _payload_from_json(data: Any, kind: str | None) -> Any:
    """Structured mode's ``data``: JSON data stands as itself; text data is a JSON string."""
    if _is_json(kind):
        return data
    assert kind is not None
    if kind.startswith("text/"):
        if not isinstance(data, str):
            raise TriggerFormatError(
                f"Expected CloudEvent 'data' to be a string for datacontenttype {kind!r}, but "
                f"got {_json_kind(data)}",
                field="data",
            )
        return data
    raise _unsupported(kind, "datacontenttype")


def _payload_from_bytes(raw: bytes, kind: str | None, field: str) -> Any:
    """Binary data (binary mode's value, structured mode's ``data_base64``)."""
    if _is_json(kind):
        what = "CloudEvent data" + (" (no content-type: read as JSON)" if kind is None else "")
        try:
            return load_json(raw)
        except ParseLimitError as exc:
            raise TriggerFormatError(f"Expected {what} within limits: {exc}", field=field) from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise TriggerFormatError(
                f"Expected {what} to be JSON, but it does not parse: {exc}", field=field
            ) from exc
    assert kind is not None
    if kind.startswith("text/"):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TriggerFormatError(
                f"Expected CloudEvent data of type {kind!r} to be UTF-8 text, but it is not",
                field=field,
            ) from exc
    raise _unsupported(kind, "datacontenttype")


def workflow_of(event: CloudEvent, type_map: Mapping[str, str]) -> str:
    """The workflow a CloudEvent starts: its ``type``'s entry in the operator's map, else its
    ``subject``. The map wins so that producers can keep ``subject`` for what CloudEvents means
    by it (the order, the file...) once an operator routes their event type."""
    mapped = type_map.get(event.type)
    if mapped:
        return mapped
    if event.subject:
        return event.subject
    listed = ", ".join(sorted(type_map)[:10]) or "none"
    raise TriggerFormatError(
        f"Expected the CloudEvent to name its workflow in 'subject', or its type {event.type!r} "
        f"to be mapped in {TYPE_MAP_SETTING}, but it has no subject and the type is not mapped "
        f"(mapped types: {listed})",
        field="subject",
    )


def trigger_from_cloud_event(
    event: CloudEvent, *, workflow_id: str, source_key: str, received_at: datetime
) -> Trigger:
    """The ``Trigger`` of a CloudEvent: ``source`` and ``id`` become the trigger's source and
    idempotency key (run id = ``uuid5(source + ":" + id)``), the data its payload."""
    return Trigger(
        event_id=_event_id("cloudevent", event.source, event.id),
        occurred_at=event.time or received_at,
        source=event.source,
        source_key=source_key,
        workflow_id=workflow_id,
        payload=event.payload,
        idempotency_key=event.id,
    )


# -- small helpers --------------------------------------------------------------------------------
def _event_id(kind: str, source: str, key: str) -> str:
    """Deterministic: a redelivered record carries the same ``event_id`` (and ``requested_by``)."""
    return str(uuid.uuid5(TRIGGER_NAMESPACE, f"{kind}-event:{source}:{key}"))


def _required_text(document: Mapping[str, Any], name: str, what: str) -> str:
    if name not in document or document[name] is None:
        raise TriggerFormatError(f"Expected {what} {name!r}, but it is missing", field=name)
    return _text(document[name], name, what)


def _optional_text(document: Mapping[str, Any], name: str, what: str) -> str | None:
    value = document.get(name)
    return None if value is None else _text(value, name, what)


def _text(value: Any, name: str, what: str) -> str:
    if not isinstance(value, str):
        raise TriggerFormatError(
            f"Expected {what} {name!r} to be a string, but got {_json_kind(value)}", field=name
        )
    if not value:
        raise TriggerFormatError(f"Expected {what} {name!r} to be non-empty", field=name)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise TriggerFormatError(
            f"Expected {what} {name!r} without control characters, but got {value!r}", field=name
        )
    return value


def _check_storable(value: Any, where: str) -> None:
    issues = storage_issues(value, limit=1)
    if issues:
        issue = issues[0]
        path = f"{where}.{issue.path}" if issue.path else where
        raise TriggerFormatError(f"{path}: {issue.message}", field=where)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def trigger_trace_context(
    value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> dict[str, str]:
    """The W3C trace context a trigger record brings, ``{}`` without a valid one (ADR 0062):
    ``traceparent``/``tracestate`` record headers (the API's webhooks, any traced producer),
    else the CloudEvents distributed-tracing extension (``ce_traceparent`` headers in binary
    mode, ``traceparent`` attributes in structured mode). Never an error: a trace context that
    does not parse is dropped and the run starts untraced."""
    named = _headers(headers)

    def text(name: str) -> str | None:
        try:
            return _text_header(named, name)
        except TriggerFormatError:
            return None

    for prefix in ("", KAFKA_BINDING.header_prefix):
        found = clean_trace_context(
            {"traceparent": text(prefix + "traceparent"), "tracestate": text(prefix + "tracestate")}
        )
        if found:
            return found
    if value is None or value.lstrip()[:1] != b"{":
        return {}
    try:
        document = json_value(value, "the record's value")
    except TriggerFormatError:
        return {}
    if not isinstance(document, dict) or "specversion" not in document:
        return {}
    return clean_trace_context(
        {"traceparent": document.get("traceparent"), "tracestate": document.get("tracestate")}
    )
