"""The projector against real Kafka and Postgres: exactly-once rows, crashes, rebuilds, poison.

Each test has its own topic prefix (``kafka_settings``) and Postgres schema (``pg_schema``).
"""

# Fixtures are imported from other modules; pytest injects them by parameter name, which ruff
# reads as redefinition.
# ruff: noqa: F401, F811

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import Message, TopicPartition

from foundation.errors import ConfigurationError
from foundation.settings import Settings
from projections.postgres import queries
from projections.postgres.writer import apply_batch
from projections.projector import Progress, Projector, rebuild
from schemas.models import DeadLetter, RunStarted, StartRun, StepScheduled, StepSucceeded
from streams.consumer import Consumer
from streams.producer import Producer
from streams.security import kafka_client_config
from streams.topics import TopicCatalog
from tests.integration.kafka_fixtures import admin, catalog, drain, kafka_settings, topics
from tests.integration.test_projection_scenarios import (
    FETCH,
    T0,
    Scenario,
    build_scenario,
    check_scenario,
    dump,
    pg_schema,
)
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def pg(kafka_settings: Settings) -> Iterator[psycopg.Connection]:
    with psycopg.connect(kafka_settings.postgres_dsn, autocommit=True) as conn:
        yield conn


def produce(settings: Settings, catalog: TopicCatalog, scenario: Scenario) -> int:
    """Send the scenario (runs keyed by run id, workflows by workflow id); returns run events."""
    with Producer(settings) as producer:
        for event in scenario.run_events:
            producer.send(catalog.runs, event.run_id, event)
        for workflow in scenario.workflows:
            producer.send(catalog.workflows, workflow.workflow_id, workflow)
    return len(scenario.run_events)


def project(settings: Settings, schema: str, **kwargs: object) -> Projector:
    kwargs.setdefault("assignment", "manual")
    return Projector(settings, schema, **kwargs)  # type: ignore[arg-type]


def catch_up(settings: Settings, schema: str, **kwargs: object) -> Projector:
    with project(settings, schema, **kwargs) as projector:
        projector.run_until_caught_up(timeout=60)
    return projector


def counts(conn: psycopg.Connection, schema: str) -> dict[str, int]:
    return {
        name: rows[0]
        for name in ("workflows", "runs", "steps", "run_events")
        if (rows := conn.execute(f'SELECT count(*) FROM "{schema}".{name}').fetchone())
    }


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    probe = RawConsumer({**kafka_client_config(settings), "group.id": "probe"})
    try:
        meta = probe.list_topics(topic, timeout=10).topics[topic]
        return {
            p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in meta.partitions
        }
    finally:
        probe.close()


def stored_offsets(conn: psycopg.Connection, schema: str, topic: str) -> dict[int, int]:
    rows = conn.execute(
        f'SELECT partition, next_offset FROM "{schema}".projection_offsets WHERE topic = %s',
        (topic,),
    ).fetchall()
    return dict(rows)


def test_projects_every_event_exactly_once(
    kafka_settings: Settings, topics: TopicCatalog, pg_schema: str, pg: psycopg.Connection
) -> None:
    scenario = build_scenario()
    total = produce(kafka_settings, topics, scenario)

    projector = catch_up(kafka_settings, pg_schema)
    assert projector.stats.applied == total + len(scenario.workflows)
    assert projector.stats.duplicates == projector.stats.dead_lettered == 0
    check_scenario(pg, pg_schema, scenario)
    assert counts(pg, pg_schema)["run_events"] == total
    # The offsets of record are the end of every partition, in Postgres.
    for topic in (topics.runs.topic, topics.workflows.topic):
        ends = {p: o for p, o in end_offsets(kafka_settings, topic).items() if o > 0}
        assert stored_offsets(pg, pg_schema, topic) == ends
    before = dump(pg, pg_schema)

    # 1. Old events are delivered again after newer ones (same run_id/seq, new offsets): if
    # they were re-applied, e.g. StepScheduled would reset finished steps and reopen runs.
    with Producer(kafka_settings) as producer:
        redelivered = [e for log in scenario.logs.values() for e in log.events[:3]]
        for event in redelivered:
            producer.send(topics.runs, event.run_id, event)
        for workflow in scenario.workflows:
            producer.send(topics.workflows, workflow.workflow_id, workflow)
    again = catch_up(kafka_settings, pg_schema)
    duplicates = len(redelivered) + len(scenario.workflows)
    assert (again.stats.applied, again.stats.duplicates) == (0, duplicates)
    after = dump(pg, pg_schema)
    assert {k: v for k, v in after.items() if k != "projection_offsets"} == {
        k: v for k, v in before.items() if k != "projection_offsets"
    }

    # 2. The offset rows are lost: everything is replayed from the beginning, nothing changes.
    pg.execute(f'DELETE FROM "{pg_schema}".projection_offsets')
    replay = catch_up(kafka_settings, pg_schema)
    assert replay.stats.records == total + len(scenario.workflows) + duplicates
    assert replay.stats.applied == 0
    assert dump(pg, pg_schema) == after
    check_scenario(pg, pg_schema, scenario)


