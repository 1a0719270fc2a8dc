"""The statistical comparison of an A/B replay: original runs (A) against candidate runs (B).

Pure (no I/O). Two questions, each with a test, an effect size and a confidence interval:

- **Success rate**: Fisher's exact test on the 2x2 table (succeeded/failed x original/candidate);
  the effect is the difference of success rates ``p_B - p_A`` with Newcombe's hybrid score
  interval (built from the two Wilson intervals: good coverage at small n and at 0 % / 100 %,
  where the Wald interval collapses).
- **Latency** (of the runs that succeeded in each arm: a failure's duration says when it gave
  up; what is measured is the caller's choice, the report passes the execution time of the
  steps the candidate re-executed, see ``report.work_latencies``): the Mann-Whitney U test
  (two-sided), the
  Hodges-Lehmann shift (median of all ``B_j - A_i`` differences; negative = the candidate is
  faster) with its distribution-free interval from the order statistics of those differences.

The verdict (:func:`verdict`) at ``confidence`` (default 0.95, alpha = 1 - confidence):

1. ``insufficient_data`` when either arm has fewer than ``min_runs`` runs (default 5: with 5
   against 5 the smallest two-sided p of either test is 0.008, so a verdict at 0.95 is
   reachable; below that it often is not).
2. **Success rate dominates**: Fisher p < alpha -> ``better`` when the candidate's success rate
   is higher, ``worse`` when lower, whatever latency says (a faster workflow that fails more
   is worse).
3. Otherwise latency decides, if each arm has ``min_runs`` successful runs: ``better`` /
   ``worse`` when Mann-Whitney p < alpha, the Hodges-Lehmann interval excludes 0, **and** the
   shift is practically relevant: ``|shift| >= min_shift_ms`` and ``>= min_shift_ratio`` of
   the original median. The practical floor exists because replay timings are not production
   timings (side effects are served from the record, the shadow engine shares the machine), so a
   few milliseconds of difference would otherwise make an identical candidate "better".
4. Otherwise ``no_difference`` (output changes are reported per run, not judged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any, Final, Literal

from scipy import stats as _scipy

__all__ = [
    "DEFAULT_CONFIDENCE",
    "MIN_RUNS",
    "Comparison",
    "LatencyComparison",
    "SuccessComparison",
    "Verdict",
    "VerdictRules",
    "compare",
    "hodges_lehmann",
    "newcombe_interval",
    "verdict",
    "wilson_interval",
]

Verdict = Literal["better", "worse", "no_difference", "insufficient_data"]
DEFAULT_CONFIDENCE: Final = 0.95
MIN_RUNS: Final = 5


@dataclass(frozen=True)
class VerdictRules:
    confidence: float = DEFAULT_CONFIDENCE
    min_runs: int = MIN_RUNS
    min_shift_ms: float = 25.0
    min_shift_ratio: float = 0.10

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"Expected confidence in [0.5, 1), but got {self.confidence}")
        if self.min_runs < 2:
            raise ValueError(f"Expected min_runs >= 2, but got {self.min_runs}")


def _z(confidence: float) -> float:
    return float(_scipy.norm.ppf(1.0 - (1.0 - confidence) / 2.0))


def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``(0, 1)`` when ``n == 0``)."""
    if n == 0:
        return (0.0, 1.0)
    z = _z(confidence)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe_interval(
    successes_a: int, n_a: int, successes_b: int, n_b: int, confidence: float
) -> tuple[float, float]:
    """Newcombe's hybrid score interval (his method 10) for ``p_b - p_a``."""
    p_a = successes_a / n_a if n_a else 0.0
    p_b = successes_b / n_b if n_b else 0.0
    l_a, u_a = wilson_interval(successes_a, n_a, confidence)
    l_b, u_b = wilson_interval(successes_b, n_b, confidence)
    d = p_b - p_a
    lower = d - math.sqrt((p_b - l_b) ** 2 + (u_a - p_a) ** 2)
    upper = d + math.sqrt((u_b - p_b) ** 2 + (p_a - l_a) ** 2)
    return (max(-1.0, lower), min(1.0, upper))


def hodges_lehmann(
    a: Sequence[float], b: Sequence[float], confidence: float
) -> tuple[float, float, float]:
    """``(shift, lower, upper)``: the median of ``b_j - a_i`` and its interval from the order
    statistics of the differences, ranks from the normal approximation of U's distribution
    (Lehmann, *Nonparametrics*, 1975, 3.3)."""
    diffs = sorted(y - x for x in a for y in b)
    n, m = len(a), len(b)
    total = n * m
    shift = float(median(diffs))
    k = math.floor(total / 2.0 - _z(confidence) * math.sqrt(n * m * (n + m + 1) / 12.0))
    k = max(k, 0)
    if k == 0:  # too few runs for an interval at this confidence: the whole range
        return (shift, diffs[0], diffs[-1])
    return (shift, float(diffs[k - 1]), float(diffs[total - k]))


@dataclass(frozen=True)
class SuccessComparison:
    original_successes: int
    original_runs: int
    candidate_successes: int
    candidate_runs: int
    original_rate: float | None
    candidate_rate: float | None
    difference: float | None
    """``candidate_rate - original_rate``."""
    ci_low: float | None
    ci_high: float | None
    fisher_p: float | None
    odds_ratio: float | None


