"""Retry backoff: exponential growth, capped, with random jitter added."""

from __future__ import annotations

from workflows.model import RetrySpec

__all__ = ["backoff_ms", "should_retry"]


def backoff_ms(policy: RetrySpec, failed_attempt: int, rand: float) -> int:
    """Delay before the attempt after ``failed_attempt`` (1-based).

    ``initial * multiplier^(failed_attempt-1)``, capped at ``max_backoff``, plus
    ``jitter * rand`` of itself (``rand`` in [0, 1) from the injected source), capped again so
    ``max_backoff`` really is an upper bound.
    """
    base = min(
        float(policy.max_backoff),
        policy.initial_backoff * policy.multiplier ** max(failed_attempt - 1, 0),
    )
    jittered = base * (1.0 + policy.jitter * min(max(rand, 0.0), 1.0))
    return int(min(jittered, float(policy.max_backoff)))


def should_retry(
    policy: RetrySpec, failed_attempt: int, *, error_class: str, retryable: bool
) -> bool:
    """Another attempt is allowed: retryable error, class not excluded, attempts left."""
    return (
        retryable
        and error_class not in policy.non_retryable
        and failed_attempt < policy.max_attempts
    )
