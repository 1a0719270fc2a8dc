"""processors.replay.stats: tests and intervals against known values, the verdict rules."""

from __future__ import annotations

import pytest
from scipy import stats as scipy_stats

from processors.replay.stats import (
    VerdictRules,
    compare,
    hodges_lehmann,
    newcombe_interval,
    wilson_interval,
)


def test_wilson_interval_matches_the_textbook_value() -> None:
    # Newcombe (1998) table I: 81/263 -> 0.2553 .. 0.3662 at 95 %.
    low, high = wilson_interval(81, 263, 0.95)
    assert low == pytest.approx(0.2553, abs=1e-4)
    assert high == pytest.approx(0.3662, abs=1e-4)
    assert wilson_interval(0, 10, 0.95)[0] == 0.0
    assert wilson_interval(0, 0, 0.95) == (0.0, 1.0)


def test_newcombe_interval_matches_the_paper() -> None:
    # Newcombe (1998b) example (a): 56/70 - 48/80 = 0.2, method 10 -> 0.0524 .. 0.3339.
    low, high = newcombe_interval(48, 80, 56, 70, 0.95)
    assert low == pytest.approx(0.0524, abs=1e-4)
    assert high == pytest.approx(0.3339, abs=1e-4)


def test_hodges_lehmann_is_the_median_of_pairwise_differences() -> None:
    a = [10.0, 12.0, 11.0, 13.0, 9.0, 10.5, 11.5, 12.5]
    b = [x + 5.0 for x in a]
    shift, low, high = hodges_lehmann(a, b, 0.95)
    assert shift == 5.0
    assert low < 5.0 < high
    # Tiny samples: no interval at 95 %, the whole range of differences is reported.
    shift, low, high = hodges_lehmann([1.0, 2.0], [3.0, 4.0], 0.95)
    assert (shift, low, high) == (2.0, 1.0, 3.0)


def test_fisher_and_mann_whitney_are_scipys() -> None:
    original = [True] * 9 + [False]
    candidate = [True] * 2 + [False] * 8
    lat_a = [100.0, 110.0, 95.0, 105.0, 120.0, 98.0]
    lat_b = [200.0, 210.0, 195.0, 205.0, 220.0, 198.0]
    c = compare(original, candidate, lat_a, lat_b)
    expected_p = scipy_stats.fisher_exact([[2, 8], [9, 1]])[1]
    assert c.success.fisher_p == pytest.approx(expected_p)
    assert c.success.difference == pytest.approx(-0.7)
    assert c.latency.mann_whitney_p == pytest.approx(
        scipy_stats.mannwhitneyu(lat_b, lat_a, alternative="two-sided").pvalue
    )
    assert c.latency.shift_ms == pytest.approx(100.0)


def test_too_few_runs_is_insufficient_data() -> None:
    c = compare([True] * 4, [False] * 4, [1.0] * 4, [])
    assert c.verdict == "insufficient_data"
    assert "at least 5" in c.reason


def test_a_broken_candidate_is_worse_and_a_fixing_one_better() -> None:
    ok = [True] * 8
    bad = [False] * 8
    assert compare(ok, bad, [10.0] * 8, []).verdict == "worse"
    assert compare(bad, ok, [], [10.0] * 8).verdict == "better"


def test_success_rate_dominates_latency() -> None:
    # The candidate is much faster but fails 8 of 10: worse.
    original = [True] * 10
    candidate = [True] * 2 + [False] * 8
    c = compare(original, candidate, [500.0 + i for i in range(10)], [10.0, 11.0])
    assert c.verdict == "worse"
    assert "success rate" in c.reason


def test_latency_decides_when_success_rates_agree() -> None:
    ok = [True] * 10
    slow = [100.0 + i for i in range(10)]
    fast = [40.0 + i for i in range(10)]
    assert compare(ok, ok, slow, fast).verdict == "better"
    assert compare(ok, ok, fast, slow).verdict == "worse"


def test_a_small_latency_shift_is_no_difference() -> None:
    # Significant (all 5 ms slower) but under the 25 ms practical floor: replay timings differ
    # from production by more than that.
    ok = [True] * 10
    a = [100.0 + i for i in range(10)]
    b = [x + 5.0 for x in a]
    c = compare(ok, ok, a, b)
    assert c.verdict == "no_difference"
    assert "practical floor" in c.reason
    strict = VerdictRules(min_shift_ms=1.0, min_shift_ratio=0.0)
    assert compare(ok, ok, [100.0] * 5 + a, [105.0] * 5 + b, strict).verdict == "worse"


def test_equal_runs_are_no_difference_and_serialise_without_infinities() -> None:
    ok = [True] * 6
    lat = [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
    c = compare(ok, ok, lat, lat)
    assert c.verdict == "no_difference"
    body = c.to_json()
    assert body["verdict"] == "no_difference"
    assert body["confidence"] == 0.95
    # All succeeded in both arms: Fisher's odds ratio is nan -> null in JSON.
    assert all(v is None or v == v for v in body["success"].values())


def test_rules_are_checked() -> None:
    with pytest.raises(ValueError, match="confidence"):
        VerdictRules(confidence=1.0)
    with pytest.raises(ValueError, match="min_runs"):
        VerdictRules(min_runs=1)
