"""Goals, peer ratios, the results table and the machine description of ``make bench``."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.report import (
    GOALS,
    PEER_KINDS,
    RATIOS,
    evaluate_goals,
    floor_fractions,
    format_side_by_side,
    format_table,
    peer_ratios,
)
from benchmarks.run import cpu_model, kafka_version, memory_gib


def test_goals_are_the_issues() -> None:
    assert {(g.key, g.op, g.target) for g in GOALS} == {
        ("start_latency_p99_ms", "<", 50),
        ("step_overhead_p50_ms", "<", 10),
        ("step_overhead_p99_ms", "<", 50),
        ("cache_hit_p50_ms", "<", 5),
        ("steps_per_s", ">=", 1000),
        ("scheduler_recovery_s_10k", "<", 2),
        ("scheduler_recovery_s_100k", "<", 2),
        ("map_items_per_s", ">=", 2000),
        ("mutation_apply_p99_ms", "<", 100),  # issue 9
        ("replay_1000_runs_s", "<", 60),  # issue 10
        ("replay_speedup_vs_live", ">=", 5),
        ("forge_openapi_s", "<", 60),  # issue 17
        ("forge_llm_s", "<", 60),
    }


def test_evaluate_goals_marks_met_missed_and_missing() -> None:
    verdicts = {
        g.key: (value, met)
        for g, value, met in evaluate_goals(
            {"start_latency_p99_ms": 49.9, "step_overhead_p50_ms": 10.0, "steps_per_s": 1000}
        )
    }
    assert verdicts["start_latency_p99_ms"] == (49.9, True)
    assert verdicts["step_overhead_p50_ms"] == (10.0, False)  # "< 10" is strict
    assert verdicts["steps_per_s"] == (1000.0, True)  # ">= 1000" is not
    assert verdicts["cache_hit_p50_ms"] == (None, None)


def test_ratios_are_how_many_times_better_we_are() -> None:
    results = {
        "peer_temporal_step_overhead_p50_ms": 50.0,
        "step_overhead_e2e_p50_ms": 20.0,
        "peer_temporal_steps_per_s": 50.0,
        "steps_per_s": 300.0,
        "peer_temporal_start_latency_p50_ms": 40.0,
        "start_to_first_step_p50_ms": 80.0,
    }
    ratios = peer_ratios(results)
    assert ratios == {
        "peer_temporal_step_overhead_p50_ratio": 2.5,  # latency: peer / ours
        "peer_temporal_steps_per_s_ratio": 6.0,  # throughput: ours / peer
        "peer_temporal_start_latency_p50_ratio": 0.5,  # < 1: the peer is better
    }


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "12", None])
def test_ratios_skip_unusable_inputs(bad: object) -> None:
    assert peer_ratios({"peer_temporal_steps_per_s": bad, "steps_per_s": 300.0}) == {}
    assert peer_ratios({"peer_temporal_steps_per_s": 50.0, "steps_per_s": bad}) == {}


def test_every_ratio_compares_a_peer_key_with_one_of_ours() -> None:
    prefixes = {prefix for prefix, _ in PEER_KINDS}
    for ratio in RATIOS:
        prefix = ratio.key.removesuffix("_ratio").rsplit("_", 2)[0]
        assert ratio.key.endswith("_ratio") and ratio.peer.startswith("peer_")
        assert any(ratio.peer.startswith(p + "_") for p in prefixes)
        assert not ratio.ours.startswith("peer_"), prefix


def test_a_journaled_peer_step_pairs_with_our_inline_path_a_worker_step_with_remote() -> None:
    results = {
        "steps_per_s": 500.0,
        "steps_per_s_inline": 2000.0,
        "step_overhead_e2e_p50_ms": 10.0,
        "step_overhead_inline_p50_ms": 1.0,
        "peer_restate_steps_per_s": 1000.0,
        "peer_restate_step_overhead_p50_ms": 1.5,
        "peer_restate_call_steps_per_s": 250.0,
        "peer_restate_call_step_overhead_p50_ms": 5.0,
        "peer_littlehorse_steps_per_s": 100.0,
    }
    ratios = peer_ratios(results)
    assert ratios["peer_restate_steps_per_s_ratio"] == 2.0  # inline vs ctx.run
    assert ratios["peer_restate_step_overhead_p50_ratio"] == 1.5
    assert ratios["peer_restate_call_steps_per_s_ratio"] == 2.0  # remote vs handler call
    assert ratios["peer_restate_call_step_overhead_p50_ratio"] == 0.5  # the call is faster
    assert ratios["peer_littlehorse_steps_per_s_ratio"] == 5.0
    assert "peer_hatchet_steps_per_s_ratio" not in ratios  # not run


def test_table_shows_goal_and_verdict() -> None:
    table = format_table(
        {
            "step_overhead_p50_ms": 17.5,
            "steps_per_s": 1200.0,
            "step_overhead_e2e_p50_ms": 18.25,
            "meta": {"ignored": True},
        }
    )
    lines = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert "MISS" in lines["step_overhead_p50_ms"] and "< 10" in lines["step_overhead_p50_ms"]
    assert lines["steps_per_s"].split()[-1] == "ok"
    assert lines["step_overhead_e2e_p50_ms"].split()[-1] == "18.25"
    assert "meta" not in lines


def test_side_by_side_has_a_column_per_path_and_per_peer_that_ran() -> None:
    table = format_side_by_side(
        {
            "steps_per_s": 500.0,
            "steps_per_s_inline": 2000.0,
            "peer_temporal_steps_per_s": 80.0,
            "peer_restate_call_steps_per_s": 300.0,
        }
    )
    header, *rows = table.splitlines()
    assert header.split() == ["REFLUX", "remote", "REFLUX", "inline", "temporal", "restate_call"]
    throughput = next(r for r in rows if r.startswith("steps/s"))
    assert throughput.split()[-4:] == ["500.00", "2000.00", "80.00", "300.00"]


def test_floor_fractions_say_how_close_to_the_architecture_limit_we_are() -> None:
    fractions = floor_fractions(
        {
            "steps_per_s": 500.0,
            "floor_steps_per_s": 2000.0,
            "step_overhead_e2e_p50_ms": 12.0,
            "floor_step_overhead_p50_ms": 9.0,
        }
    )
    assert fractions == {
        "floor_fraction_steps_per_s": 0.25,
        "floor_fraction_step_overhead_p50": 0.75,
    }
    assert floor_fractions({"steps_per_s": 500.0}) == {}


def test_machine_description_parsers(tmp_path: Path) -> None:
    assert cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert memory_gib("MemTotal:       24634096 kB\nMemFree: 1 kB\n") == 23.5
    assert memory_gib("") is None
    (tmp_path / "kafka-server-common-3.9.1.jar").touch()
    assert kafka_version(tmp_path) == "unknown"
    (tmp_path / "kafka-server-3.9.1.jar").touch()
    assert kafka_version(tmp_path) == "3.9.1"
