"""Run durations as the traces see them, per workflow version (for ``/v1/metrics/workflows``).

A run's *traced span* is its first attempt's start to its last attempt's end, over the attempts
that started in the window; the runs read model has the exact duration of each run, but not in
the store the metrics come from. Reads raw ``traces`` (the rollups have no per-run state).
Duplicated rows (at-least-once ingestion) change neither min(start) nor max(end).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from projections.clickhouse import ClickHouse
from projections.traces.migrations import DEFAULT_DATABASE, validate_database

__all__ = ["RunSpans", "run_spans"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class RunSpans:
    runs: int
    avg_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def _millis(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def run_spans(
    ch: ClickHouse,
    since: datetime,
    until: datetime,
    *,
    database: str = DEFAULT_DATABASE,
) -> dict[tuple[str, int], RunSpans]:
    """(workflow_id, workflow_version) -> span statistics of its runs in [since, until]."""
    db = validate_database(database)
    rows = ch.query(
        "SELECT workflow_id, workflow_version, count() AS runs, avg(span_ms) AS avg_ms, "
        "quantiles(0.5, 0.95, 0.99)(span_ms) AS q FROM ("
        "SELECT workflow_id, workflow_version, run_id, "
        "greatest(dateDiff('millisecond', min(start), max(`end`)), 0) AS span_ms "
        f"FROM {db}.traces "
        "WHERE start >= fromUnixTimestamp64Milli(toInt64(%(since_ms)s), 'UTC') "
        "AND start <= fromUnixTimestamp64Milli(toInt64(%(until_ms)s), 'UTC') "
        # Retry decisions are waits, feedback comes later: neither is an attempt of the run.
        "AND context['kind'] NOT IN ('retry', 'feedback') "
        "GROUP BY workflow_id, workflow_version, run_id) "
        "GROUP BY workflow_id, workflow_version",
        {"since_ms": _millis(since), "until_ms": _millis(until)},
    )
    out: dict[tuple[str, int], RunSpans] = {}
    for r in rows:
        p50, p95, p99 = (float(x) for x in r["q"])
        out[(str(r["workflow_id"]), int(r["workflow_version"]))] = RunSpans(
            runs=int(r["runs"]), avg_ms=float(r["avg_ms"]), p50_ms=p50, p95_ms=p95, p99_ms=p99
        )
    return out
