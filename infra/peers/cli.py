"""The command line the benchmark peers' servers share: ``python -m infra.peers.<name> ACTION``.

Every peer server is an :class:`infra.services.base.Service` (pid file, readiness, logs), so
``up``, ``down``, ``status`` and ``reset`` mean the same for all of them; only how the server is
installed (built from the Go proxy, copied from Maven Central, installed from npm) and what
``up`` adds to its last line differ.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol

from infra.services.base import ServiceError, ServiceStatus, log


class PeerServer(Protocol):
    """What the command line needs of a peer's server (an ``infra.services.base.Service``)."""

    @property
    def endpoint(self) -> str: ...
    def start(self) -> float: ...
    def stop(self, timeout: float = 30.0) -> bool: ...
    def status(self) -> ServiceStatus: ...
    def reset(self) -> None: ...


ACTIONS = ("up", "down", "status", "reset")
"""Beside the peer's own install action (``install`` or ``build``)."""


def run_action(
    name: str,
    server: PeerServer,
    action: str,
    *,
    install: Callable[[], str | None],
    ready_note: Callable[[], str] = lambda: "",
) -> int:
    """Runs one action; exit status 0, 3 (``status``: not ready) or 2 (a service error).

    ``install`` installs the server and returns what to print (or None); ``ready_note`` adds to
    the line ``up`` ends with (e.g. the peer's cluster id).
    """
    try:
        if action == "up":
            log(f"{name}: starting ({server.endpoint})")
            seconds = server.start()
            state = f"started in {seconds:.1f}s" if seconds else "already running"
            note = ready_note()
            log(f"{name}: ready, {state}" + (f", {note}" if note else ""))
        elif action == "down":
            log(f"{name}: {'stopped' if server.stop() else 'was not running'}")
        elif action == "reset":
            server.reset()
        elif action == "status":
            row = server.status()
            state = "ready" if row.ready else ("starting" if row.running else "stopped")
            print(f"{row.name:<11} {state:<9} {row.pid or '-':<8} {row.endpoint:<18} {row.detail}")
            return 0 if row.ready else 3
        else:
            shown = install()
            if shown:
                print(shown, end="" if shown.endswith("\n") else "\n")
        return 0
    except ServiceError as exc:
        print(f"[infra] error: {exc}", file=sys.stderr)
        return 2
