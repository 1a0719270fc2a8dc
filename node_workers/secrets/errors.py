"""The two ways resolving a secret fails, split by whether another attempt can help.

Grants and provider contents are configuration, so a missing or ungranted secret is final
(:class:`SecretUnavailable`); a provider that cannot answer right now (an unreadable file, Vault
down) may answer the next attempt (:class:`SecretProviderError`). Messages name secrets, never
values.
"""

from __future__ import annotations

from foundation.errors import NonRetryableError, RetryableError

__all__ = ["SecretProviderError", "SecretUnavailable"]


class SecretUnavailable(NonRetryableError):  # noqa: N818 - the error class name users see
    """A step asked for a secret that is not granted to its workflow, or not set anywhere.

    Non-retryable: grants and provider contents are configuration; another attempt of the same
    step sees the same configuration. The message names the secret, never a value.
    """

    error_class = "SecretUnavailable"

    def __init__(self, name: str, workflow_id: str, reason: str) -> None:
        super().__init__(f"secret {name!r} is not available to workflow {workflow_id!r}: {reason}")
        self.name = name
        self.workflow_id = workflow_id


class SecretProviderError(RetryableError):
    """A provider failed to answer (unreadable file, Vault down): another attempt may work."""

    error_class = "SecretProviderUnavailable"
