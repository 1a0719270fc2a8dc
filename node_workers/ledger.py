"""The attempt ledger: each invocation id is executed at most once, across workers and restarts.

Invocations are delivered at least once (a worker that dies before committing its offset hands
the same invocation to the next owner). Executing it again would repeat a side effect under the
same attempt id, so before executing, a worker claims the invocation id in Redis (``SET NX``):

- ``NEW``: first delivery, execute it; the result's bytes are recorded once it is built.
- ``DONE``: executed before and the result recorded: publish the recorded result again (the
  scheduler ignores a duplicate result) instead of executing.
- ``STARTED``: an earlier delivery started it but never recorded a result (its worker died
  mid-attempt, or still runs it during a rebalance). Not executed again: the worker reports a
  retryable ``AttemptInterrupted`` error, and the step's retry policy starts a *new* attempt with
  a new invocation id.

The ledger is not a cache: a dropped ``STARTED`` entry lets a redelivered invocation run its side
effect a second time. So it lives on its own Redis instance (``Settings.ledger_redis_url``), which
never evicts (``noeviction``: a full instance refuses the claim and the worker stops, loudly) and
writes every change to an append-only file; the step cache and the webhook mailboxes, which may
be evicted, live on the other instance (docs/decisions/0017-attempt-ledger-store.md). Losing the
ledger anyway (its machine dies) weakens "at most once per attempt" back to Kafka's at-least-once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import redis.asyncio as aioredis

from foundation.settings import Settings

DEFAULT_TTL_S = 7 * 24 * 3600
_STARTED = b"started"
_DONE = b"done:"


class ClaimState(enum.Enum):
    NEW = "new"
    STARTED = "started"
    DONE = "done"


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    result: bytes | None = None


POOL_CONNECTIONS = 64
"""Connections to the ledger per worker process. Commands take well under a millisecond, so a
few dozen serve hundreds of attempts in flight; a claim or record beyond that waits for a free
connection (up to :data:`POOL_WAIT_S`, then fails like an outage). redis-py's default pool
raises ``Too many connections`` instead of waiting: a burst of 300 claims failed that way."""
POOL_WAIT_S = 20.0


class AttemptLedger:
    def __init__(self, settings: Settings, ttl_s: int = DEFAULT_TTL_S) -> None:
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.ledger_redis_url, max_connections=POOL_CONNECTIONS, timeout=POOL_WAIT_S
        )
        self._redis = aioredis.Redis.from_pool(pool)
        self._prefix = f"{settings.topic_prefix}:attempt:"
        self._ttl_s = ttl_s

    async def claim(self, invocation_id: str) -> Claim:
        key = self._prefix + invocation_id
        if await self._redis.set(key, _STARTED, nx=True, ex=self._ttl_s):
            return Claim(ClaimState.NEW)
        value = await self._redis.get(key)
        if isinstance(value, bytes) and value.startswith(_DONE):
            return Claim(ClaimState.DONE, value[len(_DONE) :])
        return Claim(ClaimState.STARTED)

    async def record(self, invocation_id: str, result: bytes) -> None:
        await self._redis.set(self._prefix + invocation_id, _DONE + result, ex=self._ttl_s)

    async def aclose(self) -> None:
        await self._redis.aclose()
