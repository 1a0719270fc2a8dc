"""REFLUX's run-engine benchmark workload on Hatchet: ``python -m benchmarks.peer_hatchet``.

The workload is REFLUX's: a run of 10 sequential no-op steps. Here a run is a Hatchet workflow
of 10 tasks, each the parent of the next (``parents=[prev]``), and a step is a task: scheduled
by the engine through Postgres (hatchet-lite v0.104.7, its queue on Postgres too, no RabbitMQ)
and executed by one Python SDK worker process (100 slots) that the engine pushes tasks to over
gRPC. That is REFLUX's remote path (scheduler -> invocation topic -> worker -> result topic),
not its in-process one. The server runs on the project's Postgres in a database of its own
(``hatchet_bench``), started by ``infra.peers.hatchet`` on loopback ports. Three measurements,
by the definitions shared with the other peers (``benchmarks.peers.timings``):

- step overhead: 1 run at a time; a run's end-to-end time (trigger call issued -> result
  received over the SDK's run-result stream) divided by the number of steps, p50/p99;
- start latency: in those same runs, from the trigger call returning (the engine has stored
  the run and answered with its id) to step 0 beginning to execute in the worker, p50/p99; the
  worker is another process, so both ends are ``time.time()`` readings of the same machine's
  clock (step 0 returns its reading in its output);
- throughput: 100 runs started at once; steps completed per second from the first trigger
  call to the last result (median over the rounds).

The SDK (hatchet-sdk 1.43.1) runs in its own virtualenv (``var/peers/hatchet/venv``), never in
the project's: this module (project venv) installs and starts the server, runs the driver
``benchmarks.peers.hatchet_driver`` as a child process with that virtualenv's python, reads its
JSON, stops the server and drops its database when it started them. Every phase is bounded;
only 127.0.0.1 is contacted (hatchet-lite's HTTP listeners bind all interfaces, see
``infra.peers.hatchet``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.peers.standalone import Measured, run_alone
from benchmarks.peers.timings import STEPS_PER_RUN
from foundation.settings import PROJECT_ROOT, get_settings
from infra.peers.hatchet import DATABASE, VERSION, HatchetServer

OUT_FILE = PROJECT_ROOT / "benchmarks" / "out" / "peer_hatchet.json"
# Bounds the driver: the worker's start plus the slowest full plan (every phase is bounded).
DRIVER_TIMEOUT_S = 20 * 60.0


def run_hatchet_benchmark(quick: bool) -> dict[str, float]:
    """Measures Hatchet on the benchmark workload; returns its ``peer_hatchet_*`` metrics."""
    metrics: dict[str, float] = measure(quick)["metrics"]
    return metrics


def measure(quick: bool) -> dict[str, Any]:
    """Installs and starts the server unless it runs, runs the driver, stops what it started.

    A server started here starts from an empty database and its database is dropped at the
    end; one already running (``python -m infra.peers.hatchet up``) is used and left as is.
    """
    server = HatchetServer(get_settings())
    started_here = not server.is_running()
    began = time.monotonic()
    if started_here:
        server.install()
        server.reset()  # leftovers of an aborted run: a fresh database and token
    install_s = time.monotonic() - began
    try:
        start_s = server.start()
        result = run_driver(server, quick)
    finally:
        if started_here:
            server.stop()
            server.reset()
    result["meta"].update({"install_s": round(install_s, 1), "server_start_s": round(start_s, 1)})
    return result


def driver_argv(python: Path, out: Path, worker_log: Path, quick: bool) -> list[str]:
    """The driver's command line, run by the peer virtualenv's ``python``."""
    argv = [str(python), "-m", "benchmarks.peers.hatchet_driver", "--out", str(out)]
    return [*argv, "--worker-log", str(worker_log), *(["--quick"] if quick else [])]


def driver_env(base: Mapping[str, str], client: Mapping[str, str]) -> dict[str, str]:
    """The driver's environment: the project root on its path, the server's client settings.

    Only the project root: the driver imports ``benchmarks.peers`` (stdlib only) from it and
    everything else from its own virtualenv, never the project's site-packages.
    """
    env = {k: v for k, v in base.items() if k not in {"VIRTUAL_ENV", "PYTHONHOME"}}
    return {**env, "PYTHONPATH": str(PROJECT_ROOT), **client}


def run_driver(server: HatchetServer, quick: bool) -> dict[str, Any]:
    """Runs the driver in the peer's virtualenv; returns its ``{"metrics", "meta"}``."""
    worker_log = server.root / "worker.log"
    with tempfile.TemporaryDirectory(prefix="reflux-peer-") as tmp:
        out = Path(tmp) / "peer_hatchet.json"
        # Its own process group, holding its worker process too: killed as a whole at the end,
        # so a hung or interrupted driver leaves no worker behind.
        proc = subprocess.Popen(
            driver_argv(server.venv_python, out, worker_log, quick),
            cwd=PROJECT_ROOT,
            env=driver_env(os.environ, server.client_env()),
            start_new_session=True,
        )
        try:
            code = proc.wait(DRIVER_TIMEOUT_S)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if code != 0 or not out.exists():
            raise RuntimeError(
                f"Expected the Hatchet peer driver to exit 0 and write {out.name}, but it exited "
                f"{code}; its output above and {worker_log} say why."
            )
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def describe_environment(quick: bool) -> dict[str, Any]:
    return {
        "peer": "hatchet",
        "server": f"hatchet-lite {VERSION} (Postgres database {DATABASE}, Postgres queue)",
        "steps_per_run": STEPS_PER_RUN,
        "plan_name": "quick" if quick else "full",
    }


def main(argv: list[str] | None = None) -> int:
    def measured(quick: bool) -> Measured:
        result = measure(quick)
        return result["metrics"], result["meta"]

    return run_alone(
        argv,
        prog="python -m benchmarks.peer_hatchet",
        description=__doc__,
        out_file=OUT_FILE,
        describe=describe_environment,
        measure=measured,
    )


if __name__ == "__main__":
    sys.exit(main())
