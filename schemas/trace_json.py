"""The JSON wire format of the ``traces`` topic: one compact JSON object per Kafka message.

Every other topic carries Avro single-object encoding (docs/decisions/0002-avro-wire-format.md),
which ClickHouse's Kafka engine cannot decode. Traces are read by ClickHouse with no Python in
the path (docs/decisions/0004-traces-json-on-kafka.md), so this topic carries JSONEachRow rows.

The Avro schema ``reflux.traces.Trace`` stays the contract: the object has exactly its fields,
with the JSON shapes of their Avro types, so :func:`decode_trace` is a validation against the
generated :class:`~schemas.models.Trace` model.

- ``timestamp-millis`` fields (``occurred_at``, ``start``, ``end``) are integers: epoch
  milliseconds, UTC, like the Avro long they are. ClickHouse reads them into ``Int64`` and the
  materialized view converts them, so parsing never depends on date-time input settings.
- ``error`` stays nested (``null`` or ``{"error_class", "message", "retryable"}``), as in Avro
  and the model; the queue table reads it as a named ``Tuple`` and the view flattens it.
- ``status`` is the enum symbol; maps are JSON objects; nullable fields are ``null``.
- Non-finite metric values (NaN, infinity) are refused: JSON has no spelling for them.
- Decoding is strict (no "5" for 5, no 1 for true) and refuses unknown fields and writers newer
  than this reader, like the Avro reader does.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pydantic import ValidationError

from schemas.errors import MalformedRecordError
from schemas.models import Trace
from schemas.registry import default_registry

__all__ = ["TIMESTAMP_FIELDS", "TRACE_HEADERS", "TraceJsonError", "decode_trace", "encode_trace"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)


class TraceJsonError(MalformedRecordError):
    """The bytes are not a JSON trace that the current Trace schema accepts (or cannot become
    one, when encoding)."""

    error_class = "MalformedTraceJson"


def _timestamp_fields() -> tuple[str, ...]:
    # Read from the Avro schema, so a new timestamp field is handled without touching this file.
    schema = default_registry().named[Trace.AVRO_NAME]
    names: list[str] = []
    for field in schema["fields"]:
        avro_type = field["type"]
        if isinstance(avro_type, dict) and avro_type.get("logicalType") == "timestamp-millis":
            names.append(str(field["name"]))
    return tuple(names)


TIMESTAMP_FIELDS: Final[tuple[str, ...]] = _timestamp_fields()
"""Fields written as epoch milliseconds (integers)."""


def _to_millis(value: datetime) -> int:
    # Integer arithmetic: float seconds would round some millisecond values the wrong way.
    return (value - _EPOCH) // _MILLISECOND


def encode_trace(trace: Trace) -> bytes:
    """Compact UTF-8 JSON of ``trace``; ``schema_version`` is written as the current version."""
    datum: dict[str, Any] = trace.model_dump(mode="json")
    for name in TIMESTAMP_FIELDS:
        datum[name] = _to_millis(getattr(trace, name))
    datum["schema_version"] = Trace.SCHEMA_VERSION
    bad = sorted(k for k, v in trace.metrics.items() if not math.isfinite(v))
    if bad:
        raise TraceJsonError(
            f"Expected finite metric values in trace {trace.event_id}, but {bad} are NaN or "
            "infinite (JSON cannot represent them)"
        )
    return json.dumps(datum, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _from_millis(name: str, value: Any) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TraceJsonError(
            f"Expected field {name!r} to be epoch milliseconds (an integer), "
            f"but got {type(value).__name__} {value!r}"
        )
    try:
        return _EPOCH + value * _MILLISECOND
    except OverflowError:
        raise TraceJsonError(
            f"Expected field {name!r} to be epoch milliseconds within years 1-9999, but got {value}"
        ) from None


def decode_trace(data: bytes | bytearray | memoryview) -> Trace:
    """Parse and validate one message of the ``traces`` topic; raises :class:`TraceJsonError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TraceJsonError(f"Expected bytes, but got {type(data).__name__}")
    try:
        datum = json.loads(bytes(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        preview = bytes(data[:60])
        raise TraceJsonError(
            f"Expected a UTF-8 JSON object, but could not parse {preview!r}: {exc}"
        ) from None
    if not isinstance(datum, dict):
        raise TraceJsonError(f"Expected a JSON object, but got {type(datum).__name__}")
    version = datum.get("schema_version", Trace.SCHEMA_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise TraceJsonError(
            f"Expected schema_version to be a positive integer, but got {version!r}"
        )
    if version > Trace.SCHEMA_VERSION:
        # Readers deploy before writers; guessing at a newer writer's fields would be silent loss.
        raise TraceJsonError(
            f"Expected a trace of schema version <= {Trace.SCHEMA_VERSION}, but got version "
            f"{version}: deploy the reader that knows it first"
        )
    for name in TIMESTAMP_FIELDS:
        if name in datum:
            datum[name] = _from_millis(name, datum[name]).isoformat()
    try:
        # Strict JSON-mode validation: "5" is not an integer and 1 is not a boolean on this wire,
        # exactly as the Avro types would have it.
        return Trace.model_validate_json(json.dumps(datum), strict=True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise TraceJsonError(f"Expected a valid Trace, but {problems}") from None


# Kafka headers of a JSON trace: what it is and how it is encoded (consumers need not guess).
TRACE_HEADERS: dict[str, str] = {
    "reflux-type": "reflux.traces.Trace",
    "content-type": "application/json",
}
