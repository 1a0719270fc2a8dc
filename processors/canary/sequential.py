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
from math import lgamma

__all__ = [
    "Interval",
    "always_valid_p",
    "difference_sequence",
    "exceedance_mixture_p",
    "exceedance_null",
    "mixture_radius",
]


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


def exceedance_null(n: int, k: int, m: int) -> tuple[float, float]:
    """Mean and variance, when both samples come from the same continuous distribution, of the
    share of ``m`` new observations above the ``k``-th smallest of ``n`` reference ones.

    Exact, by exchangeability: ``F(X_(k))`` is ``Beta(k, n - k + 1)``, so each new observation
    is above the line with probability ``P ~ Beta(n - k + 1, k)``, of mean
    ``mu = (n - k + 1) / (n + 1)`` and variance ``s2 = mu (1 - mu) / (n + 2)``; given ``P`` the
    count is binomial, so the share has variance ``E[P (1 - P)] / m + Var P
    = (mu (1 - mu) - s2) / m + s2``. Note ``mu`` is *above* the reference sample's own share
    ``(n - k) / n``: comparing with that share instead is biased towards "the new sample is
    slower" by about ``1 / n``."""
    if not 1 <= k <= n:
        raise ValueError(f"Expected 1 <= k <= n ({n}), but got {k}")
    if m <= 0:
        raise ValueError(f"Expected m > 0 new observations, but got {m}")
    mu = (n - k + 1) / (n + 1)
    s2 = mu * (1.0 - mu) / (n + 2)
    return mu, (mu * (1.0 - mu) - s2) / m + s2


def _log_beta(a: float, b: float) -> float:
    return lgamma(a) + lgamma(b) - lgamma(a + b)


def exceedance_mixture_p(
    hits: int, m: int, *, n: int, k: int, prior_a: float = 1.0, prior_b: float = 3.0
) -> float:
    """Always-valid p-value that ``hits`` of ``m`` new observations above the ``k``-th smallest
    of ``n`` reference ones come from the reference distribution (exact, any continuous
    distribution; ties only make it conservative).

    Under that null the new observations' indicators are exchangeable, a ``Beta(n - k + 1, k)``
    mixture of Bernoulli trials (:func:`exceedance_null`), so the sequence's probability is a
    ratio of Beta functions; the alternative is a ``Beta(prior_a, prior_b)`` mixture over the
    exceedance probability. Their likelihood ratio ``M`` is a martingale under the null (the
    ratio of two exchangeable laws' predictive probabilities), so ``P(exists m: M_m >= 1/alpha)
    <= alpha`` (Ville) and ``min(1, 1/M)`` may be looked at after every new observation. Unlike
    a normal approximation it has the binomial's skewed tail: with a ~5 % exceedance rate a
    few hits in a dozen runs are not "significant" by the normal tail's mistake.

    Exact while the reference sample (the line) is fixed; the judge re-estimates the line as
    the baseline grows, which the simulations in the unit tests and the benchmark check. The
    prior only moves which exceedance rates are seen fastest (its mean, 0.25 by default: a p95
    line crossed by a quarter of the canary's runs), never the validity."""
    if not 0 <= hits <= m:
        raise ValueError(f"Expected 0 <= hits <= m ({m}), but got {hits}")
    if not 1 <= k <= n:
        raise ValueError(f"Expected 1 <= k <= n ({n}), but got {k}")
    if prior_a <= 0 or prior_b <= 0:
        raise ValueError(f"Expected a positive Beta prior, but got ({prior_a}, {prior_b})")
    a, b = n - k + 1, k
    log_m = (
        _log_beta(hits + prior_a, m - hits + prior_b)
        - _log_beta(prior_a, prior_b)
        - _log_beta(hits + a, m - hits + b)
        + _log_beta(a, b)
    )
    return 1.0 if log_m <= 0.0 else math.exp(-min(log_m, 700.0))
