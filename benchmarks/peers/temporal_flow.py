"""The benchmark workload on Temporal: one workflow running N sequential no-op activities.

Kept in its own module because the Python SDK re-imports a workflow's module inside its
deterministic sandbox; this module therefore imports nothing but the SDK and the standard library.
"""

from __future__ import annotations

import time
from datetime import timedelta

from temporalio import activity, workflow

WORKFLOW_NAME = "reflux-peer-sequential-noop"
ACTIVITY_NAME = "reflux-peer-noop-step"
# Generous against a co-located server on 2 cores; a step that needs longer is a failure to see.
STEP_TIMEOUT = timedelta(seconds=30)


@workflow.defn(name=WORKFLOW_NAME)
class SequentialNoop:
    """Runs ``steps`` no-op activities one after another, like REFLUX's benchmark graph."""

    @workflow.run
    async def run(self, steps: int) -> int:
        for index in range(steps):
            await workflow.execute_activity(
                ACTIVITY_NAME, index, start_to_close_timeout=STEP_TIMEOUT
            )
        return steps


class StepClock:
    """The no-op activity, recording when each run's first step begins executing.

    The worker and the client share one process and one event loop, so ``time.perf_counter``
    readings taken here and in the client are on the same clock.
    """

    def __init__(self) -> None:
        self.first_step_at: dict[str, float] = {}

    @activity.defn(name=ACTIVITY_NAME)
    async def noop_step(self, index: int) -> None:
        if index == 0:
            now = time.perf_counter()
            workflow_id = activity.info().workflow_id
            if workflow_id is not None:  # None only for standalone activities, not used here
                # A retried first step must not overwrite the time the step first began.
                self.first_step_at.setdefault(workflow_id, now)
