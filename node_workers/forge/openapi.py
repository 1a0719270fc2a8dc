"""An HTTP node from one OpenAPI 3.0/3.1 operation, no LLM involved (ADR 0071, docs/forge.md).

:func:`artifact_from_openapi` reads the operation out of a parsed document (YAML or JSON is
the caller's business) and returns a :class:`NodeArtifact`: an input schema made of the
operation's path/query/header/cookie parameters plus ``body`` (the JSON request body), the
success response's schema as output, auth from its security requirement bound to one secret,
egress limited to the server's ``host:port``, a generated ``node.py`` that only uses
``ctx.http`` and tests generated from the document's examples. Pure: no I/O.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from typing import Any, Final
from urllib.parse import urlsplit

import yaml
from jsonschema import Draft202012Validator

from foundation.parse_limits import ParseLimitError, load_yaml
from node_workers.artifacts.bundle import (
    ArtifactError,
    ArtifactManifest,
    NodeArtifact,
)
from node_workers.forge.openapi_codegen import ExampleCase, node_source, tests_source
from node_workers.forge.openapi_model import Auth, Operation, Parameter
from node_workers.forge.openapi_schema import (
    OpenApiError,
    OperationNotFoundError,
    SchemaConverter,
    resolve_ref,
    sample_value,
)
from schemas.base import canonical_json

__all__ = [
    "GENERATOR",
    "OpenApiError",
    "OperationNotFoundError",
    "artifact_from_openapi",
    "load_openapi_text",
    "operation_ids",
]

GENERATOR: Final = "reflux forge openapi/1"
_METHODS: Final = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# OpenAPI: header parameters with these names are ignored (the content negotiation and the
# security scheme own them).
_RESERVED_HEADERS: Final = frozenset({"accept", "content-type", "authorization"})
_JSON_MEDIA: Final = re.compile(r"^application/([a-z0-9.+-]+\+)?json(\s*;.*)?$", re.IGNORECASE)


def load_openapi_text(text: str) -> dict[str, Any]:
    """The document in ``text`` (YAML or JSON) within the limits every user file gets
    (foundation.parse_limits: aliases, expansion, depth); :class:`OpenApiError` when it is
    neither or not a mapping."""
    try:
        document = load_yaml(text)
    except (yaml.YAMLError, ParseLimitError) as exc:
        raise OpenApiError(f"document: Expected YAML or JSON, but {exc}") from None
    if not isinstance(document, dict):
        raise OpenApiError("document: Expected an OpenAPI object (a mapping) at the top")
    return document


def operation_ids(document: dict[str, Any]) -> list[str]:
    """Every ``operationId`` in the document, sorted."""
    return sorted(op_id for op_id, *_ in _operations(document))


def artifact_from_openapi(
    document: dict[str, Any],
    operation_id: str,
    *,
    name: str | None = None,
    version: str = "0.1.0",
    secret: str | None = None,
    server_url: str | None = None,
) -> NodeArtifact:
    """The node artifact calling ``operation_id`` of ``document``; :class:`OpenApiError` naming
    the field path when the document cannot make one (missing operation, unsupported content
    type or security scheme, no server)."""
    document = _plain(document)
    openapi_30 = _openapi_version(document)
    operation, cases, error_input, warnings = _read_operation(
        document, operation_id, openapi_30=openapi_30, secret=secret, server_url=server_url
    )
    node_name = name or f"{_slug(_info(document, 'title'))}.{_slug(operation_id)}"
    files = {
        "node.py": node_source(operation),
        "test_node.py": tests_source(operation, cases, error_input),
    }
    try:
        manifest = ArtifactManifest(
            name=node_name,
            version=version,
            description=_description(operation),
            input_schema=operation.input_schema,
            output_schema=operation.output_schema,
            side_effects=operation.method not in _READ_METHODS,
            idempotent=operation.method in _IDEMPOTENT_METHODS,
            egress=(operation.egress,),
            secrets=(operation.auth.secret,) if operation.auth else (),
        )
        return NodeArtifact(
            manifest=manifest,
            files=files,
            provenance={
                "source": "openapi",
                "generator": GENERATOR,
                "openapi": str(document.get("openapi")),
                "api": {
                    "title": _info(document, "title"),
                    "version": str(document.get("info", {}).get("version", "")),
                },
                "operation_id": operation_id,
                "method": operation.method,
                "path": operation.path,
                "server_url": operation.base_url,
                "document_sha256": hashlib.sha256(canonical_json(document).encode()).hexdigest(),
                "tests": [case.name for case in cases],
                "warnings": warnings,
            },
        )
    except ValueError as exc:  # pydantic's ValidationError and ArtifactError are ValueErrors
        message = str(exc).splitlines()[0] if not isinstance(exc, ArtifactError) else str(exc)
        if "validation error" in message:
            message = str(exc).splitlines()[1] + ": " + str(exc).splitlines()[2].strip()
        raise OpenApiError(f"{operation_id}: the generated node is invalid: {message}") from exc


def _plain(value: Any) -> Any:
    """JSON's data model: YAML reads ``200:`` as an int key and ``2024-01-31`` as a date; and
    keys sorted, since a JSON object has no order: the same document as JSON or as YAML, keys
    in any order, gives the same artifact and digest."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return value


