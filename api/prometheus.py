"""Prometheus metrics of one app instance.

Each app gets its own :class:`CollectorRegistry` (not the process-global one), so several apps
in one process (tests) never clash on metric names, and ``/metrics`` shows only this app.
Requests are labelled by the *route template* (``/v1/runs/{run_id}``), never the raw path, to keep
label cardinality bounded; unmatched paths share the label ``<unmatched>``.
"""

from __future__ import annotations

import time
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_TYPE_LATEST", "ApiMetrics", "MetricsMiddleware"]

UNMATCHED: Final = "<unmatched>"


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "reflux_api_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "reflux_api_request_duration_seconds",
            "Time to the response start, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.commands = Counter(
            "reflux_api_commands_published",
            "Records the API published to Kafka, by record type and topic.",
            ["type", "topic"],
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def published(self, record_type: str, topic: str) -> None:
        self.commands.labels(record_type, topic).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_template(scope: Scope) -> str:
    """The template of the route that handled ``scope``: the router writes the matched route
    into the (shared) scope, so it is there once the response starts."""
    template = getattr(scope.get("route"), "path", None)
    if not isinstance(template, str):
        return UNMATCHED
    # Included routers may report the template without their parents' prefixes ("/runs/{id}"
    # under "/v1"); a parameter matches exactly one segment, so the missing prefix is the
    # request path's leading segments.
    path = str(scope.get("path", ""))
    missing = path.count("/") - template.count("/")
    prefix = "/".join(path.split("/")[: missing + 1]) if missing > 0 else ""
    return prefix + template


class MetricsMiddleware:
    """Pure ASGI (not ``BaseHTTPMiddleware``), so streamed responses (SSE) pass straight through;
    latency is measured to the response start."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        observed = False

        async def send_wrapper(message: Message) -> None:
            nonlocal observed
            if message["type"] == "http.response.start" and not observed:
                observed = True
                self.metrics.observe(
                    scope["method"],
                    route_template(scope),
                    int(message["status"]),
                    time.perf_counter() - started,
                )
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            if not observed:
                self.metrics.observe(
                    scope["method"], route_template(scope), 500, time.perf_counter() - started
                )
            raise
