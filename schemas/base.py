"""Hand-written building blocks that the generated ``models.py`` uses.

Wire conversion is driven by pydantic's validation/serialization *context*: only with
``AVRO_CONTEXT`` do JSON fields travel as canonical JSON strings. Without it a JSON field holds
its Python value, so a JSON value that happens to be a string is never mistaken for encoded JSON.
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    PlainSerializer,
    SerializationInfo,
    ValidationInfo,
    WrapValidator,
)
from pydantic_core.core_schema import ValidatorFunctionWrapHandler

AVRO_CONTEXT_KEY = "reflux.avro"
AVRO_CONTEXT: dict[str, bool] = {AVRO_CONTEXT_KEY: True}


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8, no NaN: equal values give equal bytes (cache keys)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _is_avro(context: Any) -> bool:
    return isinstance(context, dict) and bool(context.get(AVRO_CONTEXT_KEY))


_ALWAYS_JSON = (str, int, bool, type(None))
"""Values that are JSON whatever they hold (a float may be NaN or infinite, which is not)."""


def _validate_json(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
    if _is_avro(info.context):
        if not isinstance(value, str):
            raise ValueError(f"expected a JSON string on the wire, got {type(value).__name__}")
        try:
            return json.loads(value)
        except RecursionError as exc:
            # Anything can produce onto a topic: a record nested too deep for the decoder is
            # malformed (dead-lettered), not a crash of the consumer that reads it.
            raise ValueError("JSON nested too deeply to decode") from exc
    if type(value) in _ALWAYS_JSON or (type(value) is float and math.isfinite(value)):
        return handler(value)  # no need to serialize a scalar to know it is JSON
    try:
        canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"value is not JSON-serializable: {exc}") from exc
    return handler(value)


def _validate_optional_json(
    value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
) -> Any:
    # In a nullable JSON field Python None means "absent" (Avro null), never JSON null.
    return None if value is None else _validate_json(value, handler, info)


def _serialize_json(value: Any, info: SerializationInfo) -> Any:
    return canonical_json(value) if _is_avro(info.context) else value


def _serialize_optional_json(value: Any, info: SerializationInfo) -> Any:
    return None if value is None else _serialize_json(value, info)


def _to_utc_millis(value: datetime) -> datetime:
    # The wire keeps milliseconds; truncating here makes decode(encode(x)) == x.
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


Json = Annotated[Any, WrapValidator(_validate_json), PlainSerializer(_serialize_json)]
"""A JSON value; on the wire an Avro string (``"reflux.json": true``) with canonical JSON."""

OptionalJson = Annotated[
    Any, WrapValidator(_validate_optional_json), PlainSerializer(_serialize_optional_json)
]
"""A nullable JSON field: None is Avro null; JSON null itself cannot be expressed."""

TimestampMillis = Annotated[AwareDatetime, AfterValidator(_to_utc_millis)]
"""Avro ``timestamp-millis``: timezone-aware, normalized to UTC and whole milliseconds."""


def utc_now() -> datetime:
    """Default factory for ``occurred_at`` fields."""
    return _to_utc_millis(datetime.now(UTC))


class RefluxRecord(BaseModel):
    """Base of every generated record model: immutable, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    AVRO_NAME: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int]

    def to_avro(self) -> dict[str, Any]:
        """The datum fastavro writes: nested dicts, canonical JSON strings, enum values.

        ``schema_version`` is set to this model's version: a record read from an old writer and
        written again is written with the current schema, and must say so.
        """
        datum = self.model_dump(mode="python", context=AVRO_CONTEXT)
        if "schema_version" in datum:
            datum["schema_version"] = self.SCHEMA_VERSION
        return datum

    @classmethod
    def from_avro(cls, datum: dict[str, Any]) -> Self:
        """Build the model from a datum fastavro read with this model's reader schema."""
        return cls.model_validate(datum, context=AVRO_CONTEXT)


def new_id() -> str:
    """Default factory for ``event_id`` / ``command_id``: a random (version 4) UUID as text.

    Formatted from the random bytes directly: ``str(uuid4())`` costs twice as much, and every
    record of every step takes one or more of these."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


_VARIANT = "89ab"
"""The first hex digit of the fourth group of an RFC 4122 UUID (variant bits 10)."""
