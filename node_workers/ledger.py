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

Round trips: the ledger keeps one connection and sends its commands in batches: the commands
asked for while a batch is on its way go together in the next one (one write, one round trip),
each caller still awaiting its own reply before it goes on. Under load the claims and records of
many invocations share a round trip; idle, a command goes alone at once. Through redis-py's
client, one command cost ~110 us of CPU and the ledger was ~40% of a worker's CPU under load
(docs/decisions/0021-engine-throughput.md).
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection

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


Command = tuple[str | bytes | int, ...]
"""The arguments of one Redis command."""

_RETRIES: Final = 3
"""Reconnections tried for one batch before its callers get the error (what redis-py's client
does by default). Sending a batch again is safe: a claim's ``SET NX`` that was applied before
the connection broke answers "not set" the second time, so its attempt counts as started
(``AttemptInterrupted``: a new attempt follows), never as new; the other commands are
idempotent."""


class AttemptLedger:
    def __init__(self, settings: Settings, ttl_s: int = DEFAULT_TTL_S) -> None:
        self._redis = aioredis.Redis.from_url(settings.ledger_redis_url)
        self._prefix = f"{settings.topic_prefix}:attempt:"
        self._ttl_s = ttl_s
        self._queued: list[tuple[Command, asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._connection: AbstractConnection | None = None

    async def claim(self, invocation_id: str) -> Claim:
        key = self._prefix + invocation_id
        if await self._call(("SET", key, _STARTED, "NX", "EX", self._ttl_s)) is not None:
            return Claim(ClaimState.NEW)
        value = await self._call(("GET", key))
        if isinstance(value, bytes) and value.startswith(_DONE):
            return Claim(ClaimState.DONE, value[len(_DONE) :])
        return Claim(ClaimState.STARTED)

    async def record(self, invocation_id: str, result: bytes) -> None:
        await self._call(("SET", self._prefix + invocation_id, _DONE + result, "EX", self._ttl_s))

    async def _call(self, command: Command) -> Any:
        """The command's reply. Commands asked for while a batch is on its way go together in
        the next one (one write, one round trip on one connection)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        self._queued.append((command, answer))
        if self._sender is None:
            self._sender = loop.create_task(self._send_queued())
        return await answer

    async def _send_queued(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                await self._send(batch)
        finally:
            self._sender = None

    async def _send(self, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        for attempt in range(_RETRIES + 1):
            try:
                replies = await self._round_trip([command for command, _ in batch])
                break
            except asyncio.CancelledError:  # the loop is shutting down
                for _, answer in batch:
                    answer.cancel()
                # Replies may be left unread on the connection: never reuse it.
                self._connection = None
                raise
            except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
                await self._disconnect()
                if attempt < _RETRIES:
                    await asyncio.sleep(0.05 * 2**attempt)
                    continue
                failure: Exception = exc
            except Exception as exc:
                await self._disconnect()
                failure = exc
            for _, answer in batch:  # the connection failed: every caller of the batch
                if not answer.done():
                    answer.set_exception(failure)
            return
        for (_, answer), reply in zip(batch, replies, strict=True):
            if answer.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(reply, Exception):  # e.g. a full ledger refusing a write
                answer.set_exception(reply)
            else:
                answer.set_result(reply)

    async def _round_trip(self, commands: list[Command]) -> list[Any]:
        """Sends the commands in one write and reads their replies in order; an error reply is
        returned (as its exception) in its place."""
        if self._connection is None:
            # Its own connection, made like the pool makes them (address, TLS, credentials
            # from the URL); it connects on first use and after a disconnect.
            pool = self._redis.connection_pool
            self._connection = pool.connection_class(**pool.connection_kwargs)
        connection = self._connection
        await connection.send_packed_command(connection.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except redis_errors.ResponseError as exc:
                replies.append(exc)
        return replies

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect()

    async def aclose(self) -> None:
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)
        await self._disconnect()
        await self._redis.aclose()
