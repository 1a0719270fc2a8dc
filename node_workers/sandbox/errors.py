"""Errors of the code runner, as node errors (the worker copies class and retryability).

A failing *user program* is not an exception here: the runner returns a ``CodeRunResult`` with
``status`` error/timeout, and the ``code.run`` node decides what that means for the step.
These errors are about the sandbox itself or the request around the code.
"""

from __future__ import annotations

from node_workers.errors import NonRetryableNodeError, RetryableNodeError

__all__ = [
    "InputError",
    "LimitAboveMaximumError",
    "NetworkNotAllowedError",
    "SandboxFailedError",
    "SandboxUnavailableError",
    "UnsupportedRequestError",
]


class SandboxUnavailableError(NonRetryableNodeError):
    """Neither a Docker engine nor bubblewrap: no attempt on this worker can run code."""

    error_class = "SandboxUnavailable"


class SandboxFailedError(RetryableNodeError):
    """The sandbox could not be set up (bwrap refused a mount, the engine failed)."""

    error_class = "SandboxFailed"


class NetworkNotAllowedError(NonRetryableNodeError):
    """The request asks for network but the worker's operator did not allow it."""

    error_class = "NetworkNotAllowed"


class UnsupportedRequestError(NonRetryableNodeError):
    """Valid by the contract, but this backend cannot honour it (``network: limited``)."""

    error_class = "UnsupportedRequest"


class InputError(NonRetryableNodeError):
    """An input or code_ref could not be used (missing blob, over the size cap)."""

    error_class = "InputError"


class LimitAboveMaximumError(NonRetryableNodeError):
    """The request asks for more memory, CPU, processes or time than the operator allows
    (``REFLUX_SANDBOX_MAX_*``); the message names each field path and its maximum."""

    error_class = "LimitAboveMaximum"
