"""Run user code in a sandbox: Docker where an engine answers, else bubblewrap.

Public surface (see docs/nodes.md, ``code.run@1.0.0``, and docs/decisions/0007):

- :class:`SandboxRunner` — ``await runner.run(request, key_prefix=...) -> CodeRunResult``;
- the contract models :class:`CodeRunRequest` / :class:`CodeRunResult` (the seed's);
- :class:`SandboxConfig` — the operator's settings (backend, network policy, caps, uid).
"""

from __future__ import annotations

from node_workers.sandbox.backend import RawRun, SandboxBackend, SandboxJob
from node_workers.sandbox.bubblewrap import BubblewrapBackend, build_command
from node_workers.sandbox.docker_backend import DockerBackend
from node_workers.sandbox.errors import (
    InputError,
    LimitAboveMaximumError,
    NetworkNotAllowedError,
    SandboxFailedError,
    SandboxUnavailableError,
    UnsupportedRequestError,
)
from node_workers.sandbox.limits import ResourceLimits, SandboxConfig, resource_limits
from node_workers.sandbox.models import (
    CodeRef,
    CodeRunError,
    CodeRunRequest,
    CodeRunResult,
    InputFile,
    Limits,
    OutputFile,
    RunMetrics,
)
from node_workers.sandbox.runner import SandboxRunner

__all__ = [
    "BubblewrapBackend",
    "CodeRef",
    "CodeRunError",
    "CodeRunRequest",
    "CodeRunResult",
    "DockerBackend",
    "InputError",
    "InputFile",
    "LimitAboveMaximumError",
    "Limits",
    "NetworkNotAllowedError",
    "OutputFile",
    "RawRun",
    "ResourceLimits",
    "RunMetrics",
    "SandboxBackend",
    "SandboxConfig",
    "SandboxFailedError",
    "SandboxJob",
    "SandboxRunner",
    "SandboxUnavailableError",
    "UnsupportedRequestError",
    "build_command",
    "resource_limits",
]
