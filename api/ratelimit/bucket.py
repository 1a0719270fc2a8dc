"""Token-bucket arithmetic: one pure function (:func:`take`) and the Lua script that does the
same in Redis, atomically (:data:`TAKE_LUA`). Tests run both on the same inputs.

A bucket holds at most ``burst`` tokens and gains ``per_s`` tokens per second; a request takes
``cost`` tokens from *every* bucket it is charged to (a tenant's and, optionally, its
principal's), or from none when one of them is short -- so a refused request costs nothing and
a client polling after a 429 does not push its own success further away.

All arithmetic is in integers, so Lua (doubles) and Python agree exactly: a level is counted in
micro-tokens and a rate in milli-tokens per second, which is micro-tokens per millisecond, so
``elapsed_ms * rate`` is the refill with no rounding (and no fraction lost between calls).
Integers stay far below 2**53: bursts are capped at :data:`MAX_BURST`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_BURST",
    "MICRO",
    "TAKE_LUA",
    "BucketLimit",
    "BucketState",
    "Taken",
    "retry_after_s",
    "take",
]

MICRO: Final = 1_000_000
"""Micro-tokens per token."""

MAX_BURST: Final = 10_000_000
"""Largest burst: 1e7 tokens = 1e13 micro-tokens, exact in a double and printed by Lua's %.0f."""


@dataclass(frozen=True, slots=True)
class BucketLimit:
    burst: int
    """Most tokens the bucket holds (the largest burst of requests)."""
    per_s: float
    """Tokens added per second."""

    def __post_init__(self) -> None:
        if not 1 <= self.burst <= MAX_BURST:
            raise ValueError(f"Expected a burst in 1..{MAX_BURST}, but got {self.burst}")
        if not 0.001 <= self.per_s <= 1_000_000:
            raise ValueError(f"Expected per_s in 0.001..1000000, but got {self.per_s}")

    @property
    def capacity(self) -> int:
        """The burst in micro-tokens."""
        return self.burst * MICRO

    @property
    def rate(self) -> int:
        """Milli-tokens per second = micro-tokens per millisecond."""
        return max(1, round(self.per_s * 1000))

    @property
    def window_s(self) -> int:
        """Seconds an empty bucket takes to fill (the ``w`` of ``RateLimit-Policy``)."""
        return _ceil_div(self.capacity, self.rate * 1000)


@dataclass(frozen=True, slots=True)
class BucketState:
    level: int
    """Micro-tokens at ``at_ms``."""
    at_ms: int


@dataclass(frozen=True, slots=True)
class Taken:
    allowed: bool
    limiting: int | None
    """Index of the bucket that refused (the one with the longest wait), None when allowed."""
    wait_ms: int
    """Until the request would pass (0 when it did)."""
    remaining: tuple[int, ...]
    """Whole tokens left in each bucket after this request."""
    full_ms: tuple[int, ...]
    """Milliseconds until each bucket is full again."""
    states: tuple[BucketState, ...]
    """What each bucket holds now (written back only when allowed)."""


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _level(state: BucketState | None, limit: BucketLimit, now_ms: int) -> int:
    if state is None:  # never used, or expired once full: a full bucket
        return limit.capacity
    elapsed = max(0, now_ms - state.at_ms)  # a clock stepping back refills nothing
    return min(limit.capacity, state.level + elapsed * limit.rate)


def take(
    states: Sequence[BucketState | None],
    limits: Sequence[BucketLimit],
    now_ms: int,
    cost: int = 1,
) -> Taken:
    """Refill each bucket by the time elapsed, then take ``cost`` tokens from all or none."""
    need = cost * MICRO
    levels = [_level(s, limit, now_ms) for s, limit in zip(states, limits, strict=True)]
    limiting: int | None = None
    wait_ms = 0
    for i, (level, limit) in enumerate(zip(levels, limits, strict=True)):
        if level < need:
            wait = _ceil_div(need - level, limit.rate)
            if wait > wait_ms:
                wait_ms, limiting = wait, i
    allowed = limiting is None
    after = [level - need if allowed else level for level in levels]
    return Taken(
        allowed=allowed,
        limiting=limiting,
        wait_ms=wait_ms,
        remaining=tuple(level // MICRO for level in after),
        full_ms=tuple(
            _ceil_div(limit.capacity - level, limit.rate)
            for level, limit in zip(after, limits, strict=True)
        ),
        states=tuple(BucketState(level, now_ms) for level in after),
    )


def retry_after_s(wait_ms: int) -> int:
    """``Retry-After`` in whole seconds, rounded up (a client waiting that long will pass)."""
    return max(1, _ceil_div(wait_ms, 1000))


TAKE_LUA: Final = """
-- The same arithmetic as api.ratelimit.bucket.take, atomically (see that module).
-- KEYS: one hash per bucket {l = level in micro-tokens, t = its time in ms}.
-- ARGV[1]: now in ms, or '' for the server's clock (one clock for every API process);
-- ARGV[2]: cost in tokens; then per bucket: capacity (micro-tokens), rate (micro-tokens/ms).
-- Returns {allowed, limiting (1-based, 0 when allowed), wait_ms, now_ms,
--          remaining_1, full_ms_1, remaining_2, full_ms_2, ...}.
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local need = tonumber(ARGV[2]) * 1000000
local caps, rates, levels = {}, {}, {}
local limiting, wait_ms = 0, 0
for i, key in ipairs(KEYS) do
  local cap = tonumber(ARGV[1 + 2 * i])
  local rate = tonumber(ARGV[2 + 2 * i])
  caps[i], rates[i] = cap, rate
  local state = redis.call('HMGET', key, 'l', 't')
  local level, at = tonumber(state[1]), tonumber(state[2])
  if level == nil or at == nil then
    level = cap
  else
    local elapsed = now - at
    if elapsed < 0 then elapsed = 0 end
    level = math.min(cap, level + elapsed * rate)
  end
  levels[i] = level
  if level < need then
    local wait = math.ceil((need - level) / rate)
    if wait > wait_ms then wait_ms, limiting = wait, i end
  end
end
local answer = {limiting == 0 and 1 or 0, limiting, wait_ms, now}
for i, key in ipairs(KEYS) do
  local level = levels[i]
  if limiting == 0 then
    level = level - need
    local full = math.ceil((caps[i] - level) / rates[i])
    redis.call('HSET', key, 'l', string.format('%.0f', level), 't', string.format('%.0f', now))
    -- Once full, a missing key means the same: let it go.
    redis.call('PEXPIRE', key, full + 1000)
  end
  answer[#answer + 1] = math.floor(level / 1000000)
  answer[#answer + 1] = math.ceil((caps[i] - level) / rates[i])
end
return answer
"""
