"""The status vocabulary of runs and steps, and its sets: one definition for the scheduler, the
read models, the API, the client, the demo and the benchmarks.

No Avro record carries these statuses: the scheduler folds run events into them and the
projection writes them to its rows. They live here, the lowest layer every user imports, so that
"a run has stopped" or "a step is in flight" means the same everywhere.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Literal, get_args

__all__ = [
    "ACTIVE_STEP_STATUSES",
    "DONE_STEP_STATUSES",
    "FAILED_STEP_STATUSES",
    "FINISHED_RUN_STATUSES",
    "PROJECTED_RUN_STATUSES",
    "PROJECTED_STEP_STATUSES",
    "TERMINAL_RUN_STATUSES",
    "ProjectedRunStatus",
    "ProjectedStepStatus",
    "RunStatus",
    "StepStatus",
]


class RunStatus(StrEnum):
    PENDING = "pending"
    """A log exists but the run never started (its StartRun was rejected)."""
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """Not final: a failed step can be re-driven, which puts the run back to running."""
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    PENDING = "pending"
    """Waiting for its needs (or for the run to resume)."""
    SCHEDULED = "scheduled"
    """Params rendered; waiting for the cache lookup (cache-enabled steps) before dispatch."""
    DISPATCHED = "dispatched"
    """A NodeInvocation is out, waiting for a worker to start it (only ``queue_timeout`` bounds
    that wait)."""
    RUNNING = "running"
    """A worker started the attempt (StepStarted); waiting for its result or its ``timeout``."""
    RETRY_WAIT = "retry_wait"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


TERMINAL_RUN_STATUSES: Final = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}
)
"""The run has stopped: nothing moves it on unless someone acts (a re-drive re-opens a failed
run, a re-drive from a step a succeeded one too). Clients stop following a run here; the read
model re-opens such a run on a re-drive."""
FINISHED_RUN_STATUSES: Final = frozenset({RunStatus.SUCCEEDED, RunStatus.CANCELLED})
"""Only an explicit re-drive from a step changes a run in these statuses (a succeeded one; a
cancelled run never changes): the scheduler keeps them as markers and reloads on demand."""

DONE_STEP_STATUSES: Final = frozenset({StepStatus.SUCCEEDED, StepStatus.SKIPPED})
"""Statuses that satisfy a downstream step's needs."""
FAILED_STEP_STATUSES: Final = frozenset({StepStatus.FAILED, StepStatus.TIMED_OUT})
"""The last attempt failed and no retry is pending (a retry moves the step to retry_wait)."""
ACTIVE_STEP_STATUSES: Final = frozenset(
    {StepStatus.SCHEDULED, StepStatus.DISPATCHED, StepStatus.RUNNING, StepStatus.RETRY_WAIT}
)
"""Work in flight: a result, a cache answer or a timer will move these steps on."""

# The read models' statuses are every status but pending: a run's row appears with RunStarted, a
# step's when it is scheduled. As types (the API's response models publish them as enums), in
# declaration order; ``RunStatus(...)`` below rejects a literal that is not a status.
ProjectedRunStatus = Literal["running", "paused", "succeeded", "failed", "cancelled"]
ProjectedStepStatus = Literal[
    "scheduled",
    "dispatched",
    "running",
    "retry_wait",
    "succeeded",
    "failed",
    "skipped",
    "timed_out",
    "cancelled",
]
PROJECTED_RUN_STATUSES: Final = tuple(RunStatus(s) for s in get_args(ProjectedRunStatus))
"""What a run's read-model row can say."""
PROJECTED_STEP_STATUSES: Final = tuple(StepStatus(s) for s in get_args(ProjectedStepStatus))
"""What a step's read-model row can say."""
