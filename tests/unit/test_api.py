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
from api.signatures import (
    SignatureError,
    callback_key,
    sign,
    sign_callback,
    signature_header,
    verify,
)
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


PATH = "/v1/hooks/order-sync"
NOW = 1_800_000_000


def test_signature_roundtrip_and_known_vector() -> None:
    body = b'{"order_id": 42}'
    header = sign("s3cret", "POST", PATH, body, timestamp=NOW)
    # Known HMAC-SHA256 vector, computed independently: "t.METHOD.PATH." + body.
    import hashlib
    import hmac

    message = f"{NOW}.POST.{PATH}.".encode() + body
    assert header == f"t={NOW},v1=" + hmac.new(b"s3cret", message, hashlib.sha256).hexdigest()
    verified = verify(header, "s3cret", "POST", PATH, body, now=NOW + 10)
    assert verified.timestamp == NOW
    assert verified.expires_in_s == 300 - 10 + 1
    assert verified.replay_id == hashlib.sha256(message).hexdigest()
    verify(
        header.upper().replace("T=", "t=").replace("V1=", "v1="),
        "s3cret",
        "POST",
        PATH,
        body,
        now=NOW,
    )


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("sha256=" + "0" * 64, "malformed"),
        (f"t={NOW}", "malformed"),
        ("v1=" + "0" * 64, "malformed"),
        (f"t={NOW},v1=abcd", "malformed"),
        (f"t=x{NOW},v1=" + "0" * 64, "malformed"),
        (f"t={NOW},t={NOW},v1=" + "0" * 64, "malformed"),
        (f"t={NOW}," + ",".join(["v1=" + "0" * 64] * 9), "malformed"),
        (f"t={NOW},v1=" + "0" * 64, "wrong"),
        (f"t={NOW - 301},v1=" + "0" * 64, "too_old"),
        (f"t={NOW + 301},v1=" + "0" * 64, "too_old"),
    ],
)
def test_signature_rejections_say_why(header: str | None, reason: str) -> None:
    with pytest.raises(SignatureError) as caught:
        verify(header, "s3cret", "POST", PATH, b"{}", now=NOW)
    assert caught.value.reason == reason, caught.value


def test_signature_covers_time_method_path_bytes_and_secret() -> None:
    header = sign("s3cret", "POST", PATH, b'{"a":1}', timestamp=NOW)
    for method, path, body, secret in [
        ("POST", PATH, b'{"a": 1}', "s3cret"),  # same JSON value, other bytes
        ("POST", PATH, b'{"a":1}', "other"),
        ("PUT", PATH, b'{"a":1}', "s3cret"),
        ("POST", "/v1/hooks/other-workflow", b'{"a":1}', "s3cret"),
    ]:
        with pytest.raises(SignatureError) as caught:
            verify(header, secret, method, path, body, now=NOW)
        assert caught.value.reason == "wrong"
    # Another timestamp with the same MAC (a replay re-dated) does not verify either.
    forged = header.replace(f"t={NOW}", f"t={NOW + 100}")
    with pytest.raises(SignatureError, match="none matches"):
        verify(forged, "s3cret", "POST", PATH, b'{"a":1}', now=NOW + 100)


def test_signature_rotation_accepts_either_secret_and_names_one_message() -> None:
    body = b"{}"
    both = sign(["new", "old"], "POST", PATH, body, timestamp=NOW)
    assert both.count("v1=") == 2
    only_old = sign("old", "POST", PATH, body, timestamp=NOW)
    ids = {
        verify(both, "new", "POST", PATH, body, now=NOW).replay_id,
        verify(both, ["old"], "POST", PATH, body, now=NOW).replay_id,
        verify(only_old, ["new", "old"], "POST", PATH, body, now=NOW).replay_id,
    }
    # Stripping one v1 of a rotated header is still the same message for the replay store.
    assert len(ids) == 1
    with pytest.raises(SignatureError):
        verify(only_old, "new", "POST", PATH, body, now=NOW)


def test_the_legacy_header_alone_is_refused_with_its_own_reason() -> None:
    with pytest.raises(SignatureError) as caught:
        signature_header({"X-Reflux-Signature": "sha256=" + "0" * 64})
    assert caught.value.reason == "legacy" and "no longer accepted" in str(caught.value)
    assert signature_header({"Reflux-Signature": "t=1,v1=x"}) == "t=1,v1=x"
    assert signature_header({}) is None


def test_callback_signatures_are_bound_to_the_run_and_step() -> None:
    body = b'{"approved": true}'
    header = sign_callback("step-secret", "run-a", "approve", body, timestamp=NOW)
    key_a = callback_key("step-secret", "run-a", "approve")
    assert key_a != callback_key("step-secret", "run-b", "approve")
    assert key_a != callback_key("step-secret", "run-a", "other")
    verify(header, key_a, "POST", "/v1/hooks/runs/run-a/steps/approve", body, now=NOW)
    key_b = callback_key("step-secret", "run-b", "approve")
    with pytest.raises(SignatureError):  # sent to run B's path: neither key nor path fit
        verify(header, key_b, "POST", "/v1/hooks/runs/run-b/steps/approve", body, now=NOW)


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
        ("post", "/v1/workflows/validate"): {"200", "409", "422", "503"},
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
