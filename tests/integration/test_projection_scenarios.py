"""Realistic run logs and their expected read models, checked against real Postgres.

The builders here are shared with test_projection_kafka.py. The tests in this module apply the
logs through the writer directly (no Kafka), so state-machine mistakes show up without broker
noise; the Kafka tests then check delivery semantics with the same logs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from foundation.settings import Settings
from projections.postgres import queries
from projections.postgres.appliers import plan
from projections.postgres.migrations import apply_migrations
from projections.postgres.writer import BatchItem, apply_batch
from schemas.base import RefluxRecord
from schemas.models import (
    CommandRejected,
    ErrorInfo,
    GraphMutated,
    GraphMutation,
    GraphMutationType,
    RunCancelled,
    RunFailed,
    RunPaused,
    RunResumed,
    RunStarted,
    RunSucceeded,
    StepDispatched,
    StepFailed,
    StepRef,
    StepRetryScheduled,
    StepScheduled,
    StepSkipped,
    StepStarted,
    StepSucceeded,
    StepTimedOut,
    StepTimeoutExtended,
    WorkflowRegistered,
)
from streams.dlq import PoisonRecord

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
FETCH = StepRef(step_id="fetch", node="http.request", node_version="1.0.0")
PARSE = StepRef(step_id="parse", node="json.transform", node_version="2.1.0")
NOTIFY = StepRef(step_id="notify", node="email.send", node_version="1.0.0")
HTTP_500 = ErrorInfo(error_class="HttpStatus500", message="upstream 500", retryable=True)
HTTP_404 = ErrorInfo(error_class="HttpStatus404", message="not found", retryable=False)
DEFINITION = {"steps": [{"id": "fetch"}, {"id": "parse", "needs": ["fetch"]}]}


class RunLog:
    """Builds one run's events with consecutive seq and one-second-apart timestamps."""

    def __init__(self, run_id: str, start: datetime) -> None:
        self.run_id = run_id
        self.start = start
        self.events: list[Any] = []

    def at(self, seq: int) -> datetime:
        return self.start + timedelta(seconds=seq)

    def add(self, model: type[RefluxRecord], **fields: Any) -> RunLog:
        seq = len(self.events)
        factory: Any = model  # every run event has run_id/seq/occurred_at; RefluxRecord does not
        self.events.append(factory(run_id=self.run_id, seq=seq, occurred_at=self.at(seq), **fields))
        return self

    def started(self, inputs: Any = None) -> RunLog:
        return self.add(
            RunStarted,
            workflow_id="etl",
            workflow_version=1,
            inputs={"url": "https://example.test"} if inputs is None else inputs,
            definition=DEFINITION,
            source="api",
            idempotency_key=f"idem-{self.run_id}",
        )

    def attempt(self, step: StepRef, attempt: int, invocation: str) -> RunLog:
        return self.add(
            StepDispatched,
            step=step,
            attempt=attempt,
            invocation_id=invocation,
            invoke_topic=f"reflux.invoke.{step.node}.v1",
            node_version=step.node_version.replace(".0.0", ".0.3"),
        )


@dataclass
class Scenario:
    logs: dict[str, RunLog]
    workflows: list[WorkflowRegistered]

    @property
    def run_events(self) -> list[Any]:
        return [e for log in self.logs.values() for e in log.events]


