"""The bounded wait behind ``wait_ms``: a write is published, then its effect is polled for in
the read models until it shows or the caller's wait runs out."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

__all__ = ["poll_until"]

T = TypeVar("T")


async def poll_until(
    check: Callable[[], Awaitable[T | None]], wait_ms: int, interval_s: float
) -> T | None:
    """``check()``'s first non-None answer, or None once ``wait_ms`` have passed (it is asked at
    least once, and once more at the deadline). An exception from ``check`` ends the wait."""
    deadline = time.monotonic() + wait_ms / 1000
    while True:
        found = await check()
        if found is not None:
            return found
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        await anyio.sleep(min(interval_s, remaining))
