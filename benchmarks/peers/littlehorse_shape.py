"""What the LittleHorse benchmark's parent and its driver process agree on (pure, stdlib only).

The driver runs in the SDK's own virtualenv, which has neither pydantic nor the project's other
dependencies, so everything both sides share lives here: the names registered on the server,
the driver's command line and the shape of the JSON it writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from benchmarks.peers.timings import METRIC_NAMES, Plan

KEY_PREFIX = "peer_littlehorse"
# Setting up (registering, the worker's first heartbeat) and tearing down, beyond the phases.
SETUP_TIMEOUT_S = 120.0
# Batches of concurrent runs, not measured, before the latency runs: the server is a fresh JVM
# each time, and its step rate climbs for thousands of steps while the JIT compiles. Measured
# here over batches of 100 runs: 35, 73, 95, 144, 120, 119, 104, 143 steps/s (load 12);
# 75, 155, 185, 200, 260 then 240-290 in the measured rounds (load 9); the latency runs' step
# overhead was 27-35 ms without these batches and 4-7 ms after. Temporal's Go server needs none.
JVM_WARMUP_BATCHES = 8


@dataclass(frozen=True)
class Names:
    """What one benchmark invocation registers: its own names, so that tasks left queued by
    an earlier, aborted invocation on a reused server never reach this one's worker."""

    suffix: str

    @property
    def task_def(self) -> str:
        return f"reflux-peer-noop-step-{self.suffix}"

    @property
    def wf_spec(self) -> str:
        return f"reflux-peer-sequential-noop-{self.suffix}"

    @property
    def done_event(self) -> str:
        """The WorkflowEvent a run throws after its last step; the client awaits it."""
        return f"reflux-peer-run-done-{self.suffix}"


def child_timeout_s(plan: Plan) -> float:
    """The bound on the whole driver process: every phase at its limit, plus setup."""
    # Warm-up, JVM warm-up batches, latency, one per throughput round.
    phases = 2 + JVM_WARMUP_BATCHES + plan.throughput_rounds
    return phases * plan.phase_timeout_s + SETUP_TIMEOUT_S


def driver_argv(python: Path, host: str, port: int, quick: bool, out: Path) -> list[str]:
    argv = [str(python), "-m", "benchmarks.peers.littlehorse_driver"]
    argv += ["--host", host, "--port", str(port), "--out", str(out)]
    argv += ["--jvm-warmup-batches", str(JVM_WARMUP_BATCHES)]
    return [*argv, *(["--quick"] if quick else [])]


def read_result(text: str) -> tuple[dict[str, float], dict[str, object]]:
    """The driver's JSON: ``{"metrics": {...}, "meta": {...}}``, metrics exactly the peer's keys."""
    document = json.loads(text)
    metrics = document.get("metrics")
    meta = document.get("meta", {})
    expected = {f"{KEY_PREFIX}_{name}" for name in METRIC_NAMES}
    if not isinstance(metrics, dict) or set(metrics) != expected:
        got = sorted(metrics) if isinstance(metrics, dict) else metrics
        raise ValueError(f"Expected the metrics {sorted(expected)}, but the driver wrote {got}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values()):
        raise ValueError(f"Expected numeric metrics, but the driver wrote {metrics}")
    if not isinstance(meta, dict):
        raise ValueError(f"Expected an object under 'meta', but the driver wrote {meta!r}")
    return {name: float(value) for name, value in metrics.items()}, meta
