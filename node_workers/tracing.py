"""The worker's spans (ADR 0062): one per attempt, child of the scheduler's attempt span that the
invocation's ``traceparent`` names; nodes that call out (``http.request``) add a client span
under it and send its ``traceparent`` on."""

from __future__ import annotations

from typing import Final

from opentelemetry.trace import Tracer

from foundation.telemetry import tracer

SERVICE: Final = "reflux-worker"


def worker_tracer() -> Tracer:
    """The workers' tracer; the no-op tracer when tracing is off (nothing exported)."""
    return tracer(SERVICE)
