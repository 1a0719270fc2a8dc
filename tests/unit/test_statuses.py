"""One status vocabulary (``schemas.statuses``) for the scheduler, read models, API and client."""

from __future__ import annotations

from typing import get_args

import processors.scheduler as scheduler
from api.models.runs import RunPublic, StepPublic
from api.readmodel import TERMINAL_EVENTS
from processors.scheduler import state as scheduler_state
from projections.postgres import queries
from schemas.run_log import RUN_EVENT_TYPES, TERMINAL_RUN_EVENT_TYPES
from schemas.statuses import (
    ACTIVE_STEP_STATUSES,
    DONE_STEP_STATUSES,
    FAILED_STEP_STATUSES,
    FINISHED_RUN_STATUSES,
    PROJECTED_RUN_STATUSES,
    PROJECTED_STEP_STATUSES,
    TERMINAL_RUN_STATUSES,
    RunStatus,
    StepStatus,
)


def test_a_run_stops_when_it_succeeded_failed_or_was_cancelled() -> None:
    assert {"succeeded", "failed", "cancelled"} == TERMINAL_RUN_STATUSES
    assert {"succeeded", "cancelled"} == FINISHED_RUN_STATUSES  # a failed run can be re-driven
    assert FINISHED_RUN_STATUSES < TERMINAL_RUN_STATUSES
    assert [e.__name__ for e in TERMINAL_RUN_EVENT_TYPES] == [
        "RunSucceeded",
        "RunFailed",
        "RunCancelled",
    ]
    assert set(TERMINAL_RUN_EVENT_TYPES) < set(RUN_EVENT_TYPES)
    assert {"RunSucceeded", "RunFailed", "RunCancelled"} == TERMINAL_EVENTS


def test_step_status_sets_do_not_overlap() -> None:
    assert {"succeeded", "skipped"} == DONE_STEP_STATUSES
    assert {"failed", "timed_out"} == FAILED_STEP_STATUSES
    assert {"scheduled", "dispatched", "running", "retry_wait"} == ACTIVE_STEP_STATUSES
    assert not (DONE_STEP_STATUSES & FAILED_STEP_STATUSES)
    assert not ((DONE_STEP_STATUSES | FAILED_STEP_STATUSES) & ACTIVE_STEP_STATUSES)


def test_the_read_models_hold_every_status_but_pending_in_declaration_order() -> None:
    assert list(PROJECTED_RUN_STATUSES) == [s for s in RunStatus if s is not RunStatus.PENDING]
    assert list(PROJECTED_STEP_STATUSES) == [s for s in StepStatus if s is not StepStatus.PENDING]
    assert queries.RUN_STATUSES == ("running", "paused", "succeeded", "failed", "cancelled")
    assert queries.STEP_STATUSES == (
        "scheduled",
        "dispatched",
        "running",
        "retry_wait",
        "succeeded",
        "failed",
        "skipped",
        "timed_out",
        "cancelled",
    )
    assert all(type(s) is str for s in (*queries.RUN_STATUSES, *queries.STEP_STATUSES))
    assert get_args(RunPublic.model_fields["status"].annotation) == queries.RUN_STATUSES
    assert get_args(StepPublic.model_fields["status"].annotation) == queries.STEP_STATUSES


def test_the_scheduler_uses_the_same_vocabulary() -> None:
    assert scheduler.RunStatus is RunStatus
    assert scheduler.StepStatus is StepStatus
    assert scheduler_state.FINISHED_RUN_STATUSES is FINISHED_RUN_STATUSES
