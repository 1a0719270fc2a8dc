"""Schedules (ADR 0056): cron expressions in a time zone that start runs of a workflow."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ScheduleCreate", "SchedulePublic", "SchedulesPublic"]

SCHEDULE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class ScheduleCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "schedule_id": "nightly-report",
                    "workflow_id": "report",
                    "cron": "0 2 * * *",
                    "timezone": "Europe/Berlin",
                    "catchup": "one",
                    "overlap": "skip",
                    "jitter_s": 30,
                    "inputs": {"region": "eu"},
                }
            ]
        },
    )

    schedule_id: str | None = Field(
        default=None,
        pattern=SCHEDULE_ID_PATTERN,
        description="Your id for it (default: a new UUID); a second POST with it answers 409.",
    )
    workflow_id: str = Field(min_length=1, max_length=200)
    workflow_version: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="null: the latest."
    )
    cron: str = Field(
        min_length=1,
        max_length=200,
        description="5 fields (minute hour day-of-month month day-of-week), 6 with seconds "
        "first, or an alias (@hourly, @daily, ...).",
    )
    timezone: str = Field(
        default="UTC", max_length=64, description="IANA time zone the expression is read in."
    )
    start_at: datetime | None = Field(default=None, description="No slot before (with a zone).")
    end_at: datetime | None = Field(default=None, description="No slot after (with a zone).")
    jitter_s: float = Field(
        default=0, ge=0, le=86_400, description="Each slot fires up to this much later."
    )
    catchup: Literal["skip", "one", "all"] = Field(
        default="skip", description="Slots missed during downtime: skip them, fire the latest, all."
    )
    catchup_window_s: float = Field(
        default=60,
        gt=0,
        le=366 * 86_400,
        description="A slot older than this when it could fire counts as missed.",
    )
    overlap: Literal["skip", "allow", "cancel_previous"] = Field(
        default="skip", description="While the previous slot's run still runs."
    )
    inputs: dict[str, Any] = Field(default_factory=dict, description="The runs' inputs.")
    paused: bool = False


class SchedulePublic(BaseModel):
    schedule_id: str
    tenant: str
    workflow_id: str
    workflow_version: int | None
    cron: str
    timezone: str
    start_at: datetime | None
    end_at: datetime | None
    jitter_s: float
    catchup: str
    catchup_window_s: float
    overlap: str
    inputs: Any
    paused: bool
    created_at: datetime
    resumed_at: datetime | None
    created_by: str | None
    next_slots: list[datetime]
    """The next (up to 3) slots from now, UTC; empty when paused or past its end."""


class SchedulesPublic(BaseModel):
    data: list[SchedulePublic]
    count: int
