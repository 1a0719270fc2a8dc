"""The OpenAPI forge (node_workers.forge.openapi): schemas, auth, egress, errors, and the
generated code and tests, which are run here by the guest harness in a subprocess (our own
generated code from small specs: the sandbox runs are the integration tests')."""

from __future__ import annotations

import ast
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from foundation.errors import NonRetryableError
from node_workers.artifacts.bundle import NodeArtifact, artifact_digest, parse_artifact
from node_workers.forge.openapi import (
    OpenApiError,
    artifact_from_openapi,
    load_openapi_text,
    operation_ids,
)

SPECS = Path(__file__).parent / "forge_specs"
GUEST = Path(__file__).parents[2] / "node_workers" / "artifacts" / "guest"


@pytest.fixture(scope="module")
def petstore() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((SPECS / "petstore.yaml").read_text())
    return document


@pytest.fixture(scope="module")
def quotes() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((SPECS / "quotes-3.1.json").read_text())
    return document


def run_generated_tests(artifact: NodeArtifact, tmp_path: Path) -> dict[str, Any]:
    """The artifact's tests through the guest harness (``python -m reflux_node test``)."""
    src = tmp_path / "src"
    out = tmp_path / "out"
    src.mkdir()
    out.mkdir()
    for name, text in artifact.files.items():
        (src / name).write_text(text)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(GUEST),
        "REFLUX_SRC": str(src),
        "REFLUX_WORK": str(tmp_path),
        "REFLUX_OUT": str(out),
    }
    subprocess.run([sys.executable, "-m", "reflux_node", "test"], env=env, check=True, timeout=60)
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def passed(report: dict[str, Any]) -> dict[str, bool]:
    return {t["name"]: t["passed"] for t in report["tests"]}


def test_get_operation_input_output_auth_and_egress(petstore: dict[str, Any]) -> None:
    artifact = artifact_from_openapi(petstore, "getPetById")
    m = artifact.manifest
    assert m.name == "petstore.get_pet_by_id"
    assert m.version == "0.1.0"
    assert m.egress == ("petstore.example.com:8080",)
    assert m.secrets == ("PETSTORE_API_KEY",)
    assert (m.side_effects, m.idempotent) == (False, True)
    # path (from the path item) + header + query parameters; only the path one is required
    assert set(m.input_schema["properties"]) == {"petId", "X-Request-Id", "fields"}
    assert m.input_schema["required"] == ["petId"]
    assert m.input_schema["additionalProperties"] is False
    # the Pet response (allOf of objects) is the output itself, its $refs resolved into $defs
    assert m.output_schema["$ref"] == "#/$defs/Pet"
    assert set(m.output_schema["$defs"]) == {"Pet", "NewPet", "Owner"}
    pet_id = m.output_schema["$defs"]["Pet"]["allOf"][1]["properties"]["id"]
    assert pet_id == {"type": "integer", "format": "int64", "exclusiveMinimum": 0}
    assert m.output_schema["$defs"]["NewPet"]["properties"]["tag"]["type"] == ["string", "null"]
    assert m.output_schema["$defs"]["Owner"]["type"] == ["object", "null"]
    validator = Draft202012Validator(m.output_schema)
    assert validator.is_valid({"id": 7, "name": "Rex", "tag": None, "owner": None})
    assert not validator.is_valid({"id": 0, "name": "Rex"})  # exclusive minimum
    assert not validator.is_valid({"id": 7, "name": 3})
    assert "X-API-Key" in artifact.files["node.py"]
    assert artifact.provenance["operation_id"] == "getPetById"
    assert artifact.provenance["source"] == "openapi"


def _reversed_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reversed_keys(v) for k, v in reversed(list(value.items()))}
    if isinstance(value, list):
        return [_reversed_keys(v) for v in value]
    return value


def test_the_same_document_in_any_key_order_gives_the_same_digest(petstore: dict[str, Any]) -> None:
    first = artifact_from_openapi(petstore, "createPet")
    again = artifact_from_openapi(copy.deepcopy(petstore), "createPet")
    assert artifact_digest(first) == artifact_digest(again)
    reordered = _reversed_keys(petstore)
    examples = reordered["paths"]["/pets"]["post"]["responses"]["201"]["content"]
    assert list(examples["application/json"]["examples"]) == ["tom", "rex"]
    assert artifact_digest(artifact_from_openapi(reordered, "createPet")) == artifact_digest(first)
    assert parse_artifact(first.model_dump(mode="json")) == first


def test_generated_tests_pass_and_cover_examples(petstore: dict[str, Any], tmp_path: Path) -> None:
    artifact = artifact_from_openapi(petstore, "createPet")
    assert artifact.manifest.input_schema["required"] == ["body"]
    assert (artifact.manifest.side_effects, artifact.manifest.idempotent) == (True, False)
    report = run_generated_tests(artifact, tmp_path)
    # one test per named example (request body and response paired by name) + status classes
    assert passed(report) == {
        "test_rex": True,
        "test_tom": True,
        "test_server_error_is_retryable": True,
        "test_rate_limit_is_retryable": True,
        "test_client_error_is_not_retryable": True,
    }, report
    assert '"POST", url' in artifact.files["node.py"] or "'POST', url" in artifact.files["node.py"]


