"""W3C trace context without I/O: parse and write ``traceparent``, derive span ids (ADR 0062).

Trace context arrives from outside (HTTP headers, Kafka record headers, CloudEvents extensions,
old records) and is only ever a hint: a value that does not parse is dropped, never an error, so
a bad header cannot fail a request, a start or an attempt.

The scheduler's pure core names spans it has not exported yet (a run, a step attempt) with ids
derived from what identifies them (:func:`derive_span_id`), so ``decide`` can hand a step's
span id to its worker in the invocation and the runtime can export that span later with the same
id, after a restart too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_MAX_TRACESTATE = 512
"""W3C: a vendor may drop tracestate beyond 512 characters; we keep at most that."""


@dataclass(frozen=True)
class TraceParent:
    """One ``traceparent``: the trace, the parent span in it, and whether it is sampled."""

    trace_id: str
    """32 lowercase hex digits, not all zero."""
    span_id: str
    """16 lowercase hex digits, not all zero."""
    sampled: bool = True

    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def child(self, span_id: str) -> TraceParent:
        """The same trace with ``span_id`` as the parent (a span of ours under this one)."""
        return TraceParent(self.trace_id, span_id, self.sampled)


def parse_traceparent(value: object) -> TraceParent | None:
    """The traceparent in ``value``, or ``None`` for anything the W3C spec says to ignore.

    Version 00 must be exactly four fields; a later version may append fields (kept out);
    version ff, all-zero ids, upper case and stray whitespace inside are invalid.
    """
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.match(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceParent(trace_id, span_id, sampled=bool(int(flags, 16) & 0x01))


def clean_trace_context(context: Mapping[str, object] | None) -> dict[str, str]:
    """``{traceparent[, tracestate]}`` normalised, or ``{}`` when there is no valid traceparent.

    Keys are matched case-insensitively (HTTP header names); tracestate is kept only beside a
    valid traceparent and only when it is plain, short text.
    """
    if not context:
        return {}
    lowered = {str(k).lower(): v for k, v in context.items()}
    parent = parse_traceparent(lowered.get(TRACEPARENT))
    if parent is None:
        return {}
    cleaned = {TRACEPARENT: parent.header()}
    state = lowered.get(TRACESTATE)
    if isinstance(state, str) and 0 < len(state.strip()) <= _MAX_TRACESTATE and state.isprintable():
        cleaned[TRACESTATE] = state.strip()
    return cleaned


def derive_span_id(*parts: str | int) -> str:
    """A span id fixed by ``parts`` (16 hex digits, never all zero)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return digest[:16] if digest[:16] != "0" * 16 else digest[16:32]


def derive_trace_id(*parts: str | int) -> str:
    """A trace id fixed by ``parts`` (32 hex digits, never all zero)."""
    digest = hashlib.sha256(("trace\x1f" + "\x1f".join(str(p) for p in parts)).encode()).hexdigest()
    return digest[:32] if digest[:32] != "0" * 32 else digest[32:]
