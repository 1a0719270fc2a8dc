"""What the run log (``reflux.runs``) carries: the one list of run event types.

The scheduler appends these, its replay folds them, and the projections apply them; they all
import the list from here so a new event type cannot reach one of them and not the others.
"""

from __future__ import annotations

from schemas.models import (
    CommandRejected,
    GraphMutated,
    RunCancelled,
    RunFailed,
    RunPaused,
    RunResumed,
    RunStarted,
    RunSucceeded,
    StepDispatched,
    StepFailed,
    StepRetryScheduled,
    StepScheduled,
    StepSkipped,
    StepSucceeded,
    StepTimedOut,
)

__all__ = ["RUN_EVENT_TYPES", "RunEvent"]

RunEvent = (
    RunStarted
    | StepScheduled
    | StepDispatched
    | StepSucceeded
    | StepFailed
    | StepRetryScheduled
    | StepTimedOut
    | StepSkipped
    | GraphMutated
    | RunPaused
    | RunResumed
    | RunSucceeded
    | RunFailed
    | RunCancelled
    | CommandRejected
)
"""Every record the scheduler appends to ``reflux.runs``."""

RUN_EVENT_TYPES: tuple[type[RunEvent], ...] = (
    RunStarted,
    StepScheduled,
    StepDispatched,
    StepSucceeded,
    StepFailed,
    StepRetryScheduled,
    StepTimedOut,
    StepSkipped,
    GraphMutated,
    RunPaused,
    RunResumed,
    RunSucceeded,
    RunFailed,
    RunCancelled,
    CommandRejected,
)
"""The same, as a tuple for ``isinstance``; anything else on ``reflux.runs`` is poison."""