def build_scenario(tag: str = "") -> Scenario:
    """Five runs covering success, retries + timeout + failure, pause/cancel, re-drive, resume."""
    linear = (
        RunLog(f"linear{tag}", T0)
        .started()
        .add(StepScheduled, step=FETCH, attempt=1, params={"url": "https://example.test"})
        .attempt(FETCH, 1, "inv-l-1")
        .add(StepSucceeded, step=FETCH, attempt=1, invocation_id="inv-l-1",
             output={"status": 200}, cache_hit=False, duration_ms=120)
        .add(StepScheduled, step=PARSE, attempt=1, params={"expr": "a.b"}, cache_key="k1")
        .add(StepSucceeded, step=PARSE, attempt=1, output={"rows": 3}, cache_hit=True,
             duration_ms=0)
        .add(RunSucceeded, outputs={"rows": 3}, duration_ms=5000)
    )  # fmt: skip
    retried = (
        RunLog(f"retried{tag}", T0 + timedelta(minutes=1))
        .started()
        .add(StepScheduled, step=FETCH, attempt=1, params={})
        .attempt(FETCH, 1, "inv-r-1")
        .add(StepFailed, step=FETCH, attempt=1, invocation_id="inv-r-1", error=HTTP_500)
        .add(StepRetryScheduled, step=FETCH, attempt=2, next_attempt_at=T0 + timedelta(hours=1),
             backoff_ms=1000, timer_id="t-1")
        .attempt(FETCH, 2, "inv-r-2")
        .add(StepTimedOut, step=FETCH, attempt=2, invocation_id="inv-r-2", timeout_ms=30000)
        .add(StepRetryScheduled, step=FETCH, attempt=3, next_attempt_at=T0 + timedelta(hours=2),
             backoff_ms=2000, timer_id="t-2")
        .attempt(FETCH, 3, "inv-r-3")
        .add(StepFailed, step=FETCH, attempt=3, invocation_id="inv-r-3", error=HTTP_404)
        .add(StepSkipped, step=PARSE, reason="upstream step 'fetch' failed")
        .add(RunFailed, error=HTTP_404, failed_step=FETCH)
    )  # fmt: skip
    cancelled = (
        RunLog(f"cancelled{tag}", T0 + timedelta(minutes=2))
        .started()
        .add(StepScheduled, step=FETCH, attempt=1, params={})
        .attempt(FETCH, 1, "inv-c-1")
        .add(StepScheduled, step=NOTIFY, attempt=1, params={"to": "ops@example.test"})
        .add(RunPaused, reason="maintenance", requested_by="alice")
        .add(CommandRejected, command_id="cmd-1", command_type="reflux.commands.PauseRun",
             reason="Expected run to be running, but it is paused")
        .add(RunResumed, requested_by="alice")
        .add(StepSucceeded, step=FETCH, attempt=1, invocation_id="inv-c-1", output={"ok": 1},
             cache_hit=False, duration_ms=80)
        .add(RunCancelled, reason="no longer needed", requested_by="bob")
    )  # fmt: skip
    redriven = (
        RunLog(f"redriven{tag}", T0 + timedelta(minutes=3))
        .started()
        .add(StepScheduled, step=FETCH, attempt=1, params={})
        .attempt(FETCH, 1, "inv-d-1")
        .add(StepFailed, step=FETCH, attempt=1, invocation_id="inv-d-1", error=HTTP_404)
        .add(RunFailed, error=HTTP_404, failed_step=FETCH)
        .add(GraphMutated, mutation=GraphMutation(
            type=GraphMutationType.UPDATE_PARAMS, step_id="fetch", data={"url": "https://b.test"}))
        .add(StepScheduled, step=FETCH, attempt=2, params={"url": "https://b.test"})
        .attempt(FETCH, 2, "inv-d-2")
        .add(StepSucceeded, step=FETCH, attempt=2, invocation_id="inv-d-2",
             output={"status": 200}, cache_hit=False, duration_ms=90)
        .add(RunSucceeded, outputs={"status": 200}, duration_ms=9000)
    )  # fmt: skip
    resumed = (
        RunLog(f"resumed{tag}", T0 + timedelta(minutes=4))
        .started(inputs=[1, 2])
        .add(StepScheduled, step=FETCH, attempt=1, params={})
        .attempt(FETCH, 1, "inv-e-1")
        .add(StepFailed, step=FETCH, attempt=1, invocation_id="inv-e-1", error=HTTP_404)
        .add(RunFailed, error=HTTP_404, failed_step=FETCH)
        .add(RunResumed, reason="operator retry")
    )  # fmt: skip
    workflows = [
        WorkflowRegistered(workflow_id="etl", version=1, definition=DEFINITION,
                           registered_at=T0 - timedelta(days=2), registered_by="alice"),
        WorkflowRegistered(workflow_id="etl", version=2, definition={"steps": []},
                           registered_at=T0 - timedelta(days=1)),
        WorkflowRegistered(workflow_id="report", version=1, definition={"steps": [1]},
                           registered_at=T0, registered_by="bob"),
    ]  # fmt: skip
    logs = {log.run_id: log for log in (linear, retried, cancelled, redriven, resumed)}
    return Scenario(logs, workflows)


