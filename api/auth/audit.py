"""The audit trail: every write to /v1 -- applied, failed or refused -- becomes one
``AuditRecorded`` on the ``audit`` topic (ADR 0046), projected to ``audit_log`` and served at
``GET /v1/audit``.

A pure ASGI middleware, outside the routes, so a write refused before any route code runs (401,
403, 422) is recorded like one that succeeded. It records after the answer is complete (the
status code is part of the record); the principal comes from ``request.state`` where
:mod:`api.auth.guard` put it -- never from the request.

Records go through :class:`AuditSink`, the audit topic's own producer, queued without waiting
for the broker; a refused delivery (Kafka down) is logged and counted, not turned into an error
answer: the write itself has already been applied or refused by then.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth.guard import Principal, match_route, route_rule
from api.auth.roles import SIGNED
from api.prometheus import route_template
from foundation.closing import Closing
from foundation.settings import Settings
from schemas.models import AuditRecorded
from streams.producer import DeliveryError, Producer
from streams.topics import TopicSpec

__all__ = ["WRITE_METHODS", "AuditMiddleware", "AuditSink", "audit_record"]

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
        sink: AuditSink | None = getattr(getattr(scope.get("app"), "state", None), "audit", None)
        try:
            record = audit_record(scope, status)
            if sink is None:
                raise RuntimeError("the app has no audit sink (lifespan not started)")
            sink.record(record)
        except Exception as exc:
            self.failures += 1
            log.error(
                "audit record of %s %s (status %s) not published: %s",
                scope.get("method"),
                scope.get("path"),
                status,
                exc,
            )


class AuditSink(Closing):
    """The audit topic's own producer: records are queued without waiting for the broker (a
    write's answer does not wait for its audit record, and the API's command publisher -- one
    flush at a time -- is not held by it); a background thread flushes every ``interval_s`` and
    logs and counts what the broker refused. ``close`` flushes what is left."""

    def __init__(
        self, settings: Settings, topic: TopicSpec, interval_s: float = 0.5, timeout_s: float = 5.0
    ) -> None:
        self.topic = topic
        self.timeout_s = timeout_s
        self.failed = 0
        self._producer = Producer(settings, config={"linger.ms": 20}, client_id="reflux-api-audit")
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._flush_loop, args=(interval_s,), name="reflux-api-audit", daemon=True
        )
        self._thread.start()

    def record(self, record: AuditRecorded) -> None:
        self._producer.send(self.topic, record.tenant, record)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued record is on the broker; a refusal is logged and counted."""
        try:
            self._producer.flush(self.timeout_s if timeout is None else timeout)
        except DeliveryError as exc:
            self.failed += len(exc.failures)
            log.error("audit records not delivered to %s: %s", self.topic.topic, exc)

    def _flush_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.flush()

    def close(self) -> None:
        """Delivers what is queued within ``timeout_s`` in all (the flush thread's flush
        included), so a shutdown with the broker down is not held several timeouts long."""
        deadline = time.monotonic() + self.timeout_s
        self._stop.set()
        self._thread.join(self.timeout_s + 1)
        try:
            self._producer.close(max(0.1, deadline - time.monotonic()))
        except DeliveryError as exc:
            self.failed += len(exc.failures)
            log.error("audit records not delivered at close: %s", exc)
