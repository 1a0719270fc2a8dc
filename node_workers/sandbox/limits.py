"""Sandbox configuration and the mapping from a request's ``limits`` to kernel limits (pure).

bubblewrap has no cgroups, so every limit is an rlimit set inside the sandbox (``prlimit``) plus
a wall clock enforced by the parent:

- ``memMb`` -> RLIMIT_DATA (heap and private writable mappings). Not RLIMIT_AS: node's V8
  reserves gigabytes of address space it never touches and refuses to start under a tight AS
  limit; RLIMIT_AS is kept only as a loose backstop (``memMb`` + 4 GiB).
- ``cpu`` (vCPUs) -> RLIMIT_CPU of ``ceil(cpu * timeoutSec)`` CPU-seconds (soft; hard + 1 s so
  SIGXCPU comes first) and ``nice`` 10. Without cgroups, parallelism itself cannot be capped.
- ``processes`` -> RLIMIT_NPROC. Set *inside* the sandbox's own user namespace, where the
  kernel (>= 5.14, ucounts) counts per namespace: concurrent sandboxes do not share the budget.
  It only binds a non-root uid, so the sandbox never runs as root (see ``SandboxConfig.uid``).
- output size -> RLIMIT_FSIZE of ``max_output_bytes + 1`` per file (a file reaching the cap is
  detected after the run) and a watchdog on the work directory's total size.

The docker backend sets the same rlimits as ulimits (RLIMIT_CPU one CPU-second higher, as a
backstop behind its CPU quota) and adds cgroup limits; see docker_backend.py. bubblewrap adds
cgroup v1 limits where the worker may write them (cgroups.py).

The operator's maximums (``SandboxConfig.max_*``, ``REFLUX_SANDBOX_MAX_*``) bound what a request
may ask for: :func:`limit_violations` names every field over its maximum, and the runner refuses
such a request before anything runs (docs/decisions/0042-sandbox-seccomp-and-maximums.md).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from foundation.settings import Settings
from node_workers.sandbox.image import sandbox_image_tag
from node_workers.sandbox.models import Lang, Limits

__all__ = [
    "DEFAULT_INTERPRETERS",
    "DEFAULT_SANDBOX_GID",
    "DEFAULT_SANDBOX_UID",
    "IMAGE_INTERPRETERS",
    "BackendChoice",
    "LimitViolation",
    "ResourceLimits",
    "SandboxConfig",
    "limit_violations",
    "resource_limits",
    "setting_name",
]

MIB: Final = 1024 * 1024
# A uid/gid nothing else on the host runs as. Not `nobody` (65534): local services (postgres
# here) often run as nobody, and a shared uid would share the kernel's per-user accounting.
DEFAULT_SANDBOX_UID: Final = 65432
DEFAULT_SANDBOX_GID: Final = 65432
DEFAULT_INTERPRETERS: Final[dict[Lang, str]] = {
    "python": "/usr/bin/python3",
    "node": "/usr/bin/node",
    "bash": "/bin/bash",
}
# Where the docker backend's image (node_workers/sandbox/docker_image/) has each interpreter.
IMAGE_INTERPRETERS: Final[dict[Lang, str]] = dict(DEFAULT_INTERPRETERS)

BackendChoice = Literal["auto", "docker", "bubblewrap"]


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Operator settings of the code runner (not user-controlled)."""

    backend: BackendChoice = "auto"
    """``auto``: Docker when an engine answers ``ping``, else bubblewrap."""
    allow_network: bool = False
    """Whether requests may ask for ``network: full``. Off by default: a worker operator opts in."""
    uid: int = DEFAULT_SANDBOX_UID
    gid: int = DEFAULT_SANDBOX_GID
    """Unprivileged ids the sandbox runs as when the worker is root."""
    work_root: Path | None = None
    """Where per-run work directories are created (default: the system temp dir)."""
    bwrap_path: str = "/usr/bin/bwrap"
    setpriv_path: str = "/usr/bin/setpriv"
    prlimit_path: str = "/usr/bin/prlimit"
    nice_path: str = "/usr/bin/nice"
    launcher_python: str = "/usr/bin/python3"
    """Runs the tiny in-sandbox launcher that measures peak memory (see bubblewrap.LAUNCHER)."""
    interpreters: dict[Lang, str] = field(default_factory=lambda: dict(DEFAULT_INTERPRETERS))
    image: str = field(default_factory=sandbox_image_tag)
    """The docker backend's image, one for every language: by default the one `make up` builds
    (``reflux-sandbox:<hash>``, node_workers/sandbox/docker_image/). Never pulled: the engine
    must hold it."""
    docker_host: str | None = None
    """The Docker engine (DOCKER_HOST syntax); ``None``: ``Settings.resolved_docker_host()``,
    the project's own dockerd."""
    max_output_bytes: int = 64 * MIB
    """Total bytes the code may leave under /work (out/ included)."""
    max_output_files: int = 1000
    max_input_bytes: int = 64 * MIB
    """Total bytes of downloaded inputs (they are held in memory once while downloading)."""
    log_cap_bytes: int = 64 * 1024
    tmp_size_bytes: int = 64 * MIB
    """Size of the sandbox's private /tmp (a tmpfs: memory not counted by RLIMIT_DATA)."""
    shm_size_bytes: int = 64 * MIB
    """Size of the sandbox's /dev/shm (a tmpfs, like /tmp), further bounded by ``memMb``."""
    max_open_files: int = 256
    seccomp: bool = True
    """Install the seccomp filter (node_workers/sandbox/seccomp.py) in both backends. Off only
    for a machine the filter has no syscall table for."""
    cgroups: bool = True
    """bubblewrap: put each run in cgroup v1 memory/pids/cpu groups when the worker may create
    them (node_workers/sandbox/cgroups.py); without, rlimits alone hold."""
    cgroup_root: Path = Path("/sys/fs/cgroup")
    max_mem_mb: int = 4096
    """Operator maximums: a request asking for more is refused (``REFLUX_SANDBOX_MAX_*``)."""
    max_cpu: float = 4.0
    max_processes: int = 512
    max_timeout_sec: float = 900.0
    nice: int = 10
    watchdog_interval_s: float = 0.2
    max_parallel_runs: int = 8
    output_key_prefix: str = "code-run"

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> SandboxConfig:
        """The operator's settings (``REFLUX_SANDBOX_*``); ``overrides`` win."""
        values: dict[str, object] = {
            "max_mem_mb": settings.sandbox_max_mem_mb,
            "max_cpu": settings.sandbox_max_cpu,
            "max_processes": settings.sandbox_max_processes,
            "max_timeout_sec": settings.sandbox_max_timeout_sec,
            "max_output_bytes": settings.sandbox_max_output_mb * MIB,
            "tmp_size_bytes": settings.sandbox_tmp_mb * MIB,
            "shm_size_bytes": settings.sandbox_shm_mb * MIB,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]  # field types checked by the settings

    def maximums(self) -> dict[str, float]:
        """Request field (as the contract spells it) -> the most it may ask for."""
        return {
            "memMb": self.max_mem_mb,
            "cpu": self.max_cpu,
            "processes": self.max_processes,
            "timeoutSec": self.max_timeout_sec,
        }


