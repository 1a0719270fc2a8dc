"""processors.replay.report: per-run outcomes, JSON diffs, aggregates from hand-made pairs."""

from __future__ import annotations

from typing import Any

from processors.replay.report import build_report, json_diff, run_report, work_latencies
from processors.replay.shadow import ReplayPair, RunOutcome, StepOutcome


def step(step_id: str, ms: float, output: Any, *, status: str = "succeeded") -> StepOutcome:
    return StepOutcome(
        step_id, status, 1, ms, output, "executed", 3 if step_id == "ai" else None, 1
    )


def run(run_id: str, status: str, ms: float, outputs: Any) -> RunOutcome:
    steps = {"a": step("a", ms / 2, {"x": 1}), "ai": step("ai", ms / 2, outputs)}
    error = None if status == "succeeded" else "StepFailed"
    return RunOutcome(run_id, status, outputs, error, ms, steps)


def test_json_diff_paths() -> None:
    a = {"x": 1, "y": [1, 2, 3], "z": {"k": True}, "gone": 1}
    b = {"x": 1.0, "y": [1, 5], "z": {"k": 1}, "new": None}
    diff = {(d["path"], d["op"]) for d in json_diff(a, b)}
    assert diff == {
        ("$.gone", "removed"),
        ("$.new", "added"),
        ("$.y[1]", "changed"),
        ("$.y[2]", "removed"),
        ("$.z.k", "changed"),  # true is not 1 in JSON
    }
    assert list(json_diff({"a": [1]}, {"a": [1]})) == []


def test_run_report_outcome_diff_cost() -> None:
    pair = ReplayPair(run("r1", "succeeded", 100.0, {"v": 1}), run("c1", "failed", 40.0, {"v": 2}))
    report = run_report(pair).to_json()
    assert report["outcome"] == "broke"
    assert report["output_equal"] is False
    assert report["output_diff"] == [
        {"path": "$.v", "op": "changed", "original": 1, "candidate": 2}
    ]
    assert report["original"]["tokens"] == 3 and report["original"]["calls"] == 2
    steps = {s["step_id"]: s for s in report["steps"]}
    assert steps["a"]["output_equal"] is True
    assert steps["ai"]["output_equal"] is False
    assert steps["ai"]["candidate"]["duration_ms"] == 20.0


def test_aggregate_counts_and_verdict() -> None:
    pairs = [
        ReplayPair(run(f"r{i}", "failed", 100.0, None), run(f"c{i}", "succeeded", 90.0, {"v": i}))
        for i in range(6)
    ]
    aggregate, runs = build_report(pairs)
    assert len(runs) == 6
    assert aggregate["outcomes"]["fixed"] == 6
    assert aggregate["verdict"] == "better"
    assert aggregate["comparison"]["success"]["candidate_rate"] == 1.0
    assert aggregate["latency_ms"]["original"]["count"] == 0  # failures have no latency
    assert aggregate["latency_ms"]["candidate"]["p50"] == 90.0
    assert aggregate["step_latency_p50_ms"]["candidate"] == {"a": 45.0, "ai": 45.0}
    assert aggregate["cost"]["candidate"] == {"tokens": 18, "calls": 12}


def test_equal_pairs_are_no_difference_and_empty_is_insufficient() -> None:
    pairs = [
        ReplayPair(run(f"r{i}", "succeeded", 100.0 + i, {"v": i}),
                   run(f"c{i}", "succeeded", 101.0 + i, {"v": i}))
        for i in range(8)
    ]  # fmt: skip
    aggregate, _ = build_report(pairs)
    assert aggregate["verdict"] == "no_difference"
    assert aggregate["outputs_equal"] == 8
    assert build_report([])[0]["verdict"] == "insufficient_data"


def test_latency_is_compared_on_the_steps_the_candidate_re_executed() -> None:
    def side(run_id: str, post_ms: float, shape_ms: float, served: Any) -> RunOutcome:
        steps = {
            "post": StepOutcome("post", "succeeded", 1, post_ms, {}, served, None, 0),
            "shape": StepOutcome("shape", "succeeded", 1, shape_ms, {}, "executed", None, 1),
        }
        return RunOutcome(run_id, "succeeded", {}, None, post_ms + shape_ms + 50.0, steps)

    # The original's POST took 400 ms live; the candidate's was served from the record in 0 ms.
    pairs = [
        ReplayPair(side(f"r{i}", 400.0, 2.0 + i, "executed"), side(f"r{i}", 0.0, 2.0 + i, "record"))
        for i in range(6)
    ]
    original, candidate = work_latencies(pairs)
    assert original == candidate == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    aggregate, _ = build_report(pairs)
    assert aggregate["verdict"] == "no_difference"  # end to end it would look 400 ms faster
    assert aggregate["latency_ms"]["original"]["p50"] > aggregate["latency_ms"]["candidate"]["p50"]


def _timed(run_id: str, steps: dict[str, tuple[float, float]]) -> RunOutcome:
    """A run whose steps ran in the given ``(start_ms, end_ms)`` intervals."""
    outcomes = {
        s: StepOutcome(s, "succeeded", 1, end - start, {}, "executed", None, 1, ended_at_ms=end)
        for s, (start, end) in steps.items()
    }
    last = max(end for _, end in steps.values())
    return RunOutcome(run_id, "succeeded", {}, None, last, outcomes)


def test_steps_that_ran_together_count_once_and_a_chain_is_its_sum() -> None:
    # Four 150 ms calls one after the other (with scheduling gaps) against the same four at once.
    chain = {s: (i * 170.0, i * 170.0 + 150.0 + i) for i, s in enumerate("abcd")}
    together = {s: (0.0, 150.0 + i) for i, s in enumerate("abcd")}
    overlapping = {"a": (0.0, 100.0), "b": (50.0, 200.0), "c": (300.0, 310.0)}
    pairs = [ReplayPair(_timed(f"r{i}", chain), _timed(f"r{i}", together)) for i in range(8)] + [
        ReplayPair(_timed("o", overlapping), _timed("o", overlapping))
    ]
    original, candidate = work_latencies(pairs)
    assert original[:8] == [606.0] * 8  # 150 + 151 + 152 + 153: the gaps are left out
    assert candidate[:8] == [153.0] * 8  # the longest of the four
    assert original[8] == candidate[8] == 210.0  # [0, 200) and [300, 310)
    aggregate, _ = build_report(pairs[:8])
    assert aggregate["verdict"] == "better"
    assert aggregate["comparison"]["latency"]["shift_ms"] == -453.0
