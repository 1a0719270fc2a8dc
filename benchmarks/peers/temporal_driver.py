"""Drives the workload through Temporal's Python SDK: an in-process worker plus a client.

Imports the SDK at module level, so only the process that measures imports this module (see
``benchmarks.peer_temporal.run_temporal_benchmark`` for why that is a child process).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from benchmarks.peers.rounds import all_at_once
from benchmarks.peers.temporal_flow import SequentialNoop, StepClock
from benchmarks.peers.timings import STEPS_PER_RUN, Plan, RunTiming, summarize

# A run of 10 no-ops that takes a minute has failed; bound it instead of waiting forever.
RUN_TIMEOUT = timedelta(seconds=60)


class TemporalBench:
    """A connected client plus an in-process worker polling a task queue of its own."""

    def __init__(self, client: Client, clock: StepClock, task_queue: str) -> None:
        self.client = client
        self.clock = clock
        self.task_queue = task_queue

    async def one_run(self) -> RunTiming:
        workflow_id = f"{self.task_queue}-{uuid.uuid4().hex}"
        requested = time.perf_counter()
        handle = await self.client.start_workflow(
            SequentialNoop.run,
            STEPS_PER_RUN,
            id=workflow_id,
            task_queue=self.task_queue,
            execution_timeout=RUN_TIMEOUT,
        )
        accepted = time.perf_counter()
        result = await handle.result()
        finished = time.perf_counter()
        if result != STEPS_PER_RUN:
            raise RuntimeError(
                f"Expected {STEPS_PER_RUN} steps to run, but the run reports {result}"
            )
        first_step = self.clock.first_step_at.pop(workflow_id, None)
        if first_step is None:
            raise RuntimeError(
                f"Expected run {workflow_id} to record its first step, but it did not"
            )
        return RunTiming(requested, accepted, first_step, finished)

    async def sequential(self, runs: int) -> list[RunTiming]:
        return [await self.one_run() for _ in range(runs)]

    async def concurrent(self, runs: int) -> tuple[list[RunTiming], float]:
        return await all_at_once(self.one_run, runs)


async def measure_temporal(target: str, namespace: str, plan: Plan) -> dict[str, float]:
    """Runs the three measurements against a running server at ``target`` (host:port)."""
    client = await Client.connect(target, namespace=namespace)
    clock = StepClock()
    # A task queue per invocation: leftovers of an earlier, aborted benchmark cannot interfere.
    task_queue = f"reflux-peer-{uuid.uuid4().hex[:8]}"
    bench = TemporalBench(client, clock, task_queue)
    async with Worker(
        client, task_queue=task_queue, workflows=[SequentialNoop], activities=[clock.noop_step]
    ):
        await asyncio.wait_for(bench.sequential(plan.warmup_runs), plan.phase_timeout_s)
        latency = await asyncio.wait_for(bench.sequential(plan.latency_runs), plan.phase_timeout_s)
        rounds: list[tuple[int, float]] = []
        for _ in range(plan.throughput_rounds):
            _, seconds = await asyncio.wait_for(
                bench.concurrent(plan.concurrent_runs), plan.phase_timeout_s
            )
            rounds.append((plan.concurrent_runs * STEPS_PER_RUN, seconds))
    return summarize(latency, rounds)
