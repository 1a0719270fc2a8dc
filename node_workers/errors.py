"""Errors raised by node code, rooted in :mod:`foundation.errors`.

A node says *what* went wrong (``error_class``, e.g. ``"Http5xx"``) and *whether another attempt
can help* (retryable or not). The worker runtime copies both into the result's ``ErrorInfo``; the
scheduler's retry policy and the critic act on them. Node code never decides to retry itself.
"""

from __future__ import annotations

from foundation.errors import NonRetryableError, RefluxError, RetryableError

__all__ = ["NodeError", "NonRetryableNodeError", "RetryableNodeError"]


class NodeError(RefluxError):
    """Base of every failure a node reports on purpose."""

    error_class = "NodeError"


class RetryableNodeError(NodeError, RetryableError):
    """Transient: the same params may succeed on a later attempt (timeouts, 5xx, 429)."""

    error_class = "RetryableNodeError"


class NonRetryableNodeError(NodeError, NonRetryableError):
    """Permanent for these params (bad input, 4xx, invalid expression)."""

    error_class = "NonRetryableNodeError"
