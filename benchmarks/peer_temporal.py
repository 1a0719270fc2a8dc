"""REFLUX's run-engine benchmark workload on Temporal: ``python -m benchmarks.peer_temporal``.

The workload is REFLUX's: a run of 10 sequential no-op steps. Here a run is a Temporal workflow
and a step an activity, executed by a Python SDK worker in the measuring process against
Temporal's server (SQLite, one process) started by ``infra.peers.temporal`` on loopback. Three
measurements:

- step overhead: 1 run at a time; a run's end-to-end time (start call issued -> result received)
  divided by the number of steps, p50/p99 over the runs;
- start latency: in those same unloaded runs, from ``start_workflow`` returning (the server has
  accepted and persisted the start) to the first activity beginning to execute, p50/p99; the
  time from issuing the call is reported too;
- throughput: 100 runs started at once; steps completed per second from the first start call to
  the last result (median over the rounds).

Every loop is bounded in count and every phase in time; only 127.0.0.1 is contacted. What the
numbers mean and do not mean: docs/decisions/0005-benchmark-peer.md.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.peers.hard_exit import run_and_exit_hard
from benchmarks.peers.standalone import run_alone
from benchmarks.peers.timings import STEPS_PER_RUN, plan_for
from foundation.settings import PROJECT_ROOT, get_settings
from infra.peers.temporal import BUILD_TIMEOUT_S, NAMESPACE, SERVER_VERSION, TemporalServer

OUT_FILE = PROJECT_ROOT / "benchmarks" / "out" / "peer_temporal.json"
# Bounds the child process: a first build of the server plus the slowest full plan.
CHILD_TIMEOUT_S = BUILD_TIMEOUT_S + 20 * 60


def run_temporal_benchmark(quick: bool) -> dict[str, float]:
    """Measures Temporal on the benchmark workload in a child process; returns its metrics.

    WHY a child process: the SDK's Rust runtime keeps threads that can abort the interpreter
    at exit ("Fatal Python error: PyGILState_Release", temporalio/sdk-python#300), so the SDK is
    loaded only in a process that ends with ``os._exit``, never in the caller's. The child
    builds the server on first use (minutes), starts it from an empty database unless one is
    already running, and stops only a server it started. Its output passes through.
    """
    with tempfile.TemporaryDirectory(prefix="reflux-peer-") as tmp:
        out = Path(tmp) / "peer_temporal.json"
        argv = [sys.executable, "-m", "benchmarks.peer_temporal", "--out", str(out)]
        proc = subprocess.run(
            [*argv, *(["--quick"] if quick else [])],
            cwd=PROJECT_ROOT,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"Expected the Temporal peer benchmark to exit 0 and write {out.name}, but it "
                f"exited {proc.returncode}; its output above says why."
            )
        metrics: dict[str, float] = json.loads(out.read_text())["metrics"]
        return metrics


def measure_in_process(quick: bool) -> dict[str, float]:
    """Starts the server if needed, measures in this process, stops what it started."""
    # Imported here: loading the SDK is what the caller of run_temporal_benchmark must avoid.
    from benchmarks.peers.temporal_driver import measure_temporal

    server = TemporalServer(get_settings())
    started_here = not server.is_running()
    if started_here:
        server.build()
        server.reset()
    server.start()
    try:
        return asyncio.run(measure_temporal(server.endpoint, NAMESPACE, plan_for(quick)))
    finally:
        if started_here:
            server.stop()


def describe_environment(quick: bool) -> dict[str, Any]:
    return {
        "peer": "temporal",
        "server": f"go.temporal.io/server {SERVER_VERSION} (SQLite file, 1 history shard)",
        "sdk": f"temporalio {metadata.version('temporalio')}",
        "steps_per_run": STEPS_PER_RUN,
        "plan": asdict(plan_for(quick)),
    }


def main(argv: list[str] | None = None) -> int:
    return run_alone(
        argv,
        prog="python -m benchmarks.peer_temporal",
        description=__doc__,
        out_file=OUT_FILE,
        describe=describe_environment,
        measure=lambda quick: (measure_in_process(quick), {}),
    )


if __name__ == "__main__":
    run_and_exit_hard(main)
