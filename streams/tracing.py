"""W3C trace context on Kafka records: ``traceparent`` / ``tracestate`` headers (ADR 0062).

The headers say which span produced a record (an API request's, a scheduler's step attempt's),
so the consumer's span joins that trace. Values that do not parse are dropped, never an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from foundation.trace_context import TRACEPARENT, TRACESTATE, clean_trace_context

_NAMES = (TRACEPARENT, TRACESTATE)


def trace_headers(trace_context: Mapping[str, str] | None) -> list[tuple[str, bytes]]:
    """The record headers carrying ``trace_context`` (none when it holds no valid traceparent)."""
    cleaned = clean_trace_context(trace_context)
    return [(name, cleaned[name].encode()) for name in _NAMES if name in cleaned]


def trace_context_from_headers(
    headers: Sequence[tuple[str, bytes | str | None]] | None,
) -> dict[str, str]:
    """``{traceparent[, tracestate]}`` from a consumed record's headers, ``{}`` without them."""
    found: dict[str, str] = {}
    for name, raw in headers or ():
        key = name.lower()
        if key not in _NAMES or raw is None:
            continue
        try:
            found[key] = raw.decode() if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            continue
    return clean_trace_context(found)
