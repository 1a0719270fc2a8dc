"""Drives the workload through LittleHorse's Python SDK (the benchmark's child process).

Runs in the SDK's virtualenv (``var/peers/littlehorse/venv``) with the project on PYTHONPATH,
started by ``benchmarks.peer_littlehorse`` against a server it has started; it imports only the
SDK, the standard library and the pure ``benchmarks.peers`` modules. One process, one event loop:
the client (``RunWf``, ``AwaitWorkflowEvent`` on the SDK's asyncio stub) and one ``LHTaskWorker``
with the SDK's default tuning (one connection polling one task at a time, at most 8 tasks
executing). It writes ``{"metrics": {...}, "meta": {...}}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.empty_pb2 import Empty
from littlehorse.config import LHConfig
from littlehorse.model import (
    AwaitWorkflowEventRequest,
    LHStatus,
    RunWfRequest,
    TaskDefId,
    WfRunId,
    WorkflowEventDefId,
)
from littlehorse.utils import extract_value
from littlehorse.worker import LHTaskWorker
from littlehorse.workflow import create_task_def, create_workflow_spec

from benchmarks.peers.hard_exit import run_and_exit_hard
from benchmarks.peers.littlehorse_flow import StepClock, sequential_noop
from benchmarks.peers.littlehorse_shape import KEY_PREFIX, Names
from benchmarks.peers.rounds import all_at_once
from benchmarks.peers.stats import p50_p99
from benchmarks.peers.timings import STEPS_PER_RUN, Plan, RunTiming, plan_for, summarize

# A run of 10 no-ops that takes a minute has failed; bound it instead of waiting forever.
RUN_TIMEOUT_S = 60.0
RPC_TIMEOUT_S = 30.0
METADATA_WAIT_S = 30.0


class LittleHorseBench:
    """A connected asyncio stub and the names this invocation registered."""

    def __init__(self, stub: Any, clock: StepClock, names: Names) -> None:
        self.stub = stub
        self.clock = clock
        self.names = names
        self.run_ids: list[str] = []
        # Wall-clock ms from the server creating the run's final event to the client having it
        # (same machine, same clock): what the server-side wait adds to a run's end.
        self.event_delivery_ms: list[float] = []

    async def one_run(self, first: bool = False) -> RunTiming:
        """One run, timed. ``first``: the WfSpec was just registered and may not have reached
        the core processor yet; its start is retried while the server does not know it."""
        run_id = f"{self.names.suffix}-{uuid.uuid4().hex}"
        self.run_ids.append(run_id)
        request = RunWfRequest(wf_spec_name=self.names.wf_spec, id=run_id)
        requested = time.perf_counter()
        # RunWf returns once the server has processed the start command (it is on Kafka).
        if first:
            await until_found(lambda: self.stub.RunWf(request, timeout=RPC_TIMEOUT_S))
        else:
            await self.stub.RunWf(request, timeout=RPC_TIMEOUT_S)
        accepted = time.perf_counter()
        event = await self.stub.AwaitWorkflowEvent(
            AwaitWorkflowEventRequest(
                wf_run_id=WfRunId(id=run_id),
                event_def_ids=[WorkflowEventDefId(name=self.names.done_event)],
            ),
            timeout=RUN_TIMEOUT_S,
        )
        finished = time.perf_counter()
        received = time.time()
        thrown = event.created_at.seconds + event.created_at.nanos / 1e9
        self.event_delivery_ms.append((received - thrown) * 1000)
        if extract_value(event.content) != STEPS_PER_RUN:
            raise RuntimeError(
                f"Expected run {run_id} to report {STEPS_PER_RUN} steps, but its event says "
                f"{event.content}"
            )
        first_step = self.clock.first_step_at.pop(run_id, None)
        if first_step is None:
            raise RuntimeError(f"Expected run {run_id} to record its first step, but it did not")
        return RunTiming(requested, accepted, first_step, finished)

    async def sequential(self, runs: int, first: bool = False) -> list[RunTiming]:
        return [await self.one_run(first=first and index == 0) for index in range(runs)]

    async def concurrent(self, runs: int) -> tuple[list[RunTiming], float]:
        return await all_at_once(self.one_run, runs)

    async def count_completed(self) -> int:
        """How many runs the server reports COMPLETED (after the measurements, off the clock):
        the awaited event is thrown just before a run's exit node, so this checks that the
        runs did finish and not merely reach their last node."""
        completed = 0
        for run_id in self.run_ids:
            run = await self.stub.GetWfRun(WfRunId(id=run_id), timeout=RPC_TIMEOUT_S)
            completed += run.status == LHStatus.COMPLETED
        return completed


async def until_found(call: Callable[[], Awaitable[Any]]) -> Any:
    """``call()``, retried while the server answers NOT_FOUND, for at most METADATA_WAIT_S.

    Metadata (TaskDef, WfSpec) is written by the server's metadata processor and reaches the
    core processor through a global store a moment later: a RunWf or GetTaskDef right after
    registering can miss it ("Couldn't find specified WfSpec", seen here on a busy machine).
    """
    deadline = time.monotonic() + METADATA_WAIT_S
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


def register(config: Any, clock: StepClock, names: Names) -> None:
    """The TaskDef (from the task function's signature), the WorkflowEventDef and the WfSpec."""
    create_task_def(clock.noop_step, names.task_def, config, timeout=RPC_TIMEOUT_S)
    workflow = sequential_noop(names.wf_spec, names.task_def, names.done_event, STEPS_PER_RUN)
    create_workflow_spec(workflow, config, timeout=RPC_TIMEOUT_S)


async def phase(what: str, work: Any, plan: Plan, worker_task: asyncio.Task[None]) -> Any:
    """Awaits one phase within the plan's bound; a dead worker is named as the reason."""
    try:
        return await asyncio.wait_for(work, plan.phase_timeout_s)
    except TimeoutError:
        if worker_task.done() and not worker_task.cancelled():
            raise RuntimeError(f"The task worker stopped during {what}") from (
                worker_task.exception()
            )
        raise RuntimeError(f"Expected {what} to end within {plan.phase_timeout_s:.0f}s") from None


async def measure_littlehorse(
    host: str, port: int, plan: Plan, jvm_warmup_batches: int
) -> dict[str, Any]:
    """Registers, starts the worker, warms up, runs the three measurements; returns metrics
    and meta."""
    config = LHConfig()
    config.load({"LHC_API_HOST": host, "LHC_API_PORT": str(port), "LHC_API_PROTOCOL": "PLAINTEXT"})
    clock = StepClock()
    names = Names(uuid.uuid4().hex[:8])
    register(config, clock, names)
    bench = LittleHorseBench(config.stub(async_channel=True), clock, names)
    server_version = await bench.stub.GetServerVersion(Empty(), timeout=RPC_TIMEOUT_S)
    # The worker starts by fetching the TaskDef and dies if the server does not know it yet.
    task_def_id = TaskDefId(name=names.task_def)
    await until_found(lambda: bench.stub.GetTaskDef(task_def_id, timeout=RPC_TIMEOUT_S))
    worker = LHTaskWorker(clock.noop_step, names.task_def, config)
    worker_task = asyncio.create_task(worker.start())
    try:
        warmup = bench.sequential(plan.warmup_runs, first=True)
        await phase("the warm-up runs", warmup, plan, worker_task)
        # The server is a fresh JVM: until its JIT has compiled the hot paths (a few thousand
        # steps), it runs several times slower than it will. Not measured; its rate is kept.
        jvm_warmup: list[float] = []
        for _ in range(jvm_warmup_batches):
            _, seconds = await phase(
                "a JVM warm-up batch", bench.concurrent(plan.concurrent_runs), plan, worker_task
            )
            jvm_warmup.append(plan.concurrent_runs * STEPS_PER_RUN / seconds)
        bench.event_delivery_ms.clear()
        latency = await phase(
            "the latency runs", bench.sequential(plan.latency_runs), plan, worker_task
        )
        delivery_p50, delivery_p99 = p50_p99(bench.event_delivery_ms)
        rounds: list[tuple[int, float]] = []
        for _ in range(plan.throughput_rounds):
            _, seconds = await phase(
                "a throughput round", bench.concurrent(plan.concurrent_runs), plan, worker_task
            )
            rounds.append((plan.concurrent_runs * STEPS_PER_RUN, seconds))
    finally:
        worker.stop()
        worker_task.cancel()
    completed = await asyncio.wait_for(bench.count_completed(), plan.phase_timeout_s)
    if completed != len(bench.run_ids):
        raise RuntimeError(
            f"Expected all {len(bench.run_ids)} runs to be COMPLETED, but {completed} are"
        )
    meta = {
        "server_version": _version_text(server_version),
        "sdk": f"littlehorse-client {metadata.version('littlehorse-client')}",
        "worker": f"1 LHTaskWorker in the driver process, {config.num_worker_threads} "
        "tasks at most in flight (LHW_NUM_WORKER_THREADS; the SDK's default is 8)",
        "runs_completed": completed,
        "jvm_warmup_steps_per_s": [round(rate, 1) for rate in jvm_warmup],
        "latency_runs_event_delivery_ms_p50_p99": [round(delivery_p50, 2), round(delivery_p99, 2)],
        "throughput_round_s": [round(seconds, 3) for _, seconds in rounds],
    }
    return {"metrics": summarize(latency, rounds, prefix=KEY_PREFIX), "meta": meta}


def _version_text(version: Any) -> str:
    text = f"{version.major_version}.{version.minor_version}.{version.patch_version}"
    return f"{text}-{version.pre_release_identifier}" if version.pre_release_identifier else text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jvm-warmup-batches", type=int, required=True)
    args = parser.parse_args(argv)
    # The SDK warns on every insecure channel; loopback is plaintext on purpose.
    logging.basicConfig(level=logging.ERROR)
    plan = plan_for(args.quick)
    began = time.monotonic()
    document = asyncio.run(measure_littlehorse(args.host, args.port, plan, args.jvm_warmup_batches))
    document["meta"] |= {
        "plan": asdict(plan),
        "jvm_warmup_batches": args.jvm_warmup_batches,
        "driver_wall_s": round(time.monotonic() - began, 1),
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_and_exit_hard(main)
