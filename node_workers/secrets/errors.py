"""The two ways resolving a secret fails, split by whether another attempt can help.

Grants and provider contents are configuration, so a missing or ungranted secret is final
(:class:`SecretUnavailable`); a provider that cannot answer right now (an unreadable file, Vault
down) may answer the next attempt (:class:`SecretProviderError`). Messages name secrets, never
values.
"""

from __future__ import annotations

from foundation.errors import NonRetryableError, RetryableError

__all__ = ["SecretHostDenied", "SecretProviderError", "SecretUnavailable"]


class SecretUnavailable(NonRetryableError):  # noqa: N818 - the error class name users see
    """A step asked for a secret that is not granted to its workflow, or not set anywhere.

    Non-retryable: grants and provider contents are configuration; another attempt of the same
    step sees the same configuration. The message names the secret, never a value.
    """

    error_class = "SecretUnavailable"

    def __init__(
        self,
        name: str,
        workflow_id: str,
        reason: str,
        *,
        version: int | None = None,
        tenant: str | None = None,
    ) -> None:
        who = f"workflow {workflow_id!r}"
        if version is not None:
            who += f" version {version}"
        if tenant is not None:
            who += f" (tenant {tenant!r})"
        super().__init__(f"secret {name!r} is not available to {who}: {reason}")
        self.name = name
        self.workflow_id = workflow_id
        self.version = version
        self.tenant = tenant


class SecretProviderError(RetryableError):
    """A provider failed to answer (unreadable file, Vault down): another attempt may work."""

    error_class = "SecretProviderUnavailable"


class SecretHostDenied(NonRetryableError):  # noqa: N818 - the error class name users see
    """A request would carry a secret to a host its grant does not list (grants.yaml ``hosts``).

    Raised before anything is sent, on the first request and on every redirect hop. Non-retryable:
    the destination is the step's params (or the server's redirect), the hosts the operator's
    configuration; another attempt meets the same ones.
    """

    error_class = "SecretHostDenied"
