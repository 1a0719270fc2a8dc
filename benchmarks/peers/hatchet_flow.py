"""The benchmark workload on Hatchet: a workflow of N no-op tasks, each the parent of the next.

A Hatchet "step" is a task: the engine schedules it through Postgres and a worker process
executes it (pushed over gRPC, result reported back over gRPC), comparable with REFLUX's remote
path (invocation topic, worker, result topic). Imported by the worker (to register and run the
workflow) and by the driver (to trigger it): both build it with the same name.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from hatchet_sdk import Context, EmptyModel, Hatchet

from benchmarks.peers.hatchet_results import DONE_KEY, FIRST_STEP_KEY, task_name

# Generous against a co-located server on 2 cores; a step that needs longer is a failure to see.
STEP_TIMEOUT = timedelta(seconds=30)


async def first_step(input: EmptyModel, ctx: Context) -> dict[str, float]:
    # Wall clock, not perf_counter: the driver reading it is another process (same machine).
    return {FIRST_STEP_KEY: time.time()}


async def noop_step(input: EmptyModel, ctx: Context) -> dict[str, float]:
    # Not empty: the SDK leaves tasks whose output is empty out of a run's result, and the
    # driver checks that all ten are in it.
    return {DONE_KEY: 1.0}


def build_chain(hatchet: Hatchet, name: str, steps: int) -> Any:
    """The workflow ``name``: ``steps`` tasks, task i+1 with ``parents=[task i]``.

    No retries: a failed step fails the run, and the benchmark with it (as it should).
    """
    workflow = hatchet.workflow(name=name)
    parent: Any = None
    for index in range(steps):
        parent = workflow.task(
            name=task_name(index),
            parents=[parent] if parent is not None else None,
            execution_timeout=STEP_TIMEOUT,
        )(first_step if index == 0 else noop_step)
    return workflow
