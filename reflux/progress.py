"""Progress bars for the CLI's long operations (bulk starts, replays, benchmarks).

A bar is for a person watching: it goes to stderr, and only when stderr is a terminal, so piped or
``--json`` output never carries one and stdout stays the command's answer. ``REFLUX_PROGRESS``
(``auto``, ``always``, ``never``; :class:`foundation.settings.Settings`) overrides the terminal
check, for tests and for CI logs that want the final count.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TextIO, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from foundation.settings import get_settings

__all__ = ["Bar", "progress_bar", "progress_enabled"]

T = TypeVar("T")


def progress_enabled(stream: TextIO | None = None) -> bool:
    """Whether to draw: ``always``/``never`` from the settings, else only on a terminal."""
    mode = get_settings().progress
    if mode != "auto":
        return mode == "always"
    return _isatty(stream or sys.stderr)


def _isatty(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


class Bar:
    """One bar's handle; a disabled bar takes the same calls and draws nothing."""

    def __init__(self, progress: Progress | None = None, task: TaskID | None = None) -> None:
        self._progress = progress
        self._task = task

    def advance(self, steps: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, steps)

    def each(self, items: Iterable[T]) -> Iterator[T]:
        """The items, one step counted as the loop moves past each (``continue`` included)."""
        for item in items:
            yield item
            self.advance()

    def update(self, completed: int, total: int | None = None) -> None:
        """Set the count (and the total, once it is known: a replay learns it late)."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=completed, total=total)


@contextmanager
def progress_bar(
    description: str, total: int | None, *, stream: TextIO | None = None, enabled: bool = True
) -> Iterator[Bar]:
    """A bar on stderr while the block runs; its final state stays on screen when it ends.

    ``enabled=False`` (the caller prints ``--json``, for instance) draws nothing whatever the
    terminal or the settings say.
    """
    stream = stream or sys.stderr
    if not (enabled and progress_enabled(stream)):
        yield Bar()
        return
    forced = get_settings().progress == "always"
    console = Console(file=stream, force_terminal=True if forced else None, soft_wrap=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        # print() while the bar is drawn: above it when stdout and the bar share a terminal,
        # else straight to stdout (moving it to the bar's stream would break `| tee`, `| jq`).
        redirect_stdout=_isatty(sys.stdout) and _isatty(stream),
    )
    with progress:
        yield Bar(progress, progress.add_task(description, total=total))
