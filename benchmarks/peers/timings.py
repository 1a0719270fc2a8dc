"""Raw timings of benchmark runs and the metrics reported from them (pure, no I/O)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from benchmarks.peers.stats import p50_p99, rate

# The shape of REFLUX's run-engine benchmark: one run = 10 sequential no-op steps.
STEPS_PER_RUN = 10


@dataclass(frozen=True)
class Plan:
    """How many runs each measurement makes, and how long a phase may take at most."""

    warmup_runs: int
    latency_runs: int
    concurrent_runs: int
    throughput_rounds: int
    phase_timeout_s: float


QUICK = Plan(
    warmup_runs=3, latency_runs=10, concurrent_runs=100, throughput_rounds=1, phase_timeout_s=120
)
FULL = Plan(
    warmup_runs=5, latency_runs=50, concurrent_runs=100, throughput_rounds=3, phase_timeout_s=300
)


def plan_for(quick: bool) -> Plan:
    return QUICK if quick else FULL


METRIC_NAMES = (
    "start_latency_p50_ms",
    "start_latency_p99_ms",
    "step_overhead_p50_ms",
    "step_overhead_p99_ms",
    "steps_per_s",
    "start_request_to_first_step_p50_ms",
    "start_request_to_first_step_p99_ms",
)
"""The metrics :func:`summarize` reports, each as ``<prefix>_<name>``."""


@dataclass(frozen=True)
class RunTiming:
    """perf_counter readings of one run, all on this process's clock."""

    requested: float
    accepted: float
    first_step: float
    finished: float

    @property
    def end_to_end_s(self) -> float:
        return self.finished - self.requested


def summarize(
    latency_runs: list[RunTiming],
    throughput_rounds: list[tuple[int, float]],
    prefix: str = "peer_temporal",
) -> dict[str, float]:
    """The reported metrics from raw timings (pure, so it is unit tested).

    ``prefix`` names the peer and, where a peer has two kinds of step, the kind
    (``peer_restate_call``): every key is ``<prefix>_<metric>``.
    """
    step_ms = [t.end_to_end_s * 1000 / STEPS_PER_RUN for t in latency_runs]
    start_ms = [(t.first_step - t.accepted) * 1000 for t in latency_runs]
    request_ms = [(t.first_step - t.requested) * 1000 for t in latency_runs]
    rates = [rate(steps, seconds) for steps, seconds in throughput_rounds]
    start_p50, start_p99 = p50_p99(start_ms)
    request_p50, request_p99 = p50_p99(request_ms)
    step_p50, step_p99 = p50_p99(step_ms)
    # In METRIC_NAMES' order. The last two are not in the common key set: they include the
    # start call itself (persisting the start).
    values = (
        start_p50,
        start_p99,
        step_p50,
        step_p99,
        statistics.median(rates),
        request_p50,
        request_p99,
    )
    return {f"{prefix}_{name}": value for name, value in zip(METRIC_NAMES, values, strict=True)}
