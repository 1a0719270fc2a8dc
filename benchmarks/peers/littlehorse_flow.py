"""The benchmark workload on LittleHorse: a WfSpec of N sequential TASK nodes of a no-op TaskDef.

A step is a LittleHorse TaskRun: the server schedules it, the Python task worker (an
``LHTaskWorker`` polling over gRPC) executes the no-op and reports it, and the server's core
processor, on Kafka Streams, records the result and schedules the next one. After the last step
the run throws a WorkflowEvent, which the client awaits with ``AwaitWorkflowEvent`` (the SDK has
no call that waits for a WfRun to finish; this one waits on the server, no polling).

Imports the SDK, so it is loaded only in the driver process (the SDK's virtualenv).

No ``from __future__ import annotations`` here on purpose: the SDK derives the TaskDef from the
task function's signature, and with string annotations it resolves ``-> None`` to ``NoneType``,
which it cannot map to a LittleHorse type ("Type <class 'NoneType'> not supported").
"""

import time
from typing import Any

from littlehorse.worker import WorkerContext
from littlehorse.workflow import Workflow, WorkflowThread

# Generous against a co-located server on 2 cores; a step that needs longer is a failure to see.
STEP_TIMEOUT_S = 30


class StepClock:
    """The no-op task, recording when each run's first step begins executing.

    The worker and the client share one process and one event loop, so ``time.perf_counter``
    readings taken here and in the client are on the same clock.
    """

    def __init__(self) -> None:
        self.first_step_at: dict[str, float] = {}

    async def noop_step(self, index: int, ctx: WorkerContext) -> None:
        if index == 0:
            # A retried first step must not overwrite the time the step first began.
            self.first_step_at.setdefault(ctx.wf_run_id.id, time.perf_counter())


def sequential_noop(name: str, task_def: str, done_event: str, steps: int) -> Any:
    """The WfSpec: ``steps`` TASK nodes one after another, then a THROW_EVENT with ``steps``."""

    def entrypoint(thread: WorkflowThread) -> None:
        for index in range(steps):
            # No retries (the SDK's default): a failed no-op is a failure to see, not to hide.
            thread.execute(task_def, index, timeout_seconds=STEP_TIMEOUT_S)
        thread.throw_event(done_event, steps, return_type=int)

    return Workflow(name, entrypoint)