def test_kafka_group_offsets_are_only_a_hint(
    kafka_settings: Settings, topics: TopicCatalog, pg_schema: str, pg: psycopg.Connection
) -> None:
    scenario = build_scenario()
    total = produce(kafka_settings, topics, scenario)
    with project(kafka_settings, pg_schema, assignment="group") as first:
        first.run_until_caught_up(timeout=60)
        group = first.group_id
    assert first.stats.applied == total + len(scenario.workflows)

    # Rewind the group's Kafka offsets to 0: a Kafka-driven projector would replay everything.
    rewind = RawConsumer({**kafka_client_config(kafka_settings), "group.id": group})
    try:
        partitions = [
            TopicPartition(topic, p, 0)
            for topic in (topics.runs.topic, topics.workflows.topic)
            for p in range(topics.runs.partitions)
        ]
        rewind.commit(offsets=partitions, asynchronous=False)
    finally:
        rewind.close()
    with project(kafka_settings, pg_schema, assignment="group") as second:
        second.run_until_caught_up(timeout=60)
    assert second.stats.records == 0  # started from the offsets stored in Postgres
    check_scenario(pg, pg_schema, scenario)


def test_crash_mid_batch_resumes_without_gaps_or_duplicates(
    kafka_settings: Settings, topics: TopicCatalog, pg_schema: str, pg: psycopg.Connection
) -> None:
    scenario = build_scenario()
    total = produce(kafka_settings, topics, scenario)

    class Crash(Exception):
        pass

    # A first projector gets through some batches, then crashes in the middle of one.
    crashed = project(kafka_settings, pg_schema, batch_size=7)
    committed = 0
    while committed < 10:
        committed += crashed.step(timeout=1.0).applied
    messages: list[Message] = []
    while not messages:
        messages = crashed.poll(timeout=1.0)
    items, _ = crashed.decode(messages)
    conn = psycopg.connect(kafka_settings.postgres_dsn, autocommit=True)
    with conn, pytest.raises(Crash), conn.transaction():
        outcome = apply_batch(conn, items, schema=pg_schema, projector=crashed.name)
        assert outcome.applied > 0  # rows and offsets were written ...
        raise Crash  # ... and the process dies before the commit
    crashed.close()
    assert counts(pg, pg_schema)["run_events"] + counts(pg, pg_schema)["workflows"] == committed
    # Worse: Kafka's group offsets claim everything was consumed (a hint committed too early).
    hint = RawConsumer({**kafka_client_config(kafka_settings), "group.id": crashed.group_id})
    try:
        hint.commit(
            offsets=[
                TopicPartition(topic, p, end)
                for topic in (topics.runs.topic, topics.workflows.topic)
                for p, end in end_offsets(kafka_settings, topic).items()
            ],
            asynchronous=False,
        )
    finally:
        hint.close()

    resumed = catch_up(kafka_settings, pg_schema, batch_size=7, assignment="group")
    assert resumed.stats.duplicates == resumed.stats.stale == 0
    assert committed + resumed.stats.applied == total + len(scenario.workflows)
    check_scenario(pg, pg_schema, scenario)  # no gaps: every seq of every run is there once


def test_rebuild_gives_identical_read_models(
    kafka_settings: Settings, topics: TopicCatalog, pg_schema: str, pg: psycopg.Connection
) -> None:
    scenario = build_scenario()
    total = produce(kafka_settings, topics, scenario)
    catch_up(kafka_settings, pg_schema)
    before = dump(pg, pg_schema)
    # Something a rebuild must wipe: a row no event produced.
    pg.execute(
        f'INSERT INTO "{pg_schema}".runs (run_id, workflow_id, workflow_version, status, source, '
        "started_at, updated_at, last_seq) VALUES ('ghost', 'x', 1, 'running', 'api', now(), "
        "now(), 0)"
    )

    # A running projector holds the read models: the rebuild refuses to interleave with it.
    with project(kafka_settings, pg_schema) as live:
        live.start()
        with pytest.raises(ConfigurationError, match="a projector is running"):
            rebuild(kafka_settings, pg_schema, timeout=30)

    progress: list[Progress] = []
    stats = rebuild(kafka_settings, pg_schema, timeout=60, on_progress=progress.append)
    assert stats.applied == total + len(scenario.workflows)
    assert dump(pg, pg_schema) == before
    assert progress[-1].done == progress[-1].total == total + len(scenario.workflows)


