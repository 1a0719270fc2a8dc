"""Retry storms in simulation: what the retry budget and the circuit cost and save.

``python -m benchmarks.retry_storm_sim [--seeds 5] [--out benchmarks/out/retry-storm-sim.json]``

Plays the scheduler's pure core (``decide`` with a shared :class:`RetryGate`, as one scheduler
process runs it) over many runs against a simulated dependency (tests/support/scheduler_fleet.py:
one clock, calls answered after a latency, hangs ended by the worker at the step timeout, no
worker concurrency limit), with and without the gate, and prints a table. Simulated time, so the
numbers are exact for a seed and independent of the machine; they are not engine timings.

Scenarios:

- ``flaky``: the issue's chaos workload. 200 runs of five sequential ``http.request`` steps
  (timeout 1 s, 4 attempts, default backoff) started at once; the service answers 500 to 20 % of
  calls and hangs 10 % (past the timeout). Expected success rate ``(1 - 0.3^4)^5`` = 96.0 %.
- ``outage``: 300 one-step runs (8 attempts, 200 ms doubling to 2 s) started within 1 s while
  the dependency fails every call for 4 s, then answers every call.

Measured per scenario and mode: runs succeeded, calls the dependency received (and how many in
the busiest second, retries only), retries scheduled, how many the gate held (budget, circuit)
and for how long, circuit openings, and the simulated time until the last run ended.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from processors.scheduler.circuit import CircuitState
from processors.scheduler.retry_gate import RetryGate
from processors.scheduler.state import RunStatus
from schemas.models import RunFailed, RunSucceeded
from tests.support.scheduler_fleet import FIVE_STEPS, ONE_STEP, Fleet, Service, flaky_service
from tests.support.scheduler_simulation import T0

SCENARIOS: dict[str, tuple[str, int, Service, int]] = {
    "flaky": (FIVE_STEPS, 200, flaky_service(error=0.2, hang=0.1), 0),
    "outage": (ONE_STEP, 300, flaky_service(error=0.0, hang=0.0, down=(0.0, 4.0)), 1_000),
}


def play(name: str, gated: bool, seed: int) -> dict[str, Any]:
    definition, runs, service, spread = SCENARIOS[name]
    gate = RetryGate() if gated else None
    fleet = Fleet(definition, runs, service, gate, seed=seed, start_spread_ms=spread)
    fleet.play()
    statuses = fleet.statuses()
    retries = fleet.retries()
    held = [r for r in retries if r.reason != "backoff"]
    ends = [
        e.occurred_at
        for sim in fleet.sims
        for e in sim.log
        if isinstance(e, RunSucceeded | RunFailed)
    ]
    per_second = fleet.calls_per_second(retries_only=True)
    transitions = gate.take_transitions() if gate is not None else []
    return {
        "succeeded": statuses.get(RunStatus.SUCCEEDED, 0) / runs,
        "calls": len(fleet.calls),
        "retry_calls_peak_per_s": max(per_second.values(), default=0),
        "retries": len(retries),
        "held_by_budget": sum(r.reason == "budget" for r in held),
        "held_by_circuit": sum(r.reason in ("circuit_open", "half_open") for r in held),
        "held_ms_max": max((r.held_ms for r in held), default=0),
        "held_ms_mean": statistics.fmean([r.held_ms for r in held]) if held else 0.0,
        "circuit_opened": sum(t.after is CircuitState.OPEN for t in transitions),
        "last_run_ended_s": (max(ends) - T0).total_seconds() if ends else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/retry-storm-sim.json"))
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    header = (
        f"{'scenario':8} {'gate':4} {'ok %':>6} {'calls':>6} {'peak r/s':>8} {'retries':>7} "
        f"{'budget':>6} {'circuit':>7} {'held max s':>10} {'opened':>6} {'end s':>6}"
    )
    print(header)
    for name in SCENARIOS:
        for gated in (False, True):
            plays = [play(name, gated, seed) for seed in range(1, args.seeds + 1)]
            mean = {k: statistics.fmean(float(p[k]) for p in plays) for k in plays[0]}
            low = min(p["succeeded"] for p in plays)
            results[f"{name}_{'gated' if gated else 'ungated'}"] = {
                "seeds": args.seeds,
                "mean": mean,
                "succeeded_min": low,
                "per_seed": plays,
            }
            print(
                f"{name:8} {'on' if gated else 'off':4} {mean['succeeded'] * 100:6.1f} "
                f"{mean['calls']:6.0f} {mean['retry_calls_peak_per_s']:8.0f} "
                f"{mean['retries']:7.0f} {mean['held_by_budget']:6.0f} "
                f"{mean['held_by_circuit']:7.0f} {mean['held_ms_max'] / 1000:10.1f} "
                f"{mean['circuit_opened']:6.1f} {mean['last_run_ended_s']:6.1f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
