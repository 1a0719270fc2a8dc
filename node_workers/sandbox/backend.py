"""What a sandbox backend gets (``SandboxJob``) and returns (``RawRun``), and how one is chosen.

A backend runs one prepared job and blocks until it ends; the runner calls it in a thread. It
must end the job itself on the wall-clock limit, on ``cancel`` and when the work directory
outgrows its cap, and leave the job's outputs in ``job.host_out``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from node_workers.sandbox.limits import ResourceLimits
from node_workers.sandbox.models import Lang, Network

__all__ = ["BackendName", "RawRun", "SandboxBackend", "SandboxJob"]

BackendName = Literal["docker", "bubblewrap"]


@dataclass(frozen=True, slots=True)
class SandboxJob:
    lang: Lang
    entry: str
    network: Network
    limits: ResourceLimits
    host_work: Path
    """Bound read-write at /work; holds the entry and out/."""
    host_inputs: Path
    """Bound read-only at /work/in."""
    packages: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    binds: tuple[tuple[Path, str], ...] = ()
    """Extra host paths bound read-write at a sandbox path (the artifact worker's egress proxy
    socket, ADR 0070); Docker binds them from the engine's host, so only a local engine."""

    @property
    def host_out(self) -> Path:
        return self.host_work / "out"


@dataclass(frozen=True, slots=True)
class RawRun:
    exit_code: int
    duration_ms: float
    peak_mem_mb: float | None
    logs: str
    logs_truncated: bool
    timed_out: bool = False
    cancelled: bool = False
    killed_reason: str | None = None
    """Set when the backend ended the job for a cap (``"OutputTooLarge"``)."""
    killed_message: str | None = None


class SandboxBackend(Protocol):
    name: BackendName

    def run(self, job: SandboxJob, cancel: threading.Event) -> RawRun:
        """Run ``job`` to its end; raise ``SandboxFailedError`` if it could not start."""
        ...
