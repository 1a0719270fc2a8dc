"""Waiting on an observable: the one poll-until-deadline loop of the test suite.

Tests never sleep to let something happen; they name what they wait for and poll the thing that
shows it (a projection row, a consumer position, a file, a process' state) until it holds or a
deadline passes. On timeout the test fails with what it waited for and the last value it saw,
so a failure says how far the system got instead of only "timed out".

``check`` returns the observed value. The wait ends when ``until(value)`` holds (by default:
the value is truthy) and returns that value. A check may also *assert*: an ``AssertionError``
counts as "not yet" and its message becomes the last observation. Any other exception (including
``pytest.fail``, for a condition that can never recover, such as a crashed component) ends the
wait at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import pytest

__all__ = ["DEFAULT_INTERVAL_S", "eventually", "eventually_async"]

T = TypeVar("T")

DEFAULT_INTERVAL_S = 0.05
"""Between two checks: short against the services' latency, long against a busy 2-core box."""

_NOTHING = object()


class _Watch(Generic[T]):
    """The shared bookkeeping of both waits: the deadline, the last observation, the message."""

    def __init__(
        self,
        timeout: float,
        what: str,
        until: Callable[[T], object] | None,
        describe: Callable[[], str] | None,
    ) -> None:
        self.timeout = timeout
        self.what = what
        self.until = until
        self.describe = describe
        self.deadline = time.monotonic() + timeout
        self.last: object = _NOTHING
        self.checks = 0

    def observe(self, check: Callable[[], T]) -> tuple[T] | None:
        """``(value,)`` when the value holds, else ``None``."""
        self.checks += 1
        try:
            value = check()
        except AssertionError as exc:
            self.last = f"AssertionError: {exc}" if str(exc) else "AssertionError"
            return None
        self.last = value
        held = self.until(value) if self.until is not None else value
        return (value,) if held else None

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def fail(self) -> None:
        last = "nothing (the check never returned)" if self.last is _NOTHING else repr(self.last)
        if isinstance(self.last, str) and self.last.startswith("AssertionError"):
            last = self.last
        message = (
            f"Expected {self.what} within {self.timeout:g}s, but it did not happen "
            f"({self.checks} checks); last observed: {last}"
        )
        if self.describe is not None:
            message += f"\n{self.describe()}"
        pytest.fail(message)


def eventually(
    check: Callable[[], T],
    timeout: float,
    what: str,
    *,
    until: Callable[[T], object] | None = None,
    interval: float = DEFAULT_INTERVAL_S,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``check`` until its value holds (``until``, default truthiness); return the value.

    Fails the test after ``timeout`` seconds with ``what`` and the last observed value, plus
    ``describe()`` (e.g. a subprocess' log tail) when given. ``check`` runs at least once, even
    when ``timeout`` is already spent (a shared budget that ran out).
    """
    watch: _Watch[T] = _Watch(timeout, what, until, describe)
    while True:
        held = watch.observe(check)
        if held is not None:
            return held[0]
        if watch.expired():
            watch.fail()
        time.sleep(interval)  # the polling interval, not a synchronisation


async def eventually_async(
    check: Callable[[], T],
    timeout: float,
    what: str,
    *,
    until: Callable[[T], object] | None = None,
    interval: float = DEFAULT_INTERVAL_S,
    describe: Callable[[], str] | None = None,
) -> T:
    """:func:`eventually` inside an event loop: yields to the loop between checks, so tasks
    the check observes (a worker runtime, a node) keep running."""
    watch: _Watch[T] = _Watch(timeout, what, until, describe)
    while True:
        held = watch.observe(check)
        if held is not None:
            return held[0]
        if watch.expired():
            watch.fail()
        await asyncio.sleep(interval)  # the polling interval, not a synchronisation