@dataclass(frozen=True, slots=True)
class LimitViolation:
    path: str
    """Where in the step's params: ``params.limits.memMb``."""
    requested: float
    maximum: float
    setting: str
    """The environment variable that sets the maximum."""

    @property
    def message(self) -> str:
        return (
            f"{self.path}: Expected at most {self.maximum:g} (this worker's maximum, "
            f"{self.setting}), but got {self.requested:g}"
        )


_SETTING_NAMES: Final = {
    "memMb": "REFLUX_SANDBOX_MAX_MEM_MB",
    "cpu": "REFLUX_SANDBOX_MAX_CPU",
    "processes": "REFLUX_SANDBOX_MAX_PROCESSES",
    "timeoutSec": "REFLUX_SANDBOX_MAX_TIMEOUT_SEC",
}


def setting_name(field: str) -> str:
    """The environment variable holding the maximum of a request's ``limits`` field."""
    return _SETTING_NAMES[field]


def limit_violations(limits: Limits, config: SandboxConfig) -> list[LimitViolation]:
    """Every requested limit above the operator's maximum (empty when the request fits)."""
    requested = {
        "memMb": limits.mem_mb,
        "cpu": limits.cpu,
        "processes": limits.processes,
        "timeoutSec": limits.timeout_sec,
    }
    return [
        LimitViolation(f"params.limits.{field}", requested[field], maximum, _SETTING_NAMES[field])
        for field, maximum in config.maximums().items()
        if requested[field] > maximum
    ]


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    """Kernel limits for one run, derived from the request and the config."""

    wall_timeout_s: float
    cpus: float
    """vCPUs as requested (a CPU quota where the backend has one: Docker)."""
    cpu_seconds: int
    data_bytes: int
    address_space_bytes: int
    processes: int
    file_size_bytes: int
    open_files: int
    nice: int
    tmp_size_bytes: int
    shm_size_bytes: int
    max_output_bytes: int
    max_output_files: int

    def prlimit_args(self, prlimit_path: str = "/usr/bin/prlimit") -> list[str]:
        """``prlimit`` options setting every limit on the command it runs (``soft:hard``)."""
        return [
            prlimit_path,
            f"--cpu={self.cpu_seconds}:{self.cpu_seconds + 1}",
            f"--data={self.data_bytes}",
            f"--as={self.address_space_bytes}",
            f"--nproc={self.processes}",
            f"--fsize={self.file_size_bytes}",
            f"--nofile={self.open_files}",
            "--core=0",
            "--",
        ]


def resource_limits(limits: Limits, config: SandboxConfig) -> ResourceLimits:
    return ResourceLimits(
        wall_timeout_s=limits.timeout_sec,
        cpus=limits.cpu,
        cpu_seconds=max(1, math.ceil(limits.cpu * limits.timeout_sec)),
        data_bytes=limits.mem_mb * MIB,
        address_space_bytes=(limits.mem_mb + 4096) * MIB,
        processes=limits.processes,
        file_size_bytes=config.max_output_bytes + 1,
        open_files=config.max_open_files,
        nice=config.nice,
        tmp_size_bytes=config.tmp_size_bytes,
        # tmpfs pages escape RLIMIT_DATA: /dev/shm never holds more than the program may
        # allocate (issue 12: 192 MiB were written there under memMb 64).
        shm_size_bytes=min(config.shm_size_bytes, limits.mem_mb * MIB),
        max_output_bytes=config.max_output_bytes,
        max_output_files=config.max_output_files,
    )


def running_as_root() -> bool:
    return os.geteuid() == 0
