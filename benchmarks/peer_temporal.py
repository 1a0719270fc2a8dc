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

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.peers.hard_exit import run_and_exit_hard
from benchmarks.peers.table import print_table
from benchmarks.peers.timings import FULL, QUICK, STEPS_PER_RUN
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
        return asyncio.run(measure_temporal(server.endpoint, NAMESPACE, QUICK if quick else FULL))
    finally:
        if started_here:
            server.stop()


def describe_environment(quick: bool) -> dict[str, Any]:
    return {
        "peer": "temporal",
        "server": f"go.temporal.io/server {SERVER_VERSION} (SQLite file, 1 history shard)",
        "sdk": f"temporalio {metadata.version('temporalio')}",
        "steps_per_run": STEPS_PER_RUN,
        "plan": asdict(QUICK if quick else FULL),
        "cpus": os.cpu_count(),
        # Others may share the machine; a high load at the start explains a noisy result.
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_temporal", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer runs (smoke check)")
    parser.add_argument("--out", type=Path, default=OUT_FILE, help="JSON result file")
    args = parser.parse_args(argv)
    began = time.monotonic()
    environment = describe_environment(args.quick)
    metrics = measure_in_process(args.quick)
    meta = {**environment, "wall_s": round(time.monotonic() - began, 1)}
    print_table(metrics)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"metrics": metrics, "meta": meta}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_and_exit_hard(main)
