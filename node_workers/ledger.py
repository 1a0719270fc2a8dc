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

Round trips: the commands of the claims and records asked for in one turn of the event loop go
to Redis as one pipeline (one round trip, one connection checkout), each caller still awaiting
its own answer before it goes on. A worker receives its invocations in batches, so their claims
(and, as they finish together, their records) travel together: with one command per call,
redis-py's client was ~40% of a worker's CPU under load (docs/decisions/0021-engine-throughput.md).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

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


Command = Callable[[Pipeline], object]
"""Queues one command on a pipeline."""


class AttemptLedger:
    def __init__(self, settings: Settings, ttl_s: int = DEFAULT_TTL_S) -> None:
        self._redis = aioredis.Redis.from_url(settings.ledger_redis_url)
        self._prefix = f"{settings.topic_prefix}:attempt:"
        self._ttl_s = ttl_s
        self._queued: list[tuple[Command, asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def claim(self, invocation_id: str) -> Claim:
        key = self._prefix + invocation_id
        if await self._call(lambda pipe: pipe.set(key, _STARTED, nx=True, ex=self._ttl_s)):
            return Claim(ClaimState.NEW)
        value = await self._call(lambda pipe: pipe.get(key))
        if isinstance(value, bytes) and value.startswith(_DONE):
            return Claim(ClaimState.DONE, value[len(_DONE) :])
        return Claim(ClaimState.STARTED)

    async def record(self, invocation_id: str, result: bytes) -> None:
        key = self._prefix + invocation_id
        await self._call(lambda pipe: pipe.set(key, _DONE + result, ex=self._ttl_s))

    async def _call(self, command: Command) -> Any:
        """The command's answer; it is sent with the others of this turn of the event loop."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        self._queued.append((command, answer))
        if len(self._queued) == 1:
            loop.call_soon(self._flush)
        return await answer

    def _flush(self) -> None:
        batch, self._queued = self._queued, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for command, _ in batch:
                    command(pipe)
                # An error of one command (a full ledger refusing a write) is that caller's.
                answers = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:  # the loop is shutting down
            for _, answer in batch:
                answer.cancel()
            raise
        except Exception as exc:  # the connection: every caller of the batch gets it
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
            return
        for (_, answer), value in zip(batch, answers, strict=True):
            if answer.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(value, Exception):
                answer.set_exception(value)
            else:
                answer.set_result(value)

    async def aclose(self) -> None:
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        await self._redis.aclose()
