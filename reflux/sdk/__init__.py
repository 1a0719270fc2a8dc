"""The REFLUX Python SDK: workflows as code (:class:`Workflow`) and API clients
(:class:`RefluxClient`, :class:`AsyncRefluxClient`). See docs/sdk.md."""

from reflux.sdk.builder import (
    Cache,
    Input,
    Retry,
    StepRef,
    Workflow,
    WorkflowValidationError,
    input_ref,
)
from reflux.sdk.client import AsyncRefluxClient, RefluxClient, WaitTimeoutError, WorkflowSource
from reflux.sdk.errors import (
    Conflict,
    FieldProblem,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    RefluxApiError,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "AsyncRefluxClient",
    "Cache",
    "Conflict",
    "FieldProblem",
    "Forbidden",
    "Input",
    "Invalid",
    "NotFound",
    "RateLimited",
    "RefluxApiError",
    "RefluxClient",
    "Retry",
    "StepRef",
    "Unauthorized",
    "Unavailable",
    "WaitTimeoutError",
    "Workflow",
    "WorkflowSource",
    "WorkflowValidationError",
    "input_ref",
]
