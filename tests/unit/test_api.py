"""Pure parts of the HTTP API: signatures, error shapes, body decoding, ids, validation mapping,
time-travel decoding and the OpenAPI contract. No services needed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.bodies import decode_body, media_type
from api.errors import (
    ConflictError,
    FieldIssue,
    NotFoundError,
    RequestInvalidError,
    install_error_handlers,
    path_to_loc,
    validation_detail,
)
from api.ids import run_id_for
from api.prometheus import route_template
from api.signatures import SignatureError, sign, verify_signature
from api.store import request_fingerprint
from api.timetravel import UnknownEventTypeError, event_model, state_at, state_view
from api.validation import check_inputs, parse_definition
from foundation.settings import Settings
from processors.triggers.mapping import run_id_for_trigger
from projections.postgres.queries import RunEventRow
from schemas.models import RunStarted, StepRef, StepScheduled
from streams.producer import DeliveryError, DeliveryFailure

DEFINITION: dict[str, Any] = {
    "id": "order-sync",
    "inputs": {"order_id": {"type": "integer", "required": True}},
    "steps": [
        {"id": "fetch", "node": "http.request@^1", "params": {"url": "{{ inputs.order_id }}"}},
        {"id": "store", "node": "transform@^1", "needs": ["fetch"], "params": {"x": "1"}},
    ],
}


# -- signatures ---------------------------------------------------------------------------------


def test_signature_roundtrip_and_known_vector() -> None:
    body = b'{"order_id": 42}'
    header = sign("s3cret", body)
    # Known HMAC-SHA256 vector, computed independently (RFC 4231 style check of the scheme).
    import hashlib
    import hmac

    assert header == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    verify_signature("s3cret", body, header)
    verify_signature("s3cret", body, header.upper().replace("SHA256=", "sha256="))


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (None, "has none"),
        ("", "has none"),
        ("md5=abcd", "start with 'sha256='"),
        ("sha256=" + "0" * 64, "does not match"),
    ],
)
def test_signature_rejections_say_why(header: str | None, fragment: str) -> None:
    with pytest.raises(SignatureError, match=fragment):
        verify_signature("s3cret", b"{}", header)


def test_signature_covers_exact_bytes_and_secret() -> None:
    header = sign("s3cret", b'{"a":1}')
    with pytest.raises(SignatureError):
        verify_signature("s3cret", b'{"a": 1}', header)
    with pytest.raises(SignatureError):
        verify_signature("other", b'{"a":1}', header)


# -- error shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "loc"),
    [
        ("steps[1].needs[0]", ["steps", 1, "needs", 0]),
        ("inputs.order_id", ["inputs", "order_id"]),
        ("id", ["id"]),
        ("$", []),
        ("", []),
    ],
)
def test_path_to_loc(path: str, loc: list[str | int]) -> None:
    assert path_to_loc(path) == loc


def test_validation_detail_prefixes_location() -> None:
    detail = validation_detail([FieldIssue("steps[0].needs", "cycle", "workflow_invalid")])
    assert detail == [
        {"loc": ["body", "steps", 0, "needs"], "msg": "cycle", "type": "workflow_invalid"}
    ]


def _error_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/missing")
    def missing() -> None:
        raise NotFoundError("run 'r1' not found")

    @app.get("/conflict")
    def conflict() -> None:
        raise ConflictError("Expected step 'fetch' to be failed, but it is running")

    @app.get("/invalid")
    def invalid() -> None:
        raise RequestInvalidError([FieldIssue("inputs.x", "required input is missing", "t")])

    @app.get("/kafka")
    def kafka() -> None:
        raise DeliveryError([DeliveryFailure("t", b"k", "_MSG_TIMED_OUT", "timed out", True)])

    return app


@pytest.mark.parametrize(
    ("path", "status", "detail"),
    [
        ("/missing", 404, "run 'r1' not found"),
        ("/conflict", 409, "Expected step 'fetch' to be failed, but it is running"),
        (
            "/invalid",
            422,
            [{"loc": ["body", "inputs", "x"], "msg": "required input is missing", "type": "t"}],
        ),
    ],
)
def test_error_bodies(path: str, status: int, detail: object) -> None:
    response = TestClient(_error_app()).get(path)
    assert response.status_code == status
    assert response.json() == {"detail": detail}


def test_kafka_failure_is_503_with_a_clear_message() -> None:
    response = TestClient(_error_app()).get("/kafka")
    assert response.status_code == 503
    assert response.json()["detail"].startswith("Kafka is unavailable")
    assert "_MSG_TIMED_OUT" in response.json()["detail"]


# -- bodies -------------------------------------------------------------------------------------


def test_media_type_defaults_and_parameters() -> None:
    assert media_type(None) == "application/json"
    assert media_type("Application/YAML; charset=utf-8") == "application/yaml"


def test_decode_body_errors_are_422_at_body() -> None:
    assert decode_body(b'{"a": [1]}', "application/json") == {"a": [1]}
    with pytest.raises(RequestInvalidError) as bad_json:
        decode_body(b"{nope", "application/json")
    assert bad_json.value.detail[0]["loc"] == ["body"]
    assert bad_json.value.detail[0]["type"] == "json_invalid"
    with pytest.raises(RequestInvalidError) as bad_type:
        decode_body(b"x", "text/plain")
    assert bad_type.value.detail[0]["type"] == "content_type"


# -- ids and fingerprints -----------------------------------------------------------------------


def test_keyed_run_ids_are_deterministic_and_match_the_trigger_router() -> None:
    assert run_id_for("webhook", "delivery-1") == run_id_for("webhook", "delivery-1")
    assert run_id_for("webhook", "delivery-1") == run_id_for_trigger("webhook", "delivery-1")
    assert run_id_for("webhook", "delivery-1") != run_id_for("api", "delivery-1")
    assert uuid.UUID(run_id_for("api", None)).version == 4
    assert run_id_for("api", None) != run_id_for("api", None)
    with pytest.raises(ValueError, match="non-empty"):
        run_id_for("api", "")


def test_request_fingerprint_ignores_key_order_only() -> None:
    a = request_fingerprint("wf", None, {"x": 1, "y": [1, 2]})
    assert a == request_fingerprint("wf", None, {"y": [1, 2], "x": 1})
    assert a != request_fingerprint("wf", None, {"x": 2, "y": [1, 2]})
    assert a != request_fingerprint("wf", 1, {"x": 1, "y": [1, 2]})


# -- validation mapping -------------------------------------------------------------------------


def test_invalid_definition_names_the_field_path() -> None:
    steps: list[dict[str, Any]] = [dict(step) for step in DEFINITION["steps"]]
    steps[1]["needs"] = ["fetsh"]
    bad = {**DEFINITION, "steps": steps}
    with pytest.raises(RequestInvalidError) as exc:
        parse_definition(bad)
    locs = [issue["loc"] for issue in exc.value.detail]
    assert ["body", "steps", 1, "needs", 0] in locs
    assert {issue["type"] for issue in exc.value.detail} == {"workflow_invalid"}


def test_code_run_limits_over_the_sandbox_maximum_are_refused_at_registration() -> None:
    """docs/decisions/0042: literal limits above REFLUX_SANDBOX_MAX_* (default memMb 4096)."""
    params: dict[str, Any] = {"lang": "python", "entry": "m.py", "code": "1"}
    step = {"id": "run", "node": "code.run", "params": {**params, "limits": {"memMb": 8192}}}
    with pytest.raises(RequestInvalidError) as exc:
        parse_definition({"id": "sandboxed", "steps": [step]})
    (issue,) = exc.value.detail
    assert issue["loc"] == ["body", "steps", 0, "params", "limits", "memMb"]
    assert "at most 4096" in issue["msg"] and "REFLUX_SANDBOX_MAX_MEM_MB" in issue["msg"]
    step["params"] = {**params, "limits": {"memMb": 4096}}
    parse_definition({"id": "sandboxed", "steps": [step]})


def test_inputs_errors_point_into_inputs_or_the_body() -> None:
    definition = parse_definition(DEFINITION)
    assert check_inputs(definition, {"order_id": 7}) == {"order_id": 7}
    with pytest.raises(RequestInvalidError) as in_field:
        check_inputs(definition, {"order_id": "x", "zzz": 1})
    assert sorted(i["loc"] for i in in_field.value.detail) == [
        ["body", "inputs", "order_id"],
        ["body", "inputs", "zzz"],
    ]
    with pytest.raises(RequestInvalidError) as as_body:
        check_inputs(definition, {}, under_inputs=False)
    assert as_body.value.detail[0]["loc"] == ["body", "order_id"]
    assert as_body.value.detail[0]["type"] == "inputs_invalid"


# -- time travel --------------------------------------------------------------------------------


def _row(event: RunStarted | StepScheduled) -> RunEventRow:
    return RunEventRow(
        run_id=event.run_id,
        seq=event.seq,
        event_type=type(event).__name__,
        event_id=event.event_id,
        occurred_at=event.occurred_at,
        payload=event.model_dump(mode="json"),
    )


def test_state_is_folded_from_projected_payloads() -> None:
    definition = parse_definition(DEFINITION).to_json_dict()
    now = datetime.now(UTC)
    started = RunStarted(
        run_id="r1",
        seq=0,
        workflow_id="order-sync",
        workflow_version=1,
        inputs={"order_id": 1},
        definition=definition,
        source="api",
        occurred_at=now,
    )
    scheduled = StepScheduled(
        run_id="r1",
        seq=1,
        step=StepRef(step_id="fetch", node="http.request", node_version="1.0.0"),
        attempt=1,
        params={"url": "1"},
    )
    assert state_view(state_at([])) == {}
    at_0 = state_view(state_at([_row(started)]))
    at_1 = state_view(state_at([_row(started), _row(scheduled)]))
    assert at_0["last_seq"] == 0 and at_0["steps"]["fetch"]["status"] == "pending"
    assert at_1["last_seq"] == 1 and at_1["steps"]["fetch"]["status"] == "scheduled"
    assert at_1["steps"]["fetch"]["attempt"] == 1


def test_unknown_event_type_is_named() -> None:
    row = RunEventRow("r1", 3, "Mystery", "e", datetime.now(UTC), {})
    with pytest.raises(UnknownEventTypeError, match="'Mystery'"):
        event_model(row)


# -- OpenAPI ------------------------------------------------------------------------------------


def test_openapi_lists_every_endpoint_with_its_statuses() -> None:
    spec = create_app(Settings()).openapi()
    expected = {
        ("post", "/v1/workflows"): {"201", "422", "503"},
        ("get", "/v1/workflows/{workflow_id}/versions/{version}"): {"200", "404"},
        ("post", "/v1/runs"): {"200", "202", "404", "409", "422", "503"},
        ("get", "/v1/runs"): {"200", "422"},
        ("get", "/v1/runs/{run_id}"): {"200", "404"},
        ("get", "/v1/runs/{run_id}/events"): {"200", "404"},
        ("get", "/v1/runs/{run_id}/state"): {"200", "404", "422"},
        ("get", "/v1/runs/{run_id}/stream"): {"200", "404"},
        ("post", "/v1/runs/{run_id}/cancel"): {"200", "202", "404", "409"},
        ("post", "/v1/runs/{run_id}/pause"): {"200", "202", "404", "409"},
        ("post", "/v1/runs/{run_id}/resume"): {"200", "202", "404", "409"},
        ("post", "/v1/runs/{run_id}/steps/{step_id}/redrive"): {"200", "202", "404", "409"},
        ("post", "/v1/runs/{run_id}/rebind"): {"200", "202", "404", "409"},
        ("post", "/v1/hooks/{workflow_id}"): {"202", "401", "404", "422"},
        ("get", "/healthz"): {"200"},
        ("get", "/readyz"): {"200", "503"},
        ("get", "/metrics"): {"200"},
    }
    for (method, path), statuses in expected.items():
        operation = spec["paths"][path][method]
        assert statuses <= set(operation["responses"]), (method, path)
    body = spec["paths"]["/v1/workflows"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/yaml"} <= set(body)
    start = spec["paths"]["/v1/runs"]["post"]["responses"]
    assert start["202"]["content"]["application/json"]["schema"]["$ref"].endswith("RunAccepted")


# -- metrics ------------------------------------------------------------------------------------


class _Route:
    def __init__(self, path: str) -> None:
        self.path = path


@pytest.mark.parametrize(
    ("path", "template", "expected"),
    [
        ("/v1/runs/abc", "/runs/{run_id}", "/v1/runs/{run_id}"),
        ("/v1/runs/abc", "/v1/runs/{run_id}", "/v1/runs/{run_id}"),
        ("/v1/runs", "/runs", "/v1/runs"),
        ("/healthz", "/healthz", "/healthz"),
    ],
)
def test_route_template_restores_router_prefixes(path: str, template: str, expected: str) -> None:
    assert route_template({"path": path, "route": _Route(template)}) == expected


def test_unmatched_requests_share_one_label() -> None:
    assert route_template({"path": "/random/123"}) == "<unmatched>"


# -- CLI ----------------------------------------------------------------------------------------


def test_api_command_parses_host_and_port() -> None:
    import argparse

    from api.cli import add_api_commands, serve

    parser = argparse.ArgumentParser()
    add_api_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["api", "--host", "0.0.0.0", "--port", "9000"])
    assert (args.host, args.port, args.handler) == ("0.0.0.0", 9000, serve)
    defaults = parser.parse_args(["api"])
    assert (defaults.host, defaults.port, defaults.log_level) == ("127.0.0.1", 8080, "info")
