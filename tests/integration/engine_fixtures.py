"""End-to-end fixtures: the whole engine (DevEngine) on real services, isolated per test.

Each test gets its own topic prefix (so its own topics, consumer groups and cache namespace) and
its own Postgres schema for the read models.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from foundation.settings import Settings
from projections.postgres import queries
from reflux.dev import DevEngine
from schemas.base import RefluxRecord
from schemas.models import StartRun, WorkflowRegistered
from schemas.statuses import TERMINAL_RUN_STATUSES
from streams.producer import Producer
from workflows import parse_workflow

TERMINAL: frozenset[str] = TERMINAL_RUN_STATUSES


@dataclass
class Harness:
    settings: Settings
    engine: DevEngine
    schema: str
    producer: Producer

    def register(self, definition: dict[str, Any], version: int = 1) -> None:
        parsed = parse_workflow(definition)
        record = WorkflowRegistered(
            workflow_id=parsed.id,
            version=version,
            definition=parsed.to_json_dict(),
            registered_at=datetime.now(UTC),
        )
        self.send(self.engine.catalog.workflows.topic, f"{parsed.id}@{version}", record)

    def send(self, topic: str, key: str, record: RefluxRecord) -> None:
        self.producer.send(topic, key, record)
        self.producer.flush(10)

    def command(self, record: Any) -> None:
        self.send(self.engine.catalog.commands.topic, record.run_id, record)

    def start(self, workflow_id: str, inputs: dict[str, Any] | None = None, **extra: Any) -> str:
        run_id = extra.pop("run_id", None) or str(uuid.uuid4())
        self.command(StartRun(run_id=run_id, workflow_id=workflow_id, inputs=inputs or {}, **extra))
        return run_id

    def conn(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.settings.postgres_dsn, autocommit=True)

    def run(self, run_id: str) -> queries.RunRow | None:
        with self.conn() as conn:
            return queries.get_run(conn, run_id, schema=self.schema)

    def steps(self, run_id: str) -> dict[str, queries.StepRow]:
        with self.conn() as conn:
            return {s.step_id: s for s in queries.get_steps(conn, run_id, schema=self.schema)}

    def events(self, run_id: str) -> list[queries.RunEventRow]:
        with self.conn() as conn:
            return list(queries.get_events(conn, run_id, schema=self.schema))

    def wait(
        self, run_id: str, statuses: set[str] | None = None, timeout: float = 30.0
    ) -> queries.RunRow:
        """Polls the projection until the run reaches one of ``statuses`` (default: terminal)."""
        wanted = statuses or TERMINAL
        deadline = time.monotonic() + timeout
        row = None
        while time.monotonic() < deadline:
            row = self.run(run_id)
            if row is not None and row.status in wanted:
                return row
            errors = self.engine.errors()
            if errors:
                pytest.fail(f"engine component failed: {errors}")
            time.sleep(0.05)
        pytest.fail(f"run {run_id} not in {wanted} after {timeout}s (last: {row})")

    def wait_step(self, run_id: str, step_id: str, status: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            step = self.steps(run_id).get(step_id)
            if step is not None and step.status == status:
                return
            time.sleep(0.05)
        pytest.fail(f"step {step_id} of {run_id} never became {status}: {self.steps(run_id)}")


@pytest.fixture
def harness(kafka_settings: Settings, admin: AdminClient) -> Iterator[Harness]:
    # `admin` deletes this test's topics afterwards (thousands of leftover partitions exhaust
    # the broker's open files on a long-lived development broker).
    schema = f"t_{uuid.uuid4().hex[:10]}"
    engine = DevEngine(kafka_settings, schema=schema).start()
    producer = Producer(kafka_settings, client_id="e2e-test")
    try:
        yield Harness(kafka_settings, engine, schema, producer)
    finally:
        producer.close()
        engine.stop()
        with psycopg.connect(kafka_settings.postgres_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def replayed_state(harness: Harness, run_id: str) -> Any:
    """The run's state folded from its projected event log (payloads back into event models)."""
    from processors.scheduler import fold
    from schemas import models

    events = []
    for row in harness.events(run_id):
        cls = getattr(models, row.event_type)
        events.append(cls.model_validate(row.payload))
    return fold(events)


def assert_replay_equivalent(harness: Harness, run_id: str, timeout: float = 10.0) -> None:
    """Live scheduler state == state folded from the projected log == the projection's rows."""
    scheduler = harness.engine.scheduler
    assert scheduler is not None
    deadline = time.monotonic() + timeout
    while True:
        live = scheduler.run_state(run_id)
        replayed = replayed_state(harness, run_id)
        if live is not None and replayed is not None and live.last_seq == replayed.last_seq:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"projection of {run_id} never caught up with the scheduler")
        time.sleep(0.05)
    assert replayed == live
    run = harness.run(run_id)
    assert run is not None and run.last_seq == live.last_seq
    assert run.status == live.status.value
    projected = {s: row.status for s, row in harness.steps(run_id).items()}
    assert projected == {
        s: st.status.value for s, st in live.steps.items() if st.status.value != "pending"
    }
