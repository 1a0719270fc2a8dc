"""The REFLUX Python SDK: workflows as code (:class:`Workflow`), API clients
(:class:`RefluxClient`, :class:`AsyncRefluxClient`) and custom nodes as code (``@node``,
re-exported from :mod:`reflux.sdk_nodes`). See docs/sdk.md and docs/sdk-nodes.md."""

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
from reflux.sdk_nodes import (
    FunctionNode,
    NodeContext,
    NodeDefinitionError,
    NodeModel,
    NonRetryableNodeError,
    RetryableNodeError,
    node,
)

__all__ = [
    "AsyncRefluxClient",
    "Cache",
    "Conflict",
    "FieldProblem",
    "Forbidden",
    "FunctionNode",
    "Input",
    "Invalid",
    "NodeContext",
    "NodeDefinitionError",
    "NodeModel",
    "NonRetryableNodeError",
    "NotFound",
    "RateLimited",
    "RefluxApiError",
    "RefluxClient",
    "Retry",
    "RetryableNodeError",
    "StepRef",
    "Unauthorized",
    "Unavailable",
    "WaitTimeoutError",
    "Workflow",
    "WorkflowSource",
    "WorkflowValidationError",
    "input_ref",
    "node",
]
