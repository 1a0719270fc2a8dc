"""The schedules' pure core: cron slots in time zones (DST), catch-up, overlap, end dates,
jitter determinism, and the records a fire writes (ADR 0056)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from processors.schedules.cron import CronError, CronSpec
from processors.schedules.firing import (
    progress_after,
    rule_of,
    run_id_for_slot,
    slot_key,
    start_command,
)
from processors.schedules.plan import Catchup, Overlap, ScheduleRule, jitter, plan
from processors.triggers.mapping import run_id_for_trigger
from schemas.models import CatchupPolicy, OverlapPolicy, Schedule

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def every_second(**kw: object) -> ScheduleRule:
    fields: dict[str, object] = {
        "schedule_id": "s1",
        "cron": CronSpec("* * * * * *", "UTC"),
        "created_at": T0,
        "catchup_window": timedelta(seconds=5),
    }
    fields.update(kw)
    return ScheduleRule(**fields)  # type: ignore[arg-type]


# -- cron and time zones -------------------------------------------------------------------------


def test_daily_slot_follows_the_zone_across_dst() -> None:
    cron = CronSpec("0 9 * * *", "Europe/Berlin")
    slots = cron.slots_after(utc(2026, 3, 27, 12))
    got = [next(slots) for _ in range(3)]
    # 09:00 local each day: UTC 08:00 before the switch (CET), 07:00 after (CEST).
    assert got == [utc(2026, 3, 28, 8), utc(2026, 3, 29, 7), utc(2026, 3, 30, 7)]
    assert {s.astimezone(BERLIN).hour for s in got} == {9}


def test_wall_time_in_the_spring_gap_fires_once_at_the_shifted_instant() -> None:
    cron = CronSpec("30 2 * * *", "Europe/Berlin")
    slot = cron.next_after(utc(2026, 3, 28, 12))
    # 02:30 does not exist on 29 March: it fires at 03:30 CEST (01:30 UTC).
    assert slot == utc(2026, 3, 29, 1, 30)
    assert cron.next_after(slot) == utc(2026, 3, 30, 0, 30)  # 02:30 CEST the next day
    hourly = CronSpec("30 * * * *", "Europe/Berlin")
    slots = hourly.slots_after(utc(2026, 3, 28, 23, 45))
    got = [next(slots) for _ in range(3)]
    # 00:30 CET, 01:30 CET, then 02:30 (gap) == 03:30 CEST given once, then 04:30 CEST.
    assert got == [utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 2, 30)]


def test_repeated_wall_time_in_autumn_fires_once() -> None:
    cron = CronSpec("30 2 * * *", "Europe/Berlin")
    first = cron.next_after(utc(2026, 10, 24, 12))
    assert first == utc(2026, 10, 25, 0, 30)  # the first 02:30 (CEST)
    assert cron.next_after(first) == utc(2026, 10, 26, 1, 30)  # not the second 02:30


def test_last_at_or_before_includes_the_instant() -> None:
    cron = CronSpec("*/10 * * * * *", "UTC")
    assert cron.last_at_or_before(utc(2026, 1, 1, 0, 0, 20)) == utc(2026, 1, 1, 0, 0, 20)
    assert cron.last_at_or_before(utc(2026, 1, 1, 0, 0, 29)) == utc(2026, 1, 1, 0, 0, 20)


@pytest.mark.parametrize(
    ("expression", "zone", "field"),
    [
        ("* * *", "UTC", "cron"),
        ("61 * * * *", "UTC", "cron"),
        ("* * * * * * *", "UTC", "cron"),
        ("0 0 31 2 *", "UTC", "cron"),
        ("0 9 * * *", "Mars/Olympus", "timezone"),
    ],
)
def test_bad_expressions_and_zones_name_their_field(expression: str, zone: str, field: str) -> None:
    with pytest.raises(CronError) as caught:
        CronSpec(expression, zone)
    assert caught.value.field == field


def test_aliases_are_accepted() -> None:
    assert CronSpec("@hourly", "UTC").next_after(utc(2026, 1, 1, 0, 10)) == utc(2026, 1, 1, 1)


# -- plan: on time, start/end, pause -------------------------------------------------------------


def test_first_plan_fires_slots_after_creation_only() -> None:
    result = plan(every_second(), None, T0 + timedelta(seconds=3, milliseconds=500))
    assert result.fire == tuple(T0 + timedelta(seconds=s) for s in (1, 2, 3))
    assert result.last_slot == T0 + timedelta(seconds=3)
    assert result.next_due == T0 + timedelta(seconds=4)
    # The next plan continues after the last handled slot: nothing twice.
    again = plan(every_second(), result.last_slot, T0 + timedelta(seconds=3, milliseconds=900))
    assert again.fire == () and again.last_slot is None


def test_start_and_end_bound_the_slots() -> None:
    rule = every_second(start_at=T0 + timedelta(seconds=10), end_at=T0 + timedelta(seconds=12))
    assert plan(rule, None, T0 + timedelta(seconds=9)).fire == ()
    result = plan(rule, None, T0 + timedelta(seconds=13))
    assert result.fire == tuple(T0 + timedelta(seconds=s) for s in (10, 11, 12))
    assert result.finished
    after = plan(rule, result.last_slot, T0 + timedelta(seconds=30))
    assert after.fire == () and after.finished


def test_paused_fires_nothing_and_resuming_skips_the_paused_slots() -> None:
    assert plan(every_second(paused=True), None, T0 + timedelta(seconds=4)).fire == ()
    resumed = every_second(resumed_at=T0 + timedelta(seconds=20))
    result = plan(resumed, T0 + timedelta(seconds=2), T0 + timedelta(seconds=21))
    assert result.fire == (T0 + timedelta(seconds=21),)


# -- plan: catch-up policies ---------------------------------------------------------------------

DOWN = T0 + timedelta(seconds=2)  # last slot handled before the downtime
BACK = T0 + timedelta(seconds=20)  # back up 18 s later; window 5 s: slots 3..15 are missed


def test_catchup_all_fires_every_missed_slot_in_order() -> None:
    result = plan(every_second(catchup=Catchup.ALL), DOWN, BACK)
    assert result.fire == tuple(T0 + timedelta(seconds=s) for s in range(3, 21))
    assert result.skipped == 0


def test_catchup_one_fires_the_latest_missed_slot_and_the_on_time_ones() -> None:
    result = plan(every_second(catchup=Catchup.ONE), DOWN, BACK)
    assert result.fire == tuple(T0 + timedelta(seconds=s) for s in (15, 16, 17, 18, 19, 20))
    assert result.skipped == 12  # 3..14


def test_catchup_skip_fires_only_the_on_time_slots() -> None:
    result = plan(every_second(catchup=Catchup.SKIP), DOWN, BACK)
    assert result.fire == tuple(T0 + timedelta(seconds=s) for s in (16, 17, 18, 19, 20))
    assert result.skipped == 13  # 3..15
    assert result.last_slot == BACK


def test_catchup_respects_the_end_date() -> None:
    rule = every_second(catchup=Catchup.ONE, end_at=T0 + timedelta(seconds=8))
    result = plan(rule, DOWN, BACK)
    assert result.fire == (T0 + timedelta(seconds=8),)
    assert result.finished


def test_catchup_all_is_bounded_per_plan() -> None:
    result = plan(every_second(catchup=Catchup.ALL), DOWN, BACK, limit=4)
    assert result.fire == tuple(T0 + timedelta(seconds=s) for s in (3, 4, 5, 6))
    rest = plan(every_second(catchup=Catchup.ALL), result.last_slot, BACK, limit=100)
    assert rest.fire[0] == T0 + timedelta(seconds=7) and rest.fire[-1] == BACK


# -- plan: overlap -------------------------------------------------------------------------------


def test_overlap_skip_holds_while_the_previous_run_runs() -> None:
    rule = every_second(overlap=Overlap.SKIP, catchup=Catchup.ALL)
    now = T0 + timedelta(seconds=3)
    held = plan(rule, T0, now, previous_active=True)
    assert held.fire == () and held.skipped == 3 and held.last_slot == now
    free = plan(rule, T0, now, previous_active=False)
    assert free.fire == (T0 + timedelta(seconds=1),) and free.skipped == 2


def test_overlap_cancel_previous_fires_the_latest_and_cancels() -> None:
    rule = every_second(overlap=Overlap.CANCEL_PREVIOUS, catchup=Catchup.ALL)
    result = plan(rule, T0, T0 + timedelta(seconds=3), previous_active=True)
    assert result.fire == (T0 + timedelta(seconds=3),)
    assert result.cancel_previous and result.skipped == 2
    idle = plan(rule, T0, T0 + timedelta(seconds=1), previous_active=False)
    assert idle.fire == (T0 + timedelta(seconds=1),) and not idle.cancel_previous


def test_overlap_allow_ignores_the_previous_run() -> None:
    result = plan(
        every_second(catchup=Catchup.ALL), T0, T0 + timedelta(seconds=2), previous_active=True
    )
    assert len(result.fire) == 2


# -- jitter --------------------------------------------------------------------------------------


def test_jitter_is_deterministic_bounded_and_spread() -> None:
    maximum = timedelta(seconds=30)
    slots = [T0 + timedelta(minutes=m) for m in range(50)]
    first = [jitter("s1", s, maximum) for s in slots]
    assert first == [jitter("s1", s, maximum) for s in slots]
    assert all(timedelta(0) <= j < maximum for j in first)
    assert len(set(first)) > 40
    assert [jitter("s2", s, maximum) for s in slots] != first


def test_jitter_delays_the_fire_not_the_slot() -> None:
    rule = ScheduleRule(
        schedule_id="s1",
        cron=CronSpec("* * * * *", "UTC"),
        created_at=T0,
        jitter=timedelta(seconds=30),
        catchup_window=timedelta(minutes=5),
    )
    slot = T0 + timedelta(minutes=1)
    delay = jitter("s1", slot, timedelta(seconds=30))
    assert plan(rule, None, slot + delay - timedelta(milliseconds=1)).fire == ()
    assert plan(rule, None, slot + delay).fire == (slot,)


def test_rule_validation() -> None:
    with pytest.raises(ValueError, match="jitter"):
        every_second(jitter=timedelta(seconds=5))
    with pytest.raises(ValueError, match="end_at"):
        every_second(start_at=T0, end_at=T0 - timedelta(seconds=1))


# -- what a fire writes --------------------------------------------------------------------------


def _schedule() -> Schedule:
    return Schedule(
        schedule_id="nightly",
        tenant="acme",
        workflow_id="report",
        cron="0 2 * * *",
        timezone="Europe/Berlin",
        catchup=CatchupPolicy.ONE,
        overlap=OverlapPolicy.SKIP,
        inputs={"region": "eu"},
        created_at=T0,
        jitter_ms=1000,
    )


def test_run_id_derives_from_schedule_and_slot_like_a_trigger() -> None:
    slot = utc(2026, 1, 2, 1)
    key = slot_key("nightly", slot)
    assert key == "nightly@2026-01-02T01:00:00.000Z"
    assert run_id_for_slot("nightly", slot) == run_id_for_trigger("schedule", key)
    assert run_id_for_slot("nightly", slot) != run_id_for_slot("nightly", utc(2026, 1, 3, 1))
    command = start_command(_schedule(), slot)
    again = start_command(_schedule(), slot)
    assert command.run_id == again.run_id and command.command_id == again.command_id
    assert command.tenant == "acme" and command.inputs == {"region": "eu"}
    assert command.source == "schedule" and command.source_key == "nightly"


def test_rule_of_a_record_and_progress() -> None:
    rule = rule_of(_schedule())
    assert rule.catchup is Catchup.ONE and rule.overlap is Overlap.SKIP
    assert rule.jitter == timedelta(seconds=1)
    slots = (utc(2026, 1, 2, 1), utc(2026, 1, 3, 1))
    first = progress_after(None, "nightly", slots[1], slots, 2)
    assert first.fired == 2 and first.skipped == 2
    assert first.last_run_id == run_id_for_slot("nightly", slots[1])
    second = progress_after(first, "nightly", utc(2026, 1, 4, 1), (), 1)
    assert second.last_run_id == first.last_run_id and second.fired == 2 and second.skipped == 3
