"""Which slots of a schedule are due now: the pure heart of the schedule processor.

Input: the schedule, how far it has fired (its last handled slot), whether the previous slot's
run is still running, and ``now``. Output: the slots to fire (in order), the run to cancel first,
and the new last handled slot. The processor writes that new position in the transaction that
starts the runs, so a restart resumes exactly after the last slot handled: no slot fires twice,
none is forgotten. Everything here is deterministic: jitter too (derived from the schedule id
and the slot), so two instances, or one before and after a restart, agree on every instant.

Missed slots (catch-up): a slot is missed when ``now`` is more than ``catchup_window`` past it,
i.e. nothing could fire it in time (the processor was down). ``all`` fires every missed slot,
``one`` only the latest of them, ``skip`` none. Slots passed while the schedule was paused are
never fired (resuming is not catching up): they are before ``resumed_at``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from foundation.errors import NonRetryableError
from processors.schedules.cron import CronSpec

__all__ = [
    "MAX_FIRES_PER_PLAN",
    "Catchup",
    "Overlap",
    "Plan",
    "ScheduleRule",
    "ScheduleRuleError",
    "jitter",
    "plan",
]

MAX_FIRES_PER_PLAN = 500
"""At most this many slots per plan (``catchup=all`` after a long downtime of a fast schedule):
the rest are due again at the next tick, so one transaction stays small."""


class ScheduleRuleError(NonRetryableError, ValueError):
    """A schedule whose timing fields contradict each other; ``field`` names the record field."""

    error_class = "ScheduleRuleError"

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


class Catchup(StrEnum):
    SKIP = "skip"
    ONE = "one"
    ALL = "all"


class Overlap(StrEnum):
    SKIP = "skip"
    ALLOW = "allow"
    CANCEL_PREVIOUS = "cancel_previous"


@dataclass(frozen=True)
class ScheduleRule:
    """What :func:`plan` needs of a schedule (the record's timing fields, validated)."""

    schedule_id: str
    cron: CronSpec
    created_at: datetime
    start_at: datetime | None = None
    end_at: datetime | None = None
    jitter: timedelta = timedelta(0)
    catchup: Catchup = Catchup.SKIP
    catchup_window: timedelta = timedelta(seconds=60)
    overlap: Overlap = Overlap.ALLOW
    paused: bool = False
    resumed_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.jitter < timedelta(0):
            raise ScheduleRuleError("jitter_ms", f"Expected jitter >= 0, but got {self.jitter}")
        if self.catchup_window <= timedelta(0):
            raise ScheduleRuleError(
                "catchup_window_ms", f"Expected catchup_window > 0, but got {self.catchup_window}"
            )
        if self.jitter >= self.catchup_window:
            # A jittered slot would count as missed before it was even due.
            raise ScheduleRuleError(
                "jitter_ms",
                f"Expected jitter ({self.jitter}) below the catch-up window "
                f"({self.catchup_window})",
            )
        if self.start_at and self.end_at and self.end_at < self.start_at:
            raise ScheduleRuleError(
                "end_at", f"Expected end_at {self.end_at} after start_at {self.start_at}"
            )

    def floor(self) -> datetime:
        """Slots at or before this instant never fire (creation, start, resumption)."""
        floor = self.created_at
        if self.start_at is not None and self.start_at > floor:
            floor = self.start_at - timedelta(microseconds=1)
        if self.resumed_at is not None:
            floor = max(floor, self.resumed_at)
        return floor


@dataclass(frozen=True)
class Plan:
    fire: tuple[datetime, ...] = ()
    """Slots to start a run for, oldest first."""
    cancel_previous: bool = False
    """Cancel the previous slot's run (still running) before starting ``fire``."""
    last_slot: datetime | None = None
    """The new last handled slot (fired or skipped); ``None``: unchanged."""
    skipped: int = 0
    """Slots handled without a run (catch-up or overlap policy)."""
    finished: bool = False
    """The schedule has no slot left (past ``end_at``)."""
    next_due: datetime | None = field(default=None, compare=False)
    """When the next slot is due (its jitter included), for the processor's sleep."""


def jitter(schedule_id: str, slot: datetime, maximum: timedelta) -> timedelta:
    """How late ``slot`` fires: a fixed fraction of ``maximum`` drawn from the schedule id and
    the slot, so every instance (and every restart) computes the same instant."""
    if maximum <= timedelta(0):
        return timedelta(0)
    digest = hashlib.sha256(f"{schedule_id}@{slot.isoformat()}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return timedelta(microseconds=int(maximum / timedelta(microseconds=1) * fraction))


def _due_at(rule: ScheduleRule, slot: datetime) -> datetime:
    return slot + jitter(rule.schedule_id, slot, rule.jitter)


def _overlap(
    rule: ScheduleRule, fire: list[datetime], previous_active: bool
) -> tuple[list[datetime], bool, int]:
    """Applies the overlap policy to the due slots: (slots to fire, cancel previous, skipped).

    Every due slot is due *now*, so the run of the first would still be running when the next
    starts: ``skip`` fires at most the first (none while the previous run runs), and
    ``cancel_previous`` fires only the latest (each earlier one would be cancelled at once)."""
    if not fire or rule.overlap is Overlap.ALLOW:
        return fire, False, 0
    if rule.overlap is Overlap.SKIP:
        if previous_active:
            return [], False, len(fire)
        return fire[:1], False, len(fire) - 1
    return fire[-1:], previous_active, len(fire) - 1


def plan(
    rule: ScheduleRule,
    last_slot: datetime | None,
    now: datetime,
    *,
    previous_active: bool = False,
    limit: int = MAX_FIRES_PER_PLAN,
) -> Plan:
    """The slots due at ``now`` after ``last_slot`` (the last handled one, or ``None``)."""
    floor = rule.floor() if last_slot is None else max(last_slot, rule.floor())
    if rule.paused:
        return Plan()
    if rule.end_at is not None and floor >= rule.end_at:
        return Plan(finished=True)
    cron = rule.cron
    skipped = 0
    handled: datetime | None = None
    fire: list[datetime] = []
    if rule.catchup is not Catchup.ALL:
        # The latest missed slot (more than the window old), if there is one after the floor.
        cutoff = now - rule.catchup_window
        if rule.end_at is not None:
            cutoff = min(cutoff, rule.end_at)
        if cutoff > floor:
            latest_missed = cron.last_at_or_before(cutoff)
            if latest_missed > floor:
                if rule.catchup is Catchup.ONE:
                    fire.append(latest_missed)
                    skipped = _count_between(cron, floor, latest_missed, cap=limit) - 1
                else:
                    skipped = _count_between(cron, floor, latest_missed, cap=limit)
                handled = floor = latest_missed
    next_due: datetime | None = None
    finished = False
    for slot in cron.slots_after(floor):
        if rule.end_at is not None and slot > rule.end_at:
            finished = True
            break
        due = _due_at(rule, slot)
        if due > now or len(fire) >= limit:
            # In order: a jittered slot holds back the ones after it (never fired out of order).
            next_due = due
            break
        fire.append(slot)
    if fire:
        handled = fire[-1]
    fired, cancel, overlap_skipped = _overlap(rule, fire, previous_active)
    return Plan(
        fire=tuple(fired),
        cancel_previous=cancel,
        last_slot=handled,
        skipped=skipped + overlap_skipped,
        finished=finished,
        next_due=next_due,
    )


def _count_between(cron: CronSpec, after: datetime, until: datetime, *, cap: int) -> int:
    """How many slots lie in ``(after, until]`` (counted up to ``cap``, for the log only)."""
    count = 0
    for slot in cron.slots_after(after):
        if slot > until or count >= cap:
            break
        count += 1
    return count
