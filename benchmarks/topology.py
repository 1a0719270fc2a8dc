"""The engine under test, in one of two topologies.

- ``processes`` (what ``make bench`` measures): one OS process per component, as users deploy
  the engine (``reflux scheduler``, ``reflux worker``, ``reflux projector``, ``reflux
  trigger-router``; README "Components run together or apart"). Each has its own interpreter,
  so the components use both cores instead of sharing one GIL.
- ``dev``: every component in a thread of the benchmark process (:class:`reflux.dev.DevEngine`,
  ``reflux dev``), the topology of the measurements before 2026-12.

Both expose what the benchmark needs: ``catalog``, ``start()``, ``errors()``, ``stop()`` and
``pids()`` (the processes whose CPU is the engine's, by component).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal, Protocol

from foundation.settings import PROJECT_ROOT, Settings
from node_workers.registry import default_registry
from reflux.dev import DevEngine, prepare
from streams.topics import TopicCatalog

__all__ = ["Engine", "ProcessEngine", "Topology", "build_engine"]

Topology = Literal["processes", "dev"]


class Engine(Protocol):
    catalog: TopicCatalog

    def start(self) -> object: ...

    def errors(self) -> dict[str, list[BaseException]] | dict[str, str]: ...

    def stop(self, timeout: float = 30.0) -> None: ...

    def pids(self) -> dict[str, int]: ...


class _InProcess(DevEngine):
    """``reflux dev``: the engine's CPU is this process's (counted per thread)."""

    def pids(self) -> dict[str, int]:
        return {}


class ProcessEngine:
    """Every component as its own ``reflux`` process (stdout/stderr into ``log_dir``, by default
    a temporary folder removed at :meth:`stop`)."""

    def __init__(
        self, settings: Settings, *, schema: str, schedulers: int = 1, log_dir: Path | None = None
    ) -> None:
        self.settings = settings
        self.schema = schema
        self.catalog = prepare(settings, default_registry(), schema)
        # A folder of our own is removed at stop(); errors() quotes the logs before that.
        self._own_logs = log_dir is None
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="reflux-bench-"))
        self.commands: dict[str, list[str]] = {
            **{
                f"scheduler-{n}": ["scheduler", "--instance-id", f"bench-{n}"]
                for n in range(schedulers)
            },
            "workers": ["worker", "--catalog-status", "none"],
            "projector": ["projector", "--schema", schema],
            "trigger-router": ["trigger-router"],
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["REFLUX_TOPIC_PREFIX"] = self.settings.topic_prefix
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
        )
        return env

    def start(self) -> ProcessEngine:
        env = self._env()
        for name, args in self.commands.items():
            out = (self.log_dir / f"{name}.log").open("wb")
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "reflux.cli", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=PROJECT_ROOT,
            )
            out.close()
        return self

    def pids(self) -> dict[str, int]:
        return {f"engine {name}": p.pid for name, p in self.processes.items()}

    def errors(self) -> dict[str, str]:
        """Components whose process ended (none should while the benchmark runs)."""
        dead = {}
        for name, process in self.processes.items():
            code = process.poll()
            if code is not None:
                dead[name] = f"exited {code}; log tail: {self._tail(name)}"
        return dead

    def _tail(self, name: str, chars: int = 1500) -> str:
        with contextlib.suppress(OSError):
            return (self.log_dir / f"{name}.log").read_text(errors="replace")[-chars:]
        return ""

    def stop(self, timeout: float = 30.0) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self.processes.clear()
        if self._own_logs:
            shutil.rmtree(self.log_dir, ignore_errors=True)


def build_engine(
    topology: Topology, settings: Settings, *, schema: str, schedulers: int = 1
) -> Engine:
    if topology == "dev":
        return _InProcess(settings, schema=schema, schedulers=schedulers)
    return ProcessEngine(settings, schema=schema, schedulers=schedulers)
