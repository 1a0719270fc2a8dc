"""Drives the workload through Restate's HTTP ingress (``benchmarks.peers.restate_driver``).

Runs as a child of ``benchmarks.peer_restate`` with the peer venv's Python (aiohttp from
there, ``PYTHONPATH`` = the project root for ``benchmarks.peers``), against a server and a
registered service endpoint that are already up. For each workload of
``restate_workloads.WORKLOADS``: warm-up runs, sequential latency runs, then rounds of 100 runs
started at once.

A run is started with ``POST /<service>/<handler>/send`` (answered once the server has accepted
the invocation, with its id) and its result fetched with ``GET /restate/invocation/<id>/attach``,
which blocks until the invocation ends. So "start accepted" is the ``/send`` answer, and the
end-to-end time includes both requests, like Temporal's ``start_workflow`` + ``result``.

The first step's start is ``time.time()`` taken in the endpoint (another process); this side
reads ``time.time()`` too, so all readings are wall-clock time on one machine's clock.

Alongside the metrics it reports the CPU seconds the driver, the server and the endpoint used
in each phase (from ``/proc``), so the driver can be seen not to be the bottleneck. That is why
the client is aiohttp and not httpx: with 100 runs in flight httpx's connection pool alone took
0.7-2.7 CPU seconds a round (as long as the round itself), aiohttp 0.03-0.06.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from benchmarks.peers.restate_workloads import (
    WORKLOADS,
    Workload,
    attach_path,
    cpu_share,
    first_step_of,
    invocation_id_of,
    process_cpu_seconds,
)
from benchmarks.peers.rounds import all_at_once
from benchmarks.peers.stats import p50_p99
from benchmarks.peers.timings import STEPS_PER_RUN, Plan, RunTiming, plan_for, summarize

# A run of 10 no-ops that takes a minute has failed; bound every request instead of waiting.
REQUEST_TIMEOUT_S = 60.0
T = TypeVar("T")


class RestateBench:
    """Starts runs of one workload through the ingress and times them."""

    def __init__(self, http: aiohttp.ClientSession, ingress: str, workload: Workload) -> None:
        self.http = http
        self.ingress = ingress
        self.workload = workload

    async def one_run(self) -> RunTiming:
        requested = time.time()
        # The handlers take no input: the ingress wants no body and no content type, and
        # aiohttp would add "application/octet-stream" to an empty POST.
        async with self.http.post(
            self.ingress + self.workload.send_path, skip_auto_headers=["Content-Type"]
        ) as sent:
            body = await sent.read()
            accepted = time.time()
            if sent.status != 202:
                raise RuntimeError(
                    f"Expected {self.workload.send_path} to answer 202 Accepted, but it "
                    f"answered {sent.status}: {body[:300]!r}"
                )
        invocation_id = invocation_id_of(json.loads(body))
        async with self.http.get(self.ingress + attach_path(invocation_id)) as done:
            body = await done.read()
            finished = time.time()
            if done.status != 200:
                raise RuntimeError(
                    f"Expected invocation {invocation_id} to end with 200, but attach answered "
                    f"{done.status}: {body[:300]!r}"
                )
        return RunTiming(requested, accepted, first_step_of(json.loads(body)), finished)

    async def request_response_run(self) -> float:
        """One run as a single request/response call; returns its seconds.

        Not a reported metric (there is no "accepted" moment to measure start latency from):
        a cross-check against the one-request figure in peers.md and against what ``/send``
        plus ``/attach`` add.
        """
        began = time.time()
        async with self.http.post(
            self.ingress + self.workload.call_path, skip_auto_headers=["Content-Type"]
        ) as answer:
            body = await answer.read()
            ended = time.time()
            if answer.status != 200:
                raise RuntimeError(
                    f"Expected {self.workload.call_path} to answer 200, but it answered "
                    f"{answer.status}: {body[:300]!r}"
                )
        first_step_of(json.loads(body))
        return ended - began

    async def request_response_runs(self, runs: int) -> list[float]:
        return [await self.request_response_run() for _ in range(runs)]

    async def sequential(self, runs: int) -> list[RunTiming]:
        return [await self.one_run() for _ in range(runs)]

    async def concurrent(self, runs: int) -> float:
        """Starts ``runs`` runs at once; returns the wall time from the first start call to
        the last result."""
        _, seconds = await all_at_once(self.one_run, runs, time.time)
        return seconds


class CpuMeter:
    """CPU seconds of this process and of the server's and endpoint's processes."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.ticks = os.sysconf("SC_CLK_TCK")

    def read(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        seconds = {"driver": usage.ru_utime + usage.ru_stime}
        for name, pid in self.pids.items():
            seconds[name] = process_cpu_seconds(pid, self.ticks)
        return seconds

    async def measure(self, phase: Callable[[], Awaitable[T]]) -> tuple[T, dict[str, float]]:
        """Runs ``phase``; returns its result and, per process, the CPU seconds it used plus
        ``wall_s``."""
        before, began = self.read(), time.time()
        result = await phase()
        wall, after = time.time() - began, self.read()
        used = {f"{name}_cpu_s": round(after[name] - before[name], 3) for name in before}
        return result, {"wall_s": round(wall, 3), **used}


async def measure_workload(
    bench: RestateBench, plan: Plan, meter: CpuMeter
) -> tuple[dict[str, float], dict[str, Any]]:
    workload = bench.workload
    timeout = plan.phase_timeout_s
    await asyncio.wait_for(bench.sequential(plan.warmup_runs), timeout)
    latency, latency_cpu = await meter.measure(
        lambda: asyncio.wait_for(bench.sequential(plan.latency_runs), timeout)
    )
    plain_s = await asyncio.wait_for(bench.request_response_runs(plan.latency_runs), timeout)
    plain_p50, plain_p99 = p50_p99([seconds * 1000 for seconds in plain_s])
    rounds: list[tuple[int, float]] = []
    rounds_cpu: list[dict[str, float]] = []
    for _ in range(plan.throughput_rounds):
        seconds, cpu = await meter.measure(
            lambda: asyncio.wait_for(bench.concurrent(plan.concurrent_runs), timeout)
        )
        rounds.append((plan.concurrent_runs * STEPS_PER_RUN, seconds))
        rounds_cpu.append(cpu)
    steps = sum(count for count, _ in rounds)
    meta = {
        "step": workload.step,
        "latency_phase": latency_cpu,
        "request_response_run_p50_ms": round(plain_p50, 2),
        "request_response_run_p99_ms": round(plain_p99, 2),
        "throughput_rounds": rounds_cpu,
        # Share of one core each process kept busy while 100 runs were in flight.
        "throughput_cpu_share": {
            name.removesuffix("_cpu_s"): round(
                cpu_share(sum(r[name] for r in rounds_cpu), sum(r["wall_s"] for r in rounds_cpu)),
                2,
            )
            for name in rounds_cpu[0]
            if name.endswith("_cpu_s")
        },
        # CPU a step costs each process: far less moved by other work on the machine than the
        # rates, so it bounds what the peer could do with the cores to itself.
        "throughput_cpu_ms_per_step": {
            name.removesuffix("_cpu_s"): round(sum(r[name] for r in rounds_cpu) * 1000 / steps, 3)
            for name in rounds_cpu[0]
            if name.endswith("_cpu_s")
        },
    }
    return summarize(latency, rounds, prefix=workload.prefix), meta


async def measure_restate(
    ingress: str, plan: Plan, pids: dict[str, int]
) -> tuple[dict[str, float], dict[str, Any]]:
    """Both workloads against a running, registered peer at ``ingress`` (http://host:port)."""
    meter = CpuMeter(pids)
    # Room for every run's /send and /attach at once; loopback only, so no proxy from the env.
    connector = aiohttp.TCPConnector(limit=2 * plan.concurrent_runs + 10)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    metrics: dict[str, float] = {}
    meta: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as http:
        for workload in WORKLOADS:
            bench = RestateBench(http, ingress, workload)
            found, details = await measure_workload(bench, plan, meter)
            metrics.update(found)
            meta[workload.prefix] = details
    return metrics, meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.restate_driver")
    parser.add_argument("--ingress", required=True, help="e.g. http://127.0.0.1:18780")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--quick", action="store_true", help="fewer runs (smoke check)")
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--endpoint-pid", type=int, required=True)
    args = parser.parse_args(argv)
    pids = {"server": args.server_pid, "endpoint": args.endpoint_pid}
    plan = plan_for(args.quick)
    metrics, meta = asyncio.run(measure_restate(args.ingress, plan, pids))
    args.out.write_text(json.dumps({"metrics": metrics, "meta": meta}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
