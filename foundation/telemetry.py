"""OpenTelemetry tracing of the components: one tracer provider per component (ADR 0062).

Off unless configured: without an OTLP endpoint (``Settings.otlp_traces_endpoint``, i.e. the
standard ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, and ``OTEL_SDK_DISABLED`` not true) no
provider, no processor and no exporter exist, and :func:`tracer` answers the API's no-op tracer.
Trace context still travels on records and headers then, so a traced caller's context reaches
the next hop whether or not this process exports anything.

A provider per component, not the process-wide global one: ``reflux dev`` runs the API, the
scheduler and the workers in one process, and each exports under its own ``service.name``
(``reflux-api``, ``reflux-scheduler``, ``reflux-worker``...). Spans are batched
(``BatchSpanProcessor``) and sent by its thread; a collector that is down costs dropped spans,
never a failed or slower request (best effort). Providers flush at interpreter exit, and
:func:`shutdown_tracing` flushes them earlier.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from foundation.settings import Settings, get_settings
from foundation.trace_context import clean_trace_context

__all__ = [
    "Tracing",
    "caller_trace_context",
    "context_of",
    "current_trace_context",
    "shutdown_tracing",
    "tracer",
    "tracing",
    "with_caller_context",
]

SCOPE: Final = "reflux"
_PROPAGATOR = TraceContextTextMapPropagator()
_EXPORT_TIMEOUT_S = 5.0
"""A receiver that does not answer holds the exporter thread this long, never a caller."""


class Tracing:
    """One component's provider, its batch processor and its OTLP/HTTP exporter."""

    def __init__(self, service: str, endpoint: str) -> None:
        # Imported here: the exporter (protobuf, requests) is only loaded where tracing is on.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        self.service = service
        self.endpoint = endpoint
        self.resource = Resource.create({"service.name": service})
        self.provider = TracerProvider(resource=self.resource)
        self.processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint, timeout=_EXPORT_TIMEOUT_S)
        )
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer(SCOPE)

    def export(self, spans: Iterable[ReadableSpan]) -> None:
        """Queues finished spans made elsewhere (the scheduler's run and attempt spans, built
        from its events) exactly like the spans this provider's tracer ends."""
        for span in spans:
            self.processor.on_end(span)

    def shutdown(self) -> None:
        self.provider.shutdown()


_lock = threading.Lock()
_tracings: dict[str, Tracing] = {}


def tracing(service: str, settings: Settings | None = None) -> Tracing | None:
    """The component's tracing, made on first use; ``None`` when tracing is off."""
    endpoint = (settings or get_settings()).otlp_traces_endpoint()
    if endpoint is None:
        return None
    with _lock:
        current = _tracings.get(service)
        if current is None or current.endpoint != endpoint:
            current = _tracings[service] = Tracing(service, endpoint)
        return current


def tracer(service: str, settings: Settings | None = None) -> trace.Tracer:
    """The component's tracer: the no-op tracer when tracing is off."""
    on = tracing(service, settings)
    return on.tracer if on is not None else trace.NoOpTracer()


def shutdown_tracing() -> None:
    """Flushes and closes every provider (a component's clean stop; also done at exit)."""
    with _lock:
        tracings = list(_tracings.values())
        _tracings.clear()
    for one in tracings:
        one.shutdown()


def context_of(trace_context: Mapping[str, object] | None) -> Context:
    """An OpenTelemetry context holding the (checked) remote parent in ``trace_context``; an
    empty context when there is none, so a span started in it is a root."""
    return _PROPAGATOR.extract(clean_trace_context(trace_context), context=Context())


def current_trace_context() -> dict[str, str]:
    """``{traceparent[, tracestate]}`` of the current span, ``{}`` when none is recording or
    valid (tracing off)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return clean_trace_context(carrier)


_caller: ContextVar[dict[str, str] | None] = ContextVar("reflux_caller_trace_context", default=None)


@contextmanager
def with_caller_context(trace_context: Mapping[str, object] | None) -> Iterator[None]:
    """Remembers the caller's context (an incoming ``traceparent``) for what this request or
    record starts, used when no span of ours is current (tracing off)."""
    token = _caller.set(clean_trace_context(trace_context))
    try:
        yield
    finally:
        _caller.reset(token)


def caller_trace_context() -> dict[str, str]:
    """The context to hand on: our current span's when tracing is on, else the caller's."""
    return current_trace_context() or dict(_caller.get() or {})
