"""The part of a trace the critic reads, and two ways to get it.

The runtime decodes the JSON straight into :class:`TraceView` (:func:`view_from_json`): the
critic needs a dozen of a trace's fields, and the strict pydantic validation of a whole
:class:`~schemas.models.Trace` costs more than every detector together (benchmarks/loop/drift.py
measures both). The checks here are the ones the detectors depend on; a record that fails them
raises :class:`TraceViewError` naming the field, and the runtime counts and skips it.

Decoding is two paths with one meaning (ADR 0031). The fast path is a typed msgspec decoder
(~1 us a trace, against ~11 us for ``json.loads`` and checks in Python): it only accepts what
the reference path accepts, with the same result. Whatever it refuses (a wrong type, a missing
field, a number too large for it, bad JSON) goes to the reference path (:func:`_view_reference`:
``json.loads`` and explicit checks), which either reads it the same way or raises the error that
names the field. Bad traces are rare, so the slow path costs nothing on the hot path.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from foundation.errors import NonRetryableError
from schemas.models import Trace

__all__ = ["TraceView", "TraceViewError", "view_from_json", "view_from_trace"]


class TraceViewError(NonRetryableError):
    """A traces-topic message the critic cannot read (not JSON, or a field of the wrong type)."""

    error_class = "MalformedCriticTrace"


class TraceView(msgspec.Struct, frozen=True, gc=False):
    """A msgspec struct, not a dataclass: built for every trace, and a frozen dataclass's
    ``__init__`` alone costs ~2 us (``object.__setattr__`` per field) against ~0.2 us.
    ``gc=False``: it holds no reference cycle, so the cyclic collector skips it."""

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
    metrics: dict[str, float] = {}
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


class _Wire(msgspec.Struct, gc=False):
    """The fields the critic reads, typed as the reference path checks them (msgspec is strict:
    no bool for an int, no "5" for 5). Other fields of the message are skipped unparsed. The
    three loosely read fields are ``Any`` and handled below exactly as the reference does."""

    run_id: str
    workflow_id: str
    workflow_version: int
    step_id: str
    node: str
    node_version: str
    status: str
    start: int
    end: int
    latency_ms: int
    inputs_hash: str
    retry_count: int
    cache_hit: bool
    cost_tokens: int | None = None
    error: Any = None
    metrics: Any = None
    context: Any = None


_decode_wire = msgspec.json.Decoder(_Wire).decode


def view_from_json(data: bytes | bytearray | memoryview) -> TraceView:
    """One message of the traces topic (schemas/trace_json.py's format) as a view."""
    try:
        w = _decode_wire(data)
    except msgspec.DecodeError:
        # Refused by the fast path: the reference path reads it or names the bad field.
        return _view_reference(data)
    error, metrics, context = w.error, w.metrics, w.context
    if error is None and not metrics and not context:
        # The common trace: a success with no metrics and no context.
        return TraceView(
            w.run_id,
            w.workflow_id,
            w.workflow_version,
            w.step_id,
            w.node,
            w.node_version,
            w.status,
            w.start,
            w.end,
            w.latency_ms,
            w.inputs_hash,
            w.retry_count,
            w.cache_hit,
            w.cost_tokens,
        )
    if (error is not None and not isinstance(error, dict)) or (
        metrics and not isinstance(metrics, dict)
    ):
        return _view_reference(data)
    return TraceView(
        w.run_id,
        w.workflow_id,
        w.workflow_version,
        w.step_id,
        w.node,
        w.node_version,
        w.status,
        w.start,
        w.end,
        w.latency_ms,
        w.inputs_hash,
        w.retry_count,
        w.cache_hit,
        w.cost_tokens,
        _str_or_none(error, "error_class"),
        _str_or_none(error, "message"),
        bool(error.get("retryable")) if error is not None else None,
        _numbers(metrics) if metrics else {},
        isinstance(context, dict) and context.get("kind") == "retry",
    )


# -- the reference path: json.loads and explicit checks that name the field ----------------------

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


def _view_reference(data: bytes | bytearray | memoryview) -> TraceView:
    """The definition of what :func:`view_from_json` accepts and how it reads it."""
    try:
        datum = json.loads(bytes(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TraceViewError(f"<root>: not a UTF-8 JSON object ({exc})") from None
    if not isinstance(datum, dict):
        raise TraceViewError(f"<root>: expected a JSON object, got {type(datum).__name__}")
    g = datum.get
    values = [g(name) for name, _ in _FIELDS]
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
        metrics=_numbers(metrics) if metrics else {},
        is_retry_decision=isinstance(context, dict) and context.get("kind") == "retry",
    )


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in metrics.items() if type(v) is float or type(v) is int}


def _str_or_none(error: dict[str, Any] | None, name: str) -> str | None:
    if error is None:
        return None
    value = error.get(name)
    return value if isinstance(value, str) else None
