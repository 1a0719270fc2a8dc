"""The rooted error hierarchy.

Every error carries an ``error_class`` string that traces, dead-letter records and the critic
group by, and says whether retrying can help.
"""

from __future__ import annotations


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
