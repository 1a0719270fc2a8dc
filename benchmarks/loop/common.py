"""Helpers shared by the loop scenarios and their harness (:mod:`benchmarks.loop_bench`)."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import psycopg

from benchmarks.cleanup import delete_prefix_topics, drop_engine_schemas
from benchmarks.registration import publish_version_one
from foundation.settings import Settings
from schemas.models import ImprovementPolicy, MutationAction, MutationRequest
from streams.producer import Producer
from streams.topics import TopicCatalog

__all__ = [
    "engine_session",
    "percentile",
    "progress",
    "register_auto",
    "summarize",
    "summarize_per_seed",
    "until",
]


def progress(scenario: str, message: str) -> None:
    print(f"[loop {time.strftime('%H:%M:%S')}] {scenario}: {message}", flush=True)


def until(check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Polls ``check`` until it returns something true, and returns that; ``TimeoutError``
    naming ``what`` after ``timeout`` seconds. For the engine scenarios' read models, which
    other processes and threads write (benchmark drivers, not tests)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Expected {what} within {timeout:.0f}s")
        time.sleep(interval)
    return value


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100): with few seeds, a value that was measured."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def summarize(values: Iterable[float]) -> dict[str, Any]:
    """``{"n", "median", "p95", "min", "max"}`` of one metric over seeds."""
    items = [float(v) for v in values]
    return {
        "n": len(items),
        "median": statistics.median(items),
        "p95": percentile(items, 95),
        "min": min(items),
        "max": max(items),
    }


def summarize_per_seed(per_seed: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per metric (each numeric key of the per-seed results; nested objects as ``a.b``), its
    :func:`summarize` over the seeds that have it."""
    columns: dict[str, list[float]] = {}

    def collect(prefix: str, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            name = f"{prefix}{key}"
            # bool is an int: a yes/no per seed summarizes as a share.
            if isinstance(value, int | float) and math.isfinite(value):
                columns.setdefault(name, []).append(float(value))
            elif isinstance(value, Mapping):
                collect(f"{name}.", value)

    for result in per_seed.values():
        collect("", result)
    return {name: summarize(values) for name, values in sorted(columns.items())}


def register_auto(producer: Producer, catalog: TopicCatalog, definition: dict[str, Any]) -> str:
    """Publishes ``definition`` as version 1 and sets its improvement policy to ``auto`` (the
    loop scenarios let the engine apply its own proposals); returns the workflow id once both
    records are flushed."""
    workflow_id = publish_version_one(producer, catalog, definition)
    policy = MutationRequest(
        workflow_id=workflow_id,
        action=MutationAction.SET_POLICY,
        actor="user:bench",
        policy=ImprovementPolicy.AUTO,
    )
    producer.send(catalog.mutations.topic, policy.workflow_id, policy)
    producer.flush(10)
    return workflow_id


@contextlib.contextmanager
def engine_session(
    settings: Settings, schema: str, client_id: str, **engine: Any
) -> Iterator[tuple[Any, Producer, psycopg.Connection[Any]]]:
    """A started ``DevEngine`` (``trigger_router=False`` plus ``engine``) on ``settings``'s own
    topic prefix and the Postgres schema ``schema``, a producer and a connection; on the way
    out all three are closed, the prefix's topics deleted and the schemas dropped."""
    from reflux.dev import DevEngine  # the whole engine: only the engine scenarios load it

    dev: DevEngine | None = None
    producer: Producer | None = None
    try:
        dev = DevEngine(settings, schema=schema, trigger_router=False, **engine).start()
        producer = Producer(settings, client_id=client_id)
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            yield dev, producer, conn
    finally:
        if producer is not None:
            producer.close()
        if dev is not None:
            dev.stop()
        delete_prefix_topics(settings)
        drop_engine_schemas(settings, schema)
