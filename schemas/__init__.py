"""REFLUX event contracts: Avro schemas, generated pydantic models and the wire format.

Producers call :func:`encode`, consumers :func:`decode`; both fail with a :class:`SchemaError`
subclass whose ``error_class`` the DLQ and traces record. Models live in ``schemas.models``.
"""

from schemas.base import RefluxRecord, canonical_json
from schemas.errors import (
    MalformedRecordError,
    SchemaDefinitionError,
    SchemaError,
    UnexpectedRecordTypeError,
    UnknownSchemaError,
)
from schemas.serde import decode, encode, record_type_of

__all__ = [
    "MalformedRecordError",
    "RefluxRecord",
    "SchemaDefinitionError",
    "SchemaError",
    "UnexpectedRecordTypeError",
    "UnknownSchemaError",
    "canonical_json",
    "decode",
    "encode",
    "record_type_of",
]
