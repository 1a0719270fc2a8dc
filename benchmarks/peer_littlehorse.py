"""REFLUX's run-engine benchmark workload on LittleHorse: ``python -m benchmarks.peer_littlehorse``.

The workload is REFLUX's: a run of 10 sequential no-op steps. Here a run is a LittleHorse WfRun
of 10 TASK nodes and a step a TaskRun: scheduled by the server, executed by a remote Python task
worker that polls it over gRPC, its result reported back and recorded by the server's Kafka
Streams processor before the next is scheduled. That is the shape of REFLUX's remote path
(scheduler -> invocation topic -> worker -> results topic), not of its inline steps. The server
(``infra.peers.littlehorse``) runs on the project's own Kafka broker, with a cluster id of its
own per invocation, and is removed afterwards (topics, consumer groups, state).

Three measurements, as for the Temporal peer (docs/decisions/0005-benchmark-peer.md):

- step overhead: 1 run at a time; a run's end-to-end time (``RunWf`` issued -> the run's final
  WorkflowEvent received through ``AwaitWorkflowEvent``) divided by the number of steps, p50/p99;
- start latency: in those same runs, from ``RunWf`` returning (the server has processed the
  start command) to step 0 beginning to execute in the worker, p50/p99; the time from issuing
  the call is reported too. The server schedules step 0 while it processes the start command,
  so step 0 can begin before ``RunWf``'s response arrives: single samples may be negative;
- throughput: 100 runs started at once; steps per second from the first start call to the last
  result (median over the rounds).

Deviations from the Temporal peer: after the plan's warm-up runs come 8 batches of 100
concurrent runs that are not measured (``littlehorse_shape.JVM_WARMUP_BATCHES``): the server is
a fresh JVM on every invocation, and without them its JIT warm-up (thousands of steps) would be
measured as LittleHorse's overhead (27-35 ms a step instead of 4-7 ms on this machine); their
rates are in the result's meta. The SDK has no "wait for the run's result" call, so the
WfSpec ends with a THROW_EVENT node (after the 10th step, executed by the server in the same
command, no extra round trip) that the client awaits on the server, no polling; and the SDK runs
in a virtualenv of its own in a child process (the driver,
``benchmarks.peers.littlehorse_driver``), where the worker and the client share one event loop,
so every timestamp is on one ``perf_counter`` clock.

Every loop is bounded in count and every phase in time; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.peers.littlehorse_shape import child_timeout_s, driver_argv, read_result
from benchmarks.peers.standalone import run_alone
from benchmarks.peers.timings import STEPS_PER_RUN, plan_for
from foundation.settings import PROJECT_ROOT, get_settings
from infra.peers.littlehorse import HOST, JVM_OPTIONS, SERVER_VERSION, LittleHorseServer

OUT_FILE = PROJECT_ROOT / "benchmarks" / "out" / "peer_littlehorse.json"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy")


def run_littlehorse_benchmark(quick: bool) -> dict[str, float]:
    """Measures LittleHorse on the benchmark workload; returns its ``peer_littlehorse_*`` keys."""
    metrics, _ = measure(quick)
    return metrics


def measure(quick: bool) -> tuple[dict[str, float], dict[str, Any]]:
    """Installs and starts the server unless it runs, runs the driver, stops what it started."""
    server = LittleHorseServer(get_settings())
    started_here = not server.is_running()
    try:
        startup_s = server.start()  # a start that times out still leaves a process to stop
        cluster_id = server.cluster_id()
        metrics, meta = run_driver(server, quick)
    finally:
        if started_here:
            server.stop()
    return metrics, {**meta, "cluster_id": cluster_id, "server_start_s": round(startup_s, 1)}


def driver_env() -> dict[str, str]:
    # The driver only talks to 127.0.0.1; grpc would honour a proxy from the environment.
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
    return {**env, "PYTHONPATH": str(PROJECT_ROOT), "PYTHONUNBUFFERED": "1"}


def run_driver(server: LittleHorseServer, quick: bool) -> tuple[dict[str, float], dict[str, Any]]:
    plan = plan_for(quick)
    with tempfile.TemporaryDirectory(prefix="reflux-peer-") as tmp:
        out = Path(tmp) / "peer_littlehorse.json"
        argv = driver_argv(server.python, HOST, server.ports.api, quick, out)
        try:
            proc = subprocess.run(
                argv,
                cwd=PROJECT_ROOT,
                env=driver_env(),
                timeout=child_timeout_s(plan),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"Expected the LittleHorse driver to finish within {exc.timeout:.0f}s, but it "
                f"did not (server log: {server.log_file})"
            ) from exc
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"Expected the LittleHorse driver to exit 0 and write {out.name}, but it exited "
                f"{proc.returncode}; its output above says why (server log: {server.log_file})."
            )
        return read_result(out.read_text())


def describe_environment(server: LittleHorseServer) -> dict[str, Any]:
    install: dict[str, Any] = {}
    if server.install_info.exists():  # written by the first install: its time and size
        install = json.loads(server.install_info.read_text())
    return {
        "peer": "littlehorse",
        "server": f"io.littlehorse:littlehorse-server {SERVER_VERSION} on the project's Kafka "
        f"({server.kafka_bootstrap}), Temurin 25, {' '.join(JVM_OPTIONS)}",
        "install": install,
        "steps_per_run": STEPS_PER_RUN,
    }


def main(argv: list[str] | None = None) -> int:
    return run_alone(
        argv,
        prog="python -m benchmarks.peer_littlehorse",
        description=__doc__,
        out_file=OUT_FILE,
        describe=lambda _quick: describe_environment(LittleHorseServer(get_settings())),
        measure=measure,
    )


if __name__ == "__main__":
    sys.exit(main())
