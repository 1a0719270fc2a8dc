"""The loop benchmark harness: scenario discovery and the per-seed summaries."""

from __future__ import annotations

import pytest

from benchmarks.loop.common import percentile, summarize, summarize_per_seed
from benchmarks.loop_bench import available_scenarios, format_report


def test_helpers_are_not_scenarios() -> None:
    names = available_scenarios()
    assert "stubs" not in names and "common" not in names


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
