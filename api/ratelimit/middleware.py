"""The rate-limit middleware: after authentication (it needs the tenant), before the body is
read and the request routed (ADR 0049).

Per /v1 request: one token from the request's buckets (:func:`api.ratelimit.policy.request_charge`);
for a run start also one from the tenant's daily quota, given back when the start is not
accepted (any answer but 2xx). Over a limit: 429 with ``Retry-After`` (whole seconds, rounded
up) and the ``RateLimit-*`` headers; a passing request carries the ``RateLimit-*`` headers of
its bucket too.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from typing import Any

import psycopg
from prometheus_client import Counter
from psycopg_pool import PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.asgi_answer import answer_json
from api.auth.guard import Principal, match_route
from api.auth.tenancy import tenant_of
from api.config import ApiSettings
from api.prometheus import ApiMetrics
from api.ratelimit.bucket import Taken, retry_after_s
from api.ratelimit.policy import (
    ANONYMOUS_HOOK_TENANT,
    START_ROUTES,
    Charge,
    Quota,
    quota_for,
    request_charge,
)
from api.ratelimit.store import RateStore, StoreDownError
from foundation.settings import Settings

__all__ = ["RateLimitMiddleware", "RateLimiter", "close_limiter"]

log = logging.getLogger(__name__)


class RateLimiter:
    """What the middleware needs, built once per app (no I/O until the first request)."""

    def __init__(self, settings: Settings, api: ApiSettings, metrics: ApiMetrics) -> None:
        self.api = api
        self.prefix = settings.topic_prefix
        self.store = RateStore(
            api.rate_redis_url or settings.redis_url,
            api.rate_quota_redis_url or settings.webhook_store_url,
            timeout_s=api.rate_redis_timeout_s,
            closed_timeout_s=api.rate_redis_closed_timeout_s,
            retry_s=api.rate_redis_retry_s,
        )
        self.refused = Counter(
            "reflux_api_rate_limited",
            "Requests refused with 429 by a rate limit or quota, by bucket.",
            ["bucket"],
            registry=metrics.registry,
        )
        self.unavailable = Counter(
            "reflux_api_rate_store_unavailable",
            "Requests whose rate-limit Redis was unreachable, by bucket and what was done "
            "(open: let through; closed: 503).",
            ["bucket", "policy"],
            registry=metrics.registry,
        )

    async def close(self) -> None:
        await self.store.close()


async def close_limiter(limiter: RateLimiter | None) -> None:
    if limiter is not None:
        await limiter.close()


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, limiter: RateLimiter, prefix: str = "/v1/") -> None:
        self.app = app
        self.limiter = limiter
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or not path.startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        limiter = self.limiter
        principal: Principal | None = scope.get("state", {}).get("principal")
        matched = match_route(scope)
        template = matched[0].template if matched else None
        params = matched[1] if matched else {}
        charge = request_charge(
            limiter.api,
            limiter.prefix,
            method=scope["method"],
            template=template,
            params=params,
            tenant=principal.tenant if principal else None,
            principal=f"{principal.kind}:{principal.id}" if principal else None,
        )
        headers: list[tuple[bytes, bytes]] = []
        if charge is not None:
            taken = await self._take(charge)
            if taken is _CLOSED:
                await _unavailable(send, charge.name, limiter.api.rate_redis_retry_s)
                return
            if isinstance(taken, Taken):
                if not taken.allowed:
                    limiter.refused.labels(charge.name).inc()
                    await _too_many(send, charge, taken)
                    return
                headers = _bucket_headers(charge, taken, 0)
        quota: Quota | None = None
        if matched is not None and f"{scope['method']} {template}" in START_ROUTES:
            tenant = principal.tenant if principal else await _hook_tenant(scope, params)
            quota = quota_for(limiter.api, limiter.prefix, tenant, datetime.now(UTC))
            if quota is not None:
                verdict = await self._take_quota(quota)
                if verdict is _CLOSED:
                    await _unavailable(send, "starts", limiter.api.rate_redis_retry_s)
                    return
                if verdict is False:
                    limiter.refused.labels("starts").inc()
                    await _quota_exhausted(send, quota)
                    return
                if verdict is None:  # open: not counted, nothing to give back
                    quota = None
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if headers:
                    message = {**message, "headers": [*message.get("headers", []), *headers]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if quota is not None and not 200 <= status < 300:
                await self._release_quota(quota)

    async def _take(self, charge: Charge) -> Taken | object | None:
        """The answer of the buckets; ``None`` when Redis is away and the bucket fails open,
        :data:`_CLOSED` when it fails closed."""
        try:
            fails_closed = charge.name in self.limiter.api.rate_fail_closed
            return await self.limiter.store.take(charge, fails_closed=fails_closed)
        except StoreDownError as exc:
            return self._down(charge.name, exc)

    async def _take_quota(self, quota: Quota) -> bool | object | None:
        try:
            return (await self.limiter.store.take_quota(quota)).allowed
        except StoreDownError as exc:
            return self._down("starts", exc)

    async def _release_quota(self, quota: Quota) -> None:
        try:
            await self.limiter.store.release_quota(quota)
        except StoreDownError as exc:  # the day's count stays one too high: the safe side
            log.warning(
                "rate limits: a refused start of %r was not given back: %s", quota.tenant, exc
            )

    def _down(self, bucket: str, exc: StoreDownError) -> object | None:
        closed = bucket in self.limiter.api.rate_fail_closed
        self.limiter.unavailable.labels(bucket, "closed" if closed else "open").inc()
        log.debug("rate limits: %s (%s fails %s)", exc, bucket, "closed" if closed else "open")
        return _CLOSED if closed else None


async def _hook_tenant(scope: Scope, params: dict[str, str]) -> str:
    """The tenant of the workflow an anonymous (signed) start hook names: its runs are that
    tenant's, so is the start (ADR 0051); the default tenant when the read model cannot say."""
    workflow_id = params.get("workflow_id")
    state = getattr(scope.get("app"), "state", None)
    pool = getattr(state, "pool", None)
    api = getattr(state, "api_settings", None)
    if workflow_id is None or pool is None or api is None:
        return ANONYMOUS_HOOK_TENANT

    def look() -> str | None:
        with pool.connection(timeout=api.pool_timeout_s) as conn:
            return tenant_of(conn, api.read_schema, "workflow", workflow_id)

    try:
        owner = await run_in_threadpool(look)
    except (psycopg.Error, PoolTimeout) as exc:
        log.warning("rate limits: the tenant of workflow %r is unknown (%s)", workflow_id, exc)
        return ANONYMOUS_HOOK_TENANT
    return owner or ANONYMOUS_HOOK_TENANT


