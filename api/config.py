"""Settings of the HTTP API that the shared :class:`foundation.settings.Settings` does not hold.

Kept separate (env prefix ``REFLUX_API_``) so the foundation settings stay about connections, and
the API can be configured per process (schemas per test, webhook secrets per deployment).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["MAX_WAIT_MS", "ApiSettings", "TenantRateLimits"]

MAX_WAIT_MS = 30_000
"""Upper bound of every ``wait_ms``: a request never holds a connection longer than this."""


_BURST = Field(default=None, ge=1, le=10_000_000)
_PER_S = Field(default=None, ge=0.001, le=1_000_000)


class TenantRateLimits(BaseModel):
    """One tenant's overrides of the ``rate_*`` defaults (ADR 0049); a field left out keeps the
    default. ``starts_per_day: null`` (given explicitly) means no quota for this tenant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    write_burst: int | None = _BURST
    write_per_s: float | None = _PER_S
    read_burst: int | None = _BURST
    read_per_s: float | None = _PER_S
    principal_share: float | None = Field(default=None, gt=0, le=1)
    starts_per_day: int | None = Field(default=None, ge=0)
    max_concurrent_runs: int | None = Field(default=None, ge=1, le=100_000)
    """Ceiling on runs in flight per workflow of this tenant (``rate_max_concurrent_runs``);
    ``null`` given explicitly: none."""


