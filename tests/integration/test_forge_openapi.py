"""The OpenAPI forge on the real services (issue 17, part 2): a small document of a local test
service (tests/integration/http_fixtures.py's ``/prices/{sku}``) -> ``POST /v1/forge/openapi``
(generated tests in the code.run sandbox, a draft in the catalog) -> promoted -> called by a
workflow run through ``reflux worker --artifacts`` (a real process, its sandbox reaching the
service through the egress proxy; the operator's allow list opens the loopback service), with
the API key from a granted secret; a body the document does not allow fails the step with
``OutputSchemaViolation`` naming the field."""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from reflux.cli import main
from tests.integration.engine_fixtures import Harness, HarnessFactory, api_client
from tests.integration.http_fixtures import HttpTestServer
from tests.integration.test_catalog import Env, env  # noqa: F401  # the catalog API fixture
from tests.integration.test_cli_client import api_url  # noqa: F401  # a real API server
from tests.support.processes import ArtifactWorkers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TOKEN = f"prices-{uuid.uuid4().hex}"


def prices_spec(server_url: str) -> dict[str, Any]:
    """The local service's document: one GET with a path and a query parameter, an API key,
    a typed response with examples."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "Prices", "version": "1.0.0"},
        "servers": [{"url": server_url}],
        "security": [{"api_key": []}],
        "components": {
            "securitySchemes": {"api_key": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}},
            "schemas": {
                "Price": {
                    "type": "object",
                    "required": ["sku", "price", "currency"],
                    "properties": {
                        "sku": {"type": "string"},
                        "price": {"type": "number", "minimum": 0},
                        "currency": {"type": "string", "enum": ["EUR", "USD"]},
                    },
                }
            },
        },
        "paths": {
            "/prices/{sku}": {
                "get": {
                    "operationId": "getPrice",
                    "summary": "The price of one SKU",
                    "parameters": [
                        {
                            "name": "sku",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1},
                        },
                        {
                            "name": "currency",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["EUR", "USD"]},
                            "example": "USD",
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "the price",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Price"},
                                    "examples": {
                                        "usd": {
                                            "value": {
                                                "sku": "a/b 1",
                                                "price": 7.5,
                                                "currency": "USD",
                                            }
                                        }
                                    },
                                }
                            },
                        },
                        "404": {"description": "no such SKU"},
                    },
                }
            },
            "/prices/{sku}/photo": {
                "put": {
                    "operationId": "putPhoto",
                    "parameters": [
                        {
                            "name": "sku",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "requestBody": {"content": {"image/png": {"schema": {"type": "string"}}}},
                    "responses": {"204": {"description": "stored"}},
                }
            },
        },
    }


def _forge(env: Env, body: dict[str, Any]) -> Any:  # noqa: F811
    return env.client.post("/v1/forge/openapi", json=body, params={"wait_ms": 10_000})


def test_the_api_forges_a_tested_draft_and_keeps_versions_immutable(env: Env) -> None:  # noqa: F811
    name = f"prices.t{uuid.uuid4().hex[:8]}"
    spec = prices_spec("http://127.0.0.1:18999")
    body = {"text": yaml.safe_dump(spec), "operation_id": "getPrice", "name": name}

    created = _forge(env, body)
    assert created.status_code == 201, created.text
    answer = created.json()
    assert created.headers["location"] == f"/v1/nodes/{name}/versions/0.1.0"
    assert (answer["name"], answer["version"], answer["status"]) == (name, "0.1.0", "draft")
    assert answer["digest"].startswith("sha256:") and answer["created"] is True
    assert answer["egress"] == ["127.0.0.1:18999"]
    assert answer["secrets"] == ["PRICES_API_KEY"]
    assert {t["name"]: t["passed"] for t in answer["tests"]} == {
        "test_usd": True,
        "test_server_error_is_retryable": True,
        "test_rate_limit_is_retryable": True,
        "test_client_error_is_not_retryable": True,
    }
    t = answer["timings"]
    assert 0 < t["sandbox_s"] < t["total_s"] and t["generate_s"] >= 0 and t["register_s"] > 0

    version = env.client.get(f"/v1/nodes/{name}/versions/0.1.0").json()
    assert version["status"] == "draft"
    assert version["manifest"]["artifact"]["digest"] == answer["digest"]
    assert version["manifest"]["output_schema"]["$defs"]["Price"]["required"] == [
        "sku",
        "price",
        "currency",
    ]

    # the same document again is the same artifact: nothing new
    again = _forge(env, {**body, "text": None, "document": spec})
    assert again.status_code == 200, again.text
    assert (again.json()["digest"], again.json()["created"]) == (answer["digest"], False)

    # another server is other code under the same version: refused
    moved = _forge(env, {**body, "server_url": "http://127.0.0.1:18998"})
    assert moved.status_code == 409, moved.text
    assert "supersede with a new version" in moved.json()["detail"]


def test_the_api_names_what_it_cannot_forge(env: Env) -> None:  # noqa: F811
    spec = prices_spec("http://127.0.0.1:18999")
    missing = _forge(env, {"document": spec, "operation_id": "getPrices"})
    assert missing.status_code == 422, missing.text
    (issue,) = missing.json()["detail"]
    assert issue["loc"] == ["body", "operation_id"]
    assert "has getPrice, putPhoto" in issue["msg"]

    photo = _forge(env, {"document": spec, "operation_id": "putPhoto"})
    assert photo.status_code == 422, photo.text
    (issue,) = photo.json()["detail"]
    assert issue["loc"] == ["body", "document"]
    assert issue["msg"].startswith("paths./prices/{sku}/photo.put.requestBody.content: ")
    assert "image/png" in issue["msg"]

    relative = copy.deepcopy(spec)
    relative["servers"] = [{"url": "/v1"}]
    no_server = _forge(env, {"document": relative, "operation_id": "getPrice"})
    assert no_server.status_code == 422
    assert "servers[0].url" in no_server.json()["detail"][0]["msg"]

    both = _forge(env, {"document": spec, "text": "{}", "operation_id": "getPrice"})
    assert both.status_code == 422
    assert "exactly one of document and text" in both.text


@pytest.fixture
def forge_engine(
    engine_harness: HarnessFactory, http: HttpTestServer, tmp_path: Path
) -> Iterator[tuple[Harness, subprocess.Popen[str]]]:
    """The engine and a ``reflux worker --artifacts`` process beside it that may reach the
    local service (operator allow list) and read ``PRICES_API_KEY`` for ``forge-prices``."""
    harness = engine_harness(client_id="forge-e2e")
    settings = harness.settings
    service = f"127.0.0.1:{urlsplit(http.url).port}"
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "PRICES_API_KEY").write_text(TOKEN + "\n")
    grant = {"workflow": "forge-prices", "versions": [1]}
    grants = {"PRICES_API_KEY": {"hosts": [service], "grants": [grant]}}
    (secrets_dir / "grants.yaml").write_text(yaml.safe_dump(grants))
    workers = ArtifactWorkers(
        settings,
        {"REFLUX_EGRESS_ALLOW": json.dumps([service]), "REFLUX_SECRETS_DIR": str(secrets_dir)},
    )
    try:
        yield harness, workers.start("forge")
    finally:
        workers.stop_all()


def test_a_forged_node_is_promoted_and_called_by_a_run(
    forge_engine: tuple[Harness, subprocess.Popen[str]], http: HttpTestServer
) -> None:
    h, worker = forge_engine
    spec = prices_spec(http.url)
    with api_client(h) as api:
        forged = api.post(
            "/v1/forge/openapi",
            json={"document": spec, "operation_id": "getPrice"},
            params={"wait_ms": 10_000},
        )
        assert forged.status_code == 201, forged.text
        node = forged.json()["name"]
        assert (node, forged.json()["status"]) == ("prices.get_price", "draft")
        for expected in ("staging", "production"):
            promoted = api.post(
                f"/v1/nodes/{node}/versions/0.1.0/promote", params={"wait_ms": 10_000}
            )
            assert promoted.status_code == 202, promoted.text
            assert promoted.json()["status"] == expected
    h.register(
        {
            "id": "forge-prices",
            "inputs": {"sku": {"type": "string", "required": True}},
            "steps": [
                {
                    "id": "price",
                    "node": f"{node}@^0.1.0",
                    "params": {"sku": "{{ inputs.sku }}", "currency": "USD"},
                }
            ],
            "outputs": {
                "price": "{{ steps.price.output.price }}",
                "currency": "{{ steps.price.output.currency }}",
            },
        }
    )

    def finished(run_id: str) -> Any:
        if worker.poll() is not None:
            pytest.fail(f"the artifact worker exited:\n{worker.stdout.read()}")  # type: ignore[union-attr]
        return h.wait(run_id, timeout=120)

    good = h.start("forge-prices", {"sku": "ab/c d"})
    bad = h.start("forge-prices", {"sku": "bad-1"})

    run = finished(good)
    assert run.status == "succeeded", run
    assert run.outputs == {"price": 9.0, "currency": "USD"}  # len("ab/c d") * 1.5
    assert h.steps(good)["price"].node_version == "0.1.0"
    call = next(r for r in http.log if r.path == "/prices/ab%2Fc%20d")
    assert (call.method, call.query) == ("GET", {"currency": ["USD"]})
    assert call.header("X-Api-Key") == TOKEN

    run = finished(bad)
    assert run.status == "failed", run
    error = h.steps(bad)["price"].error
    assert error is not None and error["error_class"] == "OutputSchemaViolation", error
    assert "output.price: 'twelve' is not of type 'number'" in error["message"], error
    assert error["retryable"] is False
    assert "StepRetryScheduled" not in [e.event_type for e in h.events(bad)]


def test_the_cli_forges_through_the_api(
    api_url: str,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = tmp_path / "prices.yaml"
    spec.write_text(yaml.safe_dump(prices_spec("http://127.0.0.1:18997")))
    argv = ["forge", "openapi", str(spec), "--operation", "getPrice", "--api", api_url]
    assert main([*argv, "--name", "prices.cli", "--secret", "PRICE_TOKEN"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("prices.cli@0.1.0  draft  sha256:"), out
    assert "tests: 4/4 passed in the sandbox" in out
    assert "egress 127.0.0.1:18997  secrets PRICE_TOKEN" in out
    assert "timings: generate " in out and "sandbox " in out and "total " in out

    assert main([*argv, "--name", "prices.cli", "--secret", "PRICE_TOKEN", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["name"], again["created"]) == ("prices.cli", False)

    # checked locally: nothing is sent for an operation the document does not have
    assert main([*argv[:4], "getPrices", "--api", api_url]) == 2
    assert "[OperationNotFound]" in capsys.readouterr().err


def _breaking_retries(real: Any) -> Any:
    """The generator, but its node gets 5xx wrong (a generator bug the tests must catch)."""

    def generate(*args: Any, **kwargs: Any) -> Any:
        artifact = real(*args, **kwargs)
        code = artifact.files["node.py"].replace(
            'error_class="HttpServerError", retryable=True', 'error_class="HttpServerError"'
        )
        assert code != artifact.files["node.py"]
        return artifact.model_copy(update={"files": {**artifact.files, "node.py": code}})

    return generate


def test_a_failing_generated_test_registers_nothing(
    env: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import api.routes.forge as forge_routes
    from node_workers.forge.openapi import artifact_from_openapi

    monkeypatch.setattr(
        forge_routes, "artifact_from_openapi", _breaking_retries(artifact_from_openapi)
    )
    name = f"prices.t{uuid.uuid4().hex[:8]}"
    spec = prices_spec("http://127.0.0.1:18999")
    refused = _forge(env, {"document": spec, "operation_id": "getPrice", "name": name})
    assert refused.status_code == 422, refused.text
    (issue,) = refused.json()["detail"]
    assert issue["loc"] == ["body", "tests", "test_server_error_is_retryable"]
    assert issue["type"] == "ForgeRefused" and issue["msg"].startswith("AssertionError")
    assert env.client.get(f"/v1/nodes/{name}/versions").status_code == 404
