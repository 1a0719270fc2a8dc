"""Concurrent-run limits per workflow, at the admission of API starts (ADR 0052;
docs/api.md#concurrent-run-limits).

A workflow may declare ``max_concurrent_runs``; the operator may set a ceiling per tenant
(``rate_max_concurrent_runs``, ``rate_tenants.<t>.max_concurrent_runs``); the lower holds.
``POST /v1/runs`` and start webhooks enter :func:`admitted` around the publish of the start:

- Each workflow with a limit has a sorted set of the run ids admitted (score: admission time
  in ms, Redis's clock) on the noeviction Redis of the daily quota (``rate_quota_redis_url``,
  else ``Settings.webhook_store_url``): an evicted set would admit a whole new batch.
- :data:`ADMIT_LUA` admits atomically: a run id already in the set passes without counting
  again (an idempotent retry), else it is added while the set holds fewer than the limit.
- Only when that refuses (and at most every ``rate_concurrency_recheck_s`` per workflow and
  API process), the members are checked against the read model (the ``runs`` table), oldest
  admission first, :data:`CHUNK` at a time, until a chunk frees a place: a run
  that has finished (succeeded, failed, cancelled), or that has not appeared
  ``rate_concurrency_grace_s`` after its admission (the scheduler rejected it, or the publish
  never made it), no longer counts and is removed (:func:`stale_members`); then the script is
  tried once more. So the read model is queried only at the limit, and a refusal is exact up to
  the projection's lag and the recheck interval. A start whose run id is already in the read
  model is a retry of a start the scheduler has seen: it passes without counting.
- A start that is not accepted after all (the publish raised: 503, 413) is removed again.
- Refused: 429 ``TooManyRunsError`` with ``Retry-After`` (``rate_concurrency_retry_s``) and a
  message naming the workflow, its limit and the runs in flight. Redis unreachable: 503 (fails
  closed, like the quota: ADR 0049).

Not counted by this admission: runs started by Kafka triggers (the trigger router publishes
``StartRun`` without the API) and child runs (the scheduler starts them). They do not appear in
the set; they also take nobody's place.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from fastapi import FastAPI, Request
from prometheus_client import Counter

from api.config import ApiSettings
from api.db import with_conn
from api.errors import ApiError, UnavailableError
from api.ratelimit.store import CircuitRedis, StoreDownError
from api.readmodel import ReadModel
from foundation.errors import RetryableError
from foundation.settings import Settings
from projections.postgres.identifiers import table
from schemas.statuses import TERMINAL_RUN_STATUSES
from workflows.model import WorkflowDefinition

__all__ = [
    "ADMIT_LUA",
    "CHUNK",
    "MEMBERS_LUA",
    "PRUNE_LUA",
    "RELEASE_LUA",
    "Admission",
    "ConcurrencyStoreDownError",
    "RunLimits",
    "TooManyRunsError",
    "admitted",
    "ceiling_for",
    "close_run_limits",
    "concurrency_key",
    "effective_limit",
    "refusal_message",
    "stale_members",
]

log = logging.getLogger(__name__)

REFUSED: Final = 0
ADMITTED: Final = 1
ALREADY: Final = 2

ADMIT_LUA: Final = """
-- KEYS[1]: the workflow's sorted set of admitted run ids (score: admission time, ms).
-- ARGV: run id, limit. Returns {verdict, runs in the set}: 2 = already admitted (a retry of the
-- same start: not counted again), 1 = admitted now, 0 = refused (the set is full).
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {2, redis.call('ZCARD', KEYS[1])}
end
local count = redis.call('ZCARD', KEYS[1])
if count >= tonumber(ARGV[2]) then return {0, count} end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[1])
return {1, count + 1}
"""

MEMBERS_LUA: Final = """
-- KEYS[1]: the set; ARGV: first and last rank (oldest admission first).
-- Returns {now in ms (Redis's clock), run id, score, run id, score, ...}.
local t = redis.call('TIME')
local answer = {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
for _, v in ipairs(redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES')) do
  answer[#answer + 1] = v
end
return answer
"""

PRUNE_LUA: Final = """
-- KEYS[1]: the set; ARGV: run id, score, run id, score, ... as read before the read model was
-- asked. Removes a run id only if its score is still that one (not re-admitted meanwhile).
local removed = 0
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
"""

RELEASE_LUA: Final = """
-- KEYS[1]: the set; ARGV[1]: a run id whose start was not accepted after all.
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

CHUNK: Final = 1000
"""Admitted run ids checked against the read model per query."""

_RETRY: Final = object()
_PRUNED: Final = object()

_TERMINAL: Final = frozenset(status.value for status in TERMINAL_RUN_STATUSES)


class TooManyRunsError(ApiError, RetryableError):
    """429: the workflow has as many runs in flight as its limit allows."""

    error_class = "TooManyRunsError"
    status_code = 429

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after_s)}


class ConcurrencyStoreDownError(UnavailableError):
    """503: the Redis of the limit is unreachable, and the limit fails closed."""

    error_class = "ConcurrencyStoreDownError"

    def __init__(self, workflow_id: str, retry_after_s: float) -> None:
        super().__init__(
            f"The store of the concurrent-run limit of workflow {workflow_id!r} is unreachable "
            "and that limit fails closed (ADR 0052); the run was not started, retry later"
        )
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}


# -- pure parts ---------------------------------------------------------------------------------


def ceiling_for(api: ApiSettings, tenant: str) -> int | None:
    """The operator's ceiling on runs in flight per workflow of ``tenant``."""
    override = api.rate_tenants.get(tenant)
    if override is not None and "max_concurrent_runs" in override.model_fields_set:
        return override.max_concurrent_runs
    return api.rate_max_concurrent_runs


def effective_limit(declared: int | None, ceiling: int | None) -> int | None:
    """The lower of the workflow's own limit and the operator's ceiling; None: no limit."""
    limits = [limit for limit in (declared, ceiling) if limit is not None]
    return min(limits) if limits else None


def concurrency_key(prefix: str, workflow_id: str) -> str:
    # The workflow in a {hash tag} (a brace in it would end the tag early), like the quota keys.
    tag = workflow_id.replace("{", "%7B").replace("}", "%7D")
    return f"{prefix}:ratelimit:concurrency:{{{tag}}}"


def stale_members(
    members: Iterable[tuple[str, str]],
    statuses: Mapping[str, str],
    now_ms: int,
    grace_ms: int,
) -> list[tuple[str, str]]:
    """The ``(run id, score)`` members that no longer count: their run finished (a terminal
    status in the read model), or it has no row ``grace_ms`` after its admission."""
    stale = []
    for run_id, score in members:
        status = statuses.get(run_id)
        if status is None:
            if now_ms - int(float(score)) >= grace_ms:
                stale.append((run_id, score))
        elif status in _TERMINAL:
            stale.append((run_id, score))
    return stale


def refusal_message(workflow_id: str, limit: int, in_flight: int, retry_s: int) -> str:
    return (
        f"Concurrent-run limit reached: workflow {workflow_id!r} allows {limit} run"
        f"{'s' if limit != 1 else ''} in flight at once and has {in_flight}; the run was not "
        f"started. Retry in {retry_s} s (Retry-After), when one of them has finished"
    )


# -- Redis and the read model -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Admission:
    key: str
    run_id: str
    added: bool
    """False for a retry of a start already counted (or already seen by the scheduler): a
    failure must not remove what the first start put there."""


def _statuses(conn: psycopg.Connection[Any], run_ids: Sequence[str], schema: str) -> dict[str, str]:
    rows = conn.execute(
        f"SELECT run_id, status FROM {table(schema, 'runs')} WHERE run_id = ANY(%s)",
        (list(run_ids),),
    ).fetchall()
    return {str(run_id): str(status) for run_id, status in rows}


class RunLimits:
    """Admission against concurrent-run limits; one per app, made on the first start (no I/O
    before), closed by the app's lifespan."""

    def __init__(
        self, settings: Settings, api: ApiSettings, read_model: ReadModel, registry: Any
    ) -> None:
        self.api = api
        self.prefix = settings.topic_prefix
        self.read_model = read_model
        # Its own client and circuit on the quota's noeviction Redis, with the timeout of the
        # limits that fail closed (ADR 0049).
        self.redis = CircuitRedis(
            api.rate_quota_redis_url or settings.webhook_store_url,
            api.rate_redis_closed_timeout_s,
            api.rate_redis_retry_s,
            "concurrency",
        )
        self._checked: dict[str, float] = {}
        """Workflow -> when (monotonic) its full set was last checked against the read model."""
        self.refused = Counter(
            "reflux_api_run_concurrency_refused",
            "Run starts refused with 429 by a workflow's concurrent-run limit.",
            registry=registry,
        )

    def limit_for(self, declared: int | None, tenant: str) -> int | None:
        return effective_limit(declared, ceiling_for(self.api, tenant))

    async def admit(self, workflow_id: str, run_id: str, limit: int) -> Admission:
        """Counts ``run_id`` against ``workflow_id``'s ``limit``, or raises
        :class:`TooManyRunsError` / :class:`ConcurrencyStoreDownError`."""
        key = concurrency_key(self.prefix, workflow_id)
        try:
            verdict, count = await self._admit(key, run_id, limit)
            if verdict == REFUSED and self._may_check(workflow_id):
                try:
                    outcome = await self._check(key, run_id)
                finally:  # the interval runs from the end of a check: a long one is not redone
                    self._checked[workflow_id] = time.monotonic()
                if outcome is _RETRY:
                    return Admission(key, run_id, added=False)
                if outcome is _PRUNED:
                    verdict, count = await self._admit(key, run_id, limit)
        except StoreDownError as exc:
            log.debug("concurrent-run limit of %r: %s", workflow_id, exc)
            raise ConcurrencyStoreDownError(workflow_id, self.api.rate_redis_retry_s) from exc
        if verdict == REFUSED:
            self.refused.inc()
            retry = self.api.rate_concurrency_retry_s
            raise TooManyRunsError(refusal_message(workflow_id, limit, count, retry), retry)
        return Admission(key, run_id, added=verdict == ADMITTED)

    def _may_check(self, workflow_id: str) -> bool:
        last = self._checked.get(workflow_id)
        if last is not None and time.monotonic() - last < self.api.rate_concurrency_recheck_s:
            return False
        if len(self._checked) > 10_000:  # forget old entries rather than grow without bound
            self._checked.clear()
        return True

    async def _check(self, key: str, run_id: str) -> object:
        """The full set against the read model, oldest admissions first (the likeliest to have
        finished), :data:`CHUNK` at a time: stops at the first chunk with stale members (one
        freed place is all this start needs) after removing them. :data:`_RETRY` when the read
        model already has ``run_id``, :data:`_PRUNED` when something was removed."""
        grace_ms = round(self.api.rate_concurrency_grace_s * 1000)
        offset = 0
        while True:
            now_ms, members = await self._members(key, offset, CHUNK)
            ids = [m for m, _ in members]
            if offset == 0:
                ids.append(run_id)  # is this start a retry of one the scheduler has seen?
            if not ids:
                return None
            statuses = await with_conn(
                self.read_model.pool,
                self.read_model.timeout,
                _statuses,
                ids,
                self.read_model.schema,
            )
            if offset == 0 and run_id in statuses:
                return _RETRY
            stale = stale_members(members, statuses, now_ms, grace_ms)
            if stale:
                await self._prune(key, stale)
                return _PRUNED
            if len(members) < CHUNK:
                return None
            offset += len(members)

    async def release(self, admission: Admission) -> None:
        """Takes back a start that was not accepted after all (best effort: if Redis is away,
        the run id stays until the grace period ends, as it never gets a row)."""
        if not admission.added:
            return
        script = self.redis.script(RELEASE_LUA)

        async def call() -> None:
            await script(keys=[admission.key], args=[admission.run_id])

        try:
            await self.redis.run(call)
        except StoreDownError as exc:
            log.warning("concurrent-run limit: %s not given back: %s", admission.run_id, exc)

    async def _admit(self, key: str, run_id: str, limit: int) -> tuple[int, int]:
        script = self.redis.script(ADMIT_LUA)

        async def call() -> tuple[int, int]:
            verdict, count = await script(keys=[key], args=[run_id, limit])
            return int(verdict), int(count)

        return await self.redis.run(call)

    async def _members(
        self, key: str, offset: int, count: int
    ) -> tuple[int, list[tuple[str, str]]]:
        script = self.redis.script(MEMBERS_LUA)

        async def call() -> tuple[int, list[tuple[str, str]]]:
            answer = await script(keys=[key], args=[offset, offset + count - 1])
            flat = [v.decode() if isinstance(v, bytes) else str(v) for v in answer[1:]]
            return int(answer[0]), list(zip(flat[0::2], flat[1::2], strict=True))

        return await self.redis.run(call)

    async def _prune(self, key: str, stale: Sequence[tuple[str, str]]) -> None:
        script = self.redis.script(PRUNE_LUA)
        args = [v for pair in stale for v in pair]

        async def call() -> None:
            await script(keys=[key], args=args)

        await self.redis.run(call)

    async def close(self) -> None:
        await self.redis.close()


def _run_limits(app: FastAPI) -> RunLimits:
    limits: RunLimits | None = getattr(app.state, "run_limits", None)
    if limits is None:
        state = app.state
        limits = state.run_limits = RunLimits(
            state.settings, state.api_settings, state.read_model, state.metrics.registry
        )
    return limits


async def close_run_limits(app: FastAPI) -> None:
    limits: RunLimits | None = getattr(app.state, "run_limits", None)
    if limits is not None:
        await limits.close()


@asynccontextmanager
async def admitted(
    request: Request,
    workflow_id: str,
    definition: WorkflowDefinition,
    run_id: str,
    *,
    tenant: str,
) -> AsyncIterator[None]:
    """Admits the start of ``run_id`` against the workflow's concurrent-run limit (429/503 when
    refused); the body publishes the start, and if it raises the admission is taken back.
    ``tenant``: the workflow's (ADR 0051), whose ceiling applies."""
    limits = _run_limits(request.app)
    limit = limits.limit_for(definition.max_concurrent_runs, tenant)
    if limit is None:
        yield
        return
    admission = await limits.admit(workflow_id, run_id, limit)
    try:
        yield
    except BaseException:
        await limits.release(admission)
        raise
