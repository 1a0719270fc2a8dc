"""The JSON wire format of the traces topic (schemas/trace_json.py), without any service."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import MalformedRecordError
from schemas.models import ErrorInfo, Trace, TraceStatus
from schemas.registry import default_registry
from schemas.samples import sample_record
from schemas.trace_json import TIMESTAMP_FIELDS, TraceJsonError, decode_trace, encode_trace


def _minimal(**overrides: Any) -> Trace:
    fields: dict[str, Any] = {
        "run_id": "run-1",
        "workflow_id": "wf",
        "workflow_version": 3,
        "step_id": "fetch",
        "node": "http.request",
        "node_version": "1.2.0",
        "status": TraceStatus.OK,
        "start": datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC),
        "end": datetime(2024, 5, 6, 7, 8, 9, 456000, tzinfo=UTC),
        "latency_ms": 333,
        "inputs_hash": "ab" * 32,
        "retry_count": 0,
        "cache_hit": False,
    }
    fields.update(overrides)
    return Trace(**fields)


def _json(trace: Trace) -> dict[str, Any]:
    value = json.loads(encode_trace(trace))
    assert isinstance(value, dict)
    return value


def test_timestamp_fields_come_from_the_avro_schema() -> None:
    assert TIMESTAMP_FIELDS == ("occurred_at", "start", "end")


def test_every_field_round_trips() -> None:
    trace = sample_record(Trace)
    assert trace.error is not None and trace.cost_tokens is not None  # every branch is set
    assert decode_trace(encode_trace(trace)) == trace


def test_nulls_and_empty_maps_round_trip() -> None:
    trace = _minimal()
    assert trace.error is None and trace.invocation_id is None
    assert decode_trace(encode_trace(trace)) == trace


def test_the_object_has_exactly_the_avro_fields_in_their_json_shapes() -> None:
    trace = _minimal(
        status=TraceStatus.ERROR,
        error=ErrorInfo(error_class="HttpTimeout", message="no answer", retryable=True),
        metrics={"bytes": 12.5},
        context={"region": "eu"},
        cost_tokens=17,
    )
    value = _json(trace)
    avro_fields = [f["name"] for f in default_registry().named[Trace.AVRO_NAME]["fields"]]
    assert list(value) == avro_fields
    assert value["start"] == 1714979289123
    assert value["end"] == 1714979289456
    assert value["occurred_at"] == (trace.occurred_at - datetime(1970, 1, 1, tzinfo=UTC)) // (
        timedelta(milliseconds=1)
    )
    assert value["status"] == "error"
    assert value["error"] == {
        "error_class": "HttpTimeout",
        "message": "no answer",
        "retryable": True,
    }
    assert value["metrics"] == {"bytes": 12.5}
    assert value["context"] == {"region": "eu"}
    assert value["cost_tokens"] == 17
    assert value["invocation_id"] is None


def test_encoding_is_compact_utf8() -> None:
    data = encode_trace(_minimal(context={"note": "été"}))
    assert b": " not in data and b", " not in data
    assert "été".encode() in data


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),  # negative milliseconds
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2038, 1, 19, 3, 14, 8, 1000, tzinfo=UTC),  # past 32-bit seconds
        datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
    ],
)
def test_timestamps_are_exact_milliseconds(moment: datetime) -> None:
    trace = _minimal(start=moment, end=moment)
    assert decode_trace(encode_trace(trace)).start == moment


def test_schema_version_is_written_as_current() -> None:
    assert _json(_minimal(schema_version=1))["schema_version"] == Trace.SCHEMA_VERSION


def test_a_version_1_trace_without_context_decodes_with_the_default() -> None:
    value = _json(_minimal())
    del value["context"]
    value["schema_version"] = 1
    trace = decode_trace(json.dumps(value).encode())
    assert trace.context == {} and trace.schema_version == 1


def test_non_finite_metrics_are_refused_on_encode() -> None:
    with pytest.raises(TraceJsonError, match=r"Expected finite metric values.*\['bad'\]"):
        encode_trace(_minimal(metrics={"ok": 1.0, "bad": float("nan")}))


def _mutated(**changes: Any) -> bytes:
    value = _json(_minimal())
    for key, new in changes.items():
        if new is _DELETE:
            del value[key]
        else:
            value[key] = new
    return json.dumps(value).encode()


_DELETE = object()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", r"Expected a UTF-8 JSON object, but could not parse"),
        (b"\xff\xfe", r"Expected a UTF-8 JSON object"),
        (b"", r"Expected a UTF-8 JSON object"),
        (b"[1, 2]", r"Expected a JSON object, but got list"),
        (b'"trace"', r"Expected a JSON object, but got str"),
        (_mutated(node=_DELETE), r"node: Field required"),
        (_mutated(surprise=1), r"surprise: Extra inputs are not permitted"),
        (_mutated(seq="5"), r"seq: Input should be a valid integer"),
        (_mutated(cache_hit=1), r"cache_hit: Input should be a valid boolean"),
        (_mutated(status="exploded"), r"status: Input should be 'ok'"),
        (_mutated(start="2024-05-06T07:08:09Z"), r"'start' to be epoch milliseconds.*str"),
        (_mutated(start=1.5), r"'start' to be epoch milliseconds.*float"),
        (_mutated(end=True), r"'end' to be epoch milliseconds.*bool"),
        (_mutated(end=10**18), r"'end' to be epoch milliseconds within years"),
        (_mutated(metrics={"a": "fast"}), r"metrics\.a: Input should be a valid number"),
        (_mutated(error={"error_class": "X"}), r"error\.message: Field required"),
        (_mutated(schema_version=3), r"schema version <= 2, but got version 3"),
        (_mutated(schema_version="2"), r"schema_version to be a positive integer"),
    ],
)
def test_malformed_input_fails_with_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(TraceJsonError, match=message) as info:
        decode_trace(data)
    assert isinstance(info.value, MalformedRecordError)
    assert info.value.error_class == "MalformedTraceJson"
    assert info.value.retryable is False


def test_non_bytes_are_refused() -> None:
    with pytest.raises(TraceJsonError, match="Expected bytes, but got str"):
        decode_trace("{}")  # type: ignore[arg-type]
