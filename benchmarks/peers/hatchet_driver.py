"""Drives the workload through Hatchet's Python SDK: ``python -m benchmarks.peers.hatchet_driver``.

Runs in the peer's own virtualenv (``var/peers/hatchet/venv``) with ``PYTHONPATH`` = the project
root, started by ``benchmarks.peer_hatchet`` with the server's address and an API token in
``HATCHET_CLIENT_*``. It starts one worker process (``benchmarks.peers.hatchet_worker``), waits
until the engine lists it as active, measures, stops the worker and writes its JSON.

Clocks: the worker is another process, so every reading is ``time.time()`` (the machine's wall
clock, shared by both processes): start call issued, start accepted (the trigger RPC returned
the run id: the engine has written the run to Postgres), step 0 began (returned by step 0 in
its output), result received.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from hatchet_sdk import Hatchet

from benchmarks.peers.hard_exit import run_and_exit_hard
from benchmarks.peers.hatchet_flow import build_chain
from benchmarks.peers.hatchet_results import (
    PREFIX,
    WORKER_SLOTS,
    first_step_began,
    worker_ready,
    workflow_name,
)
from benchmarks.peers.rounds import all_at_once
from benchmarks.peers.timings import STEPS_PER_RUN, Plan, RunTiming, plan_for, summarize

WORKER_STOP_TIMEOUT_S = 15.0


class HatchetBench:
    """Triggers runs of one workflow and times them."""

    def __init__(self, workflow: Any) -> None:
        self.workflow = workflow

    async def one_run(self) -> RunTiming:
        requested = time.time()
        ref = await self.workflow.aio_run(wait_for_result=False)
        accepted = time.time()
        result: dict[str, Any] = await ref.aio_result()
        finished = time.time()
        return RunTiming(requested, accepted, first_step_began(result, STEPS_PER_RUN), finished)

    async def sequential(self, runs: int) -> list[RunTiming]:
        return [await self.one_run() for _ in range(runs)]

    async def concurrent(self, runs: int) -> tuple[list[RunTiming], float]:
        return await all_at_once(self.one_run, runs, time.time)


async def wait_for_worker(hatchet: Hatchet, name: str, timeout_s: float) -> float:
    """Polls the engine's worker list until ``name`` is active; returns the seconds waited."""
    began = time.monotonic()
    while True:
        listed = await hatchet.workers.aio_list()
        rows = [
            {"name": w.name, "status": getattr(w.status, "value", w.status)}
            for w in listed.rows or []
        ]
        if worker_ready(rows, name):
            return time.monotonic() - began
        if time.monotonic() - began > timeout_s:
            raise TimeoutError(
                f"Expected worker {name} to be active within {timeout_s:.0f}s; got {rows}"
            )
        await asyncio.sleep(0.2)


def start_worker(workflow: str, worker_name: str, log_file: Path) -> subprocess.Popen[bytes]:
    # One log per benchmark: the SDK logs three lines per step at its default level (INFO).
    with log_file.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.peers.hatchet_worker",
                workflow,
                "--worker-name",
                worker_name,
                "--slots",
                str(WORKER_SLOTS),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # The driver's process group (the parent's to kill if the driver hangs).
        )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the SDK stops its listener process, drains and exits), SIGKILL after a bound.

    Anything of the worker that outlives this (its listener process after a SIGKILL) is in the
    driver's process group, which ``benchmarks.peer_hatchet`` kills when the driver is done.
    """
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(WORKER_STOP_TIMEOUT_S)
    if proc.poll() is None:
        proc.kill()
    proc.wait()


async def measure_hatchet(plan: Plan, worker_log: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """Runs the three measurements against the server named by ``HATCHET_CLIENT_*``."""
    hatchet = Hatchet()
    name = workflow_name()
    worker_name = f"reflux-peer-worker-{uuid.uuid4().hex[:6]}"
    workflow = build_chain(hatchet, name, STEPS_PER_RUN)
    bench = HatchetBench(workflow)
    worker = start_worker(name, worker_name, worker_log)
    try:
        ready_s = await wait_for_worker(hatchet, worker_name, plan.phase_timeout_s)
        await asyncio.wait_for(bench.sequential(plan.warmup_runs), plan.phase_timeout_s)
        latency = await asyncio.wait_for(bench.sequential(plan.latency_runs), plan.phase_timeout_s)
        rounds: list[tuple[int, float]] = []
        for _ in range(plan.throughput_rounds):
            _, seconds = await asyncio.wait_for(
                bench.concurrent(plan.concurrent_runs), plan.phase_timeout_s
            )
            rounds.append((plan.concurrent_runs * STEPS_PER_RUN, seconds))
    finally:
        stop_worker(worker)
    meta = {
        "workflow": name,
        "worker_slots": WORKER_SLOTS,
        "worker_ready_s": round(ready_s, 2),
        "round_seconds": [round(seconds, 3) for _, seconds in rounds],
        "sdk": f"hatchet-sdk {metadata.version('hatchet-sdk')}",
    }
    return summarize(latency, rounds, prefix=PREFIX), meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.hatchet_driver")
    parser.add_argument("--quick", action="store_true", help="fewer runs (smoke check)")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--worker-log", type=Path, required=True, help="the worker's log file")
    args = parser.parse_args(argv)
    plan = plan_for(args.quick)
    metrics, meta = asyncio.run(measure_hatchet(plan, args.worker_log))
    meta["plan"] = asdict(plan)
    args.out.write_text(json.dumps({"metrics": metrics, "meta": meta}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_and_exit_hard(main)
