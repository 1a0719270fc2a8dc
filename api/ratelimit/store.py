"""The Redis side of the rate limits: one script call per request and bucket kind (ADR 0049).

Buckets live on the cache's Redis by default and quota counters on the webhook store's
(noeviction); both are sync clients called from the thread pool (like the webhook mailbox),
with short timeouts. When a call fails the store is *down* for ``rate_redis_retry_s``: requests
meanwhile do not wait on Redis at all, and get the bucket's fail policy (open: let through;
closed: 503), logged once per outage and counted in ``reflux_api_rate_store_unavailable_total``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import redis

from api.ratelimit.bucket import TAKE_LUA, BucketLimit, Taken
from api.ratelimit.policy import Charge, Quota
from foundation.errors import ServiceUnavailableError

__all__ = ["QUOTA_RELEASE_LUA", "QUOTA_TAKE_LUA", "QuotaTaken", "RateStore", "StoreDownError"]

log = logging.getLogger(__name__)

T = TypeVar("T")

QUOTA_TAKE_LUA: Final = """
-- KEYS[1]: the tenant's counter of the day; ARGV: limit, unix time it may expire.
-- Returns {allowed, count}: counts the start only when it fits.
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count + 1 > tonumber(ARGV[1]) then return {0, count} end
count = redis.call('INCR', KEYS[1])
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return {1, count}
"""

QUOTA_RELEASE_LUA: Final = """
-- Gives back a start that was not accepted (never below zero, never recreates the key).
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"""


class StoreDownError(ServiceUnavailableError):
    """The Redis of a bucket is unreachable (or was, less than ``retry_s`` ago)."""

    error_class = "RateStoreDown"


@dataclass(frozen=True, slots=True)
class QuotaTaken:
    allowed: bool
    count: int


class _Redis:
    """One Redis with a circuit: after a failure, calls raise :class:`StoreDownError` at once
    for ``retry_s``."""

    def __init__(self, url: str, timeout_s: float, retry_s: float, role: str) -> None:
        self.url = url
        self.role = role
        self.retry_s = retry_s
        self.client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        self._down_until = 0.0
        self._lock = threading.Lock()

    def run(self, call: Callable[[], T]) -> T:
        if time.monotonic() < self._down_until:
            raise StoreDownError(f"{self.role} Redis ({self.url}) was unreachable moments ago")
        try:
            result = call()
        except redis.RedisError as exc:
            with self._lock:
                was_up = time.monotonic() >= self._down_until
                self._down_until = time.monotonic() + self.retry_s
            if was_up:
                log.warning(
                    "rate limits: %s Redis %s unreachable (%s: %s); next try in %.1f s",
                    self.role,
                    self.url,
                    type(exc).__name__,
                    exc,
                    self.retry_s,
                )
            raise StoreDownError(f"{self.role} Redis ({self.url}) is unreachable: {exc}") from exc
        if self._down_until:
            with self._lock:
                if self._down_until:
                    self._down_until = 0.0
                    log.warning("rate limits: %s Redis %s reachable again", self.role, self.url)
        return result

    def close(self) -> None:
        self.client.close()


class RateStore:
    def __init__(
        self,
        buckets_url: str,
        quota_url: str,
        *,
        timeout_s: float,
        retry_s: float,
    ) -> None:
        self._buckets = _Redis(buckets_url, timeout_s, retry_s, "bucket")
        self._quota = (
            self._buckets
            if quota_url == buckets_url
            else _Redis(quota_url, timeout_s, retry_s, "quota")
        )
        self._take = self._buckets.client.register_script(TAKE_LUA)
        self._quota_take = self._quota.client.register_script(QUOTA_TAKE_LUA)
        self._quota_release = self._quota.client.register_script(QUOTA_RELEASE_LUA)

    def take(self, charge: Charge, now_ms: int | None = None, cost: int = 1) -> Taken:
        """One token from every bucket of ``charge``, or none; :class:`StoreDownError`."""
        return self._buckets.run(
            lambda: take_in_redis(self._take, charge.keys, charge.limits, now_ms, cost)
        )

    def take_quota(self, quota: Quota) -> QuotaTaken:
        def call() -> QuotaTaken:
            allowed, count = self._quota_take(keys=[quota.key], args=[quota.limit, quota.expire_at])
            return QuotaTaken(bool(allowed), int(count))

        return self._quota.run(call)

    def release_quota(self, quota: Quota) -> None:
        self._quota.run(lambda: self._quota_release(keys=[quota.key]))

    def close(self) -> None:
        self._buckets.close()
        if self._quota is not self._buckets:
            self._quota.close()


def take_in_redis(
    script: Any,
    keys: tuple[str, ...],
    limits: tuple[BucketLimit, ...],
    now_ms: int | None,
    cost: int = 1,
) -> Taken:
    """Run :data:`TAKE_LUA` (a registered script) and read its answer as a :class:`Taken`
    (``states`` is empty: they stay in Redis)."""
    if len(keys) != len(limits):
        raise ValueError(
            f"Expected a limit per key, but got {len(keys)} keys, {len(limits)} limits"
        )
    args: list[int | str] = ["" if now_ms is None else now_ms, cost]
    for limit in limits:
        args += [limit.capacity, limit.rate]
    answer = [int(v) for v in script(keys=list(keys), args=args)]
    allowed, limiting, wait_ms = answer[0], answer[1], answer[2]
    pairs = answer[4:]
    return Taken(
        allowed=bool(allowed),
        limiting=limiting - 1 if limiting else None,
        wait_ms=wait_ms,
        remaining=tuple(pairs[0::2]),
        full_ms=tuple(pairs[1::2]),
        states=(),
    )
