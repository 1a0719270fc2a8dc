"""Read-side queries over the traces store, for the API, dashboards and the critic.

Every function takes the :class:`~projections.clickhouse.ClickHouse` interface, so the same code
runs in the process that owns the embedded store and against a ClickHouse server.

Windows: ``window`` ends at ``until`` (default: now) and starts ``window`` earlier. The
aggregate queries read the per-minute rollups (002_trace_rollups.sql), so their window starts
at the beginning of the minute that contains ``until - window``; rates are divided by the span
actually covered. :func:`top_failures` reads raw traces and uses the exact window.

A failure is an attempt with status ``error`` or ``timeout``. Latency quantiles cover every
attempt (cache hits included) and interpolate linearly between samples; they are exact up to
8192 samples per group and a reservoir sample beyond (ClickHouse ``quantiles``).

The scheduler's traces of retry decisions (``context['kind'] = 'retry'``) are not attempts: the
attempt rollups and :func:`top_failures` leave them out; :func:`retry_metrics` reads their own
rollup (004_retry_metrics.sql). Feedback traces (``context['kind'] = 'feedback'``, ADR 0035)
are not attempts either; :func:`quality_metrics` and :func:`run_quality` read the quality scores
(``metrics['quality_score']``) of checker steps and feedback.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from foundation.errors import NonRetryableError
from projections.clickhouse import ClickHouse
from projections.traces.migrations import DEFAULT_DATABASE, validate_database

__all__ = [
    "FailureGroup",
    "IngestStatus",
    "NodeMetrics",
    "QualityMetrics",
    "QualityScore",
    "QueryError",
    "ReliabilityCell",
    "RetryMetrics",
    "WorkflowMetrics",
    "ingest_status",
    "node_metrics",
    "quality_metrics",
    "reliability_matrix",
    "retry_metrics",
    "run_quality",
    "top_failures",
    "workflow_metrics",
]

_MINUTE: Final = timedelta(minutes=1)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class QueryError(NonRetryableError):
    error_class = "TraceQuery"


@dataclass(frozen=True, slots=True)
class NodeMetrics:
    node: str
    node_version: str | None
    """Set when grouped by version; ``None`` when aggregated over every version."""
    attempts: int
    failures: int
    error_rate: float
    throughput_per_s: float
    cache_hits: int
    cache_hit_rate: float
    retried: int
    """Attempts with retry_count > 0."""
    cost_tokens: int
    latency_ms_avg: float
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float


@dataclass(frozen=True, slots=True)
class WorkflowMetrics:
    workflow_id: str
    workflow_version: int
    runs: int
    """Distinct runs with at least one attempt in the window (approximate beyond ~10k: uniq)."""
    failed_runs: int
    attempts: int
    failures: int
    error_rate: float
    throughput_per_s: float
    cache_hit_rate: float
    cost_tokens: int
    step_latency_ms_p50: float
    step_latency_ms_p95: float
    step_latency_ms_p99: float


@dataclass(frozen=True, slots=True)
class FailureGroup:
    node: str
    error_class: str
    """The trace's error class; the status (e.g. ``"timeout"``) when the trace carried none."""
    failures: int
    runs: int
    retryable: int
    """Failures whose error said another attempt may succeed."""
    first_seen: datetime
    last_seen: datetime
    last_message: str


@dataclass(frozen=True, slots=True)
class ReliabilityCell:
    node: str
    bucket_start: datetime
    attempts: int
    failures: int
    error_rate: float
    latency_ms_p95: float


@dataclass(frozen=True, slots=True)
class RetryMetrics:
    """Retry decisions for one (node, dependency) in the window (docs/decisions/0020)."""

    node: str
    dependency: str
    """What the retry budget and circuit are kept for: the node, or ``http.request <host>``."""
    retries: int
    """Retries scheduled (StepRetryScheduled, a held retry held again counts again)."""
    retries_per_s: float
    held: int
    """Retries that go later than their backoff: over the budget, or held by the circuit."""
    held_by_budget: int
    held_by_circuit: int
    """Held because the circuit was open, or half-open with its probes out."""
    held_ms_avg: float
    """Mean extra wait of the held ones."""
    held_ms_max: int
    decided_while_open: int
    """Retry decisions taken while the circuit was open or half-open."""
    last_circuit: str
    """The circuit's state at the window's last retry decision: closed, open or half_open."""