def check_scenario(
    conn: psycopg.Connection, schema: str, scenario: Scenario, tag: str = ""
) -> None:
    """Assert the read models hold exactly what the scenario's logs say (hand-written truths)."""
    logs = scenario.logs

    def run(name: str) -> queries.RunRow:
        row = queries.get_run(conn, f"{name}{tag}", schema=schema)
        assert row is not None, name
        return row

    def steps(name: str) -> dict[str, queries.StepRow]:
        return {s.step_id: s for s in queries.get_steps(conn, f"{name}{tag}", schema=schema)}

    # Every event exactly once, in seq order, with its payload.
    for log in logs.values():
        events = queries.get_events(conn, log.run_id, schema=schema)
        assert [e.seq for e in events] == list(range(len(log.events)))
        assert [e.event_type for e in events] == [type(e).__name__ for e in log.events]
        assert [e.event_id for e in events] == [e.event_id for e in log.events]
        assert events[-1].payload == log.events[-1].model_dump(mode="json")
        assert run(log.run_id.removesuffix(tag)).last_seq == len(log.events) - 1

    linear = run("linear")
    assert (linear.status, linear.outputs, linear.error) == ("succeeded", {"rows": 3}, None)
    assert linear.inputs == {"url": "https://example.test"}
    assert linear.idempotency_key == f"idem-linear{tag}"
    assert linear.started_at == logs[f"linear{tag}"].at(0)
    assert linear.finished_at == logs[f"linear{tag}"].at(6)
    fetch, parse = steps("linear")["fetch"], steps("linear")["parse"]
    assert (fetch.status, fetch.output, fetch.cache_hit, fetch.attempt) == (
        "succeeded", {"status": 200}, False, 1)  # fmt: skip
    assert (fetch.node_version, fetch.invocation_id, fetch.duration_ms) == ("1.0.3", "inv-l-1", 120)
    # This log has no StepStarted (as written before it existed): the dispatch time is known,
    # the worker's start is not (started_at held the dispatch time before migration 003).
    assert (fetch.dispatched_at, fetch.started_at) == (logs[f"linear{tag}"].at(2), None)
    assert (parse.status, parse.cache_hit, parse.invocation_id, parse.started_at) == (
        "succeeded", True, None, None)  # fmt: skip
    assert parse.params == {"expr": "a.b"}

    retried = run("retried")
    assert (retried.status, retried.failed_step) == ("failed", "fetch")
    assert retried.error == HTTP_404.model_dump(mode="json")
    assert retried.finished_at == logs[f"retried{tag}"].at(11)
    r_steps = steps("retried")
    assert (r_steps["fetch"].status, r_steps["fetch"].attempt) == ("failed", 3)
    assert r_steps["fetch"].error == HTTP_404.model_dump(mode="json")
    assert r_steps["fetch"].invocation_id == "inv-r-3"
    assert r_steps["fetch"].next_attempt_at is None
    assert (r_steps["parse"].status, r_steps["parse"].attempt) == ("skipped", 0)
    assert r_steps["parse"].skip_reason == "upstream step 'fetch' failed"

    cancelled = run("cancelled")
    assert (cancelled.status, cancelled.finished_at) == ("cancelled", logs[f"cancelled{tag}"].at(8))
    c_steps = steps("cancelled")
    assert c_steps["fetch"].status == "succeeded"  # finished before the cancel: kept
    assert c_steps["notify"].status == "cancelled"  # in flight: cancelled with the run
    assert c_steps["notify"].finished_at == logs[f"cancelled{tag}"].at(8)

    redriven = run("redriven")
    assert (redriven.status, redriven.outputs) == ("succeeded", {"status": 200})
    assert (redriven.error, redriven.failed_step) == (None, None)
    d_fetch = steps("redriven")["fetch"]
    assert (d_fetch.status, d_fetch.attempt, d_fetch.error) == ("succeeded", 2, None)
    assert d_fetch.params == {"url": "https://b.test"}

    resumed = run("resumed")
    assert (resumed.status, resumed.error, resumed.finished_at) == ("running", None, None)
    assert resumed.inputs == [1, 2]

    etl = queries.get_workflow(conn, "etl", schema=schema)
    assert etl is not None and (etl.version, etl.definition) == (2, {"steps": []})
    first = queries.get_workflow(conn, "etl", 1, schema=schema)
    assert first is not None and (first.definition, first.registered_by) == (DEFINITION, "alice")