class ApiSettings(BaseSettings):
    """Every field maps to ``REFLUX_API_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="REFLUX_API_", frozen=True, extra="ignore")

    read_schema: str = "reflux"
    """Postgres schema of the projections' read models (runs, steps, run_events, workflows)."""

    api_schema: str = "reflux_api"
    """Postgres schema the API owns: version allocation and idempotency keys."""

    webhook_secrets: dict[str, str | list[str]] = Field(default_factory=dict)
    """workflow id -> HMAC secret (or a list: during a rotation, each is accepted); JSON in
    ``REFLUX_API_WEBHOOK_SECRETS``. A workflow listed here only accepts start webhooks signed
    with ``Reflux-Signature: t=<unix>,v1=<hex>`` (docs/triggers.md)."""

    webhook_tolerance_s: int = Field(default=300, ge=1, le=3600)
    """Replay window of webhook signatures: how far a ``t=`` may be from the API's clock; a
    signed message is refused a second time while it is inside the window."""

    webhook_max_body_bytes: int = Field(default=1024 * 1024, ge=1, le=64 * 1024 * 1024)
    """Largest start-webhook body (413 beyond)."""

    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    """Largest request body of any route without its own limit (413 beyond it; api.limits)."""

    max_import_body_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    """Largest run bundle ``POST /v1/runs/import`` accepts (bundles carry payloads)."""

    pool_min_size: int = 1
    pool_max_size: int = 10
    pool_timeout_s: float = 5.0
    """How long a request waits for a Postgres connection before answering 503."""

    publish_timeout_s: float = 5.0
    """How long a write waits for Kafka's acknowledgement before answering 503."""

    poll_interval_s: float = 0.2
    """How often ``wait_ms`` and the SSE stream look at the projection again."""

    readiness_timeout_s: float = 2.0

    clickhouse_enabled: bool = True
    """Open the traces store (ClickHouse) for ``/v1/metrics``. With embedded chdb this process
    then *owns* the store: it migrates it and the Kafka engine consumes traces inside it, so only
    one process per data folder may have it on (see docs/traces.md). Off: metrics answer 503."""

    clickhouse_database: str = "reflux"
    """ClickHouse database of the traces store."""

    alert_evaluator: bool | None = None
    """Run the SLO alert evaluator in this process. ``None`` (default): only when this process
    owns an embedded store; with a ClickHouse server run ``reflux alerts serve`` once instead."""

    alerts_catch_up_timeout_s: float = 5.0
    """How long ``GET /v1/alerts`` may read the alerts topic to reach its end before 503."""

    # -- identity (ADR 0046, docs/api.md#authentication-and-roles) ---------------------------
    # API keys need no settings (they live in `api_schema`). OIDC bearer tokens are accepted
    # only when issuer, audience and JWKS URL are all set.

    oidc_issuer: str | None = None
    """Expected ``iss`` of OIDC tokens, e.g. ``https://login.example.com/realms/acme``."""

    oidc_audience: str | None = None
    """Expected ``aud`` (this API's client id at the issuer)."""

    oidc_jwks_url: str | None = None
    """Where the issuer publishes its signing keys (JWKS)."""

    oidc_roles_claim: str = "roles"
    """Claim holding the REFLUX role(s): a string or a list; dotted for nested claims
    (``realm_access.roles``). The highest known role wins; a token with none gets 403."""

    oidc_tenant_claim: str = "tenant"
    """Claim holding the tenant; ``default`` when the token has none."""

    oidc_algorithms: tuple[str, ...] = ("RS256", "ES256")
    """Accepted signature algorithms (never ``none`` or HMAC: the JWKS holds public keys)."""

    oidc_jwks_cache_s: float = 600.0
    """How long fetched signing keys are used before the JWKS is read again."""

    oidc_jwks_min_refresh_s: float = 10.0
    """An unknown ``kid`` re-reads the JWKS at most this often (a stream of forged kids cannot
    turn into a stream of requests to the issuer)."""

    oidc_leeway_s: float = 30.0
    """Clock skew allowed on ``exp``/``nbf``/``iat``."""

    # -- rate limits and quotas (ADR 0049, docs/api.md#rate-limits-and-quotas) ---------------
    # Token buckets in Redis: `write` and `read` per tenant (and per principal with
    # `rate_principal_share`), `hook` per workflow (start webhooks) or run (step callbacks);
    # a daily quota of run starts per tenant. Over a limit: 429 with Retry-After.

    rate_enabled: bool = True
    """Off: no buckets and no quota (a benchmark measuring the API without them)."""

    rate_write_burst: int = Field(default=2000, ge=1, le=10_000_000)
    """Writes (any method but GET/HEAD/OPTIONS) a tenant may send in a burst."""
    rate_write_per_s: float = Field(default=200.0, ge=0.001, le=1_000_000)
    """Writes per second a tenant's bucket regains."""
    rate_read_burst: int = Field(default=5000, ge=1, le=10_000_000)
    rate_read_per_s: float = Field(default=500.0, ge=0.001, le=1_000_000)
    rate_hook_burst: int = Field(default=1000, ge=1, le=10_000_000)
    """Webhook calls per workflow (start hooks) or per run (step callbacks) in a burst; keyed
    by what they address because they may come without a credential."""
    rate_hook_per_s: float = Field(default=100.0, ge=0.001, le=1_000_000)

    rate_principal_share: float | None = Field(default=None, gt=0, le=1)
    """When set: each principal (key, token subject) also has its own write and read buckets of
    this share of its tenant's, so one key cannot use up its tenant's budget."""

    rate_starts_per_day: int | None = Field(default=1_000_000, ge=0)
    """Runs a tenant may start per UTC day (``POST /v1/runs``, start webhooks); counted when
    the start is accepted (2xx). ``None``: no quota."""

    rate_max_concurrent_runs: int | None = Field(default=None, ge=1, le=100_000)
    """Ceiling on the runs of any one workflow in flight at once, for workflows that declare
    no ``max_concurrent_runs`` or a higher one (the lower of the two holds; ADR 0052).
    ``None``: only what workflows declare. Overridable per tenant."""

    rate_concurrency_grace_s: float = Field(default=600.0, gt=0, le=86_400)
    """An admitted start whose run has not appeared in the read model after this long (the
    scheduler rejected it, or it was never produced) stops counting against its workflow."""

    rate_concurrency_recheck_s: float = Field(default=1.0, ge=0, le=60)
    """A full workflow's admitted runs are checked against the read model at most this often
    per API process: refusals in between cost one Redis call, however many runs are counted
    (a client polling a full workflow must not turn into a Postgres query per request)."""

    rate_concurrency_retry_s: int = Field(default=5, ge=1, le=3600)
    """``Retry-After`` of a start refused by a concurrent-run limit (when a run finishes is
    not known in advance)."""

    rate_tenants: dict[str, TenantRateLimits] = Field(default_factory=dict)
    """Per-tenant overrides, JSON in ``REFLUX_API_RATE_TENANTS``, e.g.
    ``{"acme": {"write_burst": 50, "write_per_s": 5, "starts_per_day": 10000}}``."""

    rate_redis_url: str | None = None
    """Redis of the buckets. Unset: the cache's (``Settings.redis_url``, ``allkeys-lru``):
    losing a bucket only refills it (ADR 0049)."""

    rate_quota_redis_url: str | None = None
    """Redis of the daily quota counters. Unset: ``Settings.webhook_store_url`` (noeviction):
    an evicted counter would hand a tenant a fresh day."""

    rate_redis_timeout_s: float = Field(default=0.25, gt=0, le=10)
    """Connect and read timeout of the rate-limit Redis calls of buckets that fail open: a
    slow Redis lets the request through rather than holding it."""

    rate_redis_closed_timeout_s: float = Field(default=2.0, gt=0, le=30)
    """The same for limits that fail closed (``rate_fail_closed`` buckets and the daily quota):
    a timeout there refuses the request with 503, so a busy Redis gets longer to answer."""

    rate_redis_retry_s: float = Field(default=5.0, ge=0, le=300)
    """After a failed Redis call, how long requests skip Redis (and apply the bucket's
    fail policy) before it is tried again, so an outage does not add a timeout per request."""

    rate_fail_closed: frozenset[str] = frozenset({"starts"})
    """Buckets that refuse (503) while their Redis is unreachable; the others let requests
    through (logged, counted). Names: ``write``, ``read``, ``hook``, ``starts``."""

    console_dir: Path | None = None
    """The built web console (``web/dist``, built by ``make``) served under ``/ui``; unset:
    ``web/dist`` beside the source tree, if it exists (api/console.py)."""

    @field_validator("rate_fail_closed")
    @classmethod
    def _known_buckets(cls, value: frozenset[str]) -> frozenset[str]:
        unknown = sorted(value - {"write", "read", "hook", "starts"})
        if unknown:
            raise ValueError(
                f"Expected bucket names of write, read, hook, starts, but got {unknown}"
            )
        return value

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer and self.oidc_audience and self.oidc_jwks_url)
