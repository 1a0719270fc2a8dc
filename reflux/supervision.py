"""Supervised components: a component that dies is logged with the reason and started again.

``reflux dev`` runs every component in a thread of one process (:mod:`reflux.dev`). A component
whose loop raises used to stay dead while the others went on, so runs stalled with the process
still up. Each component now runs under a :class:`Supervisor` thread that

1. builds a fresh instance (``launch``: new clients, new consumer group membership: a dead
   instance's clients are closed, never reused),
2. runs it until it returns or raises,
3. on an error (or a return nobody asked for) logs one line saying which component died and why,
   with the traceback, waits a backoff (exponential, capped; reset after a healthy stretch) and
   goes back to 1 -- until the engine is stopped.

Every death is also kept in :attr:`Supervisor.errors`, so tests still see that something failed.

Separate processes get the same from a process supervisor: Kubernetes (restartPolicy and
liveness probes, ``infra/k8s``), systemd, or ``reflux supervise -- <command>``, which runs one
``reflux`` command as a child process under a :class:`Supervisor` (:func:`supervise`):
docs/decisions/0018-scheduler-restarts-and-supervision.md.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from foundation.errors import RefluxError

__all__ = ["ComponentExitedError", "Running", "Supervisor", "process_component", "supervise"]

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 60.0
"""A component that ran this long before dying starts again after the first backoff."""


class ComponentExitedError(RefluxError):
    """A component's loop returned although nobody asked it to stop."""

    error_class = "ComponentExited"


@dataclass
class Running:
    """One started instance of a component, as ``launch`` returns it."""

    run: Callable[[threading.Event], Any]
    """Blocks until the event is set (or raises)."""
    close: Callable[[], Any] = lambda: None
    """Releases the instance's clients; called after ``run`` returns or raises."""
    interrupt: Callable[[], None] | None = None
    """Wakes ``run`` up when the event alone does not (e.g. an asyncio loop in the thread)."""


@dataclass
class Supervisor:
    """Runs ``launch()``'s instances in a thread, one after the other, until :meth:`stop`."""

    name: str
    launch: Callable[[], Running]
    first_backoff_s: float = FIRST_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S
    healthy_after_s: float = HEALTHY_AFTER_S
    errors: list[BaseException] = field(default_factory=list)
    restarts: int = 0
    started: threading.Event = field(default_factory=threading.Event)
    """Set once the first instance was launched (or failed to launch)."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _current: Running | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._supervise, name=f"reflux-{self.name}")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        current = self._current
        if current is not None and current.interrupt is not None:
            with contextlib.suppress(Exception):
                current.interrupt()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _supervise(self) -> None:
        failures = 0
        while not self._stop.is_set():
            began = time.monotonic()
            running: Running | None = None
            try:
                running = self._current = self.launch()
                self.started.set()
                if self._stop.is_set() and running.interrupt is not None:
                    running.interrupt()  # stop() came while launching
                running.run(self._stop)
                if self._stop.is_set():
                    return
                raise ComponentExitedError(
                    f"Expected {self.name} to run until stopped, but its loop returned"
                )
            except BaseException as exc:
                self.started.set()
                self.errors.append(exc)
                if self._stop.is_set():
                    log.warning("%s failed while stopping: %s", self.name, exc, exc_info=exc)
                    return
                healthy = time.monotonic() - began >= self.healthy_after_s
                failures = 1 if healthy else failures + 1
                delay = min(self.max_backoff_s, self.first_backoff_s * 2 ** (failures - 1))
                self.restarts += 1
                log.error(
                    "%s died after %.1fs: %s: %s; restarting it in %.1fs (restart %d)",
                    self.name,
                    time.monotonic() - began,
                    type(exc).__name__,
                    exc,
                    delay,
                    self.restarts,
                    exc_info=exc,
                )
                self._stop.wait(delay)
            finally:
                self._current = None
                if running is not None:
                    with contextlib.suppress(Exception):
                        running.close()


# -- separate processes ---------------------------------------------------------------------------


def _exit_reason(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def process_component(argv: list[str], *, grace_s: float = 30.0) -> Callable[[], Running]:
    """``launch`` for a ``reflux`` command in a child process (``reflux supervise``): a child
    that exits unasked is a death (its status says why; its own log says more)."""

    def launch() -> Running:
        # Its own session: a Ctrl-C meant for the supervisor does not reach the child, which
        # the supervisor then stops itself (SIGTERM, then SIGKILL after the grace).
        child = subprocess.Popen(
            [sys.executable, "-m", "reflux.cli", *argv], start_new_session=True
        )
        log.info("started reflux %s (pid %d)", " ".join(argv), child.pid)

        def run(stop: threading.Event) -> None:
            while child.poll() is None and not stop.wait(0.2):
                pass
            if stop.is_set():
                return
            raise ComponentExitedError(
                f"Expected reflux {argv[0]} (pid {child.pid}) to run until stopped, but it "
                f"ended: {_exit_reason(child.returncode)}"
            )

        def close() -> None:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(grace_s)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()

        return Running(run, close)

    return launch


def supervise(argv: list[str], *, max_backoff_s: float = MAX_BACKOFF_S) -> int:
    """Runs ``reflux <argv>`` and starts it again whenever it ends, until SIGTERM/SIGINT."""
    if not argv:
        raise ComponentExitedError("Expected a command to supervise, e.g. `-- scheduler`")
    supervisor = Supervisor(argv[0], process_component(argv), max_backoff_s=max_backoff_s)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("supervisor: %s received; stopping reflux %s", signal.strsignal(signum), argv[0])
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    supervisor.start()
    stopping.wait()
    supervisor.stop()
    supervisor.join()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m reflux.supervision [--max-backoff S] -- <reflux command>``: ``reflux
    supervise`` without importing the whole CLI (every sub-command's modules: seconds of CPU per
    process). :class:`reflux.processes.ProcessEngine` starts its supervisors this way."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m reflux.supervision")
    parser.add_argument("--max-backoff", type=float, default=MAX_BACKOFF_S)
    parser.add_argument("component", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return supervise([a for a in args.component if a != "--"], max_backoff_s=args.max_backoff)


if __name__ == "__main__":
    sys.exit(main())
