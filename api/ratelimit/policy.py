"""Which buckets a request is charged to, with which limits (pure; ADR 0049).

- a caller with a principal: its tenant's ``write`` bucket (any method but GET/HEAD/OPTIONS) or
  ``read`` bucket, plus its own share of it when ``rate_principal_share`` is set;
- webhooks (which may come without a credential): the ``hook`` bucket of the workflow a start
  hook addresses, or of the run a step callback addresses -- never a tenant's bucket, so an
  anonymous sender cannot use up a tenant's budget;
- a run start (``POST /v1/runs``, a start hook) also takes one from its tenant's daily quota.

Keys share the tenant in a ``{hash tag}``, so the buckets one script touches are on one
Redis Cluster slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from api.config import ApiSettings
from api.ratelimit.bucket import BucketLimit

__all__ = [
    "ANONYMOUS_HOOK_TENANT",
    "BUCKET_NAMES",
    "START_ROUTES",
    "Charge",
    "Quota",
    "TenantLimits",
    "day_window",
    "limits_for",
    "quota_for",
    "request_charge",
    "shared",
]

BucketName = Literal["write", "read", "hook", "starts"]
BUCKET_NAMES: Final[frozenset[str]] = frozenset({"write", "read", "hook", "starts"})

START_ROUTES: Final = frozenset({"POST /v1/runs", "POST /v1/hooks/{workflow_id}"})
"""Routes that start a run: they count against the daily quota."""

ANONYMOUS_HOOK_TENANT: Final = "default"
"""The tenant whose quota a start webhook sent without a credential counts against when the
read model does not know its workflow (yet); a known workflow's tenant otherwise (ADR 0051)."""

_HOOK_ROUTES: Final = frozenset(
    {"/v1/hooks/{workflow_id}", "/v1/hooks/runs/{run_id}/steps/{step_id}"}
)
_READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class TenantLimits:
    write: BucketLimit
    read: BucketLimit
    principal_share: float | None
    starts_per_day: int | None


def limits_for(api: ApiSettings, tenant: str) -> TenantLimits:
    """The defaults of ``api`` with ``tenant``'s overrides (``rate_tenants``) applied."""
    override = api.rate_tenants.get(tenant)
    write = BucketLimit(api.rate_write_burst, api.rate_write_per_s)
    read = BucketLimit(api.rate_read_burst, api.rate_read_per_s)
    share = api.rate_principal_share
    starts = api.rate_starts_per_day
    if override is not None:
        write = BucketLimit(
            override.write_burst or write.burst, override.write_per_s or write.per_s
        )
        read = BucketLimit(override.read_burst or read.burst, override.read_per_s or read.per_s)
        if "principal_share" in override.model_fields_set:
            share = override.principal_share
        if "starts_per_day" in override.model_fields_set:
            starts = override.starts_per_day
    return TenantLimits(write, read, share, starts)


def shared(limit: BucketLimit, share: float) -> BucketLimit:
    """A principal's bucket: ``share`` of its tenant's (at least one token)."""
    return BucketLimit(max(1, math.floor(limit.burst * share)), max(0.001, limit.per_s * share))


@dataclass(frozen=True, slots=True)
class Charge:
    """The buckets one request takes a token from: all of them, or none."""

    name: BucketName
    scope: str
    """Who the bucket belongs to, for the message: ``tenant 'acme'``, ``workflow 'w'``."""
    keys: tuple[str, ...]
    limits: tuple[BucketLimit, ...]
    owners: tuple[str, ...]
    """Per key, what it limits (``tenant 'acme'``, ``principal user:ci``), for the message."""


def _tag(value: str) -> str:
    # A brace would end the hash tag early; nothing else in a key needs escaping.
    return value.replace("{", "%7B").replace("}", "%7D")


def request_charge(
    api: ApiSettings,
    prefix: str,
    *,
    method: str,
    template: str | None,
    params: dict[str, str],
    tenant: str | None,
    principal: str | None,
) -> Charge | None:
    """The buckets of a request; None when it is charged nothing (an anonymous request to a
    path that is no webhook route: it is answered 401/404 without any work)."""
    base = f"{prefix}:ratelimit"
    if template in _HOOK_ROUTES:
        what, ident = (
            ("workflow", params.get("workflow_id", ""))
            if "workflow_id" in params
            else ("run", params.get("run_id", ""))
        )
        limit = BucketLimit(api.rate_hook_burst, api.rate_hook_per_s)
        owner = f"{what} {ident!r}"
        return Charge(
            "hook", owner, (f"{base}:hook:{{{_tag(what + ':' + ident)}}}",), (limit,), (owner,)
        )
    if tenant is None:
        return None
    limits = limits_for(api, tenant)
    name: BucketName = "read" if method in _READ_METHODS else "write"
    limit = limits.read if name == "read" else limits.write
    tenant_key = f"{base}:{{{_tag(tenant)}}}:{name}"
    owner = f"tenant {tenant!r}"
    if limits.principal_share is None or principal is None:
        return Charge(name, owner, (tenant_key,), (limit,), (owner,))
    return Charge(
        name,
        owner,
        (tenant_key, f"{tenant_key}:{principal}"),
        (limit, shared(limit, limits.principal_share)),
        (owner, f"principal {principal!r} ({limits.principal_share:g} of its tenant's)"),
    )


@dataclass(frozen=True, slots=True)
class Quota:
    """A tenant's run starts of one UTC day."""

    tenant: str
    limit: int
    day: str
    key: str
    expire_at: int
    """Unix time the counter may go (an hour after the day ends: clocks of API processes
    may differ a little around midnight)."""
    reset_s: int
    """Seconds from now to the next UTC midnight, rounded up: the quota's ``Retry-After``."""


def day_window(now: datetime) -> tuple[str, int, int]:
    """``(YYYY-MM-DD, unix time of the next UTC midnight, seconds until it, rounded up)``."""
    now = now.astimezone(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    left = (midnight - now).total_seconds()
    return now.strftime("%Y-%m-%d"), int(midnight.timestamp()), max(1, math.ceil(left))


def quota_for(api: ApiSettings, prefix: str, tenant: str, now: datetime) -> Quota | None:
    limit = limits_for(api, tenant).starts_per_day
    if limit is None:
        return None
    day, midnight, left = day_window(now)
    key = f"{prefix}:ratelimit:{{{_tag(tenant)}}}:starts:{day}"
    return Quota(tenant, limit, day, key, midnight + 3600, left)