def _openapi_version(document: dict[str, Any]) -> bool:
    """True for 3.0.x, False for 3.1.x; :class:`OpenApiError` for anything else."""
    if not isinstance(document, dict):
        raise OpenApiError("document: Expected an OpenAPI object (a mapping)")
    version = str(document.get("openapi", document.get("swagger", "")))
    if version.startswith("3.0"):
        return True
    if version.startswith("3.1"):
        return False
    raise OpenApiError(
        f"openapi: Expected an OpenAPI 3.0 or 3.1 document, but got version {version or 'none'!r}"
        + (" (Swagger 2.0: convert it to OpenAPI 3 first)" if version.startswith("2") else "")
    )


def _info(document: dict[str, Any], key: str) -> str:
    info = document.get("info")
    value = info.get(key) if isinstance(info, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise OpenApiError(f"info.{key}: Expected a non-empty string (it names the node)")
    return value


def _slug(text: str) -> str:
    """``getPetById`` -> ``get_pet_by_id``; ``Swagger Petstore`` -> ``swagger_petstore``."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text)
    slug = re.sub(r"[^a-z0-9]+", "_", words.lower()).strip("_")
    if not slug:
        raise OpenApiError(f"Expected letters or digits to name the node in {text!r}; use --name")
    return slug if slug[0].isalnum() else "n" + slug


def _description(operation: Operation) -> str:
    text = operation.summary or f"{operation.method} {operation.path}"
    return f"{text} ({operation.method} {operation.path}, {operation.operation_id})"[:2000]


def _operations(document: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    paths = document.get("paths")
    if not isinstance(paths, dict):
        raise OpenApiError("paths: Expected the document to have paths")
    found = []
    for path, raw in paths.items():
        item = _deref(document, raw, f"paths.{path}")
        if not isinstance(item, dict):
            continue
        for method in _METHODS:
            op = item.get(method)
            if isinstance(op, dict) and isinstance(op.get("operationId"), str):
                found.append((op["operationId"], method, path, item))
    return found


def _deref(document: dict[str, Any], value: Any, where: str) -> Any:
    """A parameter, request body, response or example object, following ``$ref``s."""
    seen = 0
    while isinstance(value, dict) and "$ref" in value:
        value = resolve_ref(document, str(value["$ref"]), where)
        seen += 1
        if seen > 16:
            raise OpenApiError(f"{where}.$ref: a cycle of references")
    return value


def _read_operation(
    document: dict[str, Any],
    operation_id: str,
    *,
    openapi_30: bool,
    secret: str | None,
    server_url: str | None,
) -> tuple[Operation, list[ExampleCase], dict[str, Any], list[str]]:
    matches = [entry for entry in _operations(document) if entry[0] == operation_id]
    if not matches:
        known = operation_ids(document)
        raise OperationNotFoundError(
            f"paths: Expected an operation with operationId {operation_id!r}, but the document "
            f"has {', '.join(known) if known else 'none'}"
        )
    _, method, path, item = matches[0]
    op: dict[str, Any] = item[method]
    where = f"paths.{path}.{method}"
    inputs = SchemaConverter(document, openapi_30)
    parameters = _parameters(document, item, op, where, inputs)
    body_schema, body_required, body_examples = _request_body(document, op, where, inputs)
    properties: dict[str, Any] = {p.name: p.schema for p in parameters}
    required = [p.name for p in parameters if p.required]
    if body_schema is not None:
        if "body" in properties:
            raise OpenApiError(
                f"{where}.parameters: a parameter named 'body' collides with the request body"
            )
        properties["body"] = body_schema
        if body_required:
            required.append("body")
    input_schema = inputs.finish(
        {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        }
    )
    outputs = SchemaConverter(document, openapi_30)
    status, response_schema, response_examples = _success_response(document, op, where, outputs)
    wrapped = response_schema is not None and not _is_object_schema(response_schema, document)
    if response_schema is None:  # no content (204): the node's output is an empty object
        output_schema = outputs.finish({"type": "object", "additionalProperties": False})
    elif wrapped:
        output_schema = outputs.finish(
            {
                "type": "object",
                "properties": {"body": response_schema},
                "required": ["body"],
                "additionalProperties": False,
            }
        )
    else:
        output_schema = outputs.finish(response_schema)
    auth = _auth(document, op, where, secret)
    base_url = _server_url(document, item, op, where, server_url)
    operation = Operation(
        operation_id=operation_id,
        method=method.upper(),
        path=path,
        summary=str(op.get("summary") or "").strip(),
        title=_info(document, "title"),
        base_url=base_url,
        egress=_egress(base_url),
        parameters=tuple(parameters),
        has_body=body_schema is not None,
        body_required=body_required,
        success_status=status,
        output_wrapped=wrapped,
        has_output=response_schema is not None,
        auth=auth,
        input_schema=input_schema,
        output_schema=output_schema,
    )
    cases, warnings = _cases(operation, parameters, body_examples, response_examples)
    # The status-class tests need a valid request only; the first example's, or sampled.
    error_input = cases[0].input if cases else _sampled_input(operation)
    return operation, cases, error_input, warnings


def _parameters(
    document: dict[str, Any],
    item: dict[str, Any],
    op: dict[str, Any],
    where: str,
    converter: SchemaConverter,
) -> list[Parameter]:
    merged: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
    for owner, prefix in ((item, where.rsplit(".", 1)[0]), (op, where)):
        for i, raw in enumerate(owner.get("parameters") or []):
            at = f"{prefix}.parameters[{i}]"
            param = _deref(document, raw, at)
            if not isinstance(param, dict) or "name" not in param or "in" not in param:
                raise OpenApiError(f"{at}: Expected a parameter with 'name' and 'in'")
            merged[(str(param["in"]), str(param["name"]))] = (param, at)  # the operation's win
    out: list[Parameter] = []
    names: set[str] = set()
    for (location, name), (param, at) in merged.items():
        if location not in ("path", "query", "header", "cookie"):
            raise OpenApiError(f"{at}.in: Expected path, query, header or cookie, got {location!r}")
        if location == "header" and name.lower() in _RESERVED_HEADERS:
            continue
        if name in names:
            raise OpenApiError(
                f"{at}: parameter {name!r} appears in two places; the node's input needs one "
                "name per value"
            )
        names.add(name)
        if "schema" not in param:
            raise OpenApiError(
                f"{at}: Expected a 'schema' (parameters described by 'content' are not supported)"
            )
        schema = converter.convert(param["schema"], f"{at}.schema")
        examples = _examples(document, param, at)
        if not examples and isinstance(param["schema"], dict) and "example" in param["schema"]:
            examples = [("example", param["schema"]["example"])]
        out.append(
            Parameter(
                name=name,
                location=location,
                required=location == "path" or bool(param.get("required")),
                schema=schema,
                examples=tuple(value for _, value in examples),
                explode=bool(param.get("explode", param.get("style", "form") == "form")),
            )
        )
    return out


def _examples(
    document: dict[str, Any], holder: dict[str, Any], where: str
) -> list[tuple[str, Any]]:
    """``example`` or the values of ``examples`` (Example objects, possibly ``$ref``s)."""
    if "example" in holder:
        return [("example", holder["example"])]
    out = []
    for key, raw in (holder.get("examples") or {}).items():
        example = _deref(document, raw, f"{where}.examples.{key}")
        if isinstance(example, dict) and "value" in example:
            out.append((str(key), example["value"]))
    return out


def _json_media(content: Any, where: str) -> tuple[str, dict[str, Any]] | None:
    """The JSON media type of a ``content`` map; None when there is no content at all."""
    if not content:
        return None
    if not isinstance(content, dict):
        raise OpenApiError(f"{where}.content: Expected a map of media types")
    for media, value in content.items():
        if _JSON_MEDIA.match(media):
            return media, value if isinstance(value, dict) else {}
    raise OpenApiError(
        f"{where}.content: Expected application/json, but the operation offers only "
        f"{', '.join(sorted(content))} (unsupported content type)"
    )


def _request_body(
    document: dict[str, Any], op: dict[str, Any], where: str, converter: SchemaConverter
) -> tuple[Any, bool, list[tuple[str, Any]]]:
    if "requestBody" not in op:
        return None, False, []
    at = f"{where}.requestBody"
    body = _deref(document, op["requestBody"], at)
    media = _json_media(body.get("content"), at)
    if media is None:
        return None, False, []
    at = f"{at}.content.{media[0]}"
    schema = converter.convert(media[1].get("schema", {}), f"{at}.schema")
    examples = _examples(document, media[1], at)
    raw = media[1].get("schema")
    if not examples and isinstance(raw, dict) and "example" in raw:
        examples = [("example", raw["example"])]
    return schema, bool(body.get("required")), examples


def _success_response(
    document: dict[str, Any], op: dict[str, Any], where: str, converter: SchemaConverter
) -> tuple[int, Any, list[tuple[str, Any]]]:
    """The lowest 2xx status with a JSON body (or the lowest 2xx when none has a body)."""
    responses = op.get("responses")
    if not isinstance(responses, dict):
        raise OpenApiError(f"{where}.responses: Expected the operation's responses")
    statuses = sorted(
        (int(code.replace("X", "0").replace("x", "0")), str(code))
        for code in responses
        if str(code)[:1] == "2" and len(str(code)) == 3
    )
    if not statuses:
        raise OpenApiError(
            f"{where}.responses: Expected a 2xx response, but got {', '.join(map(str, responses))}"
        )
    empty: tuple[int, Any, list[tuple[str, Any]]] | None = None
    for status, code in statuses:
        at = f"{where}.responses.{code}"
        response = _deref(document, responses[code], at)
        content = response.get("content") if isinstance(response, dict) else None
        media = _json_media(content, at)
        if media is None:
            empty = empty or (status, None, [])
            continue
        at = f"{at}.content.{media[0]}"
        schema = converter.convert(media[1].get("schema", {}), f"{at}.schema")
        examples = _examples(document, media[1], at)
        raw = media[1].get("schema")
        if not examples and isinstance(raw, dict) and "example" in raw:
            examples = [("example", raw["example"])]
        return status, schema, examples
    assert empty is not None
    return empty


def _is_object_schema(schema: Any, document: dict[str, Any]) -> bool:
    """Whether the response is always a JSON object (the node's output then is the body itself;
    anything else, null included, is returned as ``{"body": ...}``)."""
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 16:
        ref = str(schema["$ref"])  # converted (#/$defs/) at the top, raw further down
        ref = (
            "#/components/schemas/" + ref.removeprefix("#/$defs/") if ref[:8] == "#/$defs/" else ref
        )
        schema = resolve_ref(document, ref, "response")
        seen += 1
    if not isinstance(schema, dict) or schema.get("nullable") is True:
        return False
    kind = schema.get("type")
    if kind == "object":
        return True
    if kind is not None:
        return False
    if schema.get("allOf"):  # a value is every part at once: one object part is enough
        return any(_is_object_schema(part, document) for part in schema["allOf"])
    for key in ("oneOf", "anyOf"):
        if schema.get(key):
            return all(_is_object_schema(part, document) for part in schema[key])
    return "properties" in schema


def _auth(
    document: dict[str, Any], op: dict[str, Any], where: str, secret: str | None
) -> Auth | None:
    requirements = op.get("security", document.get("security"))
    if not requirements:
        return None
    schemes = (document.get("components") or {}).get("securitySchemes") or {}
    refused: list[str] = []
    for alternative in requirements:
        if not alternative:  # {}: auth is optional, so none is a valid choice
            return None
        if len(alternative) != 1:
            refused.append(" + ".join(alternative))
            continue
        scheme_name = next(iter(alternative))
        at = f"components.securitySchemes.{scheme_name}"
        scheme = _deref(document, schemes.get(scheme_name), at)
        if not isinstance(scheme, dict):
            raise OpenApiError(f"{at}: Expected the security scheme the operation requires")
        auth = _scheme_auth(scheme, scheme_name, secret or _secret_name(document, scheme_name))
        if auth is None:
            refused.append(f"{scheme_name} ({scheme.get('type')} {scheme.get('scheme', '')})")
            continue
        return auth
    raise OpenApiError(
        f"{where}.security: Expected an apiKey, http bearer or http basic scheme, but got "
        f"{'; '.join(r.strip() for r in refused)} (unsupported security scheme)"
    )


def _scheme_auth(scheme: dict[str, Any], scheme_name: str, secret: str) -> Auth | None:
    kind = scheme.get("type")
    if kind == "apiKey" and scheme.get("in") in ("header", "query", "cookie"):
        return Auth(
            kind="apiKey",
            location=str(scheme["in"]),
            name=str(scheme.get("name", scheme_name)),
            secret=secret,
            scheme_name=scheme_name,
        )
    if kind == "http" and str(scheme.get("scheme", "")).lower() in ("bearer", "basic"):
        return Auth(
            kind=str(scheme["scheme"]).lower(),
            location="header",
            name="Authorization",
            secret=secret,
            scheme_name=scheme_name,
        )
    return None


def _secret_name(document: dict[str, Any], scheme_name: str) -> str:
    """``PETSTORE_API_KEY`` for the scheme ``api_key`` of the API titled ``Petstore``."""
    return f"{_slug(_info(document, 'title'))}_{_slug(scheme_name)}".upper()


def _server_url(
    document: dict[str, Any],
    item: dict[str, Any],
    op: dict[str, Any],
    where: str,
    override: str | None,
) -> str:
    if override:
        url, at = override, "--server"
    else:
        servers = op.get("servers") or item.get("servers") or document.get("servers")
        if not servers or not isinstance(servers, list):
            raise OpenApiError(
                f"servers: Expected a server URL in the document (or pass one with --server / "
                f"server_url) for {where}"
            )
        server = servers[0]
        url = str(server.get("url", ""))
        for var, spec in (server.get("variables") or {}).items():
            url = url.replace("{" + var + "}", str(spec.get("default", "")))
        at = "servers[0].url"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OpenApiError(
            f"{at}: Expected an absolute http(s) URL, but got {url!r} (pass --server / "
            "server_url with the full URL)"
        )
    return url.rstrip("/")


def _egress(base_url: str) -> str:
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _cases(
    operation: Operation,
    parameters: list[Parameter],
    body_examples: list[tuple[str, Any]],
    response_examples: list[tuple[str, Any]],
) -> tuple[list[ExampleCase], list[str]]:
    """One test case per request-body or response example (paired by name where they share
    one, else by position); parameters take their own example or a value their schema allows.
    An example that does not fit its schema is left out with a warning."""
    warnings: list[str] = []
    input_defs = operation.input_schema.get("$defs", {})
    output_defs = operation.output_schema.get("$defs", {})
    base: dict[str, Any] = {}
    for p in parameters:
        if p.examples:
            base[p.name] = p.examples[0]
        elif p.required:
            base[p.name] = sample_value(p.schema, input_defs)
    count = max(len(body_examples), len(response_examples), 1)
    response_by_name = dict(response_examples)
    cases: list[ExampleCase] = []
    for i in range(count):
        case_input = dict(base)
        label = "example"
        if operation.has_body:
            if body_examples:
                label, body = body_examples[i % len(body_examples)]
                case_input["body"] = body
            elif operation.body_required:
                case_input["body"] = sample_value(
                    operation.input_schema["properties"]["body"], input_defs
                )
        if label in response_by_name:
            response: Any = response_by_name[label]
        elif response_examples:
            response_label, response = response_examples[i % len(response_examples)]
            # a named example names the test; the unnamed singular `example` does not
            label = response_label if label == "example" else label
        elif operation.has_output:
            response = sample_value(_response_schema(operation), output_defs)
        else:
            response = None
        output = {"body": response} if operation.output_wrapped else response
        if not operation.has_output:
            output = {}
        problem = _misfit(operation.input_schema, case_input, "input") or _misfit(
            operation.output_schema, output, "response"
        )
        if problem:
            warnings.append(f"example {label!r} left out of the tests: {problem}")
            continue
        cases.append(
            ExampleCase(
                name=_slug(label) if label else f"example_{i}",
                input=case_input,
                response=response,
                output=output,
            )
        )
    seen: dict[str, int] = {}
    unique = []
    for case in cases:
        seen[case.name] = seen.get(case.name, 0) + 1
        name = case.name if seen[case.name] == 1 else f"{case.name}_{seen[case.name]}"
        unique.append(
            ExampleCase(name=name, input=case.input, response=case.response, output=case.output)
        )
    return unique, warnings


def _sampled_input(operation: Operation) -> dict[str, Any]:
    schema = operation.input_schema
    value = sample_value(
        {"type": "object", "properties": schema["properties"], "required": schema["required"]},
        schema.get("$defs", {}),
    )
    return value if isinstance(value, dict) else {}


def _response_schema(operation: Operation) -> Any:
    schema = operation.output_schema
    return schema["properties"]["body"] if operation.output_wrapped else schema


def _misfit(schema: dict[str, Any], value: Any, what: str) -> str | None:
    error = next(iter(Draft202012Validator(schema).iter_errors(value)), None)
    if error is None:
        return None
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{what}{path}: {error.message}"
