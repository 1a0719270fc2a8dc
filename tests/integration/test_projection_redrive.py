"""The read models of re-driven and rebound runs (StepsReset, RunRebound, a run ending twice)
on a real Postgres: after every event the rows say what the scheduler's fold says, and one
batch leaves the same rows as one event per batch (coalescing across the DELETE of reset steps).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from foundation.settings import Settings
from processors.scheduler.evolve import RunEvent, fold
from projections.postgres import queries
from projections.postgres.appliers import plan
from projections.postgres.migrations import apply_migrations
from projections.postgres.writer import BatchItem, apply_batch
from streams.dlq import PoisonRecord
from tests.support.scheduler_golden import SCENARIOS


@pytest.fixture
def schemas(local_services: Settings) -> Iterator[tuple[psycopg.Connection, list[str]]]:
    names = [f"test_redrive_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    with psycopg.connect(local_services.postgres_dsn, autocommit=True) as conn:
        for name in names:
            apply_migrations(conn, name)
        try:
            yield conn, names
        finally:
            for name in names:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _item(event: RunEvent, offset: int, schema: str) -> BatchItem:
    return BatchItem(PoisonRecord("runs", 0, offset, None, None), plan(event, schema))


def _rows(conn: psycopg.Connection, schema: str, run_id: str) -> tuple[object, ...]:
    run = queries.get_run(conn, run_id, schema=schema)
    assert run is not None
    steps = {
        s.step_id: (s.status, s.attempt) for s in queries.get_steps(conn, run_id, schema=schema)
    }
    return (run.status, run.workflow_version, run.outputs, run.last_seq, steps)


@pytest.mark.parametrize("name", ["redrive_from", "rebind"])
def test_rows_follow_the_fold_event_by_event_and_in_one_batch(
    schemas: tuple[psycopg.Connection, list[str]], name: str
) -> None:
    conn, (alone, batched) = schemas
    log = SCENARIOS[name]().log
    run_id = log[0].run_id
    for offset, event in enumerate(log):
        apply_batch(conn, [_item(event, offset, alone)], schema=alone, projector="a")
        state = fold(log[: offset + 1])
        assert state is not None
        expected = (
            state.status.value,
            state.workflow_version,
            state.outputs,
            state.last_seq,
            {
                sid: (st.status.value, st.attempt)
                for sid, st in state.steps.items()
                if st.status.value != "pending"
            },
        )
        assert _rows(conn, alone, run_id) == expected, (
            f"after seq {event.seq} ({type(event).__name__})"
        )
    outcome = apply_batch(
        conn, [_item(e, i, batched) for i, e in enumerate(log)], schema=batched, projector="a"
    )
    assert outcome.applied == len(log)
    assert _rows(conn, batched, run_id) == _rows(conn, alone, run_id)
    kinds = [type(e).__name__ for e in log]
    assert "StepsReset" in kinds and kinds.count("RunSucceeded") >= 1
    if name == "rebind":
        assert _rows(conn, alone, run_id)[1] == 2
