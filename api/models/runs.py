"""Run models: the start request, accepted/command answers, run/step/event views, state."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.config import MAX_WAIT_MS
from api.ids import IDEMPOTENCY_KEY_PATTERN
from api.models.common import VersionNumber
from schemas.statuses import ProjectedRunStatus, ProjectedStepStatus

__all__ = [
    "CommandAccepted",
    "CommandApplied",
    "CommandCreate",
    "ErrorInfoPublic",
    "RunAccepted",
    "RunCreate",
    "RunDetail",
    "RunEventPublic",
    "RunEventsPublic",
    "RunPublic",
    "RunStatePublic",
    "RunsPublic",
    "StepPublic",
]

WaitMs = Field(
    default=None,
    ge=0,
    le=MAX_WAIT_MS,
    description=f"Wait up to this many ms (max {MAX_WAIT_MS}) for the outcome.",
)


class RunCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"workflow_id": "order-sync", "inputs": {"order_id": 42}, "wait_ms": 5000}]
        },
    )

    workflow_id: str = Field(min_length=1, max_length=200)
    version: VersionNumber | None = Field(default=None, description="Default: the latest version.")
    inputs: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Same as the Idempotency-Key header: the same key yields the same run.",
    )
    wait_ms: int | None = WaitMs


class ErrorInfoPublic(BaseModel):
    error_class: str
    message: str
    retryable: bool


class RunPublic(BaseModel):
    run_id: str
    workflow_id: str
    workflow_version: int
    status: ProjectedRunStatus
    inputs: Any = None
    outputs: Any = None
    error: ErrorInfoPublic | None = None
    failed_step: str | None = None
    source: str
    source_key: str | None = None
    idempotency_key: str | None = None
    deadline: datetime | None = None
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    last_seq: int = Field(description="seq of the last event in this view.")
    parent_run_id: str | None = Field(
        default=None,
        description="A child run's parent run (meta.workflow, meta.loop, meta.map over a "
        "workflow).",
    )
    parent_step_id: str | None = Field(
        default=None, description="The parent's meta step that started this child run."
    )
    parent_attempt: int | None = None
    parent_iteration: int | None = Field(
        default=None,
        description="meta.loop: the iteration this child run is (1-based); meta.map over a "
        "workflow: the index of the item it runs (0-based).",
    )


class ChildRunPublic(BaseModel):
    """A child run started by one of the run's meta steps."""

    run_id: str
    workflow_id: str
    workflow_version: int
    status: ProjectedRunStatus
    step_id: str | None
    attempt: int | None
    iteration: int | None
    """meta.loop: the iteration (1-based); meta.map over a workflow: the item's index."""


class StepPublic(BaseModel):
    step_id: str
    node: str
    node_version: str
    status: ProjectedStepStatus
    attempt: int
    invocation_id: str | None = None
    output: Any = None
    output_ref: dict[str, Any] | None = Field(
        default=None, description="Claim check of a large output (uri, size_bytes, ...)."
    )
    error: ErrorInfoPublic | None = None
    skip_reason: str | None = None
    cache_hit: bool | None = None
    duration_ms: int | None = None
    scheduled_at: datetime | None = None
    dispatched_at: datetime | None = Field(
        default=None, description="When the current attempt was sent to the workers."
    )
    started_at: datetime | None = Field(
        default=None,
        description="When a worker started the current attempt (status `running` from then on); "
        "the step `timeout` counts from here, not from the dispatch.",
    )
    worker: str | None = Field(default=None, description="The worker running the attempt.")
    next_attempt_at: datetime | None = None
    finished_at: datetime | None = None


class RunDetail(RunPublic):
    steps: list[StepPublic]
    children: list[ChildRunPublic] = Field(
        default_factory=list,
        description="Child runs of the run's meta.workflow / meta.loop steps, oldest first.",
    )


class RunsPublic(BaseModel):
    data: list[RunPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class RunAccepted(BaseModel):
    run_id: str
    status: Literal["accepted"] = "accepted"
    run: RunDetail | None = Field(
        default=None,
        description="With wait_ms: the run as far as it got (absent until it is projected).",
    )


class RunEventPublic(BaseModel):
    seq: int
    event_type: str = Field(examples=["StepSucceeded"])
    event_id: str
    occurred_at: datetime
    payload: dict[str, Any]


class RunEventsPublic(BaseModel):
    run_id: str
    data: list[RunEventPublic]
    next_after_seq: int = Field(description="Pass as `after_seq` to continue.")


class RunStatePublic(BaseModel):
    run_id: str
    seq: int = Field(description="The state after applying every event up to this seq.")
    event_count: int
    state: dict[str, Any] = Field(description="The scheduler's RunState as JSON.")


class CommandCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=1000)
    requested_by: str | None = Field(default=None, max_length=200)


class RedriveCreate(CommandCreate):
    downstream: bool = Field(
        default=False,
        description="false: re-run the failed or timed-out step only. true: re-drive from the "
        "step: it and every step downstream of it run again (in a running, failed or succeeded "
        "run, which reopens), on the outputs their upstream steps already have.",
    )


class SignalCreate(CommandCreate):
    payload: Any = Field(
        default=None,
        description="Any JSON: the waiting meta.signal step's output.payload (ADR 0057). For an "
        'approval: {"approved": true|false, "comment": "..."}.',
    )


class RebindCreate(CommandCreate):
    version: int | None = Field(
        default=None, ge=1, description="The workflow version to continue on (default: latest)."
    )
    redrive_failed: bool = Field(
        default=True,
        description="Reopen a failed run and run its failed steps again on the new version.",
    )


class CommandAccepted(BaseModel):
    command_id: str
    run_id: str
    status: Literal["accepted"] = "accepted"


class CommandApplied(BaseModel):
    command_id: str
    run_id: str
    status: Literal["applied"] = "applied"
    event_type: str = Field(examples=["RunCancelled"])
    seq: int
