"""``/healthz`` (the process answers), ``/readyz`` (Postgres and Kafka answer) and ``/metrics``
(Prometheus text format). Not under ``/v1``: probes and scrapers use fixed paths."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import ApiSettingsDep, PoolDep, PrometheusDep, SettingsDep
from api.models.health import CheckResult, Health, Readiness
from api.prometheus import CONTENT_TYPE_LATEST

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    return Health()


def _check_postgres(pool: Any, timeout: float) -> CheckResult:
    try:
        with pool.connection(timeout=timeout) as conn:
            conn.execute("SELECT 1").fetchone()
    except Exception as exc:
        return CheckResult(ok=False, detail=f"Postgres is unreachable: {type(exc).__name__}: {exc}")
    return CheckResult(ok=True)


def _check_kafka(admin: Any, bootstrap: str, timeout: float) -> CheckResult:
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception as exc:
        return CheckResult(ok=False, detail=f"Kafka metadata at {bootstrap} is unreachable: {exc}")
    if not metadata.brokers:
        return CheckResult(ok=False, detail=f"Kafka at {bootstrap} reports no brokers")
    return CheckResult(ok=True)


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: Postgres and Kafka are reachable",
    responses={503: {"model": Readiness, "description": "A dependency is unreachable"}},
)
async def readyz(
    request: Request,
    response: Response,
    settings: SettingsDep,
    api: ApiSettingsDep,
    pool: PoolDep,
) -> Readiness:
    timeout = api.readiness_timeout_s
    checks = {
        "postgres": await run_in_threadpool(_check_postgres, pool, timeout),
        "kafka": await run_in_threadpool(
            _check_kafka, request.app.state.admin, settings.kafka_bootstrap, timeout
        ),
    }
    ready = all(check.ok for check in checks.values())
    if not ready:
        response.status_code = 503
    return Readiness(status="ready" if ready else "unavailable", checks=checks)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Text exposition"}},
)
def metrics(app_metrics: PrometheusDep) -> Response:
    return Response(content=app_metrics.render(), media_type=CONTENT_TYPE_LATEST)
