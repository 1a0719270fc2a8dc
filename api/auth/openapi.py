"""Security in the OpenAPI document: the schemes, each operation's ``security`` and its 401/403
answers, and the role it needs (``x-reflux-role``), all from :data:`api.auth.roles.ROUTE_ACCESS`
so the document cannot disagree with what the guard enforces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from fastapi import FastAPI

from api.auth.guard import API_KEY_HEADER
from api.auth.roles import ROUTE_ACCESS, SIGNED
from api.auth.tenancy import OWNER_PARAMS

__all__ = ["SECURITY_SCHEMES", "install_security_openapi"]

SECURITY_SCHEMES: Final[dict[str, dict[str, Any]]] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`rfx_<id>_<secret>`) or an OIDC access token (JWT) from the "
        "configured issuer.",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": API_KEY_HEADER,
        "description": "An API key, as an alternative to the Authorization header.",
    },
}
_ERROR: Final = {"$ref": "#/components/schemas/ErrorMessage"}


def _answer(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _secure(spec: dict[str, Any]) -> dict[str, Any]:
    components = spec.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    schemas = components.setdefault("schemas", {})
    schemas.setdefault(
        "ErrorMessage",
        {
            "title": "ErrorMessage",
            "type": "object",
            "properties": {"detail": {"type": "string", "title": "Detail"}},
            "required": ["detail"],
        },
    )
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            access = ROUTE_ACCESS.get(f"{method.upper()} {path}")
            if access is None or not isinstance(operation, dict):
                continue
            responses = operation.setdefault("responses", {})
            operation["x-reflux-role"] = access
            if any(f"{{{param}}}" in path or f"{{{param}:" in path for param in OWNER_PARAMS):
                # The tenant guard (api.auth.tenancy): another tenant's resource is missing.
                responses.setdefault(
                    "404", _answer("The resource does not exist (or is another tenant's)")
                )
            if access == SIGNED:
                # Optional credentials: the HMAC signature (or, without a secret, a key).
                operation["security"] = [{}, {"bearer": []}, {"apiKey": []}]
                responses.setdefault(
                    "401", _answer("The signature is wrong, or no credential where one is needed")
                )
                responses.setdefault("403", _answer("The credential's role is below operator"))
                continue
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
            responses["401"] = _answer(
                "No credential, or an unknown, malformed, expired, revoked or rotated-away key, or "
                "a refused OIDC token; `WWW-Authenticate` and the detail say why"
            )
            responses["403"] = _answer(f"The caller's role is below {access!r}")
    return spec


def install_security_openapi(app: FastAPI) -> None:
    default: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _secure(default())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
