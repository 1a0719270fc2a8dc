"""Retry backoff: exponential growth, capped, with "equal jitter" taken off the top.

Why not jitter added on top (the formula before ADR 0020, ``base * (1 + jitter * r)`` with
``jitter`` 0.2): a burst of steps that fail together retried within 20 % of one base (40 ms for
a 200 ms backoff), and at ``max_backoff`` the cap cut the jitter off entirely, so long outages
retried in lock-step. Here the random part lies *below* the base, so the cap keeps its spread:
``jitter`` 0.5 (the default) is AWS's "equal jitter" (half fixed, half random), 1.0 is "full
jitter". Equal rather than full by default: the fixed half keeps the backoff growing per
attempt for every step (full jitter can retry attempt 3 at once after two failures).
See docs/decisions/0020-retry-budget-and-circuit.md.
"""

from __future__ import annotations

from workflows.model import RetrySpec

__all__ = ["backoff_ms", "should_retry"]


def backoff_ms(policy: RetrySpec, failed_attempt: int, rand: float) -> int:
    """Delay before the attempt after ``failed_attempt`` (1-based).

    ``base = min(max_backoff, initial * multiplier^(failed_attempt-1))``, then
    ``base * (1 - jitter * rand)`` with ``rand`` in [0, 1) from the injected source: uniform in
    ``(base * (1 - jitter), base]``, so ``max_backoff`` is an upper bound and the spread survives
    the cap.
    """
    base = min(
        float(policy.max_backoff),
        policy.initial_backoff * policy.multiplier ** max(failed_attempt - 1, 0),
    )
    return round(base * (1.0 - policy.jitter * min(max(rand, 0.0), 1.0)))


def should_retry(
    policy: RetrySpec, failed_attempt: int, *, error_class: str, retryable: bool
) -> bool:
    """Another attempt is allowed: retryable error, class not excluded, attempts left."""
    return (
        retryable
        and error_class not in policy.non_retryable
        and failed_attempt < policy.max_attempts
    )
