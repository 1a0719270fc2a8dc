"""Parse limits (foundation.parse_limits) and the API's request limits (api.limits,
api.responses) without services: the middleware answers before any route needs a backend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.app import body_limits, create_app
from api.config import ApiSettings
from api.limits import RequestLimitsMiddleware
from api.models.mutations import DecisionCreate, MutationCreate
from api.models.nodes import NodeVersionCreate, RolloutUpdate
from api.models.runs import RunCreate
from foundation.parse_limits import (
    MAX_DEPTH,
    ParseLimitError,
    load_json,
    load_yaml,
    storage_issues,
)
from foundation.settings import Settings
from tests.support.allocation import peak_allocation
from tests.support.oidc_issuer import local_issuer
from workflows import WorkflowValidationError
from workflows.validation import load_source


def billion_laughs(levels: int = 9, fan_out: int = 9) -> str:
    """The classic alias bomb: ``fan_out ** levels`` strings from a few hundred bytes."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghijklmnop"[: levels - 1]:
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * fan_out) + "]")
        previous = name
    return "\n".join(lines) + "\n"


# -- YAML ---------------------------------------------------------------------------------------


def test_a_yaml_alias_bomb_is_refused_before_it_expands() -> None:
    bomb = billion_laughs()
    assert len(bomb) < 600  # ~9**9 = 387 million strings once expanded
    with (
        peak_allocation() as peak,
        pytest.raises(ParseLimitError, match="expands to more than 100000 nodes") as refused,
    ):
        load_yaml(bomb)
    assert peak[0] < 1_000_000, f"allocated {peak[0]:,} bytes"
    assert refused.value.kind == "yaml_too_large"


def test_a_workflow_definition_bomb_is_a_validation_error_naming_the_limit() -> None:
    with (
        peak_allocation() as peak,
        pytest.raises(WorkflowValidationError, match="alias expansion limit"),
    ):
        load_source("id: x\n" + billion_laughs())
    assert peak[0] < 1_000_000, f"allocated {peak[0]:,} bytes"


def test_yaml_aliases_beyond_the_count_and_recursive_ones_are_refused() -> None:
    many = "a: &a 1\nb: [" + ", ".join(["*a"] * 101) + "]\n"
    with pytest.raises(ParseLimitError, match="more than 100 aliases"):
        load_yaml(many)
    with pytest.raises(ParseLimitError, match="refers to its own anchor"):
        load_yaml("a: &a [1, *a]\n")


def test_yaml_nesting_beyond_the_depth_is_refused_and_normal_anchors_still_work() -> None:
    with pytest.raises(ParseLimitError, match=f"deeper than {MAX_DEPTH} levels"):
        load_yaml("[" * 1000 + "]" * 1000)
    with pytest.raises(ParseLimitError, match="deeper than"):
        load_yaml("\n".join(" " * i + f"k{i}:" for i in range(MAX_DEPTH + 2)) + " 1\n")
    shared = "defaults: &d {retry: {max: 3}}\nsteps:\n  - {id: a, <<: *d}\n  - {id: b, <<: *d}\n"
    assert load_yaml(shared) == yaml.safe_load(shared)


