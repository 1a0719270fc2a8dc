"""Durations in workflow definitions: ``"200ms"``, ``"10s"``, ``"1m30s"``, ``"1h"`` or integer ms.

Definitions are written by people, so the text form is accepted; the canonical form (what goes
into ``RunStarted.definition``) is always integer milliseconds, so replay never re-parses text.
"""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")

_HINT = "use a number with a unit (500ms, 10s, 5m, 1h, 1d, 1m30s) or an integer of milliseconds"


def parse_duration(value: object) -> int:
    """Milliseconds of a duration; raises ``ValueError`` with a message a person can act on."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: {_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid duration {value}: must not be negative")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: {_HINT}")
    text = value.strip().replace(" ", "")
    if text.isdigit():
        return int(text)
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"invalid duration {value!r}: {_HINT}")
    total = sum(float(n) * _UNIT_MS[unit] for n, unit in _PART.findall(text))
    return round(total)


def format_duration(ms: int) -> str:
    """Short human form for messages: 1500 -> '1.5s', 200 -> '200ms'."""
    if ms < 1_000:
        return f"{ms}ms"
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_MS[unit]
        if ms >= size:
            value = ms / size
            return f"{value:g}{unit}"
    return f"{ms}ms"  # pragma: no cover - unreachable
