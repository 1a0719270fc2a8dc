"""Liveness of a component without an HTTP port: a heartbeat file its loop keeps touching.

A process supervisor restarts a component that exits, but not one that hangs (a loop stuck in a
call that never returns, a dead event loop). The scheduler, projector, trigger router and workers
touch ``Settings.liveness_file`` from their loops (:class:`Heartbeat`, at most every few seconds);
a liveness probe runs ``python -m foundation.liveness --max-age 120``, which fails when the file
is older than that, and the supervisor (Kubernetes) restarts the container. Without a configured
file, beating does nothing.

Kept light on purpose: the probe starts a fresh interpreter every period, so this module imports
only the settings.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from foundation.settings import Settings, get_settings

__all__ = ["Heartbeat", "age_of", "main"]

BEAT_EVERY_S = 5.0


class Heartbeat:
    """Touches ``path`` when :meth:`beat` is called, at most every ``every`` seconds."""

    def __init__(self, path: Path | None, *, every: float = BEAT_EVERY_S) -> None:
        self.path = path
        self.every = every
        self._last = float("-inf")

    @classmethod
    def from_settings(cls, settings: Settings) -> Heartbeat:
        return cls(settings.liveness_file)

    def beat(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()


def age_of(path: Path) -> float | None:
    """Seconds since the last beat, or ``None`` when there was none."""
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except FileNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m foundation.liveness",
        description="Exit 0 if the component's heartbeat file is fresh, 1 otherwise.",
    )
    parser.add_argument("--max-age", type=float, default=120.0, help="seconds (default 120)")
    parser.add_argument("--file", type=Path, help="default: REFLUX_LIVENESS_FILE")
    args = parser.parse_args(argv)
    path = args.file or get_settings().liveness_file
    if path is None:
        print("no heartbeat file: set REFLUX_LIVENESS_FILE or pass --file", file=sys.stderr)
        return 1
    age = age_of(path)
    if age is None:
        print(f"{path}: no heartbeat yet", file=sys.stderr)
        return 1
    if age > args.max_age:
        print(f"{path}: last heartbeat {age:.0f}s ago (> {args.max_age:.0f}s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