@dataclass(frozen=True, slots=True)
class QualityMetrics:
    """Quality scores of one (workflow version, step, source) in the window (ADR 0035)."""

    workflow_id: str
    workflow_version: int
    step_id: str
    """The checker step, the step a feedback was about, or ``""`` for feedback on a whole run."""
    source: str
    """``checker`` or ``feedback``."""
    scores: int
    runs: int
    """Distinct runs scored (approximate beyond ~10k: uniq)."""
    score_avg: float
    score_min: float
    score_max: float


@dataclass(frozen=True, slots=True)
class QualityScore:
    """One quality score of a run: a checker step's attempt or a feedback."""

    run_id: str
    workflow_id: str
    workflow_version: int
    step_id: str
    source: str
    score: float
    at: datetime
    feedback_id: str | None
    label: str | None
    comment: str | None


@dataclass(frozen=True, slots=True)
class IngestStatus:
    rows: int
    error_rows: int
    last_received_at: datetime | None
    lag_ms_p50: float | None
    """received_at - produced_at over the last minute of ingested rows."""
    lag_ms_p99: float | None


@dataclass(frozen=True, slots=True)
class WorkflowScope:
    """Which workflows' rows a query sees: a tenant's (ADR 0051). ``only``: these and no
    other (an empty tuple matches none); ``besides``: every workflow but these."""

    only: tuple[str, ...] | None = None
    besides: tuple[str, ...] = ()

    @property
    def sql(self) -> str:
        if self.only is not None:
            return "AND has(%(scope_only)s, workflow_id) "
        return "AND NOT has(%(scope_besides)s, workflow_id) " if self.besides else ""

    @property
    def params(self) -> dict[str, Any]:
        return {"scope_only": list(self.only or ()), "scope_besides": list(self.besides)}


