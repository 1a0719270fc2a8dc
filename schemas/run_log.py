"""What the run log (``reflux.runs``) carries: the one list of run event types.

The scheduler appends these, its replay folds them, and the projections apply them; they all
import the list from here so a new event type cannot reach one of them and not the others.
:data:`TERMINAL_RUN_EVENT_TYPES` are the ones that put a run into one of
:data:`schemas.statuses.TERMINAL_RUN_STATUSES`.
"""

from __future__ import annotations

from typing import TypeGuard

from schemas.models import (
    ChildRunEnded,
    ChildRunRequested,
    CommandRejected,
    GraphMutated,
    MapChildEnded,
    MapChunkDispatched,
    MapChunkFinished,
    MapStarted,
    RunCancelled,
    RunFailed,
    RunPaused,
    RunRebound,
    RunResumed,
    RunStarted,
    RunSucceeded,
    StepDispatched,
    StepFailed,
    StepRetryScheduled,
    StepScheduled,
    StepSkipped,
    StepsReset,
    StepStarted,
    StepSucceeded,
    StepTimedOut,
    StepTimeoutExtended,
    StepWaitStarted,
)

__all__ = [
    "RUN_EVENT_TYPES",
    "TERMINAL_RUN_EVENT_TYPES",
    "RunEvent",
    "TerminalRunEvent",
    "schedules_step",
    "scheduling_of",
]

RunEvent = (
    RunStarted
    | StepScheduled
    | StepDispatched
    | StepStarted
    | StepTimeoutExtended
    | StepSucceeded
    | StepFailed
    | StepRetryScheduled
    | StepTimedOut
    | StepSkipped
    | MapStarted
    | MapChunkDispatched
    | MapChunkFinished
    | MapChildEnded
    | GraphMutated
    | StepsReset
    | RunRebound
    | RunPaused
    | RunResumed
    | RunSucceeded
    | RunFailed
    | RunCancelled
    | CommandRejected
    | ChildRunRequested
    | ChildRunEnded
    | StepWaitStarted
)
"""Every record the scheduler appends to ``reflux.runs``."""

RUN_EVENT_TYPES: tuple[type[RunEvent], ...] = (
    RunStarted,
    StepScheduled,
    StepDispatched,
    StepStarted,
    StepTimeoutExtended,
    StepSucceeded,
    StepFailed,
    StepRetryScheduled,
    StepTimedOut,
    StepSkipped,
    MapStarted,
    MapChunkDispatched,
    MapChunkFinished,
    MapChildEnded,
    GraphMutated,
    StepsReset,
    RunRebound,
    RunPaused,
    RunResumed,
    RunSucceeded,
    RunFailed,
    RunCancelled,
    CommandRejected,
    ChildRunRequested,
    ChildRunEnded,
    StepWaitStarted,
)
"""The same, as a tuple for ``isinstance``; anything else on ``reflux.runs`` is poison."""

TerminalRunEvent = RunSucceeded | RunFailed | RunCancelled
"""The events after which a run has stopped (its status is terminal)."""

TERMINAL_RUN_EVENT_TYPES: tuple[type[TerminalRunEvent], ...] = (
    RunSucceeded,
    RunFailed,
    RunCancelled,
)
"""The same, as a tuple; their names are what the read model's ``run_events.event_type`` says."""


def schedules_step(event: object) -> TypeGuard[StepScheduled | StepDispatched]:
    """The event schedules an attempt of a step: a ``StepScheduled``, or a ``StepDispatched``
    that schedules its step in the same event (version 3, ``scheduled``; ADR 0075). Readers
    looking for where an attempt began (its params, its start) must accept both."""
    return isinstance(event, StepScheduled) or (
        isinstance(event, StepDispatched) and event.scheduled
    )


def scheduling_of(dispatched: StepDispatched) -> StepScheduled:
    """The ``StepScheduled`` a dispatch that schedules its step stands for (ADR 0075): same
    position, time, cause and id, for when the dispatch itself cannot be written."""
    return StepScheduled(
        run_id=dispatched.run_id,
        seq=dispatched.seq,
        event_id=dispatched.event_id,
        occurred_at=dispatched.occurred_at,
        schema_version=StepScheduled.SCHEMA_VERSION,
        causation_id=dispatched.causation_id,
        step=dispatched.step,
        attempt=dispatched.attempt,
        params=dispatched.params,
        params_ref=dispatched.params_ref,
        cache_key=dispatched.cache_key,
    )
