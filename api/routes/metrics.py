"""``/v1/metrics``: node, workflow, failure, reliability, retry and ingestion metrics from the
traces store (ClickHouse; :mod:`projections.traces.queries`).

Routes are plain ``def``: the queries block (chdb serialises them behind one lock), so FastAPI runs
them in its thread pool. A store that is off, unreachable or owned elsewhere answers 503 with the
reason; a failing query answers 503 too, naming ClickHouse, never a bare 500.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query

from api.auth.guard import PrincipalDep
from api.auth.tenancy import require_platform, workflow_scope
from api.deps import ApiSettingsDep, ClickHouseDep, ConnDep
from api.errors import UnavailableError
from api.models.common import ErrorMessage, IsoDateTime, errors
from api.models.metrics import (
    FailureGroupPublic,
    FailuresPublic,
    IngestStatusPublic,
    NodeMetricsPublic,
    NodesMetricsPublic,
    QualityMetricsPublic,
    QualityPublic,
    ReliabilityCellPublic,
    ReliabilityPublic,
    RetriesMetricsPublic,
    RetryMetricsPublic,
    WorkflowMetricsPublic,
    WorkflowsMetricsPublic,
    bucket_or_422,
    until_or_422,
    window_or_422,
)
from api.run_spans import run_spans
from projections.clickhouse import ClickHouseError
from projections.traces import queries
from projections.traces.queries import WorkflowScope

__all__ = ["router"]

router = APIRouter(prefix="/metrics", tags=["metrics"])

T = TypeVar("T")

RESPONSES: dict[int | str, dict[str, Any]] = {
    **errors(422),
    503: {
        "model": ErrorMessage,
        "description": "ClickHouse is not available (disabled in this API, unreachable, owned by "
        "another process, or not migrated); the detail says which",
    },
}

WindowQuery = Annotated[
    str, Query(description="How far back from `until`: 15m, 1h, 1h30m, 7d (max 90d).")
]
UntilQuery = Annotated[
    IsoDateTime | None,
    Query(description="End of the window, timezone-aware ISO 8601 (default: now)."),
]


def _tenant_scope(conn: ConnDep, api: ApiSettingsDep, principal: PrincipalDep) -> WorkflowScope:
    """The caller's tenant's workflows (ADR 0051)."""
    return workflow_scope(conn, api.read_schema, principal.tenant)


def _platform_only(principal: PrincipalDep) -> None:
    require_platform(principal, "node metrics, the reliability matrix, retries and ingestion")


TenantScopeDep = Annotated[WorkflowScope, Depends(_tenant_scope)]
PlatformOnlyDep = Annotated[None, Depends(_platform_only)]


def _ask(query: Callable[[], T]) -> T:
    try:
        return query()
    except ClickHouseError as exc:
        raise UnavailableError(f"ClickHouse could not answer the metrics query: {exc}") from None


def _rollup_since(end: datetime, window: timedelta) -> datetime:
    """The start the rollup queries really cover (see projections.traces.queries)."""
    start = end - window
    return start - timedelta(seconds=start.second, microseconds=start.microsecond)


# Parameters are parsed by dependencies declared *before* ClickHouseDep, so a bad window is a 422
# even when the store is unavailable (dependencies run in declaration order).


@dataclass(frozen=True, slots=True)
class Window:
    text: str
    span: timedelta
    end: datetime


def window_param(window: WindowQuery = "1h", until: UntilQuery = None) -> Window:
    return Window(window, window_or_422(window), until_or_422(until) or datetime.now(UTC))


WindowDep = Annotated[Window, Depends(window_param)]


def bucket_param(
    window: WindowDep,
    bucket: Annotated[
        str, Query(description="Cell width in whole minutes: 1m, 5m, 1h (max 1440 per node).")
    ] = "5m",
) -> tuple[str, timedelta]:
    return bucket, bucket_or_422(bucket, window.span)


BucketDep = Annotated[tuple[str, timedelta], Depends(bucket_param)]


@router.get(
    "/nodes",
    response_model=NodesMetricsPublic,
    summary="Per-node latency, error rate, throughput, cache hit rate and cost",
    responses=RESPONSES,
)
def nodes(
    window: WindowDep,
    api: ApiSettingsDep,
    ch: ClickHouseDep,
    _platform: PlatformOnlyDep,
    node: Annotated[str | None, Query(description="Only this node.")] = None,
    by_version: Annotated[bool, Query(description="One row per (node, version).")] = False,
) -> NodesMetricsPublic:
    """Busiest first. Latency quantiles include cache hits; a failure is status error or
    timeout."""
    span, end = window.span, window.end
    rows = _ask(
        lambda: queries.node_metrics(
            ch, span, node, by_version=by_version, until=end, database=api.clickhouse_database
        )
    )
    return NodesMetricsPublic(
        window=window.text,
        since=_rollup_since(end, span),
        until=end,
        data=[
            NodeMetricsPublic(
                node=r.node,
                node_version=r.node_version,
                attempts=r.attempts,
                failures=r.failures,
                error_rate=r.error_rate,
                throughput_per_s=r.throughput_per_s,
                cache_hits=r.cache_hits,
                cache_hit_rate=r.cache_hit_rate,
                retried=r.retried,
                cost_tokens=r.cost_tokens,
                latency_ms_avg=r.latency_ms_avg,
                latency_ms_p50=r.latency_ms_p50,
                latency_ms_p95=r.latency_ms_p95,
                latency_ms_p99=r.latency_ms_p99,
            )
            for r in rows
        ],
    )


@router.get(
    "/workflows",
    response_model=WorkflowsMetricsPublic,
    summary="Per workflow version: runs, success rate, cost, run duration, step latency",
    responses=RESPONSES,
)
def workflows(
    window: WindowDep,
    api: ApiSettingsDep,
    ch: ClickHouseDep,
    scope: TenantScopeDep,
    workflow_id: Annotated[str | None, Query(description="Only this workflow.")] = None,
) -> WorkflowsMetricsPublic:
    """From traces: a run counts when it has attempts in the window, and fails when one of
    them failed (a retried-then-successful step still counts as a failed attempt)."""
    span, end = window.span, window.end
    since = _rollup_since(end, span)
    db = api.clickhouse_database
    rows = _ask(
        lambda: queries.workflow_metrics(
            ch, span, workflow_id=workflow_id, scope=scope, until=end, database=db
        )
    )
    spans = _ask(lambda: run_spans(ch, since, end, database=db)) if rows else {}
    data = []
    for r in rows:
        s = spans.get((r.workflow_id, r.workflow_version))
        data.append(
            WorkflowMetricsPublic(
                workflow_id=r.workflow_id,
                workflow_version=r.workflow_version,
                runs=r.runs,
                failed_runs=r.failed_runs,
                success_rate=1 - r.failed_runs / r.runs if r.runs else 0.0,
                attempts=r.attempts,
                failures=r.failures,
                error_rate=r.error_rate,
                throughput_per_s=r.throughput_per_s,
                cache_hit_rate=r.cache_hit_rate,
                cost_tokens=r.cost_tokens,
                cost_tokens_per_run=r.cost_tokens / r.runs if r.runs else 0.0,
                run_duration_ms_avg=s.avg_ms if s else None,
                run_duration_ms_p50=s.p50_ms if s else None,
                run_duration_ms_p95=s.p95_ms if s else None,
                run_duration_ms_p99=s.p99_ms if s else None,
                step_latency_ms_p50=r.step_latency_ms_p50,
                step_latency_ms_p95=r.step_latency_ms_p95,
                step_latency_ms_p99=r.step_latency_ms_p99,
            )
        )
    return WorkflowsMetricsPublic(window=window.text, since=since, until=end, data=data)


@router.get(
    "/failures",
    response_model=FailuresPublic,
    summary="Top failures by (node, error class)",
    responses=RESPONSES,
)
def failures(
    window: WindowDep,
    api: ApiSettingsDep,
    ch: ClickHouseDep,
    scope: TenantScopeDep,
    *,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    node: Annotated[str | None, Query(description="Only this node.")] = None,
) -> FailuresPublic:
    """Most frequent first, over the exact window (raw traces)."""
    span, end = window.span, window.end
    rows = _ask(
        lambda: queries.top_failures(
            ch, span, limit, node=node, scope=scope, until=end, database=api.clickhouse_database
        )
    )
    return FailuresPublic(
        window=window.text,
        since=end - span,
        until=end,
        data=[
            FailureGroupPublic(
                node=r.node,
                error_class=r.error_class,
                failures=r.failures,
                runs=r.runs,
                retryable=r.retryable,
                first_seen=r.first_seen,
                last_seen=r.last_seen,
                last_message=r.last_message,
            )
            for r in rows
        ],
    )


@router.get(
    "/reliability",
    response_model=ReliabilityPublic,
    summary="Node x time-bucket error rate and p95 latency (the reliability heatmap)",
    responses=RESPONSES,
)
def reliability(
    window: WindowDep,
    bucket: BucketDep,
    api: ApiSettingsDep,
    ch: ClickHouseDep,
    _platform: PlatformOnlyDep,
) -> ReliabilityPublic:
    """Buckets are aligned to the epoch; only cells with attempts are listed."""
    span, end = window.span, window.end
    bucket_text, width = bucket
    cells = _ask(
        lambda: queries.reliability_matrix(
            ch, span, width, until=end, database=api.clickhouse_database
        )
    )
    return ReliabilityPublic(
        window=window.text,
        since=_rollup_since(end, span),
        until=end,
        bucket=bucket_text,
        nodes=sorted({c.node for c in cells}),
        buckets=sorted({c.bucket_start for c in cells}),
        cells=[
            ReliabilityCellPublic(
                node=c.node,
                bucket_start=c.bucket_start,
                attempts=c.attempts,
                failures=c.failures,
                error_rate=c.error_rate,
                latency_ms_p95=c.latency_ms_p95,
            )
            for c in cells
        ],
    )


@router.get(
    "/quality",
    response_model=QualityPublic,
    summary="Quality scores per workflow version, step and source (checker steps, feedback)",
    responses=RESPONSES,
)
def quality(
    window: WindowDep,
    api: ApiSettingsDep,
    ch: ClickHouseDep,
    scope: TenantScopeDep,
    workflow_id: Annotated[str | None, Query(description="Only this workflow.")] = None,
) -> QualityPublic:
    """From traces carrying ``metrics.quality_score`` (docs/decisions/0035)."""
    span, end = window.span, window.end
    db = api.clickhouse_database
    rows = _ask(
        lambda: queries.quality_metrics(
            ch, span, workflow_id=workflow_id, scope=scope, until=end, database=db
        )
    )
    return QualityPublic(
        window=window.text,
        since=_rollup_since(end, span),
        until=end,
        data=[
            QualityMetricsPublic(
                workflow_id=r.workflow_id,
                workflow_version=r.workflow_version,
                step_id=r.step_id,
                source=r.source,
                scores=r.scores,
                runs=r.runs,
                score_avg=r.score_avg,
                score_min=r.score_min,
                score_max=r.score_max,
            )
            for r in rows
        ],
    )


@router.get(
    "/retries",
    response_model=RetriesMetricsPublic,
    summary="Retries per node and dependency: held by the retry budget or the circuit, and the "
    "circuit's state",
    responses=RESPONSES,
)
def retries(
    window: WindowDep,
    api: ApiSettingsDep,
    ch: ClickHouseDep,
    _platform: PlatformOnlyDep,
    node: Annotated[str | None, Query(description="Only this node.")] = None,
) -> RetriesMetricsPublic:
    """Most retries first. From the scheduler's traces of its retry decisions
    (docs/decisions/0020-retry-budget-and-circuit.md)."""
    span, end = window.span, window.end
    rows = _ask(
        lambda: queries.retry_metrics(ch, span, node, until=end, database=api.clickhouse_database)
    )
    return RetriesMetricsPublic(
        window=window.text,
        since=_rollup_since(end, span),
        until=end,
        data=[
            RetryMetricsPublic(
                node=r.node,
                dependency=r.dependency,
                retries=r.retries,
                retries_per_s=r.retries_per_s,
                held=r.held,
                held_by_budget=r.held_by_budget,
                held_by_circuit=r.held_by_circuit,
                held_ms_avg=r.held_ms_avg,
                held_ms_max=r.held_ms_max,
                decided_while_open=r.decided_while_open,
                last_circuit=r.last_circuit,
            )
            for r in rows
        ],
    )


@router.get(
    "/ingest",
    response_model=IngestStatusPublic,
    summary="Ingestion status of the traces store: rows, refused rows, lag",
    responses={503: RESPONSES[503]},
)
def ingest(
    ch: ClickHouseDep, api: ApiSettingsDep, _platform: PlatformOnlyDep
) -> IngestStatusPublic:
    status = _ask(lambda: queries.ingest_status(ch, database=api.clickhouse_database))
    return IngestStatusPublic(
        rows=status.rows,
        error_rows=status.error_rows,
        last_received_at=status.last_received_at,
        lag_ms_p50=status.lag_ms_p50,
        lag_ms_p99=status.lag_ms_p99,
    )
