"""A throughput round, the same for every peer driver (standard library only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def all_at_once(
    one_run: Callable[[], Awaitable[T]], runs: int, clock: Callable[[], float] = time.perf_counter
) -> tuple[list[T], float]:
    """Starts ``runs`` runs at once; returns their results and the seconds from the first start
    call to the last result, on ``clock`` (the clock the driver's run timings use)."""
    began = clock()
    results = await asyncio.gather(*(one_run() for _ in range(runs)))
    return list(results), clock() - began
