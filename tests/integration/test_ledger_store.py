"""The attempt ledger's store: its own Redis instance, never evicted, kept across a ``kill -9``.

ADR 0017. The shared instances started by ``make up`` are only inspected (their CONFIG); every
test that fills or kills a Redis starts private instances with the very same service classes
(``infra.services.redis``: the same command line as ``make up``), on free ports and under the
test's own folder, so the shared services other tests use are never disturbed.

Each fault is counted: how many ledger entries were lost, and, for contrast, how many the cache
instance's configuration (the ledger's home before ADR 0017) loses under the same fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from foundation.settings import Settings
from infra.services.redis import LedgerRedis, Redis
from node_workers.ledger import AttemptLedger, ClaimState

pytestmark = pytest.mark.integration

ENTRIES = 300
RESULT = b"x" * 512  # a recorded result's bytes: ~0.5 KiB, like a small NodeResult


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def private(local_services: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Settings whose cache and ledger Redis are private instances (stopped afterwards)."""
    settings = local_services.model_copy(
        update={
            "data_dir": tmp_path,
            "topic_prefix": f"ledger-{uuid.uuid4().hex[:8]}",
            "redis_url": f"redis://127.0.0.1:{_free_port()}/0",
            "ledger_redis_url": f"redis://127.0.0.1:{_free_port()}/0",
        }
    )
    services = [Redis(settings), LedgerRedis(settings)]
    try:
        for service in services:
            service.start()
        yield settings
    finally:
        for service in services:
            service.stop()


