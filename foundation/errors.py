"""The one error root, and the one classification of any exception.

Every exception REFLUX defines derives from :class:`RefluxError` and carries an ``error_class``
string (what traces, dead-letter records and the critic group by) and ``retryable`` (whether a
later attempt of the same work can succeed). :func:`classify` answers both questions for *any*
exception, ours or a library's; nothing else in the tree works them out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "ConfigurationError",
    "ErrorClassification",
    "NonRetryableError",
    "RefluxError",
    "RetryableError",
    "ServiceUnavailableError",
    "TransientRule",
    "classify",
]


class RefluxError(Exception):
    """Base of every error raised on purpose by REFLUX."""

    error_class: str = "Reflux"
    retryable: bool = False

    def __init__(self, message: str, *, error_class: str | None = None) -> None:
        super().__init__(message)
        if error_class is not None:
            self.error_class = error_class

    @property
    def message(self) -> str:
        return str(self)


class RetryableError(RefluxError):
    """A transient failure: the same attempt may succeed later."""

    error_class = "Retryable"
    retryable = True


class NonRetryableError(RefluxError):
    """A permanent failure: retrying the same input cannot succeed."""

    error_class = "NonRetryable"
    retryable = False


class ConfigurationError(NonRetryableError):
    error_class = "Configuration"


class ServiceUnavailableError(RetryableError):
    """A backing service (Kafka, Postgres, ...) cannot be reached."""

    error_class = "ServiceUnavailable"


@dataclass(frozen=True, slots=True)
class ErrorClassification:
    """What the engine records and decides about one failure."""

    error_class: str
    """Traces, ``ErrorInfo`` and dead letters carry it; retry policies name it."""
    retryable: bool
    """A later attempt (a rewind, a retry) may succeed; otherwise dead-letter or fail."""


TransientRule = Callable[[BaseException], bool]
"""Says whether a library's exception is transient; the layer that owns the library passes it
(a retriable ``KafkaException`` in :mod:`streams`, a lost Postgres connection in
:mod:`projections`)."""


def classify(exc: BaseException, *, transient: TransientRule | None = None) -> ErrorClassification:
    """The error class and retryability of ``exc``.

    A :class:`RefluxError` says both itself. Any other exception is classed by its type name
    (``KeyError``) and is not retryable, because a bug retried would block its partition
    forever, unless ``transient`` says it is.
    """
    if isinstance(exc, RefluxError):
        return ErrorClassification(exc.error_class, bool(exc.retryable))
    retryable = transient is not None and transient(exc)
    return ErrorClassification(type(exc).__name__, retryable)
