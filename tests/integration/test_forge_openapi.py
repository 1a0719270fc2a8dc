"""The OpenAPI forge on the real services (issue 17, part 2): a small document of a local test
service (tests/integration/http_fixtures.py's ``/prices/{sku}``) -> ``POST /v1/forge/openapi``
(generated tests in the code.run sandbox, a draft in the catalog)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest
import yaml

from tests.integration.test_catalog import Env, env  # noqa: F401  # the catalog API fixture

pytestmark = pytest.mark.integration


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
