"""The retry budget of one dependency: how many retries per second it may receive.

Allowed rate = ``floor_per_s + ratio * (first attempts dispatched over the window) / window_s``:
the ratio bounds retries to a share of the real traffic (Finagle's ``RetryBudget``, Envoy's
``retry_budget``), the floor keeps a quiet dependency retryable at all. Unlike those, a retry
over the budget is **delayed**, never refused: it is placed in the first whole second, at or
after its earliest time, that still has room (the rate is split over seconds so that fractional
rates add up: ``floor((s+1)*r) - floor(s*r)`` retries in second ``s``). Over any window, the
dependency gets at most ``rate * window`` retries plus one second's worth, and no retry is lost
(docs/decisions/0020-retry-budget-and-circuit.md).

Pure: no clock (``now`` comes in), no randomness of its own (``rand`` comes in), soft state only.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

__all__ = ["MAX_SCAN_S", "RetryBudget", "SecondCounts", "epoch_second"]

MAX_SCAN_S = 3_600
"""A retry is never placed more than this many seconds after its earliest time, even if every
second in between is full (a backlog that large means the budget is far too small; the retry
goes rather than waits for ever)."""


def epoch_second(moment: datetime) -> int:
    return math.floor(moment.timestamp())


class SecondCounts:
    """Counts per whole epoch second, pruned from below (the windows of the budget and circuit)."""

    __slots__ = ("_counts", "_low")

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self._low: int | None = None

    def add(self, second: int, n: int = 1) -> None:
        self._counts[second] = self._counts.get(second, 0) + n
        if self._low is None or second < self._low:
            self._low = second

    def get(self, second: int) -> int:
        return self._counts.get(second, 0)

    def total(self, first: int, last: int) -> int:
        """Sum over seconds ``first..last`` (inclusive)."""
        if last - first + 1 < len(self._counts):
            return sum(self._counts.get(s, 0) for s in range(first, last + 1))
        return sum(n for s, n in self._counts.items() if first <= s <= last)

    def prune_below(self, second: int) -> None:
        if self._low is None or self._low >= second:
            return
        if second - self._low > len(self._counts):
            self._counts = {s: n for s, n in self._counts.items() if s >= second}
        else:
            for s in range(self._low, second):
                self._counts.pop(s, None)
        self._low = min(self._counts) if self._counts else None

    def clear(self) -> None:
        self._counts.clear()
        self._low = None

    def __bool__(self) -> bool:
        return bool(self._counts)


class RetryBudget:
    def __init__(self, *, ratio: float, floor_per_s: float, window_s: int) -> None:
        self.ratio = ratio
        self.floor_per_s = floor_per_s
        self.window_s = window_s
        self._firsts = SecondCounts()
        self._reserved = SecondCounts()
        """Retries placed per second, for seconds now and later."""

    def first_attempt(self, now: datetime) -> None:
        """A first attempt was dispatched: the budget grows with real traffic."""
        self._firsts.add(epoch_second(now))

    def rate(self, now: datetime) -> float:
        """Retries per second allowed now."""
        second = epoch_second(now)
        self._firsts.prune_below(second - self.window_s + 1)
        firsts = self._firsts.total(second - self.window_s + 1, second)
        return self.floor_per_s + self.ratio * firsts / self.window_s

    def reserve(self, earliest: datetime, now: datetime, rand: float) -> datetime:
        """Place one retry: ``earliest`` if its second has room, else a random moment of the
        first later second that has (spread, so a burst moved there does not land at once)."""
        self._reserved.prune_below(epoch_second(now))
        rate = self.rate(now)
        first = epoch_second(earliest)
        second = first
        while second - first < MAX_SCAN_S and self._reserved.get(second) >= _capacity(second, rate):
            second += 1
        self._reserved.add(second)
        if second == first:
            return earliest
        return datetime.fromtimestamp(second + min(max(rand, 0.0), 0.999), UTC)

    def idle(self, now: datetime) -> bool:
        """Nothing in the window and nothing reserved ahead: the state can be dropped."""
        second = epoch_second(now)
        self._firsts.prune_below(second - self.window_s + 1)
        self._reserved.prune_below(second)
        return not self._firsts and not self._reserved


def _capacity(second: int, rate: float) -> int:
    """Retries allowed in ``second`` at ``rate`` per second (fractions carried over seconds)."""
    return math.floor((second + 1) * rate) - math.floor(second * rate)
