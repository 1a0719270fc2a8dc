"""The audit trail: every write to /v1 -- applied, failed or refused -- becomes one
``AuditRecorded`` on the ``audit`` topic (ADR 0046), projected to ``audit_log`` and served at
``GET /v1/audit``.

A pure ASGI middleware, outside the routes, so a write refused before any route code runs (401,
403, 422) is recorded like one that succeeded. It publishes after the answer is complete (the
status code is part of the record); the principal comes from ``request.state`` where
:func:`api.auth.guard.authorize` put it -- never from the request.

A failed publish (Kafka down) is logged and counted, not turned into an error answer: the write
itself has already been applied or refused by then.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth.guard import Principal, match_route, route_rule
from api.auth.roles import SIGNED
from api.prometheus import route_template
from schemas.models import AuditRecorded

__all__ = ["WRITE_METHODS", "AuditMiddleware", "audit_record"]

log = logging.getLogger(__name__)

WRITE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def audit_record(scope: Scope, status: int) -> AuditRecorded:
    state: dict[str, Any] = scope.get("state") or {}
    principal: Principal | None = state.get("principal")
    rule = route_rule(scope)
    refusal: str | None = state.get("auth_refusal")
    kind: str
    if principal is not None:
        actor, kind, pid = principal.actor, principal.kind, principal.id
        role: str | None = principal.role.value
        tenant = principal.tenant
    elif rule is not None and rule.access == SIGNED and refusal is None:
        actor, kind, pid, role, tenant = "webhook", "signature", None, None, "default"
    else:
        actor, kind, pid, role, tenant = "anonymous", "anonymous", None, None, "default"
        pid = state.get("auth_key_id")
    client = scope.get("client")
    params = scope.get("path_params")
    if params is None:  # refused before routing (401): the ids the path names anyway
        matched = match_route(scope)
        params = matched[1] if matched is not None else {}
    return AuditRecorded(
        actor=actor,
        principal_kind=kind,
        principal_id=pid,
        role=role,
        tenant=tenant,
        method=str(scope["method"]),
        route=rule.template if rule is not None else route_template(scope),
        path=str(scope.get("path", "")),
        resource_ids={str(k): str(v) for k, v in params.items()},
        status_code=status,
        client=f"{client[0]}:{client[1]}" if client else None,
        reason=refusal if status in (401, 403) else None,
    )


class AuditMiddleware:
    def __init__(self, app: ASGIApp, prefix: str = "/v1/") -> None:
        self.app = app
        self.prefix = prefix
        self.failures = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in WRITE_METHODS
            or not str(scope.get("path", "")).startswith(self.prefix)
        ):
            await self.app(scope, receive, send)
            return
        # The guard writes the principal into this dict (request.state), shared downstream.
        scope.setdefault("state", {})
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            await self._publish(scope, status)

    async def _publish(self, scope: Scope, status: int) -> None:
        app_state = getattr(scope.get("app"), "state", None)
        publisher = getattr(app_state, "publisher", None)
        topics = getattr(app_state, "topics", None)
        try:
            record = audit_record(scope, status)
            if publisher is None or topics is None:
                raise RuntimeError("the app has no publisher (lifespan not started)")
            await run_in_threadpool(publisher.publish, topics.audit, record.tenant, record)
        except Exception as exc:
            self.failures += 1
            log.error(
                "audit record of %s %s (status %s) not published: %s",
                scope.get("method"),
                scope.get("path"),
                status,
                exc,
            )
