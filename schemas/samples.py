"""Deterministic, complete sample records, for round-trip tests here and in other packages.

Samples are built from the Avro schema, not the model, so the same walker also produces data for
historical writer schemas (fixtures). Every field is filled - optional ones with their non-null
branch, maps and arrays with one element - so a round trip exercises every field's encoding.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import NAMESPACE_URL, uuid5

from schemas.base import RefluxRecord, canonical_json
from schemas.registry import Schema, default_registry

M = TypeVar("M", bound=RefluxRecord)

SAMPLE_TIME = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
SAMPLE_JSON: Any = {"b": [True, None, 1.5, "x"], "a": {"n": 1, "s": "été"}}
_PRIMITIVE_SAMPLES: dict[str, Any] = {
    "int": 3,
    "long": 42,
    "boolean": True,
    "double": 0.5,
    "float": 0.25,
    "bytes": b"\x00sample\xff",
}


def sample_record(model: type[M]) -> M:
    """A deterministic instance of ``model`` with every field set (optional ones included)."""
    schema = default_registry().named[model.AVRO_NAME]
    return model.from_avro(sample_datum(schema))


def sample_datum(schema: Schema) -> dict[str, Any]:
    """A complete Avro datum for a parsed record schema (current or historical)."""
    named: dict[str, Schema] = {}
    _collect_named(schema, named)
    datum = _sample(schema, named, path=str(schema["name"]), field={})
    assert isinstance(datum, dict)
    return datum


def _collect_named(avro: Any, named: dict[str, Schema]) -> None:
    # Named types are defined inline at first use and referenced by name later.
    if isinstance(avro, list):
        for branch in avro:
            _collect_named(branch, named)
    elif isinstance(avro, dict):
        if avro.get("type") in ("record", "enum", "fixed"):
            named[str(avro["name"])] = avro
        for fld in avro.get("fields", []):
            _collect_named(fld["type"], named)
        _collect_named(avro.get("items"), named)
        _collect_named(avro.get("values"), named)


def _sample(avro: Any, named: dict[str, Schema], path: str, field: dict[str, Any]) -> Any:
    if isinstance(avro, list):
        branch = next(b for b in avro if b != "null")
        return _sample(branch, named, path, field)
    if field.get("name") == "schema_version":
        # The writer's own version, as a real producer would write it.
        return field["default"]
    if isinstance(avro, str):
        if avro in named:
            return _sample(named[avro], named, path, field)
        if avro == "string":
            return _sample_string(path, field)
        return _PRIMITIVE_SAMPLES[avro]
    kind = avro["type"]
    if avro.get("logicalType") == "timestamp-millis":
        return SAMPLE_TIME
    if kind == "record":
        return {
            f["name"]: _sample(f["type"], named, f"{path}.{f['name']}", f) for f in avro["fields"]
        }
    if kind == "enum":
        return avro["symbols"][0]
    if kind == "array":
        return [_sample(avro["items"], named, f"{path}[]", {})]
    if kind == "map":
        return {"key": _sample(avro["values"], named, f"{path}{{}}", {})}
    if kind == "fixed":
        return bytes(avro["size"])
    return _sample(kind, named, path, field)


def _sample_string(path: str, field: dict[str, Any]) -> str:
    if field.get("reflux.json"):
        return canonical_json(SAMPLE_JSON)
    if field.get("reflux.default_factory") == "uuid4":
        return str(uuid5(NAMESPACE_URL, f"reflux:{path}"))
    return f"sample:{path}"
