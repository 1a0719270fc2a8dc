"""``/v1/metrics`` answers, and the window/bucket syntax of its query parameters.

Windows are written like ``90s``, ``15m``, ``1h``, ``1h30m``, ``7d`` or ``2w`` (units s, m, h,
d, w, largest first, each at most once). The rollup-based answers (nodes, workflows,
reliability) start at the beginning of the minute that contains ``until - window``; ``since`` in
every answer is the start actually covered.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Final

from pydantic import BaseModel, Field

from api.errors import FieldIssue, RequestInvalidError
from foundation.errors import NonRetryableError

__all__ = [
    "MAX_BUCKETS",
    "MAX_WINDOW",
    "FailureGroupPublic",
    "FailuresPublic",
    "IngestStatusPublic",
    "MetricsWindow",
    "NodeMetricsPublic",
    "NodesMetricsPublic",
    "QualityMetricsPublic",
    "QualityPublic",
    "ReliabilityCellPublic",
    "ReliabilityPublic",
    "WindowError",
    "WorkflowMetricsPublic",
    "WorkflowsMetricsPublic",
    "bucket_or_422",
    "parse_bucket",
    "parse_window",
    "until_or_422",
    "window_or_422",
]

MAX_WINDOW: Final = timedelta(days=90)
"""Beyond the traces topic's and the store's useful history; also bounds the query cost."""
MAX_BUCKETS: Final = 1440
"""Cells per node in a reliability matrix (one day of 1-minute buckets)."""

_UNITS: Final = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_WINDOW: Final = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


class WindowError(NonRetryableError):
    """A window or bucket that cannot be used; ``type`` is the 422 error type."""

    error_class = "WindowError"

    def __init__(self, message: str, type_: str = "window_invalid") -> None:
        super().__init__(message)
        self.type = type_


def _duration(text: str, name: str) -> timedelta:
    cleaned = text.strip().lower()
    match = _WINDOW.fullmatch(cleaned)
    if not cleaned or match is None:
        raise WindowError(
            f"Expected a {name} like '15m', '1h', '1h30m' or '7d' (units w, d, h, m, s, largest "
            f"first), but got {text!r}"
        )
    counts = zip(match.groups(), _UNITS.values(), strict=True)
    seconds = sum(int(n) * size for n, size in counts if n)
    if seconds == 0:
        raise WindowError(f"Expected a positive {name}, but got {text!r}")
    return timedelta(seconds=seconds)


def parse_window(text: str) -> timedelta:
    """``"1h30m"`` -> ``timedelta(hours=1, minutes=30)``; raises :class:`WindowError`."""
    window = _duration(text, "window")
    if window > MAX_WINDOW:
        raise WindowError(f"Expected a window of at most {MAX_WINDOW.days}d, but got {text!r}")
    return window


def parse_bucket(text: str, window: timedelta) -> timedelta:
    """A reliability bucket: whole minutes (the rollups' resolution), at most ``window`` and
    at most :data:`MAX_BUCKETS` of them in it."""
    bucket = _duration(text, "bucket")
    if bucket % timedelta(minutes=1):
        raise WindowError(
            f"Expected a bucket of whole minutes (the rollups are per minute), but got {text!r}",
            "bucket_invalid",
        )
    if bucket > window:
        raise WindowError(
            f"Expected a bucket no longer than the window ({window}), but got {text!r}",
            "bucket_invalid",
        )
    if window / bucket > MAX_BUCKETS:
        raise WindowError(
            f"Expected at most {MAX_BUCKETS} buckets per node, but window {window} / bucket "
            f"{text!r} makes {window // bucket}; use a larger bucket",
            "bucket_invalid",
        )
    return bucket


def window_or_422(text: str, field: str = "window") -> timedelta:
    try:
        return parse_window(text)
    except WindowError as exc:
        raise RequestInvalidError([FieldIssue(field, str(exc), exc.type)], ("query",)) from None


def bucket_or_422(text: str, window: timedelta) -> timedelta:
    try:
        return parse_bucket(text, window)
    except WindowError as exc:
        raise RequestInvalidError([FieldIssue("bucket", str(exc), exc.type)], ("query",)) from None


def until_or_422(until: datetime | None) -> datetime | None:
    if until is not None and until.tzinfo is None:
        raise RequestInvalidError(
            [
                FieldIssue(
                    "until",
                    "Expected a timezone-aware time (e.g. 2025-03-04T10:00:00Z), but got "
                    f"{until.isoformat()} without an offset",
                    "until_invalid",
                )
            ],
            ("query",),
        )
    return until


class MetricsWindow(BaseModel):
    window: str = Field(examples=["1h"], description="The window as requested.")
    since: datetime = Field(description="Start of the data covered (minute-aligned for rollups).")
    until: datetime


class NodeMetricsPublic(BaseModel):
    node: str
    node_version: str | None = Field(description="Set only with by_version=true.")
    attempts: int
    failures: int = Field(description="Attempts with status error or timeout.")
    error_rate: float = Field(description="failures / attempts, 0..1.")
    throughput_per_s: float
    cache_hits: int
    cache_hit_rate: float
    retried: int = Field(description="Attempts that were retries (retry_count > 0).")
    cost_tokens: int
    latency_ms_avg: float
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float


class NodesMetricsPublic(MetricsWindow):
    data: list[NodeMetricsPublic]


class WorkflowMetricsPublic(BaseModel):
    workflow_id: str
    workflow_version: int
    runs: int = Field(description="Runs with at least one traced attempt in the window.")
    failed_runs: int = Field(description="Runs with at least one failed attempt in the window.")
    success_rate: float = Field(description="1 - failed_runs / runs.")
    attempts: int
    failures: int
    error_rate: float
    throughput_per_s: float
    cache_hit_rate: float
    cost_tokens: int
    cost_tokens_per_run: float
    run_duration_ms_avg: float | None = Field(
        description="Traced span of a run in the window: first attempt start to last attempt "
        "end (the exact run duration is in GET /v1/runs/{id})."
    )
    run_duration_ms_p50: float | None
    run_duration_ms_p95: float | None
    run_duration_ms_p99: float | None
    step_latency_ms_p50: float
    step_latency_ms_p95: float
    step_latency_ms_p99: float


class WorkflowsMetricsPublic(MetricsWindow):
    data: list[WorkflowMetricsPublic]


class FailureGroupPublic(BaseModel):
    node: str
    error_class: str = Field(description="The error class, or the status when there was none.")
    failures: int
    runs: int
    retryable: int
    first_seen: datetime
    last_seen: datetime
    last_message: str


class FailuresPublic(MetricsWindow):
    data: list[FailureGroupPublic]


class ReliabilityCellPublic(BaseModel):
    node: str
    bucket_start: datetime
    attempts: int
    failures: int
    error_rate: float
    latency_ms_p95: float


class ReliabilityPublic(MetricsWindow):
    bucket: str = Field(examples=["5m"])
    nodes: list[str] = Field(description="Rows of the heatmap, sorted.")
    buckets: list[datetime] = Field(description="Columns: every bucket start with data, sorted.")
    cells: list[ReliabilityCellPublic] = Field(description="Only (node, bucket) pairs with data.")


class RetryMetricsPublic(BaseModel):
    node: str
    dependency: str = Field(
        description="What the retry budget and circuit are kept for: the node, or for "
        "http.request the node and the URL's host.",
        examples=["http.request api.example.com"],
    )
    retries: int = Field(description="Retries scheduled (a retry held again counts again).")
    retries_per_s: float
    held: int = Field(description="Retries that go later than their backoff.")
    held_by_budget: int = Field(description="Later because the retry budget was used up.")
    held_by_circuit: int = Field(description="Held by an open (or half-open) circuit.")
    held_ms_avg: float = Field(description="Mean extra wait of the held retries.")
    held_ms_max: int
    decided_while_open: int = Field(
        description="Retry decisions taken while the circuit was open or half-open."
    )
    last_circuit: str = Field(
        description="The circuit at the window's last retry decision: closed, open, half_open.",
        examples=["open"],
    )


class RetriesMetricsPublic(MetricsWindow):
    data: list[RetryMetricsPublic]


class QualityMetricsPublic(BaseModel):
    workflow_id: str
    workflow_version: int
    step_id: str = Field(
        description="The checker step, the step a feedback was about, or empty (a whole run)."
    )
    source: str = Field(description="checker or feedback.", examples=["checker"])
    scores: int
    runs: int = Field(description="Distinct runs scored.")
    score_avg: float = Field(description="Mean quality_score, 0..1.")
    score_min: float
    score_max: float


class QualityPublic(MetricsWindow):
    data: list[QualityMetricsPublic]


class IngestStatusPublic(BaseModel):
    rows: int = Field(description="Traces ingested.")
    error_rows: int = Field(description="Messages refused into traces_errors.")
    last_received_at: datetime | None
    lag_ms_p50: float | None = Field(description="Kafka -> queryable, over the last minute.")
    lag_ms_p99: float | None
