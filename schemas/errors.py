"""Errors raised by the contracts layer.

One branch of :class:`foundation.errors.RefluxError` so consumers can route every contract
failure the same way (usually to the DLQ), with an ``error_class`` string that traces, DLQ
records and the critic group by.
"""

from __future__ import annotations

from foundation.errors import NonRetryableError


class SchemaError(NonRetryableError):
    """Base of every error raised while loading schemas or (de)serializing records."""

    # Retrying the same bytes against the same code cannot succeed; deploying a fix can.
    error_class = "SchemaError"


class MalformedRecordError(SchemaError):
    """The bytes are not a valid single-object-encoded REFLUX record (magic, truncation, junk)."""

    error_class = "MalformedRecord"


class UnknownSchemaError(SchemaError):
    """The writer schema's fingerprint is not in the registry (a newer or foreign producer)."""

    error_class = "UnknownSchema"

    def __init__(self, fingerprint: bytes) -> None:
        self.fingerprint = fingerprint
        super().__init__(
            f"Unknown writer schema fingerprint {fingerprint.hex()} (CRC-64-AVRO, little-endian): "
            "no schema in schemas/avro/ or schemas/avro/history/ has it. The producer uses a "
            "schema version this process does not know: deploy the reader that ships it (readers "
            "before writers), or add the writer's schema as "
            "schemas/avro/history/<FullName>.v<N>.avsc. "
            "See docs/decisions/0002-avro-wire-format.md."
        )


class UnexpectedRecordTypeError(SchemaError):
    """The record is valid but not one of the types the caller can handle."""

    error_class = "UnexpectedRecordType"


class SchemaDefinitionError(SchemaError):
    """The .avsc files or generated models are inconsistent; raised at load time, never later."""

    error_class = "SchemaDefinition"
