"""The slots of a cron expression in a time zone, as UTC instants.

croniter computes the wall-clock times; this module turns them into instants itself, so the
daylight-saving rules are ours and stated once:

- a wall-clock time that does not exist (spring forward: 02:30 on the day clocks jump 02:00 ->
  03:00) fires at the instant the old offset gives it (03:30 new time), once, even when the
  expression also names that instant (03:30);
- a wall-clock time that happens twice (fall back) fires once, at its first occurrence.

Expressions have 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds
first (``*/10 * * * * *``), or are one of croniter's aliases (``@hourly``, ``@daily``, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from foundation.errors import NonRetryableError

__all__ = ["CronError", "CronSpec"]

_TICK = timedelta(microseconds=1)
_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)


class CronError(NonRetryableError, ValueError):
    """An expression or time zone that cannot be used; ``field`` names which."""

    error_class = "CronError"

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(
            "timezone",
            f"Expected an IANA time zone such as 'Europe/Berlin' or 'UTC', but got {name!r}",
        ) from None


def _seconds_first(expression: str) -> bool:
    parts = expression.split()
    if expression.startswith("@"):
        return False
    if len(parts) not in (5, 6):
        raise CronError(
            "cron",
            "Expected a cron expression of 5 fields (minute hour day-of-month month day-of-week) "
            f"or 6 (seconds first), but got {len(parts)} fields in {expression!r}",
        )
    return len(parts) == 6


@dataclass(frozen=True)
class CronSpec:
    expression: str
    timezone: str
    _zone: ZoneInfo = field(repr=False, compare=False, init=False)
    _seconds: bool = field(repr=False, compare=False, init=False)

    def __post_init__(self) -> None:
        expression = " ".join(self.expression.split())
        object.__setattr__(self, "expression", expression)
        seconds = _seconds_first(expression)
        zone = _zone(self.timezone)
        try:
            valid = croniter.is_valid(expression, second_at_beginning=seconds)
        except (CroniterBadCronError, ValueError):
            valid = False
        if not valid:
            raise CronError("cron", f"Expected a valid cron expression, but got {expression!r}")
        object.__setattr__(self, "_zone", zone)
        object.__setattr__(self, "_seconds", seconds)
        try:
            self.next_after(_REFERENCE)
        except CroniterBadDateError:  # valid fields that never meet, e.g. 31 February
            raise CronError(
                "cron",
                f"Expected a cron expression that matches a date, but {expression!r} never does",
            ) from None

    def _wall(self, instant: datetime) -> datetime:
        """The naive wall-clock time of an aware instant in this zone."""
        return instant.astimezone(self._zone).replace(tzinfo=None)

    def _instant(self, wall: datetime) -> datetime:
        # fold=0: a time in a gap takes the offset before the jump; a repeated time its first.
        return wall.replace(tzinfo=self._zone, fold=0).astimezone(UTC)

    def _iter(self, wall: datetime, *, backwards: bool = False) -> croniter:
        return croniter(
            self.expression,
            wall,
            ret_type=datetime,
            is_prev=backwards,
            second_at_beginning=self._seconds,
        )

    def slots_after(self, instant: datetime) -> Iterator[datetime]:
        """Every slot strictly after ``instant``, in order, as aware UTC datetimes (endless)."""
        last = instant
        walls = self._iter(self._wall(instant))
        while True:
            slot = self._instant(walls.get_next(datetime))
            if slot > last:  # a repeated or skipped wall time maps to an instant already given
                last = slot
                yield slot

    def next_after(self, instant: datetime) -> datetime:
        return next(self.slots_after(instant))

    def last_at_or_before(self, instant: datetime) -> datetime:
        """The latest slot at or before ``instant``."""
        walls = self._iter(self._wall(instant) + _TICK, backwards=True)
        while True:
            slot = self._instant(walls.get_prev(datetime))
            if slot <= instant:
                return slot
