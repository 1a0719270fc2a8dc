"""End-to-end fixtures: the whole engine (DevEngine) on real services, isolated per test.

One factory starts every engine the tests use (``engine_harness`` for a test, ``running_engine``
for a wider scope): each engine gets its own topic prefix (so its own topics, consumer groups
and cache namespace) and its own Postgres schema for the read models. Cleanup is not optional:
the engine is stopped and its schemas dropped however the test ended, and the topics go with
the prefix, whose owner (``isolated_settings`` or ``isolated_kafka``) deletes and checks them.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiSettings
from foundation.settings import Settings
from foundation.tenancy import DEFAULT_TENANT
from node_workers.registry import NodeRegistry
from projections.postgres import queries
from reflux.dev import DevEngine
from schemas.base import RefluxRecord
from schemas.models import StartRun, WorkflowRegistered
from schemas.statuses import TERMINAL_RUN_STATUSES
from streams.producer import Producer
from tests.integration.kafka_fixtures import LEDGER, register_schema
from tests.support.api_auth import key_headers
from tests.support.waiting import eventually
from workflows import parse_workflow

TERMINAL: frozenset[str] = TERMINAL_RUN_STATUSES


@dataclass
class Harness:
    settings: Settings
    engine: DevEngine
    schema: str
    producer: Producer
    _reader: psycopg.Connection[Any] | None = field(default=None, init=False, repr=False)

    def register(
        self, definition: dict[str, Any], version: int = 1, *, tenant: str = DEFAULT_TENANT
    ) -> None:
        parsed = parse_workflow(definition)
        record = WorkflowRegistered(
            workflow_id=parsed.id,
            version=version,
            definition=parsed.to_json_dict(),
            registered_at=datetime.now(UTC),
            tenant=tenant,
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

    @contextlib.contextmanager
    def conn(self) -> Iterator[psycopg.Connection[Any]]:
        """The harness's reading connection (autocommit), opened on first use and kept until
        the engine stops; opened again if it broke.

        Tests poll the read model every 50 ms (``wait``, ``eventually``): a connection per poll
        cost ~8 ms of CPU (SCRAM on the client, a forked backend on the server), ~0.16 cores for
        every waiting test."""
        if self._reader is None or self._reader.closed:
            self._reader = psycopg.connect(self.settings.postgres_dsn, autocommit=True)
        reader = self._reader
        try:
            yield reader
        finally:
            if reader.broken:
                reader.close()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def run(self, run_id: str) -> queries.RunRow | None:
        with self.conn() as conn:
            return queries.get_run(conn, run_id, schema=self.schema)

    def steps(self, run_id: str) -> dict[str, queries.StepRow]:
        with self.conn() as conn:
            return {s.step_id: s for s in queries.get_steps(conn, run_id, schema=self.schema)}

    def events(self, run_id: str) -> list[queries.RunEventRow]:
        """The whole projected log, page by page (a map's parent log can pass a page)."""
        rows: list[queries.RunEventRow] = []
        with self.conn() as conn:
            while True:
                after = rows[-1].seq if rows else -1
                page = queries.get_events(conn, run_id, after, schema=self.schema)
                rows += page
                if len(page) < 1000:
                    return rows

    def _engine_alive(self) -> None:
        errors = self.engine.errors()
        if errors:
            pytest.fail(f"engine component failed: {errors}")

    def wait(
        self, run_id: str, statuses: set[str] | None = None, timeout: float = 30.0
    ) -> queries.RunRow:
        """Polls the projection until the run reaches one of ``statuses`` (default: terminal)."""
        wanted = statuses or TERMINAL

        def row() -> queries.RunRow | None:
            self._engine_alive()
            return self.run(run_id)

        found = eventually(
            row,
            timeout,
            f"run {run_id} in {sorted(wanted)}",
            until=lambda r: r is not None and r.status in wanted,
        )
        assert found is not None
        return found

    def wait_step(self, run_id: str, step_id: str, status: str, timeout: float = 30.0) -> None:
        def step() -> queries.StepRow | None:
            self._engine_alive()
            return self.steps(run_id).get(step_id)

        eventually(
            step,
            timeout,
            f"step {step_id} of {run_id} to become {status}",
            until=lambda s: s is not None and s.status == status,
            describe=lambda: f"steps: {self.steps(run_id)}",
        )


class HarnessFactory(Protocol):
    def __call__(
        self,
        settings: Settings | None = None,
        *,
        nodes: NodeRegistry | None = None,
        client_id: str = "e2e-test",
        **engine: Any,
    ) -> Harness:
        """Start an engine (``engine``: DevEngine's switches) on ``settings`` (default: the
        test's ``kafka_settings``); it is stopped and cleaned up after the test."""


def drop_schemas(settings: Settings, *schemas: str) -> None:
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.contextmanager
def running_engine(
    settings: Settings,
    owner: str,
    *,
    nodes: NodeRegistry | None = None,
    client_id: str = "e2e-test",
    **engine: Any,
) -> Iterator[Harness]:
    """The one way tests start a DevEngine. ``settings`` must carry a topic prefix handed out
    by ``isolated_kafka`` (whose owner deletes the topics); the read-model schema and the
    ``<schema>_api`` schema an API over it may create are dropped here, always."""
    assert settings.topic_prefix in LEDGER.prefixes, (
        f"{settings.topic_prefix!r} is not a test prefix: use isolated_kafka / kafka_settings"
    )
    schema = f"t_{uuid.uuid4().hex[:10]}"
    schemas = (schema, f"{schema}_api")
    for name in schemas:
        register_schema(name, owner)
    dev: DevEngine | None = None
    producer: Producer | None = None
    harness: Harness | None = None
    try:
        dev = DevEngine(settings, nodes=nodes, schema=schema, **engine)
        dev.start()
        producer = Producer(settings, client_id=client_id)
        harness = Harness(settings, dev, schema, producer)
        yield harness
    finally:
        try:
            if harness is not None:
                harness.close()
            if producer is not None:
                producer.close()
        finally:
            if dev is not None:
                dev.stop()
            drop_schemas(settings, *schemas)


@pytest.fixture
def engine_harness(
    kafka_settings: Settings, request: pytest.FixtureRequest
) -> Iterator[HarnessFactory]:
    """Starts engines for this test (see :class:`HarnessFactory`); all are stopped afterwards,
    before the prefix's topics are deleted."""
    with contextlib.ExitStack() as stack:

        def start(
            settings: Settings | None = None,
            *,
            nodes: NodeRegistry | None = None,
            client_id: str = "e2e-test",
            **engine: Any,
        ) -> Harness:
            return stack.enter_context(
                running_engine(
                    settings or kafka_settings,
                    request.node.nodeid,
                    nodes=nodes,
                    client_id=client_id,
                    **engine,
                )
            )

        yield start


@pytest.fixture
def harness(engine_harness: HarnessFactory) -> Harness:
    """The whole engine with the built-in nodes."""
    return engine_harness()


def api_client(harness: Harness) -> TestClient:
    """The API on the harness's read model and its own ``<schema>_api`` schema (polling fast,
    no ClickHouse), sending an admin key; enter it (``with``) to start the app."""
    settings = ApiSettings(
        read_schema=harness.schema,
        api_schema=f"{harness.schema}_api",
        poll_interval_s=0.05,
        clickhouse_enabled=False,
    )
    # A real admin key in <schema>_api (ADR 0046): every /v1 route wants a credential.
    headers = key_headers(harness.settings, settings, name="harness-admin")
    return TestClient(create_app(harness.settings, settings), headers=headers)


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

    seen: dict[str, Any] = {}

    def last_seqs() -> tuple[int | None, int | None]:
        """(live, replayed) last_seq; the states themselves are kept for the comparison."""
        seen["live"] = live = scheduler.run_state(run_id)
        seen["replayed"] = replayed = replayed_state(harness, run_id)
        return (
            None if live is None else live.last_seq,
            None if replayed is None else replayed.last_seq,
        )

    eventually(
        last_seqs,
        timeout,
        f"the projection of {run_id} to catch up with the scheduler (live, projected last_seq)",
        until=lambda seqs: seqs[0] is not None and seqs[0] == seqs[1],
    )
    live, replayed = seen["live"], seen["replayed"]
    assert replayed == live
    run = harness.run(run_id)
    assert run is not None and run.last_seq == live.last_seq
    assert run.status == live.status.value
    projected = {s: row.status for s, row in harness.steps(run_id).items()}
    assert projected == {
        s: st.status.value for s, st in live.steps.items() if st.status.value != "pending"
    }


def slow_http_chain(workflow_id: str, url: str, *, slow_ms: int, timeout: str) -> dict[str, Any]:
    """The kill tests' workflow: a slow HTTP call, a transform of its answer, another slow
    call (``url`` is the test HTTP server's); 5 attempts per step, 100 ms apart at first."""
    call = {"node": "http.request@^1", "params": {"url": f"{url}/slow?ms={slow_ms}"}}
    return {
        "id": workflow_id,
        "defaults": {"retry": {"max_attempts": 5, "initial_backoff": "100ms"}, "timeout": timeout},
        "steps": [
            {"id": "one", **call},
            transform("two", "slept_ms", "{{ steps.one.output.body }}", needs=["one"]),
            {"id": "three", **call, "needs": ["two"]},
        ],
    }


def transform(step_id: str, expression: str, data: Any, **extra: Any) -> dict[str, Any]:
    """A ``transform@^1`` step of a test workflow."""
    return {
        "id": step_id,
        "node": "transform@^1",
        "params": {"expression": expression, "data": data},
        **extra,
    }
