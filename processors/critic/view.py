"""The part of a trace the critic reads, and two ways to get it.

The runtime decodes the JSON straight into :class:`TraceView` (:func:`view_from_json`): the
critic needs a dozen of a trace's fields, and the strict pydantic validation of a whole
:class:`~schemas.models.Trace` costs more than every detector together (benchmarks/loop/drift.py
measures both). The checks here are the ones the detectors depend on; a record that fails them
raises :class:`TraceViewError` naming the field, and the runtime counts and skips it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from foundation.errors import NonRetryableError
from schemas.models import Trace

__all__ = ["TraceView", "TraceViewError", "view_from_json", "view_from_trace"]


class TraceViewError(NonRetryableError):
    """A traces-topic message the critic cannot read (not JSON, or a field of the wrong type)."""

    error_class = "MalformedCriticTrace"


@dataclass(frozen=True, slots=True)
class TraceView:
    run_id: str
    workflow_id: str
    workflow_version: int
    step_id: str
    node: str
    node_version: str
    status: str
    """A ``TraceStatus`` value: ok, error, timeout, cancelled, skipped."""
    start_ms: int
    end_ms: int
    latency_ms: int
    inputs_hash: str
    retry_count: int = 0
    cache_hit: bool = False
    cost_tokens: int | None = None
    error_class: str | None = None
    error_message: str | None = None
    error_retryable: bool | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    is_retry_decision: bool = False
    """The scheduler's retry-decision traces (context kind = retry): not attempts."""

    @property
    def failed(self) -> bool:
        return self.status in ("error", "timeout")

    @property
    def is_attempt(self) -> bool:
        """An attempt that ran or was served (ok, error, timeout); not cancelled/skipped."""
        return not self.is_retry_decision and self.status in ("ok", "error", "timeout")


def view_from_trace(trace: Trace) -> TraceView:
    error = trace.error
    return TraceView(
        run_id=trace.run_id,
        workflow_id=trace.workflow_id,
        workflow_version=trace.workflow_version,
        step_id=trace.step_id,
        node=trace.node,
        node_version=trace.node_version,
        status=str(trace.status),
        start_ms=int(trace.start.timestamp() * 1000),
        end_ms=int(trace.end.timestamp() * 1000),
        latency_ms=trace.latency_ms,
        inputs_hash=trace.inputs_hash,
        retry_count=trace.retry_count,
        cache_hit=trace.cache_hit,
        cost_tokens=trace.cost_tokens,
        error_class=error.error_class if error is not None else None,
        error_message=error.message if error is not None else None,
        error_retryable=error.retryable if error is not None else None,
        metrics=dict(trace.metrics),
        is_retry_decision=trace.context.get("kind") == "retry",
    )


_FIELDS: tuple[tuple[str, type], ...] = (
    ("run_id", str),
    ("workflow_id", str),
    ("workflow_version", int),
    ("step_id", str),
    ("node", str),
    ("node_version", str),
    ("status", str),
    ("start", int),
    ("end", int),
    ("latency_ms", int),
    ("inputs_hash", str),
    ("retry_count", int),
    ("cache_hit", bool),
)


def _bad_field(datum: dict[str, Any]) -> TraceViewError:
    for name, kind in _FIELDS:
        value = datum.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return TraceViewError(
                f"{name}: expected {kind.__name__}, got {type(value).__name__} {value!r:.40}"
            )
    return TraceViewError("<root>: malformed trace")  # pragma: no cover (caller checked)


def view_from_json(data: bytes | bytearray | memoryview) -> TraceView:
    """One message of the traces topic (schemas/trace_json.py's format) as a view."""
    try:
        datum = json.loads(bytes(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TraceViewError(f"<root>: not a UTF-8 JSON object ({exc})") from None
    if not isinstance(datum, dict):
        raise TraceViewError(f"<root>: expected a JSON object, got {type(datum).__name__}")
    g = datum.get
    values = [g(name) for name, _ in _FIELDS]
    # One pass of isinstance checks on the hot path; the slow path names the field.
    for value, (_, kind) in zip(values, _FIELDS, strict=True):
        if type(value) is not kind:
            raise _bad_field(datum)
    error = g("error")
    if error is not None and not isinstance(error, dict):
        raise TraceViewError(f"error: expected an object or null, got {type(error).__name__}")
    metrics = g("metrics") or {}
    if not isinstance(metrics, dict):
        raise TraceViewError(f"metrics: expected an object, got {type(metrics).__name__}")
    context = g("context") or {}
    cost = g("cost_tokens")
    if cost is not None and type(cost) is not int:
        raise TraceViewError(f"cost_tokens: expected an integer or null, got {cost!r:.40}")
    v: list[Any] = values
    return TraceView(
        run_id=v[0],
        workflow_id=v[1],
        workflow_version=v[2],
        step_id=v[3],
        node=v[4],
        node_version=v[5],
        status=v[6],
        start_ms=v[7],
        end_ms=v[8],
        latency_ms=v[9],
        inputs_hash=v[10],
        retry_count=v[11],
        cache_hit=v[12],
        cost_tokens=cost,
        error_class=_str_or_none(error, "error_class"),
        error_message=_str_or_none(error, "message"),
        error_retryable=bool(error.get("retryable")) if error is not None else None,
        metrics={str(k): float(v) for k, v in metrics.items() if type(v) is float or type(v) is int}
        if metrics
        else {},
        is_retry_decision=isinstance(context, dict) and context.get("kind") == "retry",
    )


def _str_or_none(error: dict[str, Any] | None, name: str) -> str | None:
    if error is None:
        return None
    value = error.get(name)
    return value if isinstance(value, str) else None
