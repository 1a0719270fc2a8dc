"""Always-valid confidence sequences for a difference of two means (pure, no I/O).

The mixture sequential probability ratio test (mSPRT) of Robbins (1970), as used for A/B tests
by Johari, Koomen, Pekelis and Walsh ("Peeking at A/B tests", KDD 2017; "Always valid
inference", Operations Research 2022). For an estimate ``d`` of the difference ``theta`` with
variance ``v`` (``v = var_a / n_a + var_b / n_b``) and a normal mixing distribution
``N(theta0, tau^2)`` over the alternative, the likelihood ratio against ``theta = theta0`` is

    Lambda = sqrt(v / (v + tau^2)) * exp(tau^2 (d - theta0)^2 / (2 v (v + tau^2)))

and, by Ville's inequality, ``P(exists n: Lambda_n >= 1 / alpha | theta0) <= alpha``. So
``1 / Lambda`` is a p-value that stays valid however often it is looked at, and the set of
``theta0`` not rejected is a confidence *sequence*: ``d +- radius(v)`` covers ``theta`` at every
``n`` simultaneously with probability ``>= 1 - alpha``. Looking after every run and stopping at
the first crossing is therefore allowed -- unlike a fixed-horizon test peeked at repeatedly,
whose error rate grows with every look.

The normal approximation of ``d`` needs a few observations per arm (the judge waits for
``min_runs``); ``v`` is estimated from the data, as in the papers' practical versions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Interval", "always_valid_p", "difference_sequence", "mixture_radius"]


def mixture_radius(variance: float, tau: float, alpha: float) -> float:
    """Half-width of the mSPRT confidence sequence at ``variance`` (of the estimate)."""
    if variance <= 0.0:
        return 0.0
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"Expected alpha in (0, 1), but got {alpha}")
    if tau <= 0.0:
        raise ValueError(f"Expected tau > 0, but got {tau}")
    t2 = tau * tau
    return math.sqrt(
        variance
        * (variance + t2)
        / t2
        * (2.0 * math.log(1.0 / alpha) + math.log((variance + t2) / variance))
    )


def always_valid_p(estimate: float, variance: float, tau: float, theta0: float = 0.0) -> float:
    """``min(1, 1 / Lambda)``: the mSPRT's always-valid p-value for ``theta = theta0``."""
    if variance <= 0.0:
        return 0.0 if estimate != theta0 else 1.0
    t2 = tau * tau
    log_lambda = 0.5 * math.log(variance / (variance + t2)) + t2 * (estimate - theta0) ** 2 / (
        2.0 * variance * (variance + t2)
    )
    return 1.0 if log_lambda <= 0.0 else math.exp(-min(log_lambda, 700.0))


@dataclass(frozen=True, slots=True)
class Interval:
    """``estimate`` (of ``mean_b - mean_a``) with its always-valid bounds at ``alpha``."""

    estimate: float
    low: float
    high: float
    variance: float
    p_value: float


def difference_sequence(
    *,
    mean_a: float,
    var_a: float,
    n_a: int,
    mean_b: float,
    var_b: float,
    n_b: int,
    tau: float,
    alpha: float,
) -> Interval:
    """The confidence sequence of ``mean_b - mean_a`` from the two arms' moments."""
    if n_a <= 0 or n_b <= 0:
        raise ValueError(f"Expected runs in both arms, but got {n_a} and {n_b}")
    variance = var_a / n_a + var_b / n_b
    estimate = mean_b - mean_a
    radius = mixture_radius(variance, tau, alpha)
    return Interval(
        estimate,
        estimate - radius,
        estimate + radius,
        variance,
        always_valid_p(estimate, variance, tau),
    )