@dataclass(frozen=True)
class LatencyComparison:
    original_runs: int
    candidate_runs: int
    original_median_ms: float | None
    candidate_median_ms: float | None
    mann_whitney_u: float | None
    mann_whitney_p: float | None
    shift_ms: float | None
    """Hodges-Lehmann ``candidate - original`` (negative: the candidate is faster)."""
    ci_low_ms: float | None
    ci_high_ms: float | None


@dataclass(frozen=True)
class Comparison:
    confidence: float
    success: SuccessComparison
    latency: LatencyComparison
    verdict: Verdict
    reason: str
    rules: VerdictRules

    def to_json(self) -> dict[str, Any]:
        return {
            "confidence": self.confidence,
            "verdict": self.verdict,
            "reason": self.reason,
            "success": _finite(asdict(self.success)),
            "latency": _finite(asdict(self.latency)),
            "rules": asdict(self.rules),
        }


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    # JSON has no inf/nan (an odds ratio of a 0 cell is infinite): report those as null.
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()
    }


def compare_success(
    original: Sequence[bool], candidate: Sequence[bool], confidence: float
) -> SuccessComparison:
    s_a, n_a = sum(original), len(original)
    s_b, n_b = sum(candidate), len(candidate)
    if n_a == 0 or n_b == 0:
        return SuccessComparison(s_a, n_a, s_b, n_b, None, None, None, None, None, None, None)
    odds, p = _scipy.fisher_exact([[s_b, n_b - s_b], [s_a, n_a - s_a]], alternative="two-sided")
    low, high = newcombe_interval(s_a, n_a, s_b, n_b, confidence)
    return SuccessComparison(
        s_a, n_a, s_b, n_b, s_a / n_a, s_b / n_b, s_b / n_b - s_a / n_a, low, high, float(p),
        float(odds),
    )  # fmt: skip


def compare_latency(
    original: Sequence[float], candidate: Sequence[float], confidence: float
) -> LatencyComparison:
    n_a, n_b = len(original), len(candidate)
    if n_a == 0 or n_b == 0:
        return LatencyComparison(
            n_a,
            n_b,
            float(median(original)) if original else None,
            float(median(candidate)) if candidate else None,
            None, None, None, None, None,
        )  # fmt: skip
    result = _scipy.mannwhitneyu(candidate, original, alternative="two-sided")
    shift, low, high = hodges_lehmann(original, candidate, confidence)
    return LatencyComparison(
        n_a, n_b, float(median(original)), float(median(candidate)),
        float(result.statistic), float(result.pvalue), shift, low, high,
    )  # fmt: skip


def verdict(
    success: SuccessComparison, latency: LatencyComparison, rules: VerdictRules
) -> tuple[Verdict, str]:
    """The verdict and a one-line reason (the rules in the module docstring)."""
    alpha = 1.0 - rules.confidence
    if success.original_runs < rules.min_runs or success.candidate_runs < rules.min_runs:
        return (
            "insufficient_data",
            f"{success.original_runs} original and {success.candidate_runs} candidate runs; "
            f"a verdict needs at least {rules.min_runs} of each",
        )
    assert success.fisher_p is not None and success.difference is not None
    if success.fisher_p < alpha:
        direction: Verdict = "better" if success.difference > 0 else "worse"
        return (
            direction,
            f"success rate {success.original_rate:.0%} -> {success.candidate_rate:.0%} "
            f"(Fisher p={success.fisher_p:.3g} < {alpha:.3g})",
        )
    same = f"success rate {success.original_rate:.0%} -> {success.candidate_rate:.0%} " + (
        f"not different (Fisher p={success.fisher_p:.3g})"
    )
    if latency.original_runs < rules.min_runs or latency.candidate_runs < rules.min_runs:
        return ("no_difference", same + "; too few successful runs to compare latency")
    assert latency.mann_whitney_p is not None and latency.shift_ms is not None
    assert latency.ci_low_ms is not None and latency.ci_high_ms is not None
    assert latency.original_median_ms is not None
    floor = max(rules.min_shift_ms, rules.min_shift_ratio * latency.original_median_ms)
    significant = latency.mann_whitney_p < alpha and (
        latency.ci_low_ms > 0 or latency.ci_high_ms < 0
    )
    if significant and abs(latency.shift_ms) >= floor:
        direction = "better" if latency.shift_ms < 0 else "worse"
        return (
            direction,
            same + f"; latency shift {latency.shift_ms:+.1f} ms "
            f"(Mann-Whitney p={latency.mann_whitney_p:.3g}, |shift| >= {floor:.1f} ms)",
        )
    return (
        "no_difference",
        same + f"; latency shift {latency.shift_ms:+.1f} ms not different "
        f"(Mann-Whitney p={latency.mann_whitney_p:.3g}, practical floor {floor:.1f} ms)",
    )


def compare(
    original_success: Sequence[bool],
    candidate_success: Sequence[bool],
    original_latency_ms: Sequence[float],
    candidate_latency_ms: Sequence[float],
    rules: VerdictRules | None = None,
) -> Comparison:
    """Both comparisons and the verdict; latencies are of the successful runs only."""
    rules = rules or VerdictRules()
    success = compare_success(original_success, candidate_success, rules.confidence)
    latency = compare_latency(original_latency_ms, candidate_latency_ms, rules.confidence)
    decided, reason = verdict(success, latency, rules)
    return Comparison(rules.confidence, success, latency, decided, reason, rules)
