"""Unit tests of the Temporal peer's pure parts (no server, no temporalio needed)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks.peers.stats import p50_p99, percentile, rate
from benchmarks.peers.timings import STEPS_PER_RUN, RunTiming, summarize
from infra.peers.temporal import DYNAMIC_CONFIG, HOST, TemporalPorts, render_config


def test_percentile_matches_numpy_linear_definition() -> None:
    rng = random.Random(7)
    for size in (1, 2, 3, 10, 31, 100):
        samples = [rng.expovariate(1 / 20) for _ in range(size)]
        for q in (0, 25, 50, 90, 99, 100):
            assert percentile(samples, q) == pytest.approx(float(np.percentile(samples, q)))


def test_percentile_ignores_input_order_and_interpolates() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    p50, p99 = p50_p99([10.0, 20.0])
    assert p50 == 15.0
    assert p99 == pytest.approx(19.9)


@pytest.mark.parametrize("bad", [-1, 100.5])
def test_percentile_rejects_out_of_range(bad: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], bad)


def test_percentile_and_rate_reject_empty_or_zero() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        percentile([], 50)
    with pytest.raises(ValueError, match="positive duration"):
        rate(10, 0.0)
    assert rate(1000, 4.0) == 250.0


def test_summarize_derives_each_metric_from_its_own_interval() -> None:
    # Run i: start accepted after 5 ms, first step 20+i ms later, run over after 100*(i+1) ms.
    runs = [
        RunTiming(
            requested=float(i),
            accepted=i + 0.005,
            first_step=i + 0.005 + (20 + i) / 1000,
            finished=i + 0.1 * (i + 1),
        )
        for i in range(5)
    ]
    metrics = summarize(runs, [(1000, 2.0), (1000, 4.0), (1000, 5.0)])

    assert metrics["peer_temporal_start_latency_p50_ms"] == pytest.approx(22.0)
    assert metrics["peer_temporal_start_latency_p99_ms"] == pytest.approx(23.96)
    assert metrics["peer_temporal_start_request_to_first_step_p50_ms"] == pytest.approx(27.0)
    # End-to-end 100..500 ms over 10 steps.
    assert metrics["peer_temporal_step_overhead_p50_ms"] == pytest.approx(300 / STEPS_PER_RUN)
    assert metrics["peer_temporal_step_overhead_p99_ms"] == pytest.approx(496 / STEPS_PER_RUN)
    assert metrics["peer_temporal_steps_per_s"] == pytest.approx(250.0)  # median of 500/250/200


def test_ports_are_distinct_and_not_temporals_defaults() -> None:
    ports = TemporalPorts(17233).all()
    assert len(set(ports)) == len(ports)
    assert not {7233, 7234, 7235, 7239, 7243, 6933} & set(ports)


def test_config_binds_loopback_and_uses_the_given_files(tmp_path: Path) -> None:
    db, dyn = tmp_path / "t.db", tmp_path / "dyn.yaml"
    config = yaml.safe_load(yaml.safe_dump(render_config(TemporalPorts(18000), db, dyn)))

    store = config["persistence"]["datastores"][config["persistence"]["defaultStore"]]["sql"]
    assert store["pluginName"] == "sqlite"
    assert store["databaseName"] == str(db)
    assert config["persistence"]["visibilityStore"] == config["persistence"]["defaultStore"]
    assert config["persistence"]["numHistoryShards"] == 1
    assert config["dynamicConfigClient"]["filepath"] == str(dyn)
    assert {svc["rpc"]["bindOnIP"] for svc in config["services"].values()} == {HOST}
    assert config["services"]["frontend"]["rpc"]["grpcPort"] == 18000
    assert config["publicClient"]["hostPort"] == f"{HOST}:18000"
    assert "metrics" not in config["global"]
    assert config["global"]["pprof"]["port"] == 0


def test_dynamic_config_is_valid_server_yaml() -> None:
    for key, entries in DYNAMIC_CONFIG.items():
        assert "." in key
        assert all(set(entry) == {"value", "constraints"} for entry in entries)


def test_summarize_names_keys_after_the_peer_and_step_kind() -> None:
    runs = [RunTiming(0.0, 0.001, 0.002, 0.01), RunTiming(1.0, 1.001, 1.003, 1.02)]
    metrics = summarize(runs, [(1000, 1.0)], prefix="peer_restate_call")

    assert set(metrics) == {
        f"peer_restate_call_{name}"
        for name in (
            "start_latency_p50_ms",
            "start_latency_p99_ms",
            "step_overhead_p50_ms",
            "step_overhead_p99_ms",
            "steps_per_s",
            "start_request_to_first_step_p50_ms",
            "start_request_to_first_step_p99_ms",
        )
    }
    assert metrics["peer_restate_call_steps_per_s"] == 1000.0
