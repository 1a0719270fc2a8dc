"""Pure checks of the projection appliers, schema names, migrations files and query cursors."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from foundation.errors import ConfigurationError
from projections.postgres.appliers import (
    RUN_EVENT_TYPES,
    WORKFLOW_EVENT_TYPES,
    Plan,
    UnsupportedEventError,
    jsonb,
    plan,
)
from projections.postgres.identifiers import table, validate_schema
from projections.postgres.migrations import load_migrations
from projections.postgres.queries import (
    InvalidQueryError,
    RunRow,
    decode_cursor,
    encode_cursor,
)
from schemas.base import RefluxRecord
from schemas.models import (
    MODELS,
    RunCancelled,
    RunStarted,
    StartRun,
    StepDispatched,
    StepRef,
    StepSkipped,
    StepStarted,
    StepSucceeded,
    WorkflowRegistered,
)
from schemas.samples import sample_record

ALL_TYPES = RUN_EVENT_TYPES + WORKFLOW_EVENT_TYPES


def _placeholders(sql: str) -> int:
    return len(re.findall(r"%s", sql))


def test_every_run_log_event_type_has_an_applier() -> None:
    # A new reflux.events.* record must get an applier (or be dead-lettered on purpose).
    events = {m for name, m in MODELS.items() if name.startswith("reflux.events.")}
    assert events == set(RUN_EVENT_TYPES)
    for model in ALL_TYPES:
        assert plan.dispatch(model) is not plan.dispatch(object), model.__name__


@pytest.mark.parametrize("model", ALL_TYPES, ids=lambda m: m.__name__)
def test_statements_bind_exactly_their_parameters(model: type) -> None:
    result = plan(sample_record(model), "reflux")
    assert isinstance(result, Plan)
    for statement in (result.guard, *result.updates):
        assert _placeholders(statement.sql) == len(statement.params), statement.sql
        assert '"reflux".' in statement.sql


@pytest.mark.parametrize("model", RUN_EVENT_TYPES, ids=lambda m: m.__name__)
def test_run_events_are_claimed_by_run_id_and_seq_first(model: type[RefluxRecord]) -> None:
    event: Any = sample_record(model)
    guard = plan(event, "s1").guard
    assert guard.sql.startswith('INSERT INTO "s1".run_events ')
    assert "ON CONFLICT (run_id, seq) DO NOTHING" in guard.sql
    run_id, seq, event_type, event_id, occurred_at, payload = guard.params
    assert (run_id, seq, event_type, event_id, occurred_at) == (
        event.run_id,
        event.seq,
        model.__name__,
        event.event_id,
        event.occurred_at,
    )
    assert isinstance(payload, Jsonb)
    assert model.model_validate(payload.obj) == event  # the payload is the full event


def test_workflow_versions_are_immutable_first_registration_wins() -> None:
    event = sample_record(WorkflowRegistered)
    result = plan(event, "reflux")
    assert result.updates == ()
    assert "ON CONFLICT (workflow_id, version) DO NOTHING" in result.guard.sql
    assert result.guard.params[:2] == (event.workflow_id, event.version)


def test_types_without_applier_are_refused_with_the_type_named() -> None:
    with pytest.raises(UnsupportedEventError, match="but got StartRun"):
        plan(sample_record(StartRun), "reflux")


def test_absent_json_is_sql_null_but_json_values_are_kept() -> None:
    assert jsonb(None) is None
    assert isinstance(jsonb(0), Jsonb)
    assert jsonb({"a": [1]}).obj == {"a": [1]}  # type: ignore[union-attr]


def _step_upsert(result: Plan) -> str:
    return next(s.sql for s in result.updates if "steps" in s.sql)


def test_only_scheduling_and_dispatch_set_the_node_version() -> None:
    ref = StepRef(step_id="fetch", node="http.request", node_version="1.0.0")
    dispatched = StepDispatched(
        run_id="r",
        seq=2,
        step=ref,
        attempt=1,
        invocation_id="i",
        invoke_topic="reflux.invoke.http.request.v1",
        node_version="1.2.3",
    )
    succeeded = StepSucceeded(
        run_id="r", seq=3, step=ref, attempt=1, output={"ok": True}, cache_hit=False, duration_ms=1
    )
    dispatch_sql = _step_upsert(plan(dispatched, "reflux"))
    assert "node_version = EXCLUDED.node_version" in dispatch_sql
    assert "1.2.3" in plan(dispatched, "reflux").updates[0].params
    assert "node_version = EXCLUDED.node_version" not in _step_upsert(plan(succeeded, "reflux"))


def test_a_skip_keeps_the_attempt_of_a_step_that_ran() -> None:
    ref = StepRef(step_id="notify", node="email.send", node_version="1.0.0")
    sql = _step_upsert(plan(StepSkipped(run_id="r", seq=1, step=ref, reason="no"), "reflux"))
    assert "attempt = EXCLUDED.attempt" not in sql
    assert "status = EXCLUDED.status" in sql


def test_cancelling_a_run_cancels_only_steps_in_flight() -> None:
    result = plan(RunCancelled(run_id="r", seq=9), "reflux")
    steps = next(s.sql for s in result.updates if "steps" in s.sql)
    assert "status IN ('scheduled', 'dispatched', 'running', 'retry_wait')" in steps


def test_a_started_step_is_running_from_the_workers_start() -> None:
    ref = StepRef(step_id="fetch", node="http.request", node_version="1.2.3")
    worker_start = datetime(2025, 1, 1, 12, 0, 3, tzinfo=UTC)
    event = StepStarted(
        run_id="r",
        seq=4,
        step=ref,
        attempt=2,
        invocation_id="inv-2",
        started_at=worker_start,
        worker="w-1",
    )
    result = plan(event, "reflux")
    step = result.updates[0]
    assert "status = EXCLUDED.status" in step.sql and "started_at = EXCLUDED.started_at" in step.sql
    assert "node_version = EXCLUDED.node_version" not in step.sql  # the dispatch's stays
    assert {"running", 2, "inv-2", worker_start, "w-1"} <= set(step.params)
    dispatched = StepDispatched(
        run_id="r",
        seq=3,
        step=ref,
        attempt=2,
        invocation_id="inv-2",
        invoke_topic="t",
        node_version="1.2.3",
    )
    sql = _step_upsert(plan(dispatched, "reflux"))
    assert "dispatched_at = EXCLUDED.dispatched_at" in sql and "started_at = EXCLUDED" in sql
    assert worker_start not in plan(dispatched, "reflux").updates[0].params


def test_run_started_inserts_a_running_run() -> None:
    event = RunStarted(
        run_id="r",
        seq=0,
        workflow_id="wf",
        workflow_version=2,
        inputs={},
        definition={},
        source="api",
    )
    insert = plan(event, "reflux").updates[0]
    assert "'running'" in insert.sql
    assert "ON CONFLICT (run_id) DO NOTHING" in insert.sql


@pytest.mark.parametrize(
    "name", ["reflux", "test_ab12", "_x", "a" * 63], ids=["default", "test", "underscore", "63"]
)
def test_valid_schema_names(name: str) -> None:
    assert validate_schema(name) == name
    assert table(name, "runs") == f'"{name}".runs'


@pytest.mark.parametrize(
    "name", ["", "Reflux", "1abc", "a-b", 'x"; drop', "pg_temp", "a" * 64, "a.b"]
)
def test_invalid_schema_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match="Expected a Postgres schema name"):
        validate_schema(name)


def test_migrations_are_numbered_and_ordered() -> None:
    migrations = load_migrations()
    assert migrations, "expected at least one migration"
    versions = [m.version for m in migrations]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert migrations[0].version == 1
    assert "CREATE TABLE run_events" in migrations[0].sql
    assert all(len(m.checksum) == 64 for m in migrations)


def _run_row(started_at: datetime, run_id: str) -> RunRow:
    return RunRow(
        run_id=run_id,
        workflow_id="wf",
        workflow_version=1,
        status="running",
        inputs={},
        outputs=None,
        error=None,
        failed_step=None,
        source="api",
        source_key=None,
        idempotency_key=None,
        deadline=None,
        started_at=started_at,
        updated_at=started_at,
        finished_at=None,
        last_seq=0,
    )


def test_cursor_round_trip() -> None:
    at = datetime(2025, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
    cursor = encode_cursor(_run_row(at, "run-7"))
    assert "=" not in cursor
    assert decode_cursor(cursor) == (at, "run-7")


@pytest.mark.parametrize("cursor", ["", "!!!", "bm90IGpzb24", "WzFd"])
def test_bad_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(InvalidQueryError, match="Expected a cursor"):
        decode_cursor(cursor)