_CLOSED: Any = object()
"""The answer of a store call that failed for a bucket that fails closed."""


def _bucket_headers(charge: Charge, taken: Taken, index: int) -> list[tuple[bytes, bytes]]:
    """``RateLimit-*`` of the bucket at ``index`` (draft-ietf-httpapi-ratelimit-headers):
    Limit = its burst, Remaining = whole tokens left, Reset = seconds until it is full again,
    Policy = ``<burst>;w=<seconds to fill>;name="<bucket>"``."""
    limit = charge.limits[index]
    values = {
        "RateLimit-Limit": str(limit.burst),
        "RateLimit-Remaining": str(taken.remaining[index]),
        "RateLimit-Reset": str(-(-taken.full_ms[index] // 1000)),
        "RateLimit-Policy": f'{limit.burst};w={limit.window_s};name="{charge.name}"',
    }
    return [(k.lower().encode(), v.encode("latin-1", "replace")) for k, v in values.items()]


async def _too_many(send: Send, charge: Charge, taken: Taken) -> None:
    index = taken.limiting or 0
    limit = charge.limits[index]
    retry = retry_after_s(taken.wait_ms)
    detail = (
        f"Rate limit exceeded: the {charge.name!r} bucket of {charge.owners[index]} allows "
        f"{limit.burst} requests in a burst and {limit.per_s:g} per second; "
        f"retry in {retry} s (Retry-After)"
    )
    headers = [(b"retry-after", str(retry).encode()), *_bucket_headers(charge, taken, index)]
    await answer_json(send, 429, detail, headers)


async def _quota_exhausted(send: Send, quota: Quota) -> None:
    detail = (
        f"Daily quota exhausted: tenant {quota.tenant!r} may start {quota.limit} runs per UTC "
        f"day and has started them on {quota.day}; retry after midnight UTC, in "
        f"{quota.reset_s} s (Retry-After)"
    )
    headers = [
        (b"retry-after", str(quota.reset_s).encode()),
        (b"ratelimit-limit", str(quota.limit).encode()),
        (b"ratelimit-remaining", b"0"),
        (b"ratelimit-reset", str(quota.reset_s).encode()),
        (b"ratelimit-policy", f'{quota.limit};w=86400;name="starts"'.encode()),
    ]
    await answer_json(send, 429, detail, headers)


async def _unavailable(send: Send, bucket: str, retry_s: float) -> None:
    detail = (
        f"The rate-limit store of the {bucket!r} limit is unreachable and that limit fails "
        "closed (rate_fail_closed); retry later"
    )
    retry = str(max(1, math.ceil(retry_s))).encode()
    await answer_json(send, 503, detail, [(b"retry-after", retry)])