def dump(conn: psycopg.Connection, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the read models (and the offsets' positions), in a stable order."""
    order = {
        "workflows": "workflow_id, version",
        "runs": "run_id",
        "steps": "run_id, step_id",
        "run_events": "run_id, seq",
    }
    tables = {
        name: conn.execute(f'SELECT * FROM "{schema}".{name} ORDER BY {cols}').fetchall()
        for name, cols in order.items()
    }
    tables["projection_offsets"] = conn.execute(
        f'SELECT projector, topic, partition, next_offset FROM "{schema}".projection_offsets '
        "ORDER BY 1, 2, 3"
    ).fetchall()
    return tables


@pytest.fixture
def pg_schema(local_services: Settings) -> Iterator[str]:
    """A fresh Postgres schema name; dropped afterwards."""
    schema = f"test_proj_{uuid.uuid4().hex[:10]}"
    yield schema
    with psycopg.connect(local_services.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg(local_services: Settings, pg_schema: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(local_services.postgres_dsn, autocommit=True) as conn:
        apply_migrations(conn, pg_schema)
        yield conn


def _items(records: Sequence[RefluxRecord], schema: str, topic: str = "runs") -> list[BatchItem]:
    return [
        BatchItem(PoisonRecord(topic, 0, offset, None, None), plan(record, schema))
        for offset, record in enumerate(records)
    ]


def test_scenario_read_models(pg: psycopg.Connection, pg_schema: str) -> None:
    scenario = build_scenario()
    outcome = apply_batch(
        pg, _items(scenario.run_events, pg_schema), schema=pg_schema, projector="direct"
    )
    apply_batch(pg, _items(scenario.workflows, pg_schema, "wf"), schema=pg_schema, projector="d")
    assert outcome.applied == len(scenario.run_events)
    assert outcome.offsets == {("runs", 0): len(scenario.run_events)}
    check_scenario(pg, pg_schema, scenario)


def test_redelivered_events_change_nothing_even_without_offsets(
    pg: psycopg.Connection, pg_schema: str
) -> None:
    scenario = build_scenario()
    events = scenario.run_events
    apply_batch(pg, _items(events, pg_schema), schema=pg_schema, projector="a")
    before = dump(pg, pg_schema)
    # Another projector name has no offsets: only the (run_id, seq) claim stops the replay.
    outcome = apply_batch(pg, _items(events, pg_schema), schema=pg_schema, projector="b")
    assert (outcome.applied, outcome.duplicates, outcome.stale) == (0, len(events), 0)
    after = dump(pg, pg_schema)
    assert {k: v for k, v in after.items() if k != "projection_offsets"} == {
        k: v for k, v in before.items() if k != "projection_offsets"
    }
    # The same projector again: skipped by its stored offsets, before touching anything.
    again = apply_batch(pg, _items(events, pg_schema), schema=pg_schema, projector="a")
    assert (again.applied, again.duplicates, again.stale) == (0, 0, len(events))


def test_rollback_of_an_outer_transaction_undoes_rows_and_offsets(
    pg: psycopg.Connection, pg_schema: str
) -> None:
    events = build_scenario().run_events

    class Crash(Exception):
        pass

    with pytest.raises(Crash), pg.transaction():
        apply_batch(pg, _items(events, pg_schema), schema=pg_schema, projector="a")
        assert pg.execute(f'SELECT count(*) FROM "{pg_schema}".run_events').fetchone() == (
            len(events),
        )
        raise Crash
    assert all(rows == [] for rows in dump(pg, pg_schema).values())


def test_queries_page_and_filter(pg: psycopg.Connection, pg_schema: str) -> None:
    scenario = build_scenario()
    apply_batch(pg, _items(scenario.run_events, pg_schema), schema=pg_schema, projector="a")
    apply_batch(pg, _items(scenario.workflows, pg_schema, "wf"), schema=pg_schema, projector="b")

    seen: list[str] = []
    cursor = None
    while True:
        page = queries.list_runs(pg, limit=2, cursor=cursor, schema=pg_schema)
        seen.extend(r.run_id for r in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ["resumed", "redriven", "cancelled", "retried", "linear"]  # newest first
    succeeded = queries.list_runs(pg, status="succeeded", schema=pg_schema)
    assert [r.run_id for r in succeeded.items] == ["redriven", "linear"]
    assert succeeded.next_cursor is None
    assert queries.list_runs(pg, workflow_id="report", schema=pg_schema).items == []
    with pytest.raises(queries.InvalidQueryError, match="Expected status"):
        queries.list_runs(pg, status="done", schema=pg_schema)
    with pytest.raises(queries.InvalidQueryError, match="Expected limit"):
        queries.list_runs(pg, limit=0, schema=pg_schema)

    assert queries.get_run(pg, "nope", schema=pg_schema) is None
    tail = queries.get_events(pg, "linear", after_seq=4, schema=pg_schema)
    assert [e.seq for e in tail] == [5, 6]
    assert [e.seq for e in queries.get_events(pg, "linear", limit=2, schema=pg_schema)] == [0, 1]

    summaries = queries.list_workflows(pg, schema=pg_schema)
    assert [(w.workflow_id, w.latest_version, w.version_count) for w in summaries] == [
        ("etl", 2, 2),
        ("report", 1, 1),
    ]
    assert summaries[1].registered_by == "bob"
    versions = queries.list_workflow_versions(pg, "etl", schema=pg_schema)
    assert [w.version for w in versions] == [1, 2]
    assert queries.list_workflow_versions(pg, "nope", schema=pg_schema) == []
    assert queries.get_workflow(pg, "etl", 3, schema=pg_schema) is None


def test_migrations_are_idempotent_and_refuse_edited_files(
    pg: psycopg.Connection, pg_schema: str
) -> None:
    assert apply_migrations(pg, pg_schema) == []
    pg.execute(
        f"UPDATE \"{pg_schema}\".schema_migrations SET checksum = 'edited' WHERE version = 1"
    )
    with pytest.raises(Exception, match="unchanged since it was applied"):
        apply_migrations(pg, pg_schema)


def test_a_redriven_step_reopens_a_failed_run_and_a_paused_run_stays_paused(
    pg: psycopg.Connection, pg_schema: str
) -> None:
    log = build_scenario().logs["redriven"]
    failed_at = next(i for i, e in enumerate(log.events) if isinstance(e, RunFailed))
    rescheduled = next(
        i for i, e in enumerate(log.events) if isinstance(e, StepScheduled) and e.attempt == 2
    )
    items = _items(log.events, pg_schema)
    apply_batch(pg, items[: failed_at + 1], schema=pg_schema, projector="a")
    run = queries.get_run(pg, log.run_id, schema=pg_schema)
    assert run is not None and (run.status, run.failed_step) == ("failed", "fetch")

    apply_batch(pg, items[failed_at + 1 : rescheduled + 1], schema=pg_schema, projector="a")
    run = queries.get_run(pg, log.run_id, schema=pg_schema)
    assert run is not None
    assert (run.status, run.error, run.failed_step, run.finished_at) == (
        "running", None, None, None)  # fmt: skip
    step = queries.get_steps(pg, log.run_id, schema=pg_schema)[0]
    assert (step.status, step.attempt, step.error, step.finished_at) == (
        "scheduled", 2, None, None)  # fmt: skip

    paused = RunLog("paused", T0).started().add(RunPaused)
    paused.add(StepScheduled, step=PARSE, attempt=1, params={})
    apply_batch(pg, _items(paused.events, pg_schema, "p"), schema=pg_schema, projector="a")
    run = queries.get_run(pg, "paused", schema=pg_schema)
    assert run is not None and (run.status, run.last_seq) == ("paused", 2)


def test_duplicates_inside_one_batch_are_claimed_once(
    pg: psycopg.Connection, pg_schema: str
) -> None:
    scenario = build_scenario()
    log = scenario.logs["cancelled"]
    # An old StepScheduled/Dispatched re-sent after the run was cancelled, in the same batch.
    events = [*scenario.run_events, *log.events[1:4], *scenario.workflows, scenario.workflows[0]]
    outcome = apply_batch(pg, _items(events, pg_schema), schema=pg_schema, projector="a")
    assert (outcome.applied, outcome.duplicates) == (len(events) - 4, 4)
    check_scenario(pg, pg_schema, scenario)


def test_started_steps_are_running_with_the_workers_start_time(
    pg: psycopg.Connection, pg_schema: str
) -> None:
    worker_start = T0 + timedelta(seconds=42)  # 40 s in the queue after the dispatch at seq 2
    log = (
        RunLog("started", T0)
        .started()
        .add(StepScheduled, step=FETCH, attempt=1, params={})
        .attempt(FETCH, 1, "inv-s-1")
        .add(StepStarted, step=FETCH, attempt=1, invocation_id="inv-s-1",
             started_at=worker_start, timeout_at=worker_start + timedelta(seconds=2),
             worker="worker-a")
        .add(StepTimeoutExtended, step=FETCH, attempt=1, invocation_id="inv-s-1", beat=3,
             timeout_at=worker_start + timedelta(seconds=40))
    )  # fmt: skip
    apply_batch(pg, _items(log.events, pg_schema), schema=pg_schema, projector="direct")

    def fetch() -> queries.StepRow:
        (row,) = queries.get_steps(pg, "started", schema=pg_schema)
        return row

    row = fetch()
    assert (row.status, row.attempt, row.invocation_id, row.worker) == (
        "running", 1, "inv-s-1", "worker-a")  # fmt: skip
    assert (row.dispatched_at, row.started_at) == (log.at(2), worker_start)
    run = queries.get_run(pg, "started", schema=pg_schema)
    assert run is not None and (run.status, run.last_seq) == ("running", 4)

    # The next attempt: dispatched again, not started yet, then cancelled with the run.
    more = RunLog("started", T0)
    more.events = list(log.events)
    more.add(StepTimedOut, step=FETCH, attempt=1, invocation_id="inv-s-1", timeout_ms=1000)
    more.add(StepRetryScheduled, step=FETCH, attempt=2, next_attempt_at=more.at(6),
             backoff_ms=1000, timer_id="t-s")  # fmt: skip
    more.add(StepScheduled, step=FETCH, attempt=2, params={})
    more.attempt(FETCH, 2, "inv-s-2")
    apply_batch(
        pg, _items(more.events[len(log.events) :], pg_schema), schema=pg_schema, projector="d2"
    )
    row = fetch()
    assert (row.status, row.attempt, row.dispatched_at, row.started_at, row.worker) == (
        "dispatched", 2, more.at(8), None, None)  # fmt: skip
    more.add(StepStarted, step=FETCH, attempt=2, invocation_id="inv-s-2", started_at=more.at(9))
    more.add(RunCancelled, reason="enough")
    apply_batch(pg, _items(more.events[-2:], pg_schema), schema=pg_schema, projector="d3")
    row = fetch()
    assert (row.status, row.started_at, row.finished_at) == ("cancelled", more.at(9), more.at(10))


def _every_kind_of_run() -> list[Any]:
    """The scenario's runs plus one with starts, heartbeats, a timeout, a retry and a cancel, and
    one reopened after it succeeded (every event type that touches a run's or a step's row)."""
    started = (
        RunLog("heartbeats", T0)
        .started()
        .add(StepScheduled, step=FETCH, attempt=1, params={})
        .attempt(FETCH, 1, "inv-h-1")
        .add(StepStarted, step=FETCH, attempt=1, invocation_id="inv-h-1",
             started_at=T0 + timedelta(seconds=3), worker="worker-a")
        .add(StepTimeoutExtended, step=FETCH, attempt=1, invocation_id="inv-h-1", beat=2,
             timeout_at=T0 + timedelta(seconds=40))
        .add(StepTimedOut, step=FETCH, attempt=1, invocation_id="inv-h-1", timeout_ms=1000)
        .add(StepRetryScheduled, step=FETCH, attempt=2, next_attempt_at=T0 + timedelta(hours=1),
             backoff_ms=1000, timer_id="t-h")
        .add(StepScheduled, step=FETCH, attempt=2, params={})
        .attempt(FETCH, 2, "inv-h-2")
        .add(StepStarted, step=FETCH, attempt=2, invocation_id="inv-h-2",
             started_at=T0 + timedelta(seconds=11))
        .add(StepSucceeded, step=FETCH, attempt=2, invocation_id="inv-h-2", output={"n": 1},
             cache_hit=False, duration_ms=3)
        .add(StepScheduled, step=PARSE, attempt=1, params={"n": 1})
        .attempt(PARSE, 1, "inv-h-3")
        .add(StepStarted, step=PARSE, attempt=1, invocation_id="inv-h-3",
             started_at=T0 + timedelta(seconds=15), worker="worker-b")
        .add(RunCancelled, reason="enough")
    )  # fmt: skip
    # A finished run reopened by a step scheduled again, then failed: the reopening cleared its
    # outputs, which RunFailed does not set.
    reopened = (
        RunLog("reopened", T0)
        .started()
        .add(StepScheduled, step=FETCH, attempt=1, params={})
        .add(StepSucceeded, step=FETCH, attempt=1, output={"n": 1}, cache_hit=True,
             duration_ms=0)
        .add(RunSucceeded, outputs={"n": 1}, duration_ms=10)
        .add(StepScheduled, step=FETCH, attempt=2, params={})
        .attempt(FETCH, 2, "inv-o-2")
        .add(StepFailed, step=FETCH, attempt=2, invocation_id="inv-o-2", error=HTTP_404)
        .add(RunFailed, error=HTTP_404, failed_step=FETCH)
    )  # fmt: skip
    return [*build_scenario().run_events, *started.events, *reopened.events]


def test_one_batch_leaves_the_same_rows_as_one_event_per_batch(
    pg: psycopg.Connection, pg_schema: str
) -> None:
    # Coalescing folds a batch's updates of a row into one statement: every row must end as
    # if each event had been applied on its own. The batch interleaves the runs (as a partition
    # does) and repeats some events (redelivered in the same batch).
    events = _every_kind_of_run()
    by_run: dict[str, list[Any]] = {}
    for event in events:
        by_run.setdefault(event.run_id, []).append(event)
    interleaved: list[Any] = []
    for i in range(max(len(log) for log in by_run.values())):
        interleaved.extend(log[i] for log in by_run.values() if i < len(log))
    interleaved += interleaved[10:14]
    alone = f"{pg_schema}_alone"
    apply_migrations(pg, alone)
    try:
        for offset, event in enumerate(events):
            item = BatchItem(PoisonRecord("runs", 0, offset, None, None), plan(event, alone))
            apply_batch(pg, [item], schema=alone, projector="a")
        outcome = apply_batch(pg, _items(interleaved, pg_schema), schema=pg_schema, projector="a")
        assert (outcome.applied, outcome.duplicates) == (len(events), 4)
        one_by_one, batched = dump(pg, alone), dump(pg, pg_schema)
        for name in ("runs", "steps", "run_events"):
            assert batched[name] == one_by_one[name], name
        assert len(batched["steps"]) == 11
    finally:
        pg.execute(f'DROP SCHEMA IF EXISTS "{alone}" CASCADE')
