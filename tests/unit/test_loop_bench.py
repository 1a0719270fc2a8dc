"""The loop benchmark harness: scenario discovery and the per-seed summaries."""

from __future__ import annotations

import pytest

from benchmarks.loop.common import percentile, summarize, summarize_per_seed, until
from benchmarks.loop_bench import available_scenarios, format_report, merge_into


def test_helpers_are_not_scenarios() -> None:
    names = available_scenarios()
    assert "stubs" not in names and "common" not in names
    assert set(names) == {
        "drift", "flaky", "parallel", "models", "bad_mutations", "historian", "models_engine",
    }  # fmt: skip


def test_until_returns_the_first_true_value_and_names_what_timed_out() -> None:
    answers = iter([None, 0, "found"])
    assert until(lambda: next(answers), 5, "the answer", interval=0) == "found"
    with pytest.raises(TimeoutError, match="Expected the run within 0s"):
        until(lambda: None, 0, "the run", interval=0)


def test_percentile_is_nearest_rank() -> None:
    assert percentile([5, 1, 3], 50) == 3
    assert percentile(range(1, 101), 95) == 95
    assert percentile([7], 95) == 7
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_over_seeds_reads_nested_numbers_and_ignores_text() -> None:
    per_seed = {
        "1": {"delay": 10, "ok": True, "name": "x", "static": {"success": 0.9}},
        "2": {"delay": 30, "ok": False, "static": {"success": 0.7}},
        "3": {"delay": 20, "static": {"success": 0.8}},
    }
    summary = summarize_per_seed(per_seed)
    assert summary["delay"]["median"] == 20 and summary["delay"]["p95"] == 30
    assert summary["ok"]["n"] == 2 and summary["ok"]["median"] == 0.5
    assert summary["static.success"]["median"] == pytest.approx(0.8)
    assert "name" not in summary
    assert summarize([1.0, 2.0])["max"] == 2.0


def test_report_prints_goals_and_summaries() -> None:
    text = format_report(
        {
            "scenarios": {
                "flaky": {
                    "summary": {"success": summarize([0.99, 1.0])},
                    "goals": [{"name": "recovery", "target": "<= 300", "value": None, "met": None}],
                }
            }
        }
    )
    assert "== flaky" in text and "success" in text and "not measured" in text


def test_flaky_recovery_is_the_first_point_from_which_every_window_holds() -> None:
    from benchmarks.loop.flaky import recovered_at

    bad, good = [False] * 30 + [True] * 70, [True] * 100
    assert recovered_at(good * 4) == 0
    assert recovered_at(bad + good * 3) == 50  # the window starting at 50 has no failure
    assert recovered_at([True, False] * 200) is None
    assert recovered_at(good * 3 + bad) is None  # a relapse at the end counts
    assert recovered_at([True] * 50) is None  # fewer runs than one window: not measured


def test_flaky_summary_counts_before_after_and_the_goal_tail() -> None:
    from benchmarks.loop.flaky import GOAL_RUNS, Outcome, summarize_outcome

    before = 100
    statuses = ["succeeded"] * before + ["failed"] * 50 + ["succeeded"] * (GOAL_RUNS + 100)
    outcome = Outcome(
        statuses=statuses,
        versions=[1] * (before + 60) + [2] * (len(statuses) - before - 60),
        durations_ms=[10.0] * len(statuses),
        requests=2 * len(statuses),
        mutations={"proposed": 1},
    )
    summary = summarize_outcome(outcome, before)
    assert summary["success_before"] == 1.0
    assert summary["success_after"] == pytest.approx((GOAL_RUNS + 100) / (GOAL_RUNS + 150))
    assert summary["success_after_goal"] == 1.0 and summary["failed_runs_after"] == 50
    assert summary["success_after_windows"][0] == 0.0
    assert summary["recovered_at_runs"] == 50 and summary["first_new_version_run"] == 60
    assert summary["requests_per_run"] == 2.0


def test_flaky_workflows_are_valid_and_differ_only_in_the_call_policy() -> None:
    from benchmarks.loop.flaky import workflow
    from workflows import parse_workflow

    static = parse_workflow(workflow("static", "http://127.0.0.1:1"))
    hand = parse_workflow(workflow("hand", "http://127.0.0.1:1"))
    assert static.step("call").retry.max_attempts == 1 and static.step("call").timeout is None
    assert hand.step("call").retry.max_attempts == 6 and hand.step("call").timeout == 1000
    assert static.step("shape") == hand.step("shape")


def _output(names: list[str], commit: str, date: str, errors: dict[str, str]) -> dict[str, object]:
    return {
        "scenarios": {n: {"value": f"{n}@{commit}"} for n in names},
        "meta": {
            "date": date,
            "git_commit": commit,
            "git_dirty": False,
            "quick": False,
            "seeds": [1, 2],
            "errors": errors,
            "wall_s": dict.fromkeys(names, 1.0),
        },
    }


def test_merge_replaces_only_the_scenarios_run_and_records_each_runs_provenance() -> None:
    old = _output(["drift", "flaky"], "aaa", "d1", {"flaky": "boom"})
    new = _output(["flaky"], "bbb", "d2", {})
    merged = merge_into(old, new)
    assert merged["scenarios"] == {"drift": {"value": "drift@aaa"}, "flaky": {"value": "flaky@bbb"}}
    runs = merged["meta"]["runs"]
    assert runs["drift"]["git_commit"] == "aaa" and runs["drift"]["date"] == "d1"
    assert runs["flaky"]["git_commit"] == "bbb" and runs["flaky"]["date"] == "d2"
    assert merged["meta"]["errors"] == {}  # flaky's old failure is replaced by its new run
    # A later merge keeps the provenance already recorded.
    again = merge_into(merged, _output(["parallel"], "ccc", "d3", {}))
    assert again["meta"]["runs"]["flaky"]["git_commit"] == "bbb"
    assert again["meta"]["runs"]["parallel"]["git_commit"] == "ccc"
