"""Params of the waiting meta nodes ``meta.wait`` and ``meta.signal`` (ADR 0057).

Both are run by the scheduler: a waiting step holds no worker slot; it is a step in state
``running`` with (maybe) a durable timer in run state (``TimerKind.wait``), so it survives the
restart of every component and may wait for days.

- ``meta.wait``: wait for a ``duration`` (``"30s"``, ``"10m"``, ``"2h"``, ``"3d"``, ``"250ms"``
  or an integer of milliseconds) or ``until`` an absolute time (ISO 8601 with an offset, e.g.
  ``"2026-12-24T09:00:00Z"``); exactly one of the two. Either may be a ``{{ expression }}``
  rendered when the step starts. Output: ``{"waited_ms": n, "due_at": "<ISO time>"}``.
- ``meta.signal``: wait for the named signal (``POST /v1/runs/{id}/signals/{name}``, the
  ``SignalRun`` command); its payload becomes the output: ``{"signal": name, "payload": ...,
  "timed_out": false}``. ``timeout`` (a duration) bounds the wait; ``on_timeout`` says what it
  does then: ``fail`` (default: the step fails with ``WaitTimeout``, not retryable) or
  ``continue`` (the step succeeds with ``payload: null, timed_out: true``). Human approval is a
  signal wait whose payload says ``{"approved": true|false, ...}``.

This module is pure (no scheduler import), so validation and the scheduler share it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from foundation.errors import NonRetryableError

__all__ = [
    "SIGNAL_NAME_PATTERN",
    "SIGNAL_NODE",
    "WAIT_NODE",
    "WAIT_NODES",
    "InvalidWaitError",
    "SignalParams",
    "WaitParams",
    "check_wait_step",
    "due_time",
    "parse_duration_ms",
    "signal_params",
    "wait_params",
]

WAIT_NODE: Final = "meta.wait"
SIGNAL_NODE: Final = "meta.signal"
WAIT_NODES: Final = frozenset({WAIT_NODE, SIGNAL_NODE})

SIGNAL_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
"""Signal names travel in a URL path segment: a short, plain token."""
MAX_WAIT_MS: Final = 3650 * 24 * 3600 * 1000
"""Ten years: beyond, a wait is a mistake (and a datetime near its range)."""

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class InvalidWaitError(NonRetryableError):
    """A wait's rendered duration or time is not one (the step fails, not retried)."""

    error_class = "InvalidWait"


def parse_duration_ms(value: Any, field: str) -> int:
    """``"30s"`` / ``"10m"`` / ``"2h"`` / ``"3d"`` / ``"250ms"`` or an integer of ms -> ms."""
    if isinstance(value, bool):
        raise InvalidWaitError(f"{field}: expected a duration, but got {value!r}")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str) and (found := _DURATION.match(value)):
        ms = int(found.group(1)) * _UNIT_MS[found.group(2)]
    else:
        raise InvalidWaitError(
            f"{field}: expected a duration like '30s', '10m', '2h', '3d' or milliseconds, "
            f"but got {value!r}"
        )
    if ms < 0 or ms > MAX_WAIT_MS:
        raise InvalidWaitError(f"{field}: expected 0 to {MAX_WAIT_MS} ms, but got {ms}")
    return ms


def parse_until(value: Any, field: str) -> datetime:
    """An ISO 8601 time with an offset (a naive time would depend on the scheduler's zone)."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidWaitError(
                f"{field}: expected an ISO 8601 time like '2026-12-24T09:00:00Z', but got {value!r}"
            ) from None
    else:
        raise InvalidWaitError(f"{field}: expected an ISO 8601 time, but got {value!r}")
    if parsed.tzinfo is None:
        raise InvalidWaitError(
            f"{field}: expected a time with an offset (Z or +hh:mm), but got {value!r}"
        )
    return parsed


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WaitParams(_Params):
    duration: int | str | None = None
    """A duration (``"30s"``, ``"3d"``, ms as an integer) or a ``{{ expression }}``."""
    until: str | None = None
    """An ISO 8601 time with an offset, or a ``{{ expression }}``."""

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: int | str | None) -> int | str | None:
        if value is not None and not _is_template(value):
            try:
                parse_duration_ms(value, "duration")
            except InvalidWaitError as exc:
                raise ValueError(str(exc).removeprefix("duration: ")) from None
        return value

    @field_validator("until")
    @classmethod
    def _until(cls, value: str | None) -> str | None:
        if value is not None and not _is_template(value):
            try:
                parse_until(value, "until")
            except InvalidWaitError as exc:
                raise ValueError(str(exc).removeprefix("until: ")) from None
        return value


class SignalParams(_Params):
    name: str = Field(pattern=SIGNAL_NAME_PATTERN)
    """The signal waited for (literal: operators address it by name)."""
    timeout: int | str | None = None
    """How long to wait at most (a duration); none: until the signal (or the run ends)."""
    on_timeout: Literal["fail", "continue"] = "fail"

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: int | str | None) -> int | str | None:
        if value is not None:
            try:
                parse_duration_ms(value, "timeout")
            except InvalidWaitError as exc:
                raise ValueError(str(exc).removeprefix("timeout: ")) from None
        return value


def wait_params(params: Any) -> WaitParams:
    return WaitParams.model_validate(params)


def signal_params(params: Any) -> SignalParams:
    return SignalParams.model_validate(params)


def due_time(rendered: Mapping[str, Any], now: datetime, prefix: str) -> datetime:
    """When a ``meta.wait`` with rendered ``duration`` / ``until`` ends."""
    if rendered.get("duration") is not None:
        ms = parse_duration_ms(rendered["duration"], f"{prefix}.duration")
        return now + timedelta(milliseconds=ms)
    return parse_until(rendered.get("until"), f"{prefix}.until")


# -- validation (called through workflows.meta.check_meta_step) ------------------------------------

Issue = tuple[str, str]


def check_wait_step(
    prefix: str, node_name: str, params: Mapping[str, Any], pydantic_issues: Any
) -> list[Issue]:
    """Problems of a ``meta.wait`` / ``meta.signal`` step's params (paths under ``prefix``)."""
    try:
        if node_name == SIGNAL_NODE:
            signal_params(params)
            return []
        parsed = wait_params(params)
    except ValidationError as exc:
        issues: list[Issue] = pydantic_issues(exc, prefix)
        return issues
    if (parsed.duration is None) == (parsed.until is None):
        return [(f"{prefix}.duration", "exactly one of 'duration' or 'until' is required")]
    return []