# -- JSON ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 100_000])
def test_deep_json_is_a_parse_limit_error_not_a_recursion_error(depth: int) -> None:
    with pytest.raises(ParseLimitError, match=f"deeper than {MAX_DEPTH} levels"):
        load_json("[" * depth + "]" * depth)
    assert load_json("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None


def test_non_finite_numbers_nul_and_lone_surrogates_are_not_storable() -> None:
    with pytest.raises(ParseLimitError, match="NaN is not a JSON number"):
        load_json('{"a": NaN}')
    value = load_json('{"a": ["ok", "x\\u0000y"], "b\\u0000": 1, "c": 1e999, "d": "\\ud800"}')
    issues = {(i.path, i.type) for i in storage_issues(value)}
    assert issues == {
        ("a[1]", "nul_character"),
        ("b\\u0000", "nul_character"),
        ("c", "not_finite"),
        ("d", "invalid_unicode"),
    }
    assert storage_issues({"fine": [1, 2.5, "text", None, True]}) == []


# -- the API's request limits (answered before any route, so no backend is needed) -------------


@pytest.fixture
def client() -> Iterator[TestClient]:
    """An admin caller (a token of a local OIDC issuer: no database needed to authenticate), so
    the limits answer, not the authentication in front of them."""
    with local_issuer() as issuer:
        api = ApiSettings(
            max_body_bytes=4096,
            oidc_issuer=issuer.url,
            oidc_audience=issuer.audience,
            oidc_jwks_url=issuer.jwks_url,
        )
        token = issuer.token(roles=["admin"])
        # Not entered: no lifespan, no backends.
        yield TestClient(create_app(Settings(), api), headers={"Authorization": f"Bearer {token}"})


def _post(client: TestClient, url: str, body: bytes, **headers: str) -> Any:
    return client.post(url, content=body, headers={"content-type": "application/json", **headers})


def test_a_body_over_the_limit_is_413_naming_it_even_without_content_length(
    client: TestClient,
) -> None:
    declared = _post(client, "/v1/runs", b"x" * 5000)
    assert declared.status_code == 413
    assert "at most 4096 bytes (4 KiB) for POST /v1/runs" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # streamed: no Content-Length to trust
        yield b"[" + b" " * 3000
        yield b" " * 3000 + b"]"

    streamed = client.post("/v1/workflows", content=chunks())
    assert streamed.status_code == 413, streamed.text
    assert "at most 4096 bytes" in streamed.json()["detail"]


def test_the_import_route_has_its_own_larger_limit() -> None:
    api = ApiSettings(max_body_bytes=4096, max_import_body_bytes=8192)
    limits = RequestLimitsMiddleware(
        create_app(Settings(), api), max_bytes=4096, routes=body_limits(api)
    )
    assert limits.limit_for("POST", "/v1/runs/import") == 8192
    assert limits.limit_for("POST", "/v1/runs") == 4096
    assert limits.limit_for("POST", "/v1/hooks/runs/r1/steps/s1") == 1024 * 1024


def test_deep_json_bodies_are_422(client: TestClient) -> None:
    response = _post(client, "/v1/workflows", b"[" * 1000 + b"]" * 1000)
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"loc": ["body"], "msg": f"JSON nests deeper than {MAX_DEPTH} levels", "type": "too_deep"}
    ]


def test_nul_and_nan_in_bodies_path_and_query_are_422_naming_where(client: TestClient) -> None:
    body = json.dumps({"workflow_id": "a", "inputs": {"x": "a\u0000b"}}).encode()
    response = _post(client, "/v1/runs", body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "inputs", "x"]
    assert response.json()["detail"][0]["type"] == "nul_character"
    nan = _post(client, "/v1/nodes/a/versions/1.0.0/rollout", b'{"weight": NaN}')
    assert nan.status_code == 422 and nan.json()["detail"][0]["type"] == "not_finite"
    assert client.get("/v1/workflows/a%00b").json()["detail"][0]["loc"] == ["path"]
    query = client.get("/v1/runs", params={"workflow_id": "a\u0000"})
    assert query.status_code == 422
    assert query.json()["detail"][0]["loc"] == ["query", "workflow_id"]


def test_405_names_every_method_of_the_path_in_allow(client: TestClient) -> None:
    runs = client.delete("/v1/runs")
    assert runs.status_code == 405
    assert runs.headers["allow"] == "GET, HEAD, POST"
    rollout = client.post("/v1/nodes/http.request/versions/1.0.0/rollout")
    assert rollout.status_code == 405 and rollout.headers["allow"] == "PUT"


def test_every_v1_operation_declares_the_common_answers() -> None:
    spec = create_app(Settings()).openapi()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/v1/"):
                assert {"413", "422", "503"} <= set(operation["responses"]), (method, path)
    validation = spec["paths"]["/v1/workflows"]["get"]["responses"]["422"]
    schema = validation["content"]["application/json"]["schema"]["$ref"]
    assert schema == "#/components/schemas/ValidationErrorBody"
    assert "ValidationErrorBody" in spec["components"]["schemas"]


# -- what storage can hold: strict types ---------------------------------------------------------