def _config(url: str, name: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        value = client.config_get(name)[name]
    finally:
        client.close()
    return str(value)


def _server_run_id(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        return str(client.info("server")["run_id"])
    finally:
        client.close()


def _ids(n: int = ENTRIES) -> list[str]:
    return [f"inv-{i:05d}-{uuid.uuid4().hex[:6]}" for i in range(n)]


async def _claim_and_record(settings: Settings, ids: list[str]) -> None:
    """Every id claimed (NEW); every other one also recorded (DONE), the rest stay STARTED."""
    ledger = AttemptLedger(settings)
    try:
        for n, invocation_id in enumerate(ids):
            claim = await ledger.claim(invocation_id)
            assert claim.state is ClaimState.NEW, (invocation_id, claim)
            if n % 2 == 0:
                await ledger.record(invocation_id, RESULT + invocation_id.encode())
    finally:
        await ledger.aclose()


async def _lost(settings: Settings, ids: list[str]) -> int:
    """How many ids the ledger no longer answers as it should (a lost entry claims as NEW)."""
    ledger = AttemptLedger(settings)
    lost = 0
    try:
        for n, invocation_id in enumerate(ids):
            claim = await ledger.claim(invocation_id)
            expected: tuple[ClaimState, bytes | None]
            if n % 2 == 0:
                expected = (ClaimState.DONE, RESULT + invocation_id.encode())
            else:
                expected = (ClaimState.STARTED, None)
            lost += (claim.state, claim.result) != expected
    finally:
        await ledger.aclose()
    return lost


def _on(settings: Settings, url: str) -> Settings:
    """``settings`` with the ledger pointed at ``url`` (the cache's instance: the old layout)."""
    return settings.model_copy(update={"ledger_redis_url": url})


def test_ledger_has_its_own_instance_that_never_evicts_and_logs_every_write(
    local_services: Settings,
) -> None:
    """The instances ``make up`` started: the ledger's is not the cache's, and their policies are
    the opposite ones."""
    ledger, cache = local_services.ledger_redis_url, local_services.redis_url
    assert _server_run_id(ledger) != _server_run_id(cache), "the ledger shares the cache's Redis"
    assert _config(ledger, "maxmemory-policy") == "noeviction"
    assert _config(ledger, "appendonly") == "yes"
    assert _config(ledger, "appendfsync") in {"everysec", "always"}
    assert _config(cache, "maxmemory-policy") == "allkeys-lru"
    assert int(_config(cache, "maxmemory")) > 0


def test_filling_the_cache_to_maxmemory_evicts_no_ledger_entry(private: Settings) -> None:
    cache = redis.Redis.from_url(private.redis_url)
    try:
        # The cache's real policy with a small bound, so filling it takes a moment.
        cache.config_set("maxmemory", "4mb")
        ids, old_layout_ids = _ids(), _ids()
        asyncio.run(_claim_and_record(private, ids))
        # For contrast, the same entries where the ledger used to live: on the cache instance.
        asyncio.run(_claim_and_record(_on(private, private.redis_url), old_layout_ids))

        # Step-cache entries and webhook mailboxes (lists) until the cache evicted plenty.
        value = os.urandom(16 * 1024)
        n = 0
        while int(cache.info("stats")["evicted_keys"]) < 2 * ENTRIES:
            cache.set(f"{private.topic_prefix}:step-cache:{n}", value)
            cache.rpush(f"{private.topic_prefix}:hook:{{run-{n}/wait}}", value)
            n += 1
            assert n < 10_000, "the cache never evicted: is its maxmemory-policy allkeys-lru?"

        lost = asyncio.run(_lost(private, ids))
        lost_in_old_layout = asyncio.run(_lost(_on(private, private.redis_url), old_layout_ids))
    finally:
        cache.close()
    assert lost == 0, f"{lost} of {ENTRIES} ledger entries were evicted from the ledger instance"
    # The test can tell: on the cache's instance the same fill drops ledger entries.
    assert lost_in_old_layout > 0


def test_ledger_entries_survive_kill_9_of_its_redis(private: Settings) -> None:
    ids, old_layout_ids = _ids(), _ids()
    asyncio.run(_claim_and_record(private, ids))
    asyncio.run(_claim_and_record(_on(private, private.redis_url), old_layout_ids))

    for service in (LedgerRedis(private), Redis(private)):
        pid = service.read_pid()
        assert pid is not None, f"{service.name} is not running"
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        assert service.read_pid() is None, f"{service.name} survived kill -9"
        service.start()

    lost = asyncio.run(_lost(private, ids))
    lost_in_old_layout = asyncio.run(_lost(_on(private, private.redis_url), old_layout_ids))
    assert lost == 0, f"{lost} of {ENTRIES} ledger entries lost with a kill -9 of their Redis"
    # The cache's instance keeps nothing across a kill: where the ledger used to live.
    assert lost_in_old_layout == ENTRIES


def test_a_full_ledger_refuses_claims_and_keeps_every_entry(private: Settings) -> None:
    """noeviction: when the ledger's memory is exhausted a claim fails loudly (the worker stops
    rather than run an attempt it could not claim), and no earlier entry makes room."""
    ids = _ids()
    asyncio.run(_claim_and_record(private, ids))
    ledger = redis.Redis.from_url(private.ledger_redis_url)
    try:
        used = int(ledger.info("memory")["used_memory"])
        ledger.config_set("maxmemory", str(used + 256 * 1024))

        async def claim_until_refused() -> tuple[int, Exception | None]:
            store = AttemptLedger(private)
            claimed = 0
            try:
                for invocation_id in _ids(20_000):
                    try:
                        await store.claim(invocation_id)
                        await store.record(invocation_id, RESULT)
                    except redis.exceptions.ResponseError as exc:
                        return claimed, exc
                    claimed += 1
            finally:
                await store.aclose()
            return claimed, None

        claimed, refused = asyncio.run(claim_until_refused())
        assert isinstance(refused, redis.exceptions.OutOfMemoryError), (claimed, refused)
        assert claimed > 0, "the bound left no room at all: the test measured nothing"
        assert int(ledger.info("stats")["evicted_keys"]) == 0
        # Room again (a full instance refuses even a SET NX that would not write).
        ledger.config_set("maxmemory", "1gb")
        lost = asyncio.run(_lost(private, ids))
    finally:
        ledger.close()
    assert lost == 0, f"{lost} of {ENTRIES} ledger entries were dropped to make room"


def test_claims_asked_together_go_in_one_batch_and_each_gets_its_own_answer(
    local_services: Settings,
) -> None:
    """The claims and records of one event-loop turn travel as one pipeline: a duplicate
    delivery claimed in the same batch as its first still finds the attempt started."""
    settings = local_services.model_copy(update={"topic_prefix": f"ledger-{uuid.uuid4().hex[:8]}"})
    ids = _ids(100)

    async def scenario() -> tuple[list[ClaimState], list[tuple[ClaimState, bytes | None]]]:
        ledger = AttemptLedger(settings)
        try:
            # every id twice, all at once (a redelivery racing its first delivery)
            claims = await asyncio.gather(*(ledger.claim(i) for i in [*ids, *ids]))
            new = [
                i for i, c in zip([*ids, *ids], claims, strict=True) if c.state is ClaimState.NEW
            ]
            await asyncio.gather(*(ledger.record(i, RESULT + i.encode()) for i in new[::2]))
            again = await asyncio.gather(*(ledger.claim(i) for i in new))
            return [c.state for c in claims], [(c.state, c.result) for c in again]
        finally:
            await ledger.aclose()

    states, again = asyncio.run(scenario())
    assert states.count(ClaimState.NEW) == len(ids)
    assert states.count(ClaimState.STARTED) == len(ids)
    assert states[: len(ids)] == [ClaimState.NEW] * len(ids)  # the first of each pair wins
    recorded = [(ClaimState.DONE, RESULT + i.encode()) for i in ids[::2]]
    assert again[::2] == recorded
    assert again[1::2] == [(ClaimState.STARTED, None)] * (len(ids) // 2)
    client = redis.Redis.from_url(settings.ledger_redis_url)
    try:
        client.delete(*(f"{settings.topic_prefix}:attempt:{i}" for i in ids))
    finally:
        client.close()


def test_a_dropped_connection_is_reopened_and_the_batch_sent_again(private: Settings) -> None:
    """The ledger keeps one connection: when Redis drops it, the next batch reconnects (as
    redis-py's client retries), and a claim applied before the drop is not claimed twice."""
    first, second = _ids(2)

    async def scenario() -> list[ClaimState]:
        ledger = AttemptLedger(private)
        admin = redis.asyncio.Redis.from_url(private.ledger_redis_url)
        try:
            states = [(await ledger.claim(first)).state]
            killed = await admin.client_kill_filter(_type="normal", skipme=True)
            assert killed >= 1, "the ledger's connection was not there to drop"
            states.append((await ledger.claim(second)).state)
            states.append((await ledger.claim(first)).state)
            return states
        finally:
            await admin.aclose()
            await ledger.aclose()

    assert asyncio.run(scenario()) == [ClaimState.NEW, ClaimState.NEW, ClaimState.STARTED]
