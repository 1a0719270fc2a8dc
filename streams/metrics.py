"""Prometheus metrics of the stream components (scheduler, workers, projector): one registry per
process and a small HTTP server for ``/metrics`` (docs/metrics.md, ADR 0060).

Off unless :func:`serve` is called (``--metrics-port`` / ``REFLUX_METRICS_PORT``): the counters
below are always updated (a ``prometheus_client`` counter increment is a lock and an add, far
below a Kafka transaction), but nothing listens and consumers collect no statistics.

Consumer lag comes from librdkafka's own statistics, not from watermark queries: with
``statistics.interval.ms`` set, every consumer emits a JSON report (from inside ``poll``, on the
consuming thread) whose ``consumer_lag`` per partition is the high watermark (or last stable
offset, read_committed) minus the consumer's position. Watermark queries on the fetching consumer
would queue behind its long-poll fetches (0.5 s per partition, see :mod:`streams.watermarks`).
:func:`consumer_statistics` adds that setting and a callback to every consumer built by
:func:`streams.consumer.consumer_config` once metrics are served.

Metric names are prefixed by component (``reflux_scheduler_``, ``reflux_worker_``,
``reflux_projector_``) so one registry holds them all, e.g. ``reflux dev`` running every
component in one process; the shared lag gauge is labelled by consumer group.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from foundation.errors import ConfigurationError
from foundation.settings import Settings

__all__ = [
    "PROJECTOR",
    "REGISTRY",
    "SCHEDULER",
    "WORKER",
    "add_metrics_port_argument",
    "consumer_statistics",
    "lag_callback",
    "partition_lag",
    "serve",
    "serve_if_asked",
    "serving",
    "stop_serving",
]

log = logging.getLogger(__name__)

STATISTICS_INTERVAL_MS: Final = 5_000
"""How often each consumer reports its lag: a JSON document of a few KB per interval."""

REGISTRY: Final = CollectorRegistry(auto_describe=True)

_BATCH_SIZES: Final = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
_SECONDS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

CONSUMER_LAG: Final = Gauge(
    "reflux_consumer_lag",
    "Records behind the end of the partition (librdkafka consumer_lag: high watermark, or last "
    "stable offset under read_committed, minus the position), by consumer group.",
    ["group", "topic", "partition"],
    registry=REGISTRY,
)


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.consumed = Counter(
            "reflux_scheduler_records_consumed",
            "Input records (commands, results) committed by the scheduler, by topic.",
            ["topic"],
            registry=registry,
        )
        self.events = Counter(
            "reflux_scheduler_events_produced",
            "Run events the scheduler wrote to the runs topic.",
            registry=registry,
        )
        self.invocations = Counter(
            "reflux_scheduler_invocations_produced",
            "Node invocations the scheduler sent to workers.",
            registry=registry,
        )
        self.dead_letters = Counter(
            "reflux_scheduler_dead_letters", "Inputs dead-lettered.", registry=registry
        )
        self.cache_hits = Counter(
            "reflux_scheduler_cache_hits",
            "Steps answered from the step cache (no invocation sent).",
            registry=registry,
        )
        self.aborts = Counter(
            "reflux_scheduler_transactions_aborted",
            "Batches whose transaction failed (retried).",
            registry=registry,
        )
        self.batch_size = Histogram(
            "reflux_scheduler_batch_records",
            "Inputs per committed transaction.",
            registry=registry,
            buckets=_BATCH_SIZES,
        )
        self.transaction = Histogram(
            "reflux_scheduler_transaction_duration_seconds",
            "Begin to commit of one batch's transaction.",
            registry=registry,
            buckets=_SECONDS,
        )
        self.runs_in_memory = Gauge(
            "reflux_scheduler_runs_in_memory",
            "Runs the scheduler holds (in full or as markers) over its partitions.",
            registry=registry,
        )

    def committed(
        self, topics: Iterable[str], events: int, invocations: int, dead: int, seconds: float
    ) -> None:
        # One increment per topic, not per record: labels() takes a lock and a dict lookup.
        counts: dict[str, int] = {}
        for topic in topics:
            counts[topic] = counts.get(topic, 0) + 1
        for topic, count in counts.items():
            self.consumed.labels(topic).inc(count)
        n = sum(counts.values())
        if events:
            self.events.inc(events)
        if invocations:
            self.invocations.inc(invocations)
        if dead:
            self.dead_letters.inc(dead)
        self.batch_size.observe(n)
        self.transaction.observe(seconds)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.in_flight = Gauge(
            "reflux_worker_attempts_in_flight",
            "Attempts running now, by node.",
            ["node"],
            registry=registry,
        )
        self.attempts = Counter(
            "reflux_worker_attempts",
            "Attempts finished, by node and status (succeeded, failed, ...).",
            ["node", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "reflux_worker_attempt_duration_seconds",
            "Time one attempt ran, by node.",
            ["node"],
            registry=registry,
            buckets=_SECONDS,
        )
        self.retries = Counter(
            "reflux_worker_retryable_failures",
            "Attempts that failed with a retryable error (the scheduler may retry them), by node.",
            ["node"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "reflux_worker_dead_letters",
            "Invocations dead-lettered (undecodable or refused), by topic.",
            ["topic"],
            registry=registry,
        )
        self.cache_hits = Counter(
            "reflux_worker_cache_hits",
            "Invocations answered from a recorded result (the ledger) instead of running, by node.",
            ["node"],
            registry=registry,
        )


class ProjectorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "reflux_projector_records",
            "Records the projector consumed and committed, by projector.",
            ["projector"],
            registry=registry,
        )
        self.applied = Counter(
            "reflux_projector_applied",
            "Records applied to the read models, by projector.",
            ["projector"],
            registry=registry,
        )
        self.duplicates = Counter(
            "reflux_projector_duplicates",
            "Records already applied (at-least-once redelivery), by projector.",
            ["projector"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "reflux_projector_dead_letters",
            "Records dead-lettered, by projector.",
            ["projector"],
            registry=registry,
        )
        self.batch = Histogram(
            "reflux_projector_batch_duration_seconds",
            "Poll to commit of one batch (one Postgres transaction), by projector.",
            ["projector"],
            registry=registry,
            buckets=_SECONDS,
        )


SCHEDULER: Final = SchedulerMetrics(REGISTRY)
WORKER: Final = WorkerMetrics(REGISTRY)
PROJECTOR: Final = ProjectorMetrics(REGISTRY)

_lock = threading.Lock()
_served: dict[int, Any] = {}
"""Requested port -> the server this process started on it."""


def serve(port: int, host: str = "0.0.0.0") -> int:  # noqa: S104 - scraped from other hosts
    """Serve ``/metrics`` of this process on ``port`` (0 picks a free one); returns the bound
    port. Idempotent per requested port: ``reflux dev`` components may each ask."""
    with _lock:
        if port and port in _served:
            return int(_served[port].server_address[1])
        server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
        bound = int(server.server_address[1])
        _served[port or bound] = server
        log.info("metrics: serving /metrics on %s:%d", host, bound)
        return bound


def stop_serving() -> None:
    """Stop every metrics server of this process (tests); consumers built afterwards no
    longer report lag."""
    with _lock:
        for server in _served.values():
            server.shutdown()
            server.server_close()
        _served.clear()


def serving() -> bool:
    """Whether this process serves metrics (then consumers report their lag)."""
    return bool(_served)


def partition_lag(p: dict[str, Any]) -> int | None:
    """The lag of one partition of a librdkafka statistics report, or ``None`` when this member
    does not consume it (not assigned, or no position known yet).

    Not librdkafka's own ``consumer_lag``: that is measured from the offset *this client*
    committed, and the scheduler's offsets are committed by its transactional producer
    (``send_offsets_to_transaction``), so its ``consumer_lag`` stays -1. The position is
    ``app_offset`` (the offset after the last record handed to the application), else the
    committed offset; the end is ``ls_offset`` (last stable offset, what a read_committed
    consumer can reach; equal to ``hi_offset`` without transactions in flight).
    """
    if not p.get("desired", False):
        return None
    end = p.get("ls_offset", -1)
    if end < 0:
        end = p.get("hi_offset", -1)
    position = next(
        (o for o in (p.get("app_offset", -1), p.get("committed_offset", -1)) if o >= 0), None
    )
    if end < 0 or position is None:
        return None
    return max(int(end) - int(position), 0)


def lag_callback(group: str) -> Callable[[str], None]:
    """A librdkafka ``stats_cb`` that sets :data:`CONSUMER_LAG` for ``group``'s partitions."""
    assigned: set[tuple[str, str, str]] = set()

    def on_stats(document: str) -> None:
        try:
            stats = json.loads(document)
            seen: set[tuple[str, str, str]] = set()
            for topic, body in stats.get("topics", {}).items():
                for partition, p in body.get("partitions", {}).items():
                    # "-1" is librdkafka's internal queue of not yet assigned messages.
                    lag = None if partition == "-1" else partition_lag(p)
                    if lag is not None:
                        CONSUMER_LAG.labels(group, topic, partition).set(lag)
                        seen.add((group, topic, partition))
            for gone in assigned - seen:
                # Revoked: drop the series rather than report a stale lag forever.
                with contextlib.suppress(KeyError):
                    CONSUMER_LAG.remove(*gone)
            assigned.clear()
            assigned.update(seen)
        except Exception:  # a metrics bug must never break the consumer's poll
            log.exception("metrics: could not read consumer statistics")

    return on_stats


def consumer_statistics(group: str, interval_ms: int = STATISTICS_INTERVAL_MS) -> dict[str, Any]:
    """Consumer settings that make it report lag every ``interval_ms``
    (``metrics_lag_interval_ms``), or nothing while metrics are not served."""
    if not serving():
        return {}
    return {"statistics.interval.ms": interval_ms, "stats_cb": lag_callback(group)}


def add_metrics_port_argument(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port`` for a component's command (scheduler, worker, projector)."""
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus /metrics on this port (default: $REFLUX_METRICS_PORT; 0: off)",
    )


def serve_if_asked(port: int | None, settings: Settings) -> int | None:
    """Start the metrics server when ``--metrics-port`` or the setting asks for one; call it
    before the component builds its consumers (they report lag only when metrics are served).
    Returns the bound port, or ``None`` when metrics are off."""
    chosen = settings.metrics_port if port is None else port
    if not chosen:
        return None
    if not 0 < chosen < 65536:
        raise ConfigurationError(f"metrics_port: expected 1..65535, got {chosen}")
    return serve(chosen)
