"""Wiring identity into an app (ADR 0046): one call from ``create_app`` once the routers are in."""

from __future__ import annotations

from fastapi import FastAPI

from api.auth.audit import AuditMiddleware
from api.auth.guard import AuthenticationMiddleware, bind_route_access
from api.auth.openapi import install_security_openapi

__all__ = ["install_identity"]


def install_identity(app: FastAPI, prefix: str) -> None:
    """Route permissions (refusing an undeclared /v1 route), authentication before routing,
    the audit of every write around it, and the OpenAPI security. The /v1 router itself carries
    :func:`api.auth.guard.authorize` as its first dependency."""
    bind_route_access(app, prefix)
    # Added last = outermost: the audit wraps authentication, so a 401 is audited too.
    app.add_middleware(AuthenticationMiddleware, prefix=f"{prefix}/")
    app.add_middleware(AuditMiddleware, prefix=f"{prefix}/")
    install_security_openapi(app)
