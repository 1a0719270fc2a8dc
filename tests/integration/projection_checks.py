"""Projection == log: the check the chaos and cluster-fault tests end with.

The Postgres projection must hold exactly the run events on Kafka, run by run (seq and type, as
a ``read_committed`` reader sees the runs topic), and folding the projected events must give the
projected run (status, last seq, each step's status).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping

import psycopg

from foundation.settings import Settings
from processors.scheduler import fold
from processors.scheduler.evolve import RUN_EVENT_TYPES
from projections.postgres import queries
from schemas import decode, models
from streams.topics import TopicCatalog
from tests.support.kafka_log import read_log

__all__ = ["assert_projection_is_log", "projected_runs"]


def projected_runs(
    settings: Settings, schema: str, run_ids: Iterable[str]
) -> dict[str, queries.RunRow]:
    """The projected row of each of ``run_ids`` the projection has so far."""
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        found = {}
        for run_id in run_ids:
            row = queries.get_run(conn, run_id, schema=schema)
            if row is not None:
                found[run_id] = row
        return found


def assert_projection_is_log(
    settings: Settings,
    catalog: TopicCatalog,
    schema: str,
    run_ids: Iterable[str],
    rows: Mapping[str, queries.RunRow],
    partitions: int,
) -> None:
    wanted = set(run_ids)
    on_kafka: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
    for _partition, _key, value in read_log(settings, catalog.runs.topic, partitions):
        assert value is not None
        event = decode(value)
        assert isinstance(event, RUN_EVENT_TYPES), event
        if event.run_id in wanted:
            on_kafka[event.run_id].append((event.seq, type(event).__name__))
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        for run_id in sorted(wanted):
            projected = queries.get_events(conn, run_id, schema=schema)
            assert [(e.seq, e.event_type) for e in projected] == on_kafka[run_id], run_id
            state = fold(
                [getattr(models, e.event_type).model_validate(e.payload) for e in projected]
            )
            row = rows[run_id]
            assert state is not None
            assert (state.status.value, state.last_seq) == (row.status, row.last_seq), run_id
            steps = {s.step_id: s.status for s in queries.get_steps(conn, run_id, schema=schema)}
            folded = {k: s.status.value for k, s in state.steps.items()}
            assert {k: folded.get(k) for k in steps} == steps, run_id
            # Steps never scheduled have no row; folded they are still pending.
            assert {folded[k] for k in folded.keys() - steps.keys()} <= {"pending"}, run_id
