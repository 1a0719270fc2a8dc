"""What a fire writes, and the rule a schedule record stands for (pure).

The run id of a slot is derived from the schedule id and the slot's instant exactly as a
trigger's run id is derived from its source and idempotency key (source ``schedule``, key
``<schedule id>@<slot, ISO 8601 UTC>``): a second instance, a restarted one, or a Kafka
Connect pipeline replaying the same slot as a plain trigger names the same run, which the
scheduler starts once.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from processors.schedules.cron import CronSpec
from processors.schedules.plan import Catchup, Overlap, ScheduleRule
from processors.triggers.mapping import inputs_from_payload, run_id_for_trigger
from schemas.models import CancelRun, Schedule, ScheduleProgress, StartRun

__all__ = [
    "SOURCE",
    "cancel_command",
    "progress_after",
    "rule_of",
    "run_id_for_slot",
    "slot_key",
    "start_command",
]

SOURCE = "schedule"
# Fixed forever: a changed namespace would give a replayed slot a new command id.
_COMMANDS = uuid.UUID("2b0b6a43-4f0e-5c55-8d8e-5c1e0f3a7d21")


def slot_key(schedule_id: str, slot: datetime) -> str:
    """``<schedule id>@<slot>``: the slot's idempotency key (UTC, milliseconds, ``Z``)."""
    text = slot.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f"{schedule_id}@{text}"


def run_id_for_slot(schedule_id: str, slot: datetime) -> str:
    return run_id_for_trigger(SOURCE, slot_key(schedule_id, slot))


def rule_of(schedule: Schedule) -> ScheduleRule:
    """The timing rule of a schedule record (raises ``CronError``/``ValueError`` if invalid)."""
    return ScheduleRule(
        schedule_id=schedule.schedule_id,
        cron=CronSpec(schedule.cron, schedule.timezone),
        created_at=schedule.created_at,
        start_at=schedule.start_at,
        end_at=schedule.end_at,
        jitter=timedelta(milliseconds=schedule.jitter_ms),
        catchup=Catchup(schedule.catchup.value),
        catchup_window=timedelta(milliseconds=schedule.catchup_window_ms),
        overlap=Overlap(schedule.overlap.value),
        paused=schedule.paused,
        resumed_at=schedule.resumed_at,
    )


def start_command(schedule: Schedule, slot: datetime) -> StartRun:
    key = slot_key(schedule.schedule_id, slot)
    run_id = run_id_for_trigger(SOURCE, key)
    return StartRun(
        run_id=run_id,
        command_id=str(uuid.uuid5(_COMMANDS, f"start:{run_id}")),
        workflow_id=schedule.workflow_id,
        workflow_version=schedule.workflow_version,
        inputs=inputs_from_payload(schedule.inputs),
        idempotency_key=f"{SOURCE}:{key}",
        source=SOURCE,
        source_key=schedule.schedule_id,
        tenant=schedule.tenant,
        requested_by=f"schedule:{schedule.schedule_id}",
        reason=f"schedule slot {key}",
    )


def cancel_command(schedule: Schedule, run_id: str, slot: datetime) -> CancelRun:
    return CancelRun(
        run_id=run_id,
        command_id=str(uuid.uuid5(_COMMANDS, f"cancel:{run_id}")),
        requested_by=f"schedule:{schedule.schedule_id}",
        reason=f"overlap cancel_previous: slot {slot_key(schedule.schedule_id, slot)} is due",
    )


def progress_after(
    previous: ScheduleProgress | None,
    schedule_id: str,
    last_slot: datetime,
    fired: tuple[datetime, ...],
    skipped: int,
) -> ScheduleProgress:
    last_fired = fired[-1] if fired else (previous.last_fired_slot if previous else None)
    return ScheduleProgress(
        schedule_id=schedule_id,
        last_slot=last_slot,
        last_fired_slot=last_fired,
        last_run_id=(
            run_id_for_slot(schedule_id, fired[-1])
            if fired
            else (previous.last_run_id if previous else None)
        ),
        fired=(previous.fired if previous else 0) + len(fired),
        skipped=(previous.skipped if previous else 0) + skipped,
    )
