"""cgroup v1 limits for the bubblewrap backend, where the worker may create groups.

bubblewrap itself has no cgroups, and without systemd there is nobody to delegate a cgroup v2
subtree to. What a root worker on a cgroup v1 host can still do (this development machine:
``memory``, ``pids`` and ``cpu`` controllers mounted read-write under /sys/fs/cgroup) is create a
group per run under ``reflux-sandbox/`` and put the sandbox in it *before* bwrap starts, so
every process of the run is inside from its first instruction:

- ``memory.limit_in_bytes`` (and ``memsw`` when swap is accounted) = ``memMb`` + /tmp +
  /dev/shm + 64 MiB, like Docker's ``mem_limit``: one bound on all processes, the tmpfs pages
  and the page cache together, where RLIMIT_DATA bounds each process alone;
- ``pids.max`` = ``processes`` + a few for bwrap's own processes (RLIMIT_NPROC stays inside);
- ``cpu.cfs_quota_us`` = ``ceil(cpu)`` whole CPUs: a cap on parallelism (four threads no longer
  spend a CPU-seconds budget four times as fast), while RLIMIT_CPU keeps ending a busy loop
  with SIGXCPU at ``ceil(cpu * timeoutSec)`` CPU-seconds as before (a quota of a fraction of a
  CPU would make that budget unreachable before the wall clock, as it is under Docker).

The join is race-free: a tiny ``sh`` (still root) writes its own pid into each group's
``cgroup.procs``, then ``exec``s setpriv -> bwrap. Not root, cgroup v2 only, or a controller not
writable: no groups, and the rlimits alone hold (``available`` says why).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from node_workers.sandbox.limits import MIB, ResourceLimits

__all__ = ["CgroupV1", "RunCgroup", "cgroup_join_prefix"]

PARENT: Final = "reflux-sandbox"
CONTROLLERS: Final = ("memory", "pids", "cpu")
MEMORY_HEADROOM: Final = 64 * MIB
# bwrap's monitor, its pid 1, the launcher: processes of the run that are not the program's.
OWN_PROCESSES: Final = 8
CFS_PERIOD_US: Final = 100_000
log = logging.getLogger(__name__)


def cgroup_join_prefix(procs_files: list[str]) -> list[str]:
    """argv that writes its own pid into each ``cgroup.procs`` and then execs the rest."""
    script = 'for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; done'
    tail = f'; shift {len(procs_files) + 1}; exec "$@"'
    return ["/bin/sh", "-c", script + tail, "sh", *procs_files, "--"]


@dataclass(frozen=True, slots=True)
class RunCgroup:
    """One run's groups (one folder per controller)."""

    paths: tuple[Path, ...]

    @property
    def procs_files(self) -> list[str]:
        return [str(path / "cgroup.procs") for path in self.paths]

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer ended a process of the run for the memory limit."""
        for path in self.paths:
            control = path / "memory.oom_control"
            with contextlib.suppress(OSError):
                for line in control.read_text().splitlines():
                    name, _, value = line.partition(" ")
                    if name == "oom_kill" and int(value) > 0:
                        return True
        return False

    def remove(self, timeout: float = 2.0) -> None:
        """rmdir each group (the kernel refuses while a process is still inside: retry)."""
        deadline = time.monotonic() + timeout
        for path in self.paths:
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() >= deadline:
                        log.warning("sandbox cgroup %s not removed (still busy)", path)
                        break
                    time.sleep(0.02)


class CgroupV1:
    """Creates a run's groups under ``<root>/<controller>/reflux-sandbox/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problem = self._probe()

    @property
    def available(self) -> bool:
        return self.problem is None

    def _probe(self) -> str | None:
        if os.geteuid() != 0:
            return "the worker is not root (cgroup v1 groups need it; rlimits only)"
        for controller in CONTROLLERS:
            base = self.root / controller
            if not (base / "cgroup.procs").exists():
                return f"no cgroup v1 {controller} controller at {base} (rlimits only)"
            try:
                (base / PARENT).mkdir(exist_ok=True)
            except OSError as exc:
                return f"cannot create {base / PARENT}: {exc} (rlimits only)"
        return None

    def create(self, limits: ResourceLimits) -> RunCgroup:
        name = uuid.uuid4().hex[:16]
        paths: list[Path] = []
        try:
            for controller in CONTROLLERS:
                path = self.root / controller / PARENT / name
                path.mkdir()
                paths.append(path)
                for file, value in self._settings(controller, path, limits):
                    (path / file).write_text(str(value))
        except OSError:
            RunCgroup(tuple(paths)).remove(timeout=0)
            raise
        return RunCgroup(tuple(paths))

    @staticmethod
    def _settings(controller: str, path: Path, limits: ResourceLimits) -> list[tuple[str, int]]:
        if controller == "memory":
            memory = (
                limits.data_bytes + limits.tmp_size_bytes + limits.shm_size_bytes + MEMORY_HEADROOM
            )
            settings = [("memory.limit_in_bytes", memory)]
            if (path / "memory.memsw.limit_in_bytes").exists():  # swap accounted: no swap
                settings.append(("memory.memsw.limit_in_bytes", memory))
            return settings
        if controller == "pids":
            return [("pids.max", limits.processes + OWN_PROCESSES)]
        quota = max(1, math.ceil(limits.cpus)) * CFS_PERIOD_US
        return [("cpu.cfs_period_us", CFS_PERIOD_US), ("cpu.cfs_quota_us", quota)]