@pytest.mark.parametrize("operation", ["getPetById", "listPets", "deletePet"])
def test_generated_tests_pass_for_each_operation(
    petstore: dict[str, Any], operation: str, tmp_path: Path
) -> None:
    report = run_generated_tests(artifact_from_openapi(petstore, operation), tmp_path)
    assert report["tests"] and all(passed(report).values()), report


def test_generated_tests_catch_a_wrong_node(petstore: dict[str, Any], tmp_path: Path) -> None:
    """The generated tests fail when the node gets the URL, the auth or the status classes
    wrong (they are not tests that cannot fail)."""
    artifact = artifact_from_openapi(petstore, "getPetById")
    code = artifact.files["node.py"]
    broken = (
        code.replace("_segment(input['petId'])", "str(input['petId'])")
        .replace("headers['X-API-Key'] = ctx.secret(SECRET)", "pass")
        .replace('error_class="HttpServerError", retryable=True', 'error_class="HttpServerError"')
    )
    assert broken != code
    files = {**artifact.files, "node.py": broken}
    report = run_generated_tests(artifact.model_copy(update={"files": files}), tmp_path)
    results = passed(report)
    assert results["test_example"] is False
    assert results["test_server_error_is_retryable"] is False
    assert results["test_rate_limit_is_retryable"] is True


def test_non_object_response_is_wrapped_in_body(petstore: dict[str, Any], tmp_path: Path) -> None:
    m = artifact_from_openapi(petstore, "listPets").manifest
    assert m.output_schema["required"] == ["body"]
    assert m.output_schema["properties"]["body"]["type"] == "array"
    assert m.input_schema["required"] == []
    assert m.input_schema["properties"]["limit"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 100,
    }


def test_no_content_response_outputs_an_empty_object(petstore: dict[str, Any]) -> None:
    artifact = artifact_from_openapi(petstore, "deletePet", name="pets.remove", version="2.0.0")
    assert artifact.manifest.output_schema["additionalProperties"] is False
    assert artifact.manifest.name == "pets.remove"
    assert artifact.manifest.version == "2.0.0"
    assert "return {}" in artifact.files["node.py"]


def test_openapi_31_bearer_server_variables_and_examples(
    quotes: dict[str, Any], tmp_path: Path
) -> None:
    artifact = artifact_from_openapi(quotes, "createQuote", secret="QUOTES_TOKEN")
    m = artifact.manifest
    assert m.name == "quotes_api.create_quote"
    assert m.egress == ("eu.quotes.example.com:443",)
    assert m.secrets == ("QUOTES_TOKEN",)
    # the lowest 2xx with JSON (200, not 202); 3.1 type unions kept as they are
    assert m.output_schema["$defs"]["Quote"]["properties"]["note"]["type"] == ["string", "null"]
    assert m.input_schema["required"] == ["region"]  # the body is optional here
    assert "Bearer " in artifact.files["node.py"]
    # the example that does not fit the schema (price -1) is left out, with a warning
    assert any("'bad'" in w and "price" in w for w in artifact.provenance["warnings"])
    report = run_generated_tests(artifact, tmp_path)
    assert passed(report) == {
        "test_cheap": True,
        "test_server_error_is_retryable": True,
        "test_rate_limit_is_retryable": True,
        "test_client_error_is_not_retryable": True,
    }, report
    assert "dry_run=true" in artifact.files["test_node.py"]


