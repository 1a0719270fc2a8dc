"""The app factory: ``create_app(settings) -> FastAPI``.

The lifespan owns the I/O clients -- a psycopg connection pool, the Kafka producer, an admin
client for readiness, the traces store (ClickHouse: with embedded chdb this process owns it, see
:mod:`api.reflection`) -- and puts them on ``app.state`` where :mod:`api.deps` finds them. Nothing
connects at import time, and a missing Postgres or Kafka does not stop the process from starting:
``/readyz`` says which one is missing and writes answer 503 until it is back.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from api.auth.audit import AuditSink
from api.auth.guard import authorize
from api.auth.install import install_identity
from api.auth.tenancy import scope_to_tenant
from api.config import ApiSettings
from api.console import install_console
from api.errors import install_error_handlers
from api.limits import BodyLimit, RequestLimitsMiddleware
from api.prometheus import ApiMetrics, MetricsMiddleware
from api.publisher import Publisher, api_producer
from api.query_params import single_valued_query
from api.ratelimit.concurrency import close_run_limits
from api.ratelimit.middleware import RateLimiter, RateLimitMiddleware, close_limiter
from api.readmodel import ReadModel
from api.reflection import LazyAlertsView, close_clickhouse, open_clickhouse
from api.responses import install_common_responses
from api.routes import (
    alerts,
    diagnoses,
    feedback,
    forge,
    health,
    hooks,
    identity,
    mutations,
    nodes,
    replays,
    run_replay,
    runs,
    schedules,
    workflows,
)
from api.routes import metrics as metrics_routes
from api.routes import schemas as schema_routes
from api.store import ApiStore
from api.tracing import TracingMiddleware
from api.validation import bind_node_catalog
from foundation.redact import redact_credentials
from foundation.settings import Settings, get_settings
from node_workers.artifacts.bundle import MAX_ARTIFACT_BYTES
from node_workers.webhooks import MAX_BODY_BYTES
from projections.clickhouse import ClickHouse
from streams.admin import admin_client
from streams.topics import TopicCatalog

__all__ = ["API_PREFIX", "body_limits", "create_app"]

log = logging.getLogger(__name__)

API_PREFIX = "/v1"

DESCRIPTION = """\
Writes become commands on Kafka (202 + id, with an optional bounded wait); reads come from the
Postgres projections, so a just-accepted run appears after the projector has caught up.
Errors are `{"detail": ...}`; 422 details carry the field path in `loc`.
Every /v1 route needs a credential (`Authorization: Bearer <API key or OIDC token>`) and a role
(`x-reflux-role` on each operation); webhooks are authenticated by their HMAC signature.
"""

TAGS = [
    {"name": "workflows", "description": "Register immutable workflow versions and read them."},
    {"name": "runs", "description": "Start runs, read their state, events and stream; control."},
    {"name": "hooks", "description": "Webhook triggers that start runs."},
    {"name": "metrics", "description": "Node and workflow metrics from the traces store."},
    {"name": "alerts", "description": "SLO alerts (latency, error rate, cost budget)."},
    {"name": "nodes", "description": "The node catalog: versions, promotion, rollout weights."},
    {
        "name": "mutations",
        "description": "Workflow mutation proposals: validate, approve, canary, keep, roll back.",
    },
    {"name": "schedules", "description": "Cron schedules that start runs (ADR 0056)."},
    {"name": "identity", "description": "API keys and the audit log (admins)."},
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics (open)."},
]


def create_app(
    settings: Settings | None = None,
    api_settings: ApiSettings | None = None,
    *,
    clickhouse: ClickHouse | None = None,
) -> FastAPI:
    """A configured app; clients are created by its lifespan (``with TestClient(app)``,
    uvicorn), not here. ``clickhouse``: an open traces store owned by the caller, used for
    ``/v1/metrics`` instead of opening one (``ApiSettings.clickhouse_enabled`` is then moot)."""
    settings = settings or get_settings()
    api = api_settings or ApiSettings()
    metrics = ApiMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = _open_pool(settings, api)
        producer = api_producer(settings, api.publish_timeout_s)
        topics = TopicCatalog.from_settings(settings)
        app.state.pool = pool
        app.state.topics = topics
        app.state.publisher = Publisher(producer, topics, metrics, api.publish_timeout_s)
        app.state.audit = audit = AuditSink(  # ADR 0046
            settings, topics.audit, timeout_s=api.publish_timeout_s
        )
        app.state.admin = admin_client(settings)
        app.state.read_model = ReadModel(pool, api.read_schema, api.pool_timeout_s)
        app.state.store = store = ApiStore(pool, api.api_schema, api.pool_timeout_s)
        try:
            await run_in_threadpool(store.ensure)
        except Exception as exc:  # retried lazily by the first write that needs the tables
            log.warning(
                "API schema %r not ready yet: %s", api.api_schema, redact_credentials(str(exc))
            )
        app.state.clickhouse = ch_access = await run_in_threadpool(
            open_clickhouse, settings, api, clickhouse, topics
        )
        app.state.alerts_view = alerts_view = LazyAlertsView(settings, topics)
        try:
            yield
        finally:
            await run_in_threadpool(_close_views, alerts_view, app.state)
            mailbox = getattr(app.state, "webhook_mailbox", None)  # created on first use
            if mailbox is not None:
                await run_in_threadpool(mailbox.close)
            await run_in_threadpool(close_clickhouse, ch_access)
            try:
                await run_in_threadpool(producer.close, api.publish_timeout_s)
            except Exception as exc:
                log.warning("producer close: %s", exc)
            await run_in_threadpool(audit.close)
            await run_in_threadpool(pool.close)
            await close_limiter(limiter)
            await close_run_limits(app)  # made on the first start with a limit (ADR 0052)

    app = FastAPI(
        title="REFLUX API",
        version="1",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    # Configuration, not I/O: set here rather than by the lifespan, so authentication and the
    # limits can answer a request that needs no backend.
    app.state.settings = settings
    app.state.api_settings = api
    install_error_handlers(app)
    install_common_responses(app)
    limiter = _install_limits_and_metrics(app, settings, api, metrics)
    # authorize first (ADR 0046): nothing of a /v1 route runs for a caller without the role.
    # Workflow validation in every /v1 request checks nodes against the projected node catalog.
    v1 = APIRouter(
        prefix=API_PREFIX,
        dependencies=[
            Depends(authorize),
            Depends(scope_to_tenant),
            Depends(bind_node_catalog),
            Depends(single_valued_query),
        ],
    )
    for resource in (
        workflows.router,
        # Before runs.router: `/runs/import` must not be read as the run id "import".
        run_replay.router,
        runs.router,
        feedback.router,
        hooks.router,
        metrics_routes.router,
        alerts.router,
        nodes.router,
        forge.router,
        mutations.router,
        mutations.workflow_router,
        replays.router,
        diagnoses.router,
        identity.keys_router,
        identity.audit_router,
        identity.me_router,
        schema_routes.router,
        schedules.router,
    ):
        v1.include_router(resource)
    app.include_router(v1)
    _install_public_routes(app, api)
    install_identity(app, API_PREFIX)  # roles, authentication, audit, OpenAPI (ADR 0046)
    return _with_tracing(app, settings)


def _install_public_routes(app: FastAPI, api: ApiSettings) -> None:
    """The routes outside /v1, which need no credential: health and the web console's files
    (code only; the console reads /v1 with the user's own credential)."""
    app.include_router(health.router)
    install_console(app, api.console_dir)


def _with_tracing(app: FastAPI, settings: Settings) -> FastAPI:
    """A span per request, outermost: refused requests are traced too (ADR 0062)."""
    app.add_middleware(TracingMiddleware, settings=settings)
    return app


def _close_views(alerts_view: LazyAlertsView, state: Any) -> None:
    """The topic views a request may have opened: alerts, schedules (ADR 0056)."""
    alerts_view.close()
    schedules.close_view(state)


def _install_limits_and_metrics(
    app: FastAPI, settings: Settings, api: ApiSettings, metrics: ApiMetrics
) -> RateLimiter | None:
    """The middleware between authentication (added later, outermost) and the routes, inner
    first: body and parse limits (ADR 0043), rate limits and quotas (ADR 0049), metrics.
    The rate limits sit outside the body limits (a refused request's body is never read),
    inside authentication (they need the tenant; an anonymous 401 costs no tenant a token)
    and inside the metrics (so 413s and 429s are counted). Returns the rate limiter (None when
    ``rate_enabled`` is off) for the lifespan to close; no I/O until the first request."""
    app.add_middleware(
        RequestLimitsMiddleware, max_bytes=api.max_body_bytes, routes=body_limits(api)
    )
    limiter = RateLimiter(settings, api, metrics) if api.rate_enabled else None
    if limiter is not None:
        app.add_middleware(RateLimitMiddleware, limiter=limiter, prefix=f"{API_PREFIX}/")
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return limiter


def _open_pool(settings: Settings, api: ApiSettings) -> ConnectionPool[Any]:
    """The Postgres pool, opened without waiting: the API starts even when Postgres is down
    (requests then answer 503). Where it connects is said once, never with a password."""
    pool: ConnectionPool[Any] = ConnectionPool(
        settings.postgres_dsn,
        min_size=api.pool_min_size,
        max_size=api.pool_max_size,
        kwargs={"autocommit": True},
        open=False,
        name="reflux-api",
    )
    log.info(
        "API starting: Postgres %s, Kafka %s",
        redact_credentials(settings.postgres_dsn),
        redact_credentials(settings.kafka_bootstrap),
    )
    pool.open(wait=False)
    return pool


def body_limits(api: ApiSettings) -> list[BodyLimit]:
    """Routes whose bodies may be larger (or must be smaller) than ``api.max_body_bytes``."""
    return [
        BodyLimit("POST", re.compile(f"{API_PREFIX}/runs/import"), api.max_import_body_bytes),
        # The step mailbox holds the body as it came: its own cap (node_workers.webhooks).
        BodyLimit("POST", re.compile(f"{API_PREFIX}/hooks/runs/[^/]+/steps/[^/]+"), MAX_BODY_BYTES),
        # An artifact carries its code and tests (node_workers.artifacts.bundle's own cap).
        BodyLimit("POST", re.compile(f"{API_PREFIX}/nodes/artifacts"), MAX_ARTIFACT_BYTES),
    ]
