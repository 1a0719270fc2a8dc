"""The scaling model's arithmetic (benchmarks/scaling_model.py)."""

from __future__ import annotations

import math

from benchmarks.scaling_model import (
    PARTITIONS_PER_PROCESS,
    PROCESS_BUSY,
    Costs,
    ceiling_steps_per_s,
    costs_from,
    format_model,
    needs,
)

COSTS = Costs(
    cpu_ms={"scheduler": 1.0, "worker": 0.5, "projector": 0.5, "kafka": 1.0, "postgres": 0.25},
    bytes_per_step={"runs": 400.0, "results": 200.0},
    run_events_per_step=3.0,
    measured={"1": 300.0},
    cores=2,
    trace_cpu_us=20.0,
)


def test_each_component_needs_its_cost_times_the_rate() -> None:
    by_name = {n.component: n for n in needs(COSTS, 10_000)}
    assert by_name["scheduler"].cores == 10.0
    assert by_name["scheduler"].processes == math.ceil(10.0 / PROCESS_BUSY)
    assert (
        by_name["scheduler"].partitions == by_name["scheduler"].processes * PARTITIONS_PER_PROCESS
    )
    assert by_name["worker"].cores == 5.0
    assert by_name["postgres"].cores == 2.5
    assert "30,000 run events/s" in by_name["postgres"].note
    assert by_name["clickhouse"].cores == 0.2


def test_brokers_follow_the_larger_of_cpu_and_log_writes_never_below_the_replicas() -> None:
    kafka = {n.component: n for n in needs(COSTS, 10_000)}["kafka"]
    # 600 bytes x 10,000 steps/s x 3 replicas = 18 MB/s; 10 cores of Kafka: both fit 3 brokers.
    assert kafka.processes == 3 and "18 MB/s" in kafka.note
    big = {n.component: n for n in needs(COSTS, 1_000_000)}["kafka"]
    # 1,000 cores of Kafka / 8 per broker = 125; 1,800 MB/s / 100 per broker = 18.
    assert big.processes == 125


def test_the_ceiling_on_shared_cores_is_cores_over_cpu_per_step() -> None:
    assert ceiling_steps_per_s(COSTS, 2) == 2 * 1000 / 3.25


def test_costs_come_from_the_three_broker_series_at_one_process() -> None:
    details = {
        "cores": 2,
        "brokers_3": {
            "1": {
                "steps_per_s": 300.0,
                "cpu_ms_per_step": {"scheduler": 1.5},
                "bytes_per_step": {"runs": 10.0},
                "run_events_per_step": 2.5,
            },
            "2": {"steps_per_s": 350.0},
        },
    }
    costs = costs_from(details, {"trace_ingest_cpu_us_per_trace": 21.0})
    assert costs.cpu_ms == {"scheduler": 1.5} and costs.run_events_per_step == 2.5
    assert costs.measured == {"1": 300.0, "2": 350.0} and costs.trace_cpu_us == 21.0
    assert "At 100,000 steps/s" in format_model(costs)