def _with_scheme(document: dict[str, Any], scheme: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    changed["components"]["securitySchemes"]["api_key"] = scheme
    return changed


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [
        ({"type": "http", "scheme": "basic"}, "Basic "),
        ({"type": "apiKey", "in": "query", "name": "key"}, "query['key'] = ctx.secret(SECRET)"),
        ({"type": "apiKey", "in": "cookie", "name": "sid"}, "cookies['sid'] = ctx.secret(SECRET)"),
        ({"type": "http", "scheme": "Bearer"}, "Bearer "),
    ],
)
def test_auth_schemes(
    petstore: dict[str, Any], scheme: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    artifact = artifact_from_openapi(_with_scheme(petstore, scheme), "getPetById")
    assert artifact.manifest.secrets == ("PETSTORE_API_KEY",)
    assert expected in artifact.files["node.py"]
    report = run_generated_tests(artifact, tmp_path)
    assert report["tests"] and all(passed(report).values()), report


def test_optional_or_empty_security_needs_no_secret(quotes: dict[str, Any]) -> None:
    document = copy.deepcopy(quotes)
    document["paths"]["/quotes/{region}"]["post"]["security"] = [{}]
    assert artifact_from_openapi(document, "createQuote").manifest.secrets == ()


@pytest.mark.parametrize(
    ("operation", "message"),
    [
        ("nope", "has adopt, createPet, deletePet, getPetById, listPets, uploadPhoto"),
        ("uploadPhoto", "requestBody.content: Expected application/json, but the operation "),
        ("adopt", "security: Expected an apiKey, http bearer or http basic scheme"),
    ],
)
def test_clear_errors(petstore: dict[str, Any], operation: str, message: str) -> None:
    with pytest.raises(OpenApiError) as caught:
        artifact_from_openapi(petstore, operation)
    assert message in str(caught.value)
    assert isinstance(caught.value, NonRetryableError)
    expected = "OperationNotFound" if operation == "nope" else "OpenApiUnsupported"
    assert caught.value.error_class == expected


def test_missing_or_relative_servers(petstore: dict[str, Any], quotes: dict[str, Any]) -> None:
    document = {k: v for k, v in petstore.items() if k != "servers"}
    with pytest.raises(OpenApiError, match=r"^servers: Expected a server URL .*--server"):
        artifact_from_openapi(document, "listPets")
    artifact = artifact_from_openapi(document, "listPets", server_url="http://127.0.0.1:9/x/")
    assert artifact.manifest.egress == ("127.0.0.1:9",)
    assert "BASE_URL = 'http://127.0.0.1:9/x'" in artifact.files["node.py"]
    document = copy.deepcopy(quotes)
    health = document["paths"]["/health"]["get"]["responses"]["200"]
    health["content"] = {"application/json": {"schema": {"type": "object"}}}
    with pytest.raises(OpenApiError, match=r"servers\[0\]\.url: Expected an absolute http"):
        artifact_from_openapi(document, "health")


def test_unsupported_response_content_and_versions(quotes: dict[str, Any]) -> None:
    with pytest.raises(OpenApiError, match=r"responses\.200\.content: .*only text/plain"):
        artifact_from_openapi(quotes, "health", server_url="http://localhost:1")
    with pytest.raises(OpenApiError, match=r"Swagger 2\.0"):
        artifact_from_openapi({"swagger": "2.0", "paths": {}}, "x")
    document = copy.deepcopy(quotes)
    document["paths"]["/quotes/{region}"]["post"]["responses"] = {"404": {"description": "no"}}
    with pytest.raises(OpenApiError, match=r"responses: Expected a 2xx response, but got 404"):
        artifact_from_openapi(document, "createQuote")


def test_external_and_dangling_refs_are_named(petstore: dict[str, Any]) -> None:
    document = copy.deepcopy(petstore)
    document["components"]["schemas"]["Owner"]["properties"]["name"] = {"$ref": "other.yaml#/X"}
    with pytest.raises(OpenApiError, match=r"components\.schemas\.Owner\.properties\.name\.\$ref"):
        artifact_from_openapi(document, "getPetById")
    document = copy.deepcopy(petstore)
    del document["components"]["schemas"]["NewPet"]
    with pytest.raises(OpenApiError, match="NewPet' points at nothing"):
        artifact_from_openapi(document, "getPetById")


def test_yaml_text_int_status_keys_and_alias_bombs() -> None:
    # the petstore spec writes its statuses unquoted (200:), which YAML reads as ints
    document = load_openapi_text((SPECS / "petstore.yaml").read_text())
    assert artifact_from_openapi(document, "getPetById").manifest.output_schema["$ref"]
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    )
    with pytest.raises(OpenApiError, match=r"^document: Expected YAML or JSON, but .*alias"):
        load_openapi_text(bomb)
    with pytest.raises(OpenApiError, match="a mapping"):
        load_openapi_text("- 1\n")


def test_operation_ids(petstore: dict[str, Any]) -> None:
    assert operation_ids(petstore) == [
        "adopt",
        "createPet",
        "deletePet",
        "getPetById",
        "listPets",
        "uploadPhoto",
    ]


def test_document_text_cannot_inject_code(petstore: dict[str, Any], tmp_path: Path) -> None:
    """Titles, summaries, ids, names and URLs reach the generated code only as literals or
    escaped docstring text."""
    hostile = '"""\\nimport os; os.system("x")  # \'\\\\'
    document = copy.deepcopy(petstore)
    document["info"]["title"] = "Pets " + hostile
    operation = document["paths"]["/pets/{petId}"]["get"]
    operation["summary"] = hostile
    operation["operationId"] = "get" + hostile
    operation["parameters"][0]["name"] = "X-Id" + hostile
    artifact = artifact_from_openapi(
        document,
        "get" + hostile,
        name="pets.get",
        server_url="http://127.0.0.1:9/a'b\"c",
    )
    for name, text in artifact.files.items():
        tree = ast.parse(text, filename=name)
        calls = [
            node.func
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        ]
        assert not any(isinstance(f.value, ast.Name) and f.value.id == "os" for f in calls), name
        assert not any(
            isinstance(node, ast.Import) and node.names[0].name == "os" for node in tree.body
        )
    report = run_generated_tests(artifact, tmp_path)
    assert report["tests"] and all(passed(report).values()), report
