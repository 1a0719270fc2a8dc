"""The wire format: Avro single-object encoding, no schema registry service.

Every message is ``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of the writer
schema's Parsing Canonical Form + the Avro binary body (Avro spec, "Single object encoding"). The
fingerprint names the exact writer schema, so a reader resolves any version it ships in
``schemas/avro/history/`` to its current reader schema. See docs/decisions/0002-avro-wire-format.md.
"""

from __future__ import annotations

import io
from typing import Any, TypeVar, overload

from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from pydantic import ValidationError

from schemas.base import RefluxRecord
from schemas.errors import (
    MalformedRecordError,
    SchemaError,
    UnexpectedRecordTypeError,
    UnknownSchemaError,
)
from schemas.registry import SchemaEntry, default_registry

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8

M = TypeVar("M", bound=RefluxRecord)

# What fastavro raises on bytes that do not match the writer schema.
_AVRO_READ_ERRORS = (
    EOFError,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    OverflowError,
    MemoryError,
    SchemaResolutionError,
)


def encode(record: RefluxRecord) -> bytes:
    """Serialize a model with its current schema, as a single-object-encoded message."""
    entry = default_registry().entry(record.AVRO_NAME)
    return encode_datum(entry, record.to_avro())


def encode_datum(entry: SchemaEntry, datum: dict[str, Any]) -> bytes:
    """Serialize a raw Avro datum with a given (possibly historical) writer schema.

    Used to write fixtures with old schemas; applications call :func:`encode`.
    """
    buffer = io.BytesIO()
    buffer.write(MAGIC)
    buffer.write(entry.fingerprint)
    try:
        schemaless_writer(buffer, entry.schema, datum, strict=True)
    except (ValueError, TypeError, KeyError) as exc:
        raise SchemaError(f"Cannot encode {entry.name} v{entry.version}: {exc}") from exc
    return buffer.getvalue()


def _entry_of(data: bytes) -> SchemaEntry:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedRecordError(f"Expected bytes, got {type(data).__name__}.")
    if len(data) < HEADER_SIZE:
        raise MalformedRecordError(
            f"Record is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header "
            "(truncated or not a REFLUX record)."
        )
    if bytes(data[:2]) != MAGIC:
        raise MalformedRecordError(
            f"Bad magic {bytes(data[:2]).hex()}; expected c301 (Avro single-object encoding). "
            "The producer does not use schemas.serde (JSON, Confluent framing, raw Avro?)."
        )
    fingerprint = bytes(data[2:HEADER_SIZE])
    entry = default_registry().by_fingerprint.get(fingerprint)
    if entry is None:
        raise UnknownSchemaError(fingerprint)
    return entry


def record_type_of(data: bytes) -> str:
    """The full Avro name of a message's record type, read from the header only."""
    return _entry_of(data).name


@overload
def decode(data: bytes, expected: None = None) -> RefluxRecord: ...
@overload
def decode(data: bytes, expected: type[M]) -> M: ...
@overload
def decode(data: bytes, expected: tuple[type[RefluxRecord], ...]) -> RefluxRecord: ...
def decode(
    data: bytes, expected: type[RefluxRecord] | tuple[type[RefluxRecord], ...] | None = None
) -> RefluxRecord:
    """Deserialize a message into the model of its record type, resolving old writer schemas.

    ``expected`` restricts the accepted types; anything else raises UnexpectedRecordTypeError
    before the body is decoded. Every failure is a :class:`SchemaError`.
    """
    # Imported here so `python -m schemas.codegen` works while models.py is missing or broken.
    from schemas.models import MODELS

    entry = _entry_of(data)
    model = MODELS[entry.name]
    if expected is not None and not issubclass(model, expected):
        wanted = expected if isinstance(expected, tuple) else (expected,)
        names = ", ".join(t.AVRO_NAME for t in wanted)
        raise UnexpectedRecordTypeError(f"Expected one of [{names}], but got {entry.name}.")
    reader = default_registry().current[entry.name]
    body = io.BytesIO(bytes(data[HEADER_SIZE:]))
    try:
        datum = schemaless_reader(body, entry.schema, None if reader is entry else reader.schema)
    except _AVRO_READ_ERRORS as exc:
        raise MalformedRecordError(
            f"Body of {entry.name} v{entry.version} does not match its schema "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    if body.tell() != len(data) - HEADER_SIZE:
        raise MalformedRecordError(
            f"{len(data) - HEADER_SIZE - body.tell()} trailing bytes after {entry.name} "
            f"v{entry.version}: corrupt record or two records concatenated."
        )
    if not isinstance(datum, dict):
        raise MalformedRecordError(f"{entry.name} did not decode to a record.")
    try:
        return model.from_avro(datum)
    except ValidationError as exc:
        raise MalformedRecordError(
            f"{entry.name} v{entry.version} decoded but is not a valid model: {exc}"
        ) from exc
