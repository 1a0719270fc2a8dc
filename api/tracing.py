"""A server span per API request, child of the caller's ``traceparent`` (ADR 0062).

Plain ASGI (not ``BaseHTTPMiddleware``): the route runs in the middleware's context, so the
span (or, with tracing off, the caller's context) is current where a route publishes a command
and :func:`foundation.telemetry.caller_trace_context` finds it. Outermost, so a request refused
by authentication or a limit is traced too.
"""

from __future__ import annotations

from typing import Final

from opentelemetry.trace import NoOpTracer, SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from foundation.settings import Settings
from foundation.telemetry import context_of, tracer, with_caller_context

SERVICE: Final = "reflux-api"
_WANTED = {b"traceparent": "traceparent", b"tracestate": "tracestate"}


class TracingMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = {
            _WANTED[name]: value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name in _WANTED
        }
        spans = tracer(SERVICE, self.settings)
        with with_caller_context(incoming):
            if isinstance(spans, NoOpTracer):
                await self.app(scope, receive, send)
                return
            method = scope.get("method", "GET")
            with spans.start_as_current_span(
                f"{method} {scope.get('path', '')}",
                context=context_of(incoming),
                kind=SpanKind.SERVER,
                attributes={"http.request.method": method, "url.path": scope.get("path", "")},
            ) as span:
                status = 500

                async def send_status(message: Message) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = int(message["status"])
                    await send(message)

                try:
                    await self.app(scope, receive, send_status)
                finally:
                    # The route template, once routing matched one (low-cardinality span names).
                    route = getattr(scope.get("route"), "path", None)
                    if route:
                        route = _with_prefix(str(scope.get("path", "")), route)
                        span.update_name(f"{method} {route}")
                        span.set_attribute("http.route", route)
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))


def _with_prefix(path: str, route: str) -> str:
    """The route template with the router's prefix (``/v1``) that an included router's route
    leaves out: as many leading segments of the path as the template lacks."""
    missing = path.count("/") - route.count("/")
    if missing <= 0 or route.startswith("/v1/"):
        return route
    return "/" + "/".join(path.split("/")[1 : 1 + missing]) + route
