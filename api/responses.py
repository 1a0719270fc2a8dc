"""HTTP answers every ``/v1`` route shares: the one place where common responses are declared
in the OpenAPI document, and ``405`` with a correct ``Allow`` header.

Routes declare the answers of their own logic (``responses=errors(404, 409)``);
:data:`COMMON_RESPONSES` adds what any ``/v1`` operation can answer whatever it does -- 413 and
422 from :mod:`api.limits`, 429 from :mod:`api.ratelimit`, 503 when Kafka or Postgres is away.
Authentication adds 401/403 here
(one entry each, e.g. ``COMMON_RESPONSES.append(CommonResponse(401, "..."))``), not route by
route.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.models.common import ErrorMessage, ValidationErrorBody

__all__ = ["COMMON_RESPONSES", "CommonResponse", "install_common_responses"]

_METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")


def _is_v1(path: str, _method: str) -> bool:
    return path.startswith("/v1/") or path == "/v1"


@dataclass(frozen=True, slots=True)
class CommonResponse:
    status: int
    description: str
    model: type[BaseModel] = ErrorMessage
    applies: Callable[[str, str], bool] = field(default=_is_v1)
    """``(path template, method) -> bool``: which operations can give this answer."""


COMMON_RESPONSES: list[CommonResponse] = [
    CommonResponse(413, "The request body is over the route's limit (docs/api.md, Limits)"),
    CommonResponse(
        422,
        "A field is invalid, too deeply nested, or holds what storage cannot (NUL, NaN); "
        "`loc` is its path",
        ValidationErrorBody,
    ),
    CommonResponse(
        429,
        "A rate limit or the tenant's daily run quota is exceeded (docs/api.md, Rate limits "
        "and quotas); `Retry-After` says when to retry",
    ),
    CommonResponse(503, "Kafka or Postgres is unavailable; retry later"),
]
"""Answers any ``/v1`` operation can give; append here (e.g. 401/403 from authentication)."""


def _with_common_responses(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            for common in COMMON_RESPONSES:
                if str(common.status) in responses or not common.applies(path, method):
                    continue
                name = common.model.__name__
                if name not in components:
                    model_schema = common.model.model_json_schema(
                        ref_template="#/components/schemas/{model}"
                    )
                    components.update(model_schema.pop("$defs", {}))
                    components[name] = model_schema
                responses[str(common.status)] = {
                    "description": common.description,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}
                    },
                }
    return schema


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    pattern = "".join(
        (".+" if part.endswith(":path}") else "[^/]+") if part.startswith("{") else re.escape(part)
        for part in parts
    )
    return re.compile(pattern)


def install_common_responses(app: FastAPI) -> None:
    """Adds :data:`COMMON_RESPONSES` to the app's OpenAPI document, and makes 405 answers list
    every method the path accepts in ``Allow`` (Starlette answers 405 from the first route whose
    path matches, so ``DELETE /v1/runs`` said ``Allow: GET`` although ``POST`` is served too)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _with_common_responses(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    allowed: list[tuple[re.Pattern[str], set[str]]] = []

    def methods_for(path: str) -> set[str]:
        if not allowed:
            for template, operations in openapi().get("paths", {}).items():
                verbs = {m.upper() for m in operations if m in _METHODS}
                allowed.append((_template_regex(template), verbs))
        found: set[str] = set()
        for pattern, verbs in allowed:
            if pattern.fullmatch(path):
                found |= verbs
        if "GET" in found:
            found.add("HEAD")
        return found

    async def handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 405:
            methods = methods_for(request.url.path)
            if methods:
                exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
        return await http_exception_handler(request, exc)

    app.add_exception_handler(StarletteHTTPException, handler)
