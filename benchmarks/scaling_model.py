"""The scaling model of docs/scaling.md: from measured per-step costs to a deployment.

``python -m benchmarks.scaling_model [benchmarks/out/scaling_details.json]`` prints, for
10,000 and 100,000 steps/s, what each component needs, computed from the costs the scale-out
benchmark measured (:mod:`benchmarks.scaling_bench`: CPU-ms per step by kind of process on the
three-broker cluster, log bytes per step per topic, run events per step), and checks the model
against the measured curve: the steps/s the measured costs allow on the benchmark's own cores.

Pure arithmetic (no I/O but reading the file), so the numbers in the doc can be regenerated
from any benchmark run. The assumptions are constants below, each with its reason.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from foundation.settings import PROJECT_ROOT

__all__ = ["Costs", "Need", "ceiling_steps_per_s", "costs_from", "format_model", "needs"]

DETAILS: Final = PROJECT_ROOT / "benchmarks" / "out" / "scaling_details.json"

PROCESS_BUSY: Final = 0.7
"""Cores one Python process of the engine may be planned at: a scheduler's decide loop and a
worker's event loop each run on one core (the GIL), and a process kept at 70% absorbs bursts
and rebalances without a growing lag."""
PARTITIONS_PER_PROCESS: Final = 2
"""Partitions planned per consuming process, so a group can grow to twice its size (or lose
half its members) without repartitioning a topic."""
BROKER_CORES: Final = 8
"""Cores of one Kafka broker in the model (a common broker size)."""
BROKER_WRITE_MB_S: Final = 100.0
"""Sustained log writes one broker is planned at (MB/s, replicas included): well below a
data-centre SSD's bandwidth, leaving room for reads of lagging consumers and recovery."""
REPLICATION: Final = 3


@dataclass(frozen=True)
class Costs:
    cpu_ms: dict[str, float]
    """CPU-ms per step by kind: scheduler, worker, projector, trigger-router, kafka (all
    replicas), postgres, redis, redis-ledger."""
    bytes_per_step: dict[str, float]
    """Log bytes per step per topic, one replica."""
    run_events_per_step: float
    measured: dict[str, float]
    """Measured steps/s by processes of each kind (three brokers)."""
    cores: int
    trace_cpu_us: float | None = None
    """ClickHouse's CPU per ingested trace (``trace_ingest_cpu_us_per_trace`` of the traces
    benchmark), when known."""


def costs_from(details: Mapping[str, Any], results: Mapping[str, Any] | None = None) -> Costs:
    """The costs of the three-broker series at one process of each kind (the least contended
    configuration: with more processes than cores, CPU per step includes the contention)."""
    series = details["brokers_3"]
    base = series["1"]
    return Costs(
        cpu_ms=dict(base["cpu_ms_per_step"]),
        bytes_per_step=dict(base["bytes_per_step"]),
        run_events_per_step=float(base["run_events_per_step"]),
        measured={n: float(r["steps_per_s"]) for n, r in series.items()},
        cores=int(details["cores"]),
        trace_cpu_us=(results or {}).get("trace_ingest_cpu_us_per_trace"),
    )


@dataclass(frozen=True)
class Need:
    component: str
    cores: float
    processes: int | None
    partitions: int | None
    note: str


def _processes(cores: float) -> int:
    return max(1, math.ceil(cores / PROCESS_BUSY))


def needs(costs: Costs, steps_per_s: float) -> list[Need]:
    """What ``steps_per_s`` needs of each component, from the measured per-step costs."""

    def cores(kind: str) -> float:
        return costs.cpu_ms.get(kind, 0.0) * steps_per_s / 1000

    out: list[Need] = []
    for kind, what in (
        ("scheduler", "runs, commands and results partitions"),
        ("worker", "partitions of each busy invoke topic"),
        ("projector", "runs partitions read by the projector group"),
    ):
        c = cores(kind)
        processes = _processes(c)
        out.append(Need(kind, c, processes, processes * PARTITIONS_PER_PROCESS, what))
    kafka_cores = cores("kafka")
    written = sum(costs.bytes_per_step.values()) * steps_per_s * REPLICATION / 1e6
    brokers = max(
        REPLICATION, math.ceil(kafka_cores / BROKER_CORES), math.ceil(written / BROKER_WRITE_MB_S)
    )
    out.append(
        Need(
            "kafka",
            kafka_cores,
            brokers,
            None,
            f"{written:,.0f} MB/s of log writes with {REPLICATION} replicas",
        )
    )
    rows = costs.run_events_per_step * steps_per_s
    out.append(
        Need(
            "postgres",
            cores("postgres"),
            None,
            None,
            f"{rows:,.0f} run events/s projected (rows upserted or appended)",
        )
    )
    redis = cores("redis") + cores("redis-ledger")
    out.append(Need("redis", redis, None, None, "attempt ledger, cache, rate limits"))
    trace_cores = (costs.trace_cpu_us or 0.0) * steps_per_s / 1e6
    out.append(
        Need(
            "clickhouse",
            trace_cores,
            None,
            None,
            f"{steps_per_s:,.0f} traces/s ingested (one trace per attempt)",
        )
    )
    return out


def ceiling_steps_per_s(costs: Costs, cores: float) -> float:
    """Steps/s the measured costs allow when everything shares ``cores`` (the benchmark box:
    engine, brokers and stores co-located)."""
    total = sum(costs.cpu_ms.values())
    return cores * 1000 / total if total else math.inf


def format_model(costs: Costs, rates: tuple[float, ...] = (10_000, 100_000)) -> str:
    lines = [
        f"CPU-ms per step: {', '.join(f'{k} {v:.2f}' for k, v in sorted(costs.cpu_ms.items()))}"
        f" (total {sum(costs.cpu_ms.values()):.2f})",
        f"log bytes per step (one replica): {sum(costs.bytes_per_step.values()):,.0f}"
        f" ({', '.join(f'{k} {v:,.0f}' for k, v in sorted(costs.bytes_per_step.items()))})",
        f"run events per step: {costs.run_events_per_step:.2f}",
        "",
    ]
    for rate in rates:
        lines.append(f"At {rate:,.0f} steps/s:")
        lines.append("| component | cores | processes / brokers | partitions | note |")
        lines.append("|---|---|---|---|---|")
        for need in needs(costs, rate):
            processes = "" if need.processes is None else str(need.processes)
            partitions = "" if need.partitions is None else str(need.partitions)
            lines.append(
                f"| {need.component} | {need.cores:,.1f} | {processes} | {partitions} | "
                f"{need.note} |"
            )
        lines.append("")
    ceiling = ceiling_steps_per_s(costs, costs.cores)
    measured = ", ".join(f"{n}: {v:,.0f}" for n, v in sorted(costs.measured.items()))
    lines.append(
        f"Check against the curve: on {costs.cores} cores shared by everything, the costs allow "
        f"{ceiling:,.0f} steps/s; measured by processes of each kind: {measured}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DETAILS
    results_file = path.with_name("results.json")
    results = json.loads(results_file.read_text()) if results_file.exists() else None
    print(format_model(costs_from(json.loads(path.read_text()), results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
