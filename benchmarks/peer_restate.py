"""REFLUX's run-engine benchmark workload on Restate: ``python -m benchmarks.peer_restate``.

The workload is REFLUX's: a run of 10 sequential no-op steps. Here a run is one invocation of
a Restate service handler, written with Restate's Python SDK and served by a Hypercorn
endpoint that Restate's server (1.7.12, one node) pushes work to; both are started by
``infra.peers.restate`` on loopback. Restate has two kinds of step, so both are measured, each
with the full set of keys (``benchmarks.peers.timings.summarize``):

- ``peer_restate_*``: a step is a journaled ``ctx.run`` of a no-op closure, run inline in the
  handler (comparable with REFLUX's inline path);
- ``peer_restate_call_*``: a step is an awaited durable call to another service's no-op
  handler (comparable with REFLUX's remote path, a worker round trip).

Measurements, as for Temporal (docs/decisions/0005-benchmark-peer.md): step overhead = one run
at a time, (``/send`` issued -> result received from ``/attach``) / 10; start latency = ``/send``
answered (the invocation is accepted) -> first step begins executing, the latter read with
``time.time()`` in the endpoint process, the former in the driver (same machine clock);
throughput = 100 runs started at once, 1,000 steps / (first ``/send`` -> last result), median of
the rounds.

This process runs in the project's venv and never imports the SDK: it installs and starts the
peer, runs ``benchmarks.peers.restate_driver`` with the peer venv's Python, reads its JSON, and
stops what it started. The data directory is emptied before a server this module starts.

Where this differs from the recipe in ``../shared/peers.md`` (which measured one
request/response ``POST /<Service>/<handler>`` a run, with ``ctx.run``):

- runs are started with ``/send`` and awaited with ``/attach`` (two requests), because a
  request/response call has no "accepted" moment to measure start latency from; the
  request/response time is still measured, as a cross-check kept in the JSON's ``meta``
  (``request_response_run_p50_ms``), not as a metric;
- ``ctx.run_typed``, the SDK's non-deprecated form of ``ctx.run`` (same journal entry), with an
  ``async`` closure (a sync one would go through a thread pool);
- the driver's client is aiohttp: httpx's connection pool was the bottleneck at 100 runs in
  flight (see ``benchmarks.peers.restate_driver``); the JSON's ``meta`` has each process's CPU
  share during the rounds so that this stays checked;
- server settings beyond the recipe are in ``infra.peers.restate`` (no PostgreSQL listener in
  1.7.12, fixed node name, fabric port moved, telemetry off).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.peers.standalone import run_alone
from benchmarks.peers.timings import FULL, STEPS_PER_RUN, plan_for
from foundation.settings import PROJECT_ROOT, get_settings
from infra.peers.restate import REQUIREMENTS_FILE, SERVER_VERSION, RestatePeer, pinned_version

OUT_FILE = PROJECT_ROOT / "benchmarks" / "out" / "peer_restate.json"
# Bounds the driver: per workload, warm-up, latency, request/response check and the rounds,
# each phase bounded by the plan's phase timeout.
DRIVER_TIMEOUT_S = 2 * (3 + FULL.throughput_rounds) * FULL.phase_timeout_s + 60


def run_restate_benchmark(quick: bool) -> dict[str, float]:
    """Measures Restate on the benchmark workload; returns its ``peer_restate*`` metrics."""
    metrics, _ = measure(quick)
    return metrics


def measure(quick: bool) -> tuple[dict[str, float], dict[str, Any]]:
    """Installs and starts the peer unless running, runs the driver, stops what it started.

    Returns the metrics and what the driver reported beside them (CPU seconds per process
    and phase) plus the install and start times.
    """
    peer = RestatePeer(get_settings())
    server_started_here = not peer.server.is_running()
    endpoint_started_here = not peer.services.is_running()
    installed = peer.install()
    if server_started_here:
        peer.server.reset()
    try:
        up_s = peer.up()
        found, driver_meta = run_driver(peer, quick)
    finally:
        if endpoint_started_here:
            peer.services.stop()
        if server_started_here:
            peer.server.stop()
    return found, {**installed, "up_s": round(up_s, 1), "driver": driver_meta}


def run_driver(peer: RestatePeer, quick: bool) -> tuple[dict[str, float], dict[str, Any]]:
    server_pid, endpoint_pid = peer.server.read_pid(), peer.services.read_pid()
    if server_pid is None or endpoint_pid is None:
        raise RuntimeError("Expected the Restate server and endpoint to run, but one has no pid")
    with tempfile.TemporaryDirectory(prefix="reflux-peer-restate-") as tmp:
        out = Path(tmp) / "driver.json"
        argv = [
            str(peer.services.python),
            "-m",
            "benchmarks.peers.restate_driver",
            "--ingress",
            peer.server.ingress_url,
            "--out",
            str(out),
            "--server-pid",
            str(server_pid),
            "--endpoint-pid",
            str(endpoint_pid),
            *(["--quick"] if quick else []),
        ]
        proc = subprocess.run(
            argv,
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
            timeout=DRIVER_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"Expected the Restate driver to exit 0 and write {out.name}, but it exited "
                f"{proc.returncode}; its output above says why."
            )
        result = json.loads(out.read_text())
    metrics: dict[str, float] = result["metrics"]
    meta: dict[str, Any] = result["meta"]
    return metrics, meta


def describe_environment(quick: bool) -> dict[str, Any]:
    requirements = REQUIREMENTS_FILE.read_text()
    return {
        "peer": "restate",
        "server": f"restate-server {SERVER_VERSION} (npm, one node, default settings)",
        "sdk": " ".join(
            f"{name} {pinned_version(requirements, name)}"
            for name in ("restate-sdk", "Hypercorn", "aiohttp")
        ),
        "steps_per_run": STEPS_PER_RUN,
        "plan": asdict(plan_for(quick)),
    }


def main(argv: list[str] | None = None) -> int:
    return run_alone(
        argv,
        prog="python -m benchmarks.peer_restate",
        description=__doc__,
        out_file=OUT_FILE,
        describe=describe_environment,
        measure=measure,
    )


if __name__ == "__main__":
    sys.exit(main())
