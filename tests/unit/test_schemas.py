"""Round trips, field mappings and error handling of the REFLUX wire format (no services)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from schemas import (
    MalformedRecordError,
    SchemaError,
    UnexpectedRecordTypeError,
    UnknownSchemaError,
    decode,
    encode,
    record_type_of,
)
from schemas.models import (
    MODELS,
    CancelRun,
    ErrorInfo,
    GraphMutation,
    GraphMutationType,
    MutateGraph,
    NodeResult,
    StartRun,
    StepRef,
    StepSucceeded,
    Trace,
    TraceStatus,
)
from schemas.registry import (
    AVRO_DIR,
    default_registry,
    full_name,
    is_top_level,
    schema_fingerprint,
)
from schemas.samples import sample_record
from schemas.serde import HEADER_SIZE, MAGIC

TOP_LEVEL = sorted(default_registry().current)
RUN_SCOPED_NAMESPACES = ("commands", "events", "invoke", "results", "traces")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "avro"
T0 = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)


def _start_run(**overrides: Any) -> StartRun:
    fields: dict[str, Any] = {"run_id": "r-1", "workflow_id": "wf", "inputs": {"x": 1}}
    return StartRun(**(fields | overrides))


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_every_record_type_round_trips(name: str) -> None:
    model = MODELS[name]
    record = sample_record(model)
    data = encode(record)
    assert data[:2] == MAGIC
    assert data[2:HEADER_SIZE] == default_registry().entry(name).fingerprint
    assert record_type_of(data) == name
    assert decode(data, model) == record


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_samples_are_deterministic_and_complete(name: str) -> None:
    model = MODELS[name]
    record = sample_record(model)
    assert record == sample_record(model)
    assert all(getattr(record, f) is not None for f in model.model_fields)
    assert getattr(record, "schema_version") == model.SCHEMA_VERSION  # noqa: B009


def test_every_schema_file_has_a_model_and_the_envelope() -> None:
    for path in sorted(AVRO_DIR.glob("*.avsc")):
        raw = json.loads(path.read_text())
        name = full_name(raw)
        if raw["type"] != "record":
            continue
        assert name == MODELS[name].AVRO_NAME
        if not is_top_level(raw):
            continue
        types = {f["name"]: f["type"] for f in raw["fields"]}
        assert types["event_id"] == "string", name
        assert types["seq"] == "long", name
        assert types["occurred_at"] == {"type": "long", "logicalType": "timestamp-millis"}, name
        assert types["schema_version"] == "int", name
        if name.split(".")[1] in RUN_SCOPED_NAMESPACES:
            assert types["run_id"] == "string", name


def test_single_object_fingerprint_follows_the_avro_spec() -> None:
    # Test vector from the Avro spec's schema-tests: CRC-64-AVRO of "null", little-endian.
    assert schema_fingerprint("null") == (7195948357588979594).to_bytes(8, "little")  # type: ignore[arg-type]


def test_envelope_defaults_for_producers() -> None:
    a, b = _start_run(), _start_run()
    assert a.event_id != b.event_id and a.command_id != b.command_id
    assert a.seq == -1 and a.schema_version == StartRun.SCHEMA_VERSION
    assert a.occurred_at.tzinfo is UTC and a.occurred_at.microsecond % 1000 == 0
    assert a.source == "api" and a.idempotency_key is None


def test_json_fields_travel_as_canonical_json() -> None:
    record = _start_run(inputs={"b": [1, {"z": None, "y": "é"}], "a": 1.5})
    assert record.to_avro()["inputs"] == '{"a":1.5,"b":[1,{"y":"é","z":null}]}'
    assert decode(encode(record), StartRun).inputs == {"a": 1.5, "b": [1, {"y": "é", "z": None}]}


@pytest.mark.parametrize("value", ["just a string", 7, None, [], {"nested": {"k": [True]}}])
def test_any_json_value_round_trips(value: object) -> None:
    assert decode(encode(_start_run(inputs=value)), StartRun).inputs == value


@pytest.mark.parametrize("value", [{1, 2}, object(), math.nan, {"k": b"bytes"}])
def test_json_fields_reject_values_json_cannot_hold(value: object) -> None:
    with pytest.raises(ValidationError, match="JSON"):
        _start_run(inputs=value)


def test_nullable_json_field_none_means_absent() -> None:
    step = StepRef(step_id="s", node="n", node_version="1.0.0")
    record = StepSucceeded(run_id="r", seq=3, step=step, attempt=1, cache_hit=True, duration_ms=0)
    assert record.output is None and record.to_avro()["output"] is None
    assert decode(encode(record)) == record


def test_enums_are_str_enums_and_validate() -> None:
    mutation = GraphMutation(type="add_step", step_id="s", data={})  # type: ignore[arg-type]
    assert mutation.type is GraphMutationType.ADD_STEP and isinstance(mutation.type, str)
    record = MutateGraph(run_id="r", mutation=mutation)
    assert record.to_avro()["mutation"]["type"] == "add_step"
    decoded = decode(encode(record), MutateGraph).mutation
    assert decoded is not None and decoded.type is GraphMutationType.ADD_STEP
    with pytest.raises(ValidationError):
        GraphMutation(type="rename_step", step_id="s", data={})  # type: ignore[arg-type]


def test_timestamps_are_aware_utc_milliseconds() -> None:
    plus_two = timezone(timedelta(hours=2))
    record = CancelRun(run_id="r", occurred_at=datetime(2024, 5, 6, 9, 8, 9, 123456, plus_two))
    assert record.occurred_at == T0 and record.occurred_at.tzinfo is UTC
    decoded = decode(encode(record), CancelRun)
    assert decoded.occurred_at == T0 and decoded.occurred_at.tzinfo is not None
    with pytest.raises(ValidationError, match="timezone"):
        CancelRun(run_id="r", occurred_at=datetime(2024, 5, 6))


def test_models_are_frozen_and_strict() -> None:
    record = CancelRun(run_id="r")
    with pytest.raises(ValidationError):
        record.run_id = "other"
    with pytest.raises(ValidationError, match="extra"):
        CancelRun(run_id="r", surprise=1)  # type: ignore[call-arg]


def test_maps_and_nested_optionals_round_trip() -> None:
    result = NodeResult(
        run_id="r",
        seq=7,
        invocation_id="i",
        attempt=2,
        step=StepRef(step_id="s", node="http.request", node_version="1.2.0"),
        status=TraceStatus.ERROR,
        error=ErrorInfo(error_class="HttpTimeout", message="timed out", retryable=True),
        metrics={"bytes": 10.0, "ms": 3.5},
        started_at=T0,
        finished_at=T0 + timedelta(seconds=1),
    )
    assert decode(encode(result)) == result


def test_decode_restricts_to_expected_types() -> None:
    data = encode(CancelRun(run_id="r"))
    assert isinstance(decode(data, (StartRun, CancelRun)), CancelRun)
    with pytest.raises(UnexpectedRecordTypeError, match=r"reflux.commands.StartRun.*CancelRun"):
        decode(data, StartRun)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc3\x01\x00",
        b'{"run_id": "r"}',
        b"\x00\x00\x00\x00\x01" + b"\x00" * 20,  # Confluent framing
    ],
)
def test_non_records_are_malformed(data: bytes) -> None:
    with pytest.raises(MalformedRecordError) as info:
        record_type_of(data)
    assert info.value.error_class == "MalformedRecord"
    with pytest.raises(MalformedRecordError):
        decode(data)


def test_corrupt_bodies_are_malformed() -> None:
    data = encode(sample_record(Trace))
    with pytest.raises(MalformedRecordError, match="does not match"):
        decode(data[:-5])
    with pytest.raises(MalformedRecordError, match="trailing bytes"):
        decode(data + b"\x00")
    with pytest.raises(MalformedRecordError):
        decode(data[:HEADER_SIZE] + b"\xff" * 40)


def test_invalid_json_inside_a_valid_body_is_malformed() -> None:
    entry = default_registry().entry("reflux.commands.StartRun")
    datum = _start_run().to_avro() | {"inputs": "{not json"}
    from schemas.serde import encode_datum

    with pytest.raises(MalformedRecordError, match="not a valid model"):
        decode(encode_datum(entry, datum))


def test_unknown_fingerprint_is_reported_with_the_fix() -> None:
    data = MAGIC + bytes.fromhex("0123456789abcdef") + b"\x00"
    with pytest.raises(UnknownSchemaError) as info:
        decode(data)
    assert info.value.error_class == "UnknownSchema"
    assert info.value.fingerprint.hex() == "0123456789abcdef"
    message = str(info.value)
    assert "0123456789abcdef" in message and "schemas/avro/history/" in message
    with pytest.raises(UnknownSchemaError):
        record_type_of(data)


def test_error_hierarchy_is_rooted() -> None:
    for error in (MalformedRecordError, UnknownSchemaError, UnexpectedRecordTypeError):
        assert issubclass(error, SchemaError)
        assert error.retryable is False
    assert UnexpectedRecordTypeError.error_class == "UnexpectedRecordType"


def test_old_trace_decodes_with_defaults_and_is_rewritten_as_current() -> None:
    old = decode((FIXTURES / "reflux.traces.Trace.v1.bin").read_bytes(), Trace)
    assert old.schema_version == 1 and old.context == {}
    rewritten = decode(encode(old), Trace)
    assert rewritten.schema_version == Trace.SCHEMA_VERSION
    assert rewritten.model_copy(update={"schema_version": 1}) == old