def test_a_node_version_whose_parts_do_not_fit_a_postgres_integer_is_refused() -> None:
    with pytest.raises(ValidationError, match="at most 2147483647") as refused:
        NodeVersionCreate.model_validate_json('{"name": "a", "version": "2147483648.0.0"}')
    assert refused.value.errors()[0]["loc"] == ("version",)
    assert NodeVersionCreate.model_validate_json('{"name": "a", "version": "2147483647.0.1"}')


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [
        (
            NodeVersionCreate,
            {"name": "a", "version": "1.0.0", "rollout_weight": True},
            "rollout_weight",
        ),
        (RolloutUpdate, {"weight": True}, "weight"),
        (RolloutUpdate, {"weight": "0.5"}, "weight"),
        (DecisionCreate, {"canary_weight": True}, "canary_weight"),
        (RunCreate, {"workflow_id": "w", "version": True}, "version"),
        (RunCreate, {"workflow_id": "w", "version": 2**31}, "version"),
        (
            MutationCreate,
            {
                "workflow_id": "w",
                "base_version": 2**40,
                "changes": [{"type": "remove_step", "step_id": "s"}],
                "rationale": "r",
            },
            "base_version",
        ),
    ],
)
def test_strict_types_refuse_booleans_strings_and_out_of_range_numbers(
    model: Any, body: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        model.model_validate_json(json.dumps(body))
    assert refused.value.errors()[0]["loc"][0] == field
    assert RolloutUpdate.model_validate_json('{"weight": 1}').weight == 1.0  # ints are numbers


# -- records from Kafka -------------------------------------------------------------------------


def test_a_trigger_whose_payload_nests_too_deep_is_malformed_not_a_crash() -> None:
    # Anything can produce onto `triggers`: the router must dead-letter it, not die on it.
    from schemas import serde
    from schemas.errors import MalformedRecordError
    from schemas.models import Trigger
    from schemas.registry import default_registry

    trigger = Trigger(
        source="kafka", source_key="k", idempotency_key="k", workflow_id="w", payload={}
    )
    datum = trigger.to_avro()
    datum["payload"] = "[" * 100_000 + "]" * 100_000
    raw = serde.encode_datum(default_registry().entry(Trigger.AVRO_NAME), datum)
    with pytest.raises(MalformedRecordError, match="nested too deeply"):
        serde.decode(raw, Trigger)


def test_the_cli_refuses_a_yaml_bomb_file(tmp_path: Any) -> None:
    import argparse

    from reflux.client import ClientError, mutations_file_body

    bomb = tmp_path / "ops.yaml"
    bomb.write_text(billion_laughs())
    args = argparse.Namespace(file=str(bomb), op=None, step=None, data=None, node=None)
    with peak_allocation() as peak, pytest.raises(ClientError, match="alias expansion limit"):
        mutations_file_body(args)
    assert peak[0] < 1_000_000, f"allocated {peak[0]:,} bytes"


def test_a_command_too_large_for_kafka_is_413_not_an_outage() -> None:
    from fastapi import FastAPI

    from api.errors import install_error_handlers
    from streams.producer import DeliveryError, DeliveryFailure

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/big")
    def big() -> None:
        failure = DeliveryFailure("t", None, "MSG_SIZE_TOO_LARGE", "Message size too large", False)
        raise DeliveryError([failure])

    @app.get("/down")
    def down() -> None:
        raise DeliveryError([DeliveryFailure("t", None, "_MSG_TIMED_OUT", "timed out", True)])

    client = TestClient(app)
    big_answer = client.get("/big")
    assert big_answer.status_code == 413
    assert "larger than Kafka accepts" in big_answer.json()["detail"]
    assert client.get("/down").status_code == 503


@pytest.mark.parametrize("body", [0, 1.5, True, None, [1]])
def test_a_definition_body_that_is_no_object_is_a_validation_error(body: Any) -> None:
    # Found by the fuzzer: `POST /v1/workflows` with the JSON body `0` was a 500.
    with pytest.raises(WorkflowValidationError, match="expected a mapping at the top level"):
        load_source(body)


@pytest.mark.parametrize("value", ["12.0", "0.15", "1700000000", 12, 1.5])
def test_times_are_iso_text_not_numbers(value: Any) -> None:
    # Found by the fuzzer: `?until=12.0` was read as 1970-01-01T00:00:12Z.
    from api.models.replays import SelectionIn

    with pytest.raises(ValidationError, match="Expected an ISO 8601 time"):
        SelectionIn.model_validate({"until": value})
    assert SelectionIn.model_validate({"until": "2025-03-04T10:00:00Z"}).until is not None