def _millis(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise QueryError(f"Expected a timezone-aware datetime, but got naive {moment.isoformat()}")
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _positive(name: str, value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise QueryError(f"Expected a positive {name}, but got {value}")
    return value


def _span(window: timedelta, until: datetime | None) -> tuple[datetime, datetime, float]:
    """(minute-aligned start, end, seconds covered) of a rollup window."""
    _positive("window", window)
    end = until or datetime.now(UTC)
    start = end - window
    start -= timedelta(seconds=start.second, microseconds=start.microsecond)
    return start, end, max((end - start).total_seconds(), 1e-3)


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _when(value: Any) -> datetime:
    # JSONEachRow gives "YYYY-MM-DD hh:mm:ss[.fff]" in the column's zone (UTC for every column
    # here); a server client gives datetimes.
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


_WINDOW_SQL: Final = (
    "minute >= fromUnixTimestamp64Milli(toInt64(%(since_ms)s), 'UTC') "
    "AND minute <= fromUnixTimestamp64Milli(toInt64(%(until_ms)s), 'UTC')"
)


def node_metrics(
    ch: ClickHouse,
    window: timedelta,
    node: str | None = None,
    *,
    by_version: bool = False,
    until: datetime | None = None,
    database: str = DEFAULT_DATABASE,
) -> list[NodeMetrics]:
    """Per-node latency quantiles, error rate, throughput, cache hit rate and cost, busiest
    first; one row per (node, version) with ``by_version``."""
    db = validate_database(database)
    since, end, seconds = _span(window, until)
    version = "node_version" if by_version else "CAST(NULL, 'Nullable(String)')"
    rows = ch.query(
        f"SELECT node, {version} AS version, sum(attempts) AS attempts, "
        "sum(failures) AS failures, sum(cache_hits) AS cache_hits, sum(retried) AS retried, "
        "sum(cost_tokens) AS cost_tokens, sum(latency_ms_sum) AS latency_ms_sum, "
        "quantilesMerge(0.5, 0.95, 0.99)(latency_ms_quantiles) AS q "
        f"FROM {db}.node_metrics_1m WHERE {_WINDOW_SQL} "
        + ("AND node = %(node)s " if node is not None else "")
        + "GROUP BY node, version ORDER BY attempts DESC, node, version",
        {"since_ms": _millis(since), "until_ms": _millis(end), "node": node},
    )
    out: list[NodeMetrics] = []
    for r in rows:
        attempts = int(r["attempts"])
        p50, p95, p99 = (float(x) for x in r["q"])
        out.append(
            NodeMetrics(
                node=str(r["node"]),
                node_version=None if r["version"] is None else str(r["version"]),
                attempts=attempts,
                failures=int(r["failures"]),
                error_rate=_ratio(int(r["failures"]), attempts),
                throughput_per_s=attempts / seconds,
                cache_hits=int(r["cache_hits"]),
                cache_hit_rate=_ratio(int(r["cache_hits"]), attempts),
                retried=int(r["retried"]),
                cost_tokens=int(r["cost_tokens"]),
                latency_ms_avg=int(r["latency_ms_sum"]) / attempts if attempts else 0.0,
                latency_ms_p50=p50,
                latency_ms_p95=p95,
                latency_ms_p99=p99,
            )
        )
    return out


def workflow_metrics(
    ch: ClickHouse,
    window: timedelta,
    *,
    workflow_id: str | None = None,
    scope: WorkflowScope | None = None,
    until: datetime | None = None,
    database: str = DEFAULT_DATABASE,
) -> list[WorkflowMetrics]:
    """Per workflow version: runs, failures, cache hit rate, cost and step latency.

    Run durations are not here: a run's span is known exactly from RunStarted/RunSucceeded in the
    Postgres read models, not from the attempts that happen to be traced.
    """
    db = validate_database(database)
    since, end, seconds = _span(window, until)
    rows = ch.query(
        "SELECT workflow_id, workflow_version, uniqMerge(runs) AS runs, "
        "uniqIfMerge(failed_runs) AS failed_runs, sum(attempts) AS attempts, "
        "sum(failures) AS failures, sum(cache_hits) AS cache_hits, "
        "sum(cost_tokens) AS cost_tokens, "
        "quantilesMerge(0.5, 0.95, 0.99)(latency_ms_quantiles) AS q "
        f"FROM {db}.workflow_metrics_1m WHERE {_WINDOW_SQL} "
        + ("AND workflow_id = %(workflow_id)s " if workflow_id is not None else "")
        + (scope.sql if scope is not None else "")
        + "GROUP BY workflow_id, workflow_version "
        "ORDER BY attempts DESC, workflow_id, workflow_version",
        {
            "since_ms": _millis(since),
            "until_ms": _millis(end),
            "workflow_id": workflow_id,
            **(scope.params if scope is not None else {}),
        },
    )
    out: list[WorkflowMetrics] = []
    for r in rows:
        attempts = int(r["attempts"])
        p50, p95, p99 = (float(x) for x in r["q"])
        out.append(
            WorkflowMetrics(
                workflow_id=str(r["workflow_id"]),
                workflow_version=int(r["workflow_version"]),
                runs=int(r["runs"]),
                failed_runs=int(r["failed_runs"]),
                attempts=attempts,
                failures=int(r["failures"]),
                error_rate=_ratio(int(r["failures"]), attempts),
                throughput_per_s=attempts / seconds,
                cache_hit_rate=_ratio(int(r["cache_hits"]), attempts),
                cost_tokens=int(r["cost_tokens"]),
                step_latency_ms_p50=p50,
                step_latency_ms_p95=p95,
                step_latency_ms_p99=p99,
            )
        )
    return out


def top_failures(
    ch: ClickHouse,
    window: timedelta,
    limit: int = 10,
    *,
    node: str | None = None,
    scope: WorkflowScope | None = None,
    until: datetime | None = None,
    database: str = DEFAULT_DATABASE,
) -> list[FailureGroup]:
    """The most frequent (node, error class) failures in the exact window, most frequent first."""
    db = validate_database(database)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise QueryError(f"Expected a positive integer limit, but got {limit!r}")
    end = until or datetime.now(UTC)
    since = end - _positive("window", window)
    rows = ch.query(
        "SELECT toString(node) AS node, "
        "ifNull(error_class, toString(status)) AS error_class_or_status, count() AS failures, "
        "uniqExact(run_id) AS runs, countIf(error_retryable = true) AS retryable, "
        "min(start) AS first_seen, max(start) AS last_seen, "
        "argMax(ifNull(error_message, ''), start) AS last_message "
        f"FROM {db}.traces "
        "WHERE start >= fromUnixTimestamp64Milli(toInt64(%(since_ms)s), 'UTC') "
        "AND start <= fromUnixTimestamp64Milli(toInt64(%(until_ms)s), 'UTC') "
        "AND status IN ('error', 'timeout') AND context['kind'] NOT IN ('retry', 'feedback') "
        + ("AND node = %(node)s " if node is not None else "")
        + (scope.sql if scope is not None else "")
        + "GROUP BY node, error_class_or_status "
        "ORDER BY failures DESC, node, error_class_or_status LIMIT %(limit)s",
        {
            "since_ms": _millis(since),
            "until_ms": _millis(end),
            "node": node,
            "limit": limit,
            **(scope.params if scope is not None else {}),
        },
    )
    return [
        FailureGroup(
            node=str(r["node"]),
            error_class=str(r["error_class_or_status"]),
            failures=int(r["failures"]),
            runs=int(r["runs"]),
            retryable=int(r["retryable"]),
            first_seen=_when(r["first_seen"]),
            last_seen=_when(r["last_seen"]),
            last_message=str(r["last_message"]),
        )
        for r in rows
    ]


def reliability_matrix(
    ch: ClickHouse,
    window: timedelta,
    bucket: timedelta,
    *,
    until: datetime | None = None,
    database: str = DEFAULT_DATABASE,
) -> list[ReliabilityCell]:
    """Node x time-bucket cells (the reliability heatmap), ordered by node then time.

    ``bucket`` is a whole number of minutes, the resolution of the rollups. Buckets are aligned
    to the epoch (as ``toStartOfInterval``), and only buckets with attempts are returned.
    """
    db = validate_database(database)
    _positive("bucket", bucket)
    if bucket % _MINUTE:
        raise QueryError(f"Expected a bucket of whole minutes, but got {bucket}")
    since, end, _ = _span(window, until)
    rows = ch.query(
        "SELECT toString(node) AS node, "
        "toStartOfInterval(minute, toIntervalMinute(%(minutes)s)) AS bucket_start, "
        "sum(attempts) AS attempts, sum(failures) AS failures, "
        "quantilesMerge(0.95)(latency_ms_quantiles)[1] AS p95 "
        f"FROM {db}.node_metrics_1m WHERE {_WINDOW_SQL} "
        "GROUP BY node, bucket_start ORDER BY node, bucket_start",
        {
            "since_ms": _millis(since),
            "until_ms": _millis(end),
            "minutes": bucket // _MINUTE,
        },
    )
    return [
        ReliabilityCell(
            node=str(r["node"]),
            bucket_start=_when(r["bucket_start"]),
            attempts=int(r["attempts"]),
            failures=int(r["failures"]),
            error_rate=_ratio(int(r["failures"]), int(r["attempts"])),
            latency_ms_p95=float(r["p95"]),
        )
        for r in rows
    ]


def retry_metrics(
    ch: ClickHouse,
    window: timedelta,
    node: str | None = None,
    *,
    until: datetime | None = None,
    database: str = DEFAULT_DATABASE,
) -> list[RetryMetrics]:
    """Retries per (node, dependency): how many, how many the budget or the circuit held and
    for how long, and the circuit's last state; most retries first."""
    db = validate_database(database)
    since, end, seconds = _span(window, until)
    rows = ch.query(
        "SELECT toString(node) AS node, dependency, sum(retries) AS retries, sum(held) AS held, "
        "sum(held_by_budget) AS by_budget, sum(held_by_circuit) AS by_circuit, "
        "sum(held_ms_sum) AS held_ms_sum, max(held_ms_max) AS held_ms_max, "
        "sum(circuit_open) AS circuit_open, argMaxMerge(last_circuit) AS last_circuit "
        f"FROM {db}.retry_metrics_1m WHERE {_WINDOW_SQL} "
        + ("AND node = %(node)s " if node is not None else "")
        + "GROUP BY node, dependency ORDER BY retries DESC, node, dependency",
        {"since_ms": _millis(since), "until_ms": _millis(end), "node": node},
    )
    out: list[RetryMetrics] = []
    for r in rows:
        held = int(r["held"])
        out.append(
            RetryMetrics(
                node=str(r["node"]),
                dependency=str(r["dependency"]),
                retries=int(r["retries"]),
                retries_per_s=int(r["retries"]) / seconds,
                held=held,
                held_by_budget=int(r["by_budget"]),
                held_by_circuit=int(r["by_circuit"]),
                held_ms_avg=int(r["held_ms_sum"]) / held if held else 0.0,
                held_ms_max=int(r["held_ms_max"]),
                decided_while_open=int(r["circuit_open"]),
                last_circuit=str(r["last_circuit"]),
            )
        )
    return out


def quality_metrics(
    ch: ClickHouse,
    window: timedelta,
    *,
    workflow_id: str | None = None,
    scope: WorkflowScope | None = None,
    until: datetime | None = None,
    database: str = DEFAULT_DATABASE,
) -> list[QualityMetrics]:
    """Per (workflow version, step, source): how many scores, of how many runs, their mean,
    min and max (006_quality_scores.sql)."""
    db = validate_database(database)
    since, end, _ = _span(window, until)
    rows = ch.query(
        "SELECT workflow_id, workflow_version, step_id, source, sum(scores) AS scores, "
        "uniqMerge(runs) AS runs, sum(score_sum) AS score_sum, min(score_min) AS score_min, "
        "max(score_max) AS score_max "
        f"FROM {db}.quality_metrics_1m WHERE {_WINDOW_SQL} "
        + ("AND workflow_id = %(workflow_id)s " if workflow_id is not None else "")
        + (scope.sql if scope is not None else "")
        + "GROUP BY workflow_id, workflow_version, step_id, source "
        "ORDER BY workflow_id, workflow_version, step_id, source",
        {
            "since_ms": _millis(since),
            "until_ms": _millis(end),
            "workflow_id": workflow_id,
            **(scope.params if scope is not None else {}),
        },
    )
    return [
        QualityMetrics(
            workflow_id=str(r["workflow_id"]),
            workflow_version=int(r["workflow_version"]),
            step_id=str(r["step_id"]),
            source=str(r["source"]),
            scores=int(r["scores"]),
            runs=int(r["runs"]),
            score_avg=float(r["score_sum"]) / int(r["scores"]) if int(r["scores"]) else 0.0,
            score_min=float(r["score_min"]),
            score_max=float(r["score_max"]),
        )
        for r in rows
    ]


def run_quality(
    ch: ClickHouse, run_id: str, *, limit: int = 1000, database: str = DEFAULT_DATABASE
) -> list[QualityScore]:
    """Every quality score of one run (checker steps and feedback), oldest first; a redelivered
    trace counts once (``event_id``)."""
    db = validate_database(database)
    rows = ch.query(
        "SELECT any(workflow_id) AS workflow_id, any(workflow_version) AS workflow_version, "
        "any(step_id) AS step_id, any(context) AS context, "
        "any(metrics['quality_score']) AS score, any(start) AS at "
        f"FROM {db}.traces WHERE run_id = %(run_id)s AND mapContains(metrics, 'quality_score') "
        "GROUP BY event_id ORDER BY at, event_id LIMIT %(limit)s",
        {"run_id": run_id, "limit": int(limit)},
    )
    out: list[QualityScore] = []
    for r in rows:
        context = {str(k): str(v) for k, v in dict(r["context"]).items()}
        feedback = context.get("kind") == "feedback"
        out.append(
            QualityScore(
                run_id=run_id,
                workflow_id=str(r["workflow_id"]),
                workflow_version=int(r["workflow_version"]),
                step_id=str(r["step_id"]),
                source="feedback" if feedback else "checker",
                score=float(r["score"]),
                at=_when(r["at"]),
                feedback_id=context.get("feedback_id") if feedback else None,
                label=context.get("label"),
                comment=context.get("comment"),
            )
        )
    return out


def ingest_status(ch: ClickHouse, *, database: str = DEFAULT_DATABASE) -> IngestStatus:
    """Rows ingested, rows refused, and the recent Kafka -> queryable lag."""
    db = validate_database(database)
    totals = ch.query(
        f"SELECT (SELECT count() FROM {db}.traces) AS rows, "
        f"(SELECT count() FROM {db}.traces_errors) AS error_rows"
    )[0]
    recent = ch.query(
        "SELECT count() AS n, max(received_at) AS last, "
        "quantiles(0.5, 0.99)(dateDiff('millisecond', produced_at, received_at)) AS lag "
        f"FROM {db}.traces WHERE received_at >= "
        f"(SELECT max(received_at) FROM {db}.traces) - INTERVAL 1 MINUTE"
    )[0]
    has_rows = int(recent["n"]) > 0
    return IngestStatus(
        rows=int(totals["rows"]),
        error_rows=int(totals["error_rows"]),
        last_received_at=_when(recent["last"]) if has_rows else None,
        lag_ms_p50=float(recent["lag"][0]) if has_rows else None,
        lag_ms_p99=float(recent["lag"][1]) if has_rows else None,
    )
