"""Engine components as real child processes, for tests that kill them.

:class:`Component` runs one ``reflux`` command (``scheduler``, ``worker``, ``projector``, ...),
either directly or under ``reflux supervise`` (the product's own process supervisor, ADR 0018).
``kill9`` sends SIGKILL to the component itself (the supervised child when supervised, so the
supervisor brings it back as Kubernetes or systemd would); ``stop`` ends it gracefully. Logs go
to one file per start under the test's folder and ``tail`` quotes them in failure messages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from foundation.settings import Settings
from reflux.processes import children_of, component_env
from tests.support.waiting import eventually

__all__ = ["ArtifactWorkers", "Component", "component_env", "wait_for"]

ROOT = Path(__file__).resolve().parents[2]


class Component:
    def __init__(
        self,
        name: str,
        args: list[str],
        settings: Settings,
        logs: Path,
        *,
        supervised: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name, self.args, self.settings, self.logs = name, args, settings, logs
        self.supervised = supervised
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.logs / f"{self.name}-{self.starts}.log").open("wb")
        command = ["supervise", "--", *self.args] if self.supervised else self.args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reflux.cli", *command],
            cwd=ROOT,
            env={**component_env(self.settings), **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pid(self, timeout: float = 30.0) -> int:
        """The component's own pid: the supervised child (waiting for the supervisor to have
        one), else the process started."""
        assert self.proc is not None and self.alive(), self.tail()
        if not self.supervised:
            return self.proc.pid
        found: list[int] = []

        def has_child() -> bool:
            found[:] = children_of(self.proc.pid) if self.proc is not None else []
            return len(found) == 1

        eventually(has_child, timeout, f"{self.name}'s supervised child", interval=0.05)
        return found[0]

    def kill9(self) -> int:
        """SIGKILL the component; returns the killed pid. A supervised one is started again by
        its supervisor; an unsupervised one stays dead until :meth:`start`."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        self.kills += 1
        if not self.supervised:
            assert self.proc is not None
            self.proc.wait(10)
        return pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # a supervisor stops its child (SIGTERM, then SIGKILL)
            try:
                self.proc.wait(45)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restarts_logged(self) -> int:
        """How many times the supervisor said it restarts the component."""
        return sum(f.read_text().count("restarting it in") for f in self._log_files())

    def _log_files(self) -> list[Path]:
        return sorted(self.logs.glob(f"{self.name}-*.log"))

    def tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text()[-chars:]}" for f in self._log_files())


def wait_for(check: Callable[[], bool], timeout: float, what: str, *procs: Component) -> None:
    """Until ``check()`` holds; fails at once if one of ``procs`` exited, and with their log
    tails on timeout."""

    def alive_and_checked() -> bool:
        for proc in procs:
            if proc.proc is not None and proc.proc.poll() is not None:
                pytest.fail(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        return check()

    eventually(
        alive_and_checked,
        timeout,
        what,
        interval=0.2,
        describe=lambda: "\n".join(p.tail() for p in procs),
    )


def supervised_engine(name: str, settings: Settings, logs: Path, schema: str) -> list[Component]:
    """The engine of the fault tests as separate supervised processes: a scheduler (instance id
    ``name``), two workers of the HTTP node (the first creates the invoke topics) and a
    projector into ``schema``; not started."""
    bootstrap = ["--bootstrap", settings.kafka_bootstrap, "--prefix", settings.topic_prefix]
    workers = [
        Component(
            f"worker-{letter}",
            ["worker", "--nodes", "http", "--client-id", f"{name}-{letter}", *extra],
            settings,
            logs,
            supervised=True,
        )
        for letter, extra in (("a", ["--create-topics"]), ("b", []))
    ]
    return [
        Component(
            "scheduler", ["scheduler", "--instance-id", name], settings, logs, supervised=True
        ),
        *workers,
        Component(
            "projector",
            ["projector", "--schema", schema, *bootstrap],
            settings,
            logs,
            supervised=True,
        ),
    ]


class ArtifactWorkers:
    """Starts ``reflux worker --artifacts`` processes on ``settings``' topics (with ``env``
    added) and, on :meth:`stop_all`, ends them with SIGTERM and prints the tail of their output
    (pytest shows it for a failed test)."""

    def __init__(self, settings: Settings, env: Mapping[str, str] | None = None) -> None:
        self.env = {
            **os.environ,
            "REFLUX_TOPIC_PREFIX": settings.topic_prefix,
            "REFLUX_DEFAULT_PARTITIONS": str(settings.default_partitions),
            **(env or {}),
        }
        self.started: list[subprocess.Popen[str]] = []

    def start(self, client_id: str = "artifacts") -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "reflux.cli", "worker", "--artifacts", "--client-id", client_id],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=60)
            print(output[-20_000:])