def test_poison_records_go_to_the_dlq_and_the_rest_is_projected(
    kafka_settings: Settings, topics: TopicCatalog, pg_schema: str, pg: psycopg.Connection
) -> None:
    run_id = "poisoned"
    started = RunStarted(
        run_id=run_id, seq=0, occurred_at=T0, workflow_id="wf", workflow_version=1,
        inputs={}, definition={}, source="api",
    )  # fmt: skip
    # Valid Avro, but Postgres refuses it: jsonb cannot hold \u0000.
    refused = StepScheduled(run_id=run_id, seq=1, step=FETCH, attempt=1, params={"x": "a\x00b"})
    wrong_type = StartRun(run_id=run_id, workflow_id="wf", inputs={})
    after = StepSucceeded(
        run_id=run_id, seq=2, step=FETCH, attempt=1, output={"ok": True}, cache_hit=True,
        duration_ms=0,
    )  # fmt: skip
    with Producer(kafka_settings) as producer:
        producer.send(topics.runs, run_id, started)
        producer.send(topics.runs, run_id, b"definitely not avro")
        producer.send(topics.runs, run_id, refused)
        producer.send(topics.runs, run_id, wrong_type)
        producer.send(topics.runs, run_id, after)

    projector = catch_up(kafka_settings, pg_schema)
    assert projector.stats.dead_lettered == 3
    assert projector.stats.applied == 2
    events = queries.get_events(pg, run_id, schema=pg_schema)
    assert [(e.seq, e.event_type) for e in events] == [(0, "RunStarted"), (2, "StepSucceeded")]
    step = queries.get_steps(pg, run_id, schema=pg_schema)[0]
    assert (step.status, step.output) == ("succeeded", {"ok": True})
    # The poison offsets count as consumed: a restart does not dead-letter them again.
    partition = next(iter(stored_offsets(pg, pg_schema, topics.runs.topic)))
    assert stored_offsets(pg, pg_schema, topics.runs.topic) == {partition: 5}

    with Consumer([topics.dlq], f"test-dlq-{uuid.uuid4().hex[:6]}", kafka_settings,
                  expected=DeadLetter) as dlq:  # fmt: skip
        letters = [r.value for r in drain(dlq, lambda rs: len(rs) >= 3)]
    by_offset = {letter.offset: letter for letter in letters if isinstance(letter, DeadLetter)}
    assert sorted(by_offset) == [1, 2, 3]
    assert by_offset[1].error_class == "MalformedRecord"
    assert by_offset[1].value == b"definitely not avro"
    assert by_offset[2].error_class.startswith("Postgres")
    assert "Expected Postgres to accept the record" in by_offset[2].reason
    assert by_offset[3].error_class == "UnexpectedRecordType"
    assert {letter.original_topic for letter in by_offset.values()} == {topics.runs.topic}
    assert {letter.consumer_group for letter in by_offset.values()} == {projector.group_id}

    again = catch_up(kafka_settings, pg_schema)
    assert again.stats.records == again.stats.dead_lettered == 0


def test_run_loop_projects_live_and_stops_gracefully(
    kafka_settings: Settings, topics: TopicCatalog, pg_schema: str, pg: psycopg.Connection
) -> None:
    scenario = build_scenario()
    stop = threading.Event()
    projector = Projector(kafka_settings, pg_schema, batch_size=10, poll_timeout=0.2)
    projector.start()  # migrations exist before the events arrive
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(projector.run(stop)), daemon=True)
    thread.start()
    try:
        total = produce(kafka_settings, topics, scenario)
        eventually(
            lambda: counts(pg, pg_schema)["run_events"],
            60,
            f"the projector to catch up ({total} run events projected)",
            until=lambda projected: projected >= total,
            interval=0.2,
        )
    finally:
        stop.set()
        thread.join(timeout=15)
        projector.close()
    assert not thread.is_alive()
    assert result and result[0] is projector.stats
    check_scenario(pg, pg_schema, scenario)


def test_a_lost_postgres_session_rewinds_to_the_stored_offsets(
    kafka_settings: Settings, topics: TopicCatalog, pg_schema: str, pg: psycopg.Connection
) -> None:
    scenario = build_scenario()
    total = produce(kafka_settings, topics, scenario)
    with project(kafka_settings, pg_schema, batch_size=5) as projector:
        applied = 0
        while applied == 0:
            applied += projector.step(timeout=1.0).applied
        # The database kills the projector's session between two batches.
        killed = pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (projector.application_name,),
        ).fetchall()
        assert killed == [(True,)]
        with pytest.raises(psycopg.OperationalError):
            for _ in range(50):  # the first batch with records hits the dead session
                projector.step(timeout=1.0)
        # The consumer is past that batch; the next step must go back to the stored offsets.
        projector.run_until_caught_up(timeout=60)
        assert projector.stats.duplicates == projector.stats.stale == 0
        assert projector.stats.applied == total + len(scenario.workflows)
    check_scenario(pg, pg_schema, scenario)
