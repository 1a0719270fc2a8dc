"""The traces store end to end: JSON traces on a real Kafka topic -> chdb Kafka engine ->
materialized views -> MergeTree and rollups, and the queries over them.

chdb allows one data folder per process, so every ClickHouse test lives in this module and
shares one store (under pytest's tmp_path); each test gets its own topic prefix and its own
ClickHouse database, so tests do not see each other's rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka.admin import AdminClient
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiSettings
from foundation.settings import Settings
from processors.alerts.config import ERROR_RATE_RULE
from processors.alerts.evaluator import AlertEvaluator
from processors.alerts.rules import AlertRule
from projections.clickhouse import ClickHouse, connect
from projections.traces.cli import add_traces_commands
from projections.traces.migrations import (
    IngestTuning,
    Migration,
    MigrationError,
    applied_versions,
    apply,
    consumer_group,
    drop,
    load_migrations,
    render,
    template_params,
)
from projections.traces.owner import TracesOwner
from projections.traces.queries import (
    ingest_status,
    node_metrics,
    reliability_matrix,
    retry_metrics,
    top_failures,
    workflow_metrics,
)
from schemas import decode
from schemas.models import Alert, AlertKind, AlertState, ErrorInfo, Trace, TraceStatus
from schemas.trace_json import encode_trace
from streams.admin import ensure_topics
from streams.producer import Producer
from streams.security import kafka_client_config
from streams.topics import TopicCatalog
from tests.support.api_auth import key_headers
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

INGEST_TIMEOUT_S = 60.0


class Store:
    """The module's one chdb session; the restart test closes and reopens it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ch: ClickHouse | None = None

    @property
    def ch(self) -> ClickHouse:
        if self._ch is None:
            self._ch = connect(self.settings)
        return self._ch

    def close(self) -> None:
        ch, self._ch = self._ch, None
        if ch is not None:
            ch.close()


@pytest.fixture(scope="module")
def store(local_services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    folder: Path = tmp_path_factory.mktemp("chdb")
    s = Store(local_services.model_copy(update={"clickhouse_dsn": f"chdb://{folder}"}))
    yield s
    s.close()


@dataclass
class Env:
    settings: Settings
    database: str
    catalog: TopicCatalog
    store: Store

    @property
    def ch(self) -> ClickHouse:
        return self.store.ch

    def count(self, table: str = "traces") -> int:
        return int(self.ch.query(f"SELECT count() AS n FROM {self.database}.{table}")[0]["n"])


@pytest.fixture
def env(
    store: Store, kafka_settings: Settings, catalog: TopicCatalog, admin: AdminClient
) -> Iterator[Env]:
    settings = kafka_settings.model_copy(update={"clickhouse_dsn": store.settings.clickhouse_dsn})
    ensure_topics(catalog, [catalog.traces], admin=admin)
    database = "t_" + settings.topic_prefix.replace("-", "_")
    e = Env(settings, database, catalog, store)
    yield e
    # Before the topic is deleted (admin's teardown): dropping the Kafka table stops its consumer.
    drop(store.ch, database)


def _produce(settings: Settings, topic: str, messages: list[tuple[str, bytes]]) -> None:
    with Producer(settings, client_id="test-traces") as producer:
        for key, value in messages:
            producer.send(topic, key, value)


def _send(env: Env, traces: list[Trace]) -> None:
    _produce(env.settings, env.catalog.traces.topic, [(t.node, encode_trace(t)) for t in traces])


def _wait(what: str, check: Callable[[], int], expected: int) -> None:
    """Until ``check()`` is ``expected``; more than that fails at once (duplicates)."""

    def counted() -> int:
        value = check()
        if value > expected:
            pytest.fail(f"Expected {expected} {what}, but got {value} (duplicates?)")
        return value

    eventually(
        counted,
        INGEST_TIMEOUT_S,
        f"{expected} {what}",
        until=lambda value: value == expected,
        interval=0.1,
    )


BASE = datetime(2025, 3, 4, 10, 0, 0, tzinfo=UTC)


def _trace(i: int, **overrides: Any) -> Trace:
    start = BASE + timedelta(seconds=i, milliseconds=i % 1000)
    fields: dict[str, Any] = {
        "run_id": f"run-{i % 7}",
        "seq": i,
        "workflow_id": f"wf-{i % 2}",
        "workflow_version": 1 + i % 3,
        "step_id": f"step-{i % 5}",
        "node": ("http.request", "llm.chat", "code.run")[i % 3],
        "node_version": f"1.{i % 2}.0",
        "invocation_id": None if i % 4 == 0 else f"inv-{i}",
        "status": TraceStatus.OK,
        "start": start,
        "end": start + timedelta(milliseconds=10 + i),
        "latency_ms": 10 + i,
        "inputs_hash": f"{i:064x}",
        "metrics": {} if i % 5 == 0 else {"bytes": i * 1.5, "ratio": 1 / (i + 3)},
        "retry_count": i % 3,
        "cache_hit": i % 6 == 0,
        "cost_tokens": None if i % 2 else i * 10,
        "context": {"region": "eu", "note": f'été "{i}"\n'} if i % 3 == 0 else {},
    }
    if i % 4 == 1:
        fields["status"] = TraceStatus.ERROR
        fields["error"] = ErrorInfo(
            error_class="HttpTimeout", message=f"no answer from 'host-{i}'", retryable=i % 8 == 1
        )
    elif i % 9 == 2:
        fields["status"] = TraceStatus.TIMEOUT
    fields.update(overrides)
    return Trace(**fields)


def _ch_time(moment: datetime) -> str:
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    )


def _expected_row(trace: Trace) -> dict[str, Any]:
    return {
        "event_id": trace.event_id,
        "run_id": trace.run_id,
        "seq": trace.seq,
        "occurred_at": _ch_time(trace.occurred_at),
        "schema_version": Trace.SCHEMA_VERSION,
        "workflow_id": trace.workflow_id,
        "workflow_version": trace.workflow_version,
        "step_id": trace.step_id,
        "node": trace.node,
        "node_version": trace.node_version,
        "invocation_id": trace.invocation_id,
        "status": trace.status.value,
        "start": _ch_time(trace.start),
        "end": _ch_time(trace.end),
        "latency_ms": trace.latency_ms,
        "inputs_hash": trace.inputs_hash,
        "metrics": trace.metrics,
        "error_class": trace.error.error_class if trace.error else None,
        "error_message": trace.error.message if trace.error else None,
        "error_retryable": trace.error.retryable if trace.error else None,
        "retry_count": trace.retry_count,
        "cache_hit": trace.cache_hit,
        "cost_tokens": trace.cost_tokens,
        "context": trace.context,
    }


def test_traces_arrive_field_by_field(env: Env) -> None:
    assert apply(env.ch, env.settings, database=env.database) == [1, 2, 3, 4, 5, 6, 7, 8]
    traces = [_trace(i) for i in range(600)]
    before = time.time()
    _send(env, traces)
    _wait("rows in traces", env.count, len(traces))

    rows = env.ch.query(f"SELECT * FROM {env.database}.traces")
    by_id = {r["event_id"]: r for r in rows}
    assert len(by_id) == len(traces)
    for trace in traces:
        row = by_id[trace.event_id]
        expected = _expected_row(trace)
        assert {k: row[k] for k in expected} == expected, trace.event_id
        assert row["kafka_partition"] in range(env.catalog.traces.partitions)
        # Kafka stamps produced_at at send time; received_at is when the view wrote the row.
        produced = datetime.fromisoformat(row["produced_at"]).replace(tzinfo=UTC)
        received = datetime.fromisoformat(row["received_at"]).replace(tzinfo=UTC)
        assert before - 1 <= produced.timestamp() <= received.timestamp() + 0.001
    offsets = {(r["kafka_partition"], r["kafka_offset"]) for r in rows}
    assert len(offsets) == len(traces)
    assert env.count("traces_errors") == 0


def test_malformed_messages_go_to_traces_errors_and_later_traces_still_arrive(env: Env) -> None:
    apply(env.ch, env.settings, database=env.database)
    good_before = [_trace(i) for i in range(20)]
    good_after = [_trace(i) for i in range(20, 45)]
    unknown_status = encode_trace(good_before[0]).replace(b'"status":"ok"', b'"status":"boom"')
    unknown_field = encode_trace(good_before[0]).replace(b"{", b'{"surprise":1,', 1)
    bad = [b"{not json", unknown_status, unknown_field]
    # One key, so all of them share a partition and the bad ones sit between the good ones.
    messages = [("k", encode_trace(t)) for t in good_before]
    messages += [("k", value) for value in bad]
    messages += [("k", encode_trace(t)) for t in good_after]
    _produce(env.settings, env.catalog.traces.topic, messages)

    _wait("rows in traces", env.count, len(good_before) + len(good_after))
    _wait("rows in traces_errors", lambda: env.count("traces_errors"), len(bad))
    errors = env.ch.query(f"SELECT * FROM {env.database}.traces_errors ORDER BY offset")
    assert [e["raw_message"].encode() for e in errors] == bad
    assert [e["offset"] for e in errors] == [20, 21, 22]
    assert {e["topic"] for e in errors} == {env.catalog.traces.topic}
    assert all(e["key"] == "k" and e["error"] for e in errors)
    assert "Unknown field" in errors[2]["error"]
    ids = {r["event_id"] for r in env.ch.query(f"SELECT event_id FROM {env.database}.traces")}
    assert ids == {t.event_id for t in good_before + good_after}


def test_fields_of_the_wrong_json_type_go_to_traces_errors(env: Env) -> None:
    """The queue reads each message as one string (007, ADR 0067) and the views check the
    Trace fields' JSON types: a message that is JSON but not a trace never becomes a row."""
    apply(env.ch, env.settings, database=env.database)
    good = [_trace(i) for i in range(10)]
    text = encode_trace(good[1]).decode()  # an error trace: error is an object, metrics numbers
    assert '"error":{' in text and '"metrics":{"bytes":' in text

    def edit(old: str, new: str) -> bytes:
        assert old in text, old
        return text.replace(old, new, 1).encode()

    bad = {
        "{not json}": b"{not json}",
        "an empty object": b"{}",
        "seq as a string": edit(f'"seq":{good[1].seq}', '"seq":"1"'),
        "latency as a float": edit(f'"latency_ms":{good[1].latency_ms}', '"latency_ms":11.5'),
        "run_id as a number": edit(f'"run_id":"{good[1].run_id}"', '"run_id":7'),
        "cache_hit as 0": edit('"cache_hit":false', '"cache_hit":0'),
        "a metric as a string": edit('"metrics":{"bytes":', '"metrics":{"x":"1","bytes":'),
        "a context value as a number": edit('"context":{}', '"context":{"n":1}'),
        "retryable as a string": edit('"retryable":true', '"retryable":"yes"'),
        "an unknown error field": edit('"retryable":true', '"retryable":true,"why":"x"'),
        "an unknown nested field position": edit('"node":', '"Node":"x","node":'),
    }
    messages = [("k", encode_trace(t)) for t in good[:5]]
    messages += [("k", value) for value in bad.values()]
    messages += [("k", encode_trace(t)) for t in good[5:]]
    _produce(env.settings, env.catalog.traces.topic, messages)

    _wait("rows in traces", env.count, len(good))
    _wait("rows in traces_errors", lambda: env.count("traces_errors"), len(bad))
    errors = env.ch.query(f"SELECT * FROM {env.database}.traces_errors ORDER BY offset")
    assert [e["raw_message"].encode() for e in errors] == list(bad.values())
    assert [e["offset"] for e in errors] == list(range(5, 5 + len(bad)))
    assert all(e["error"] for e in errors)
    by_case = dict(zip(bad, (e["error"] for e in errors), strict=True))
    assert "Wrong JSON type for field seq" in by_case["seq as a string"]
    assert "Wrong JSON type for field metrics" in by_case["a metric as a string"]
    assert (
        "Unknown field found while parsing trace JSON: Node"
        in by_case["an unknown nested field position"]
    )
    rows = env.ch.query(f"SELECT * FROM {env.database}.traces")
    by_id = {r["event_id"]: r for r in rows}
    assert set(by_id) == {t.event_id for t in good}
    for trace in good:
        expected = _expected_row(trace)
        assert {k: by_id[trace.event_id][k] for k in expected} == expected


def test_traces_outside_the_fast_layout_take_the_field_check_and_still_arrive(env: Env) -> None:
    """008 accepts encode_trace's compact layout with one pattern (ADR 0068). Valid traces just
    outside it (an escape, spaces, another field order, a 19-digit integer, a 3-digit exponent)
    go through 007's per-field check and arrive; messages one byte outside it that are not
    traces (an integer beyond Int64, a float beyond Float64, a raw tab in a string, invalid
    UTF-8) land in traces_errors with a reason, never in traces."""
    apply(env.ch, env.settings, database=env.database)
    # _trace puts an escaped quote and a newline in every third context: none here but one.
    compact = [_trace(i, context={}) for i in range(200, 204)]  # the fast path, around the others

    def spaced(trace: Trace) -> bytes:
        return json.dumps(json.loads(encode_trace(trace))).encode()

    def reordered(trace: Trace) -> bytes:
        fields = list(json.loads(encode_trace(trace)).items())
        return json.dumps(dict(reversed(fields)), separators=(",", ":")).encode()

    good = {
        "an escaped quote": (_trace(210, context={"q": 'say "hi"'}), encode_trace),
        "spaces after separators": (_trace(211, context={}), spaced),
        "another field order": (_trace(212, context={}), reordered),
        "an integer of 19 digits": (
            _trace(213, seq=1234567890123456789, context={}),
            encode_trace,
        ),
        "a float with a 3-digit exponent": (
            _trace(214, metrics={"huge": 1.5e300}, context={}),
            encode_trace,
        ),
    }
    text = encode_trace(_trace(220, context={"k": "v"})).decode()

    def edit(old: str, new: str) -> bytes:
        assert old in text, old
        return text.replace(old, new, 1).encode()

    bad = {
        "an integer beyond Int64": edit('"seq":220,', '"seq":12345678901234567890,'),
        "a float beyond Float64": edit('"metrics":{', '"metrics":{"x":1e999'),
        "a raw tab in a string": edit('"k":"v"', '"k":"v\tw"'),
        "invalid UTF-8 in a string": edit('"k":"v"', '"k":"v~w"').replace(b"v~w", b"v\xffw"),
    }
    messages = [("k", encode_trace(t)) for t in compact[:2]]
    messages += [("k", encode(trace)) for trace, encode in good.values()]
    messages += [("k", value) for value in bad.values()]
    messages += [("k", encode_trace(t)) for t in compact[2:]]
    _produce(env.settings, env.catalog.traces.topic, messages)

    arrived = compact + [trace for trace, _ in good.values()]
    _wait("rows in traces", env.count, len(arrived))
    _wait("rows in traces_errors", lambda: env.count("traces_errors"), len(bad))
    rows = {r["event_id"]: r for r in env.ch.query(f"SELECT * FROM {env.database}.traces")}
    assert set(rows) == {t.event_id for t in arrived}
    for trace in arrived:
        expected = _expected_row(trace)
        assert {k: rows[trace.event_id][k] for k in expected} == expected
    # Not SELECT *: raw_message holds the invalid UTF-8, which the JSON result cannot carry.
    errors = env.ch.query(f"SELECT offset, error FROM {env.database}.traces_errors ORDER BY offset")
    first_bad = 2 + len(good)
    assert [e["offset"] for e in errors] == list(range(first_bad, first_bad + len(bad)))
    by_case = dict(zip(bad, (e["error"] for e in errors), strict=True))
    assert (
        "Wrong JSON type for field seq: 12345678901234567890" in by_case["an integer beyond Int64"]
    )
    parse_failure = "Expected a JSON object with the Trace fields"
    assert {
        case: error for case, error in by_case.items() if case != "an integer beyond Int64"
    } == {
        "a float beyond Float64": parse_failure,
        "a raw tab in a string": parse_failure,
        "invalid UTF-8 in a string": parse_failure,
    }


@pytest.mark.parametrize(
    ("store_version", "queue_before"),
    [(6, "JSONEachRow"), (7, "JSONAsString")],
    ids=["003 queue", "007 queue"],
)
def test_upgrading_a_store_to_the_newest_ingest_loses_and_duplicates_nothing(
    env: Env, store_version: int, queue_before: str
) -> None:
    """A store created before 007 reads with 003's JSONEachRow queue, one created before 008
    with 007's view; applying the rest replaces the queue and its views under the same consumer
    group, so ingestion resumes at the committed offsets: traces sent before, during and after
    the upgrade arrive exactly once."""
    everything = load_migrations()
    older = [m for m in everything if m.version <= store_version]
    assert apply(env.ch, env.settings, database=env.database, migrations=older) == [
        m.version for m in older
    ]

    def created(name: str) -> str:
        return str(
            env.ch.query(
                "SELECT create_table_query AS q FROM system.tables "
                "WHERE database = %(db)s AND name = %(name)s",
                {"db": env.database, "name": name},
            )[0]["q"]
        )

    def queue_format() -> str:
        return created("traces_queue").split("kafka_format = '")[1].split("'")[0]

    assert queue_format() == queue_before
    first = [_trace(i) for i in range(300)]
    _send(env, first)
    _wait("rows in traces", env.count, len(first))
    during = [_trace(i) for i in range(300, 600)]
    _send(env, during)  # some read by the old queue, the rest by the new one
    assert apply(env.ch, env.settings, database=env.database) == [
        m.version for m in everything if m.version > store_version
    ]
    assert queue_format() == "JSONAsString"
    assert "match(raw" in created("traces_ingest_mv")  # 008's view
    after = [_trace(i) for i in range(600, 900)]
    _send(env, after)
    _wait("rows in traces", env.count, 900)
    ids = [r["event_id"] for r in env.ch.query(f"SELECT event_id FROM {env.database}.traces")]
    assert sorted(ids) == sorted(t.event_id for t in first + during + after)
    assert env.count("traces_errors") == 0
    # The rollups saw every attempt exactly once, across both queues.
    rollup = f"SELECT sum(attempts) AS n FROM {env.database}.node_metrics_1m"
    _wait("attempts in node_metrics_1m", lambda: int(env.ch.query(rollup)[0]["n"]), 900)


FLUSH_MS = 3000
"""The restart test's Kafka engine writes a block every 3 s: read traces wait that long in the
engine's pending block, a window to observe and to stop in."""


@dataclass(frozen=True)
class StopPoint:
    rows: int
    """Rows in ``traces`` when the stop was decided."""
    position: int
    """Messages the Kafka engine had read by then (its consumer's position)."""
    committed: int
    """The engine's committed offsets after the stop: where a restart resumes."""


def _committed(settings: Settings, database: str, topic: str, partitions: int) -> int:
    """The traces store's consumer group: its committed offsets, summed over the partitions."""
    probe = KafkaConsumer(
        {
            **kafka_client_config(settings),
            "group.id": consumer_group(settings, database),
        }
    )
    try:
        tps = probe.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        probe.close()
    return sum(tp.offset for tp in tps if tp.offset > 0)


def test_a_stop_mid_ingestion_then_a_restart_loses_and_duplicates_nothing(env: Env) -> None:
    """The owner stops while its Kafka engine holds traces it has read but not written (seen in
    ``system.kafka_consumers``: the consumer's position is past the rows written, some blocks
    already written); after the stop its committed offsets are behind that position, so the
    restart must read those traces again. More traces are produced while nothing consumes; after
    the restart every trace is in ``traces`` exactly once."""
    # The owner opens its own session on the same folder: release the module's first.
    env.store.close()
    owner = TracesOwner(
        env.settings, database=env.database, tuning=IngestTuning(flush_interval_ms=FLUSH_MS)
    )
    topic, partitions = env.catalog.traces.topic, env.catalog.traces.partitions
    sent: list[Trace] = []

    def send(n: int) -> None:
        batch = [_trace(i) for i in range(len(sent), len(sent) + n)]
        _send(env, batch)
        sent.extend(batch)

    def counted() -> int:
        return int(owner.ch.query(f"SELECT count() AS n FROM {env.database}.traces")[0]["n"])

    def committed() -> int:
        return _committed(env.settings, env.database, topic, partitions)

    def position() -> int:
        rows = owner.ch.query(
            "SELECT assignments.current_offset AS offsets FROM system.kafka_consumers "
            "WHERE database = %(db)s AND table = 'traces_queue'",
            {"db": env.database},
        )
        return sum(offset for row in rows for offset in row["offsets"] if offset > 0)

    def stop_mid_ingestion() -> StopPoint:
        """Serve until the engine holds read but unwritten traces, then stop at once."""
        stop = threading.Event()
        serving = threading.Thread(target=owner.run, args=(stop,), kwargs={"report_every_s": 0.2})
        serving.start()
        try:

            def opened() -> bool:
                if not serving.is_alive() and not owner.is_open:
                    pytest.fail("the traces owner stopped before it opened the store")
                return owner.is_open

            eventually(opened, 30, "the traces owner to open the store")

            def rows_and_position() -> tuple[int, int]:
                rows, read = counted(), position()
                if rows == len(sent):  # everything sent is written: give it more to read
                    send(500)
                return rows, read

            rows, read = eventually(
                rows_and_position,
                INGEST_TIMEOUT_S,
                "the Kafka engine to have written blocks and read traces it has not written "
                "yet (rows, position)",
                until=lambda seen: 0 < seen[0] < seen[1],
                interval=0.02,
            )
        finally:
            stop.set()
            serving.join(timeout=30)
        assert not serving.is_alive() and not owner.is_open
        return StopPoint(rows, read, committed())

    # A block written in the few milliseconds between the observation and the stop would make
    # this stop not a mid-ingestion one; then it is tried again (each try is a restart too).
    point = eventually(
        stop_mid_ingestion,
        120,
        "a stop that left read traces uncommitted (committed < position)",
        until=lambda p: p.committed < p.position,
        interval=0,
    )
    assert 0 < point.rows <= point.committed < point.position <= len(sent), point
    stopped_at = len(sent)
    send(2000)  # produced while nothing consumes

    owner.open()
    try:
        assert applied_versions(owner.ch, env.database).keys() == {
            m.version for m in load_migrations()
        }
        _wait("rows after restart", counted, len(sent))
        # Everything read is committed: nothing is left that a late duplicate could come from.
        eventually(
            committed,
            INGEST_TIMEOUT_S,
            f"the engine to commit every trace ({len(sent)})",
            until=lambda offsets: offsets == len(sent),
        )
        rows = owner.ch.query(
            f"SELECT count() AS n, uniqExact(event_id) AS ids FROM {env.database}.traces"
        )[0]
        assert rows == {"n": len(sent), "ids": len(sent)}
        ids = {r["event_id"] for r in owner.ch.query(f"SELECT event_id FROM {env.database}.traces")}
        assert ids == {t.event_id for t in sent}
        status = ingest_status(owner.ch, database=env.database)
        assert status.rows == len(sent) and status.error_rows == 0
        assert status.lag_ms_p50 is not None and status.lag_ms_p50 >= 0
        print(
            f"\nstopped with {point.rows} rows written, position {point.position}, committed "
            f"{point.committed} (of {stopped_at} sent); {len(sent) - stopped_at} sent while "
            f"stopped; {len(sent)} rows after the restart, each once"
        )
    finally:
        owner.close()


def _rollup_attempts(env: Env, rollup: str) -> Callable[[], int]:
    def attempts() -> int:
        return int(env.ch.query(f"SELECT sum(attempts) AS n FROM {env.database}.{rollup}")[0]["n"])

    return attempts


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (what ClickHouse ``quantiles`` computes for
    fewer than 8192 samples)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def test_metrics_queries_return_the_aggregates_of_a_known_data_set(env: Env) -> None:
    apply(env.ch, env.settings, database=env.database)
    until = BASE + timedelta(minutes=30)
    window = timedelta(minutes=20)  # starts 10:10:00, a minute boundary
    inside = [
        _trace(
            i,
            start=BASE + timedelta(minutes=10 + i % 20, seconds=i % 60),
            end=BASE + timedelta(minutes=10 + i % 20, seconds=i % 60, milliseconds=5 * i),
            latency_ms=5 * i,
        )
        for i in range(240)
    ]
    outside = [
        _trace(1000 + i, start=BASE + timedelta(minutes=5), end=BASE + timedelta(minutes=5))
        for i in range(30)
    ]
    _send(env, inside + outside)
    _wait("rows in traces", env.count, len(inside) + len(outside))
    # The rollups are written by views of their own and become visible a moment after traces.
    for rollup in ("node_metrics_1m", "workflow_metrics_1m"):
        _wait(f"attempts in {rollup}", _rollup_attempts(env, rollup), len(inside) + len(outside))

    failures_of = [t for t in inside if t.status in (TraceStatus.ERROR, TraceStatus.TIMEOUT)]
    assert failures_of and any(t.cache_hit for t in inside)  # the data set exercises every rate
    seconds = window.total_seconds()

    by_node = {m.node: m for m in node_metrics(env.ch, window, until=until, database=env.database)}
    assert set(by_node) == {"http.request", "llm.chat", "code.run"}
    for name, got in by_node.items():
        mine = [t for t in inside if t.node == name]
        failed = [t for t in mine if t in failures_of]
        latencies = [float(t.latency_ms) for t in mine]
        assert got.node_version is None
        assert got.attempts == len(mine)
        assert got.failures == len(failed)
        assert got.error_rate == pytest.approx(len(failed) / len(mine))
        assert got.throughput_per_s == pytest.approx(len(mine) / seconds)
        assert got.cache_hits == sum(t.cache_hit for t in mine)
        assert got.cache_hit_rate == pytest.approx(got.cache_hits / len(mine))
        assert got.retried == sum(t.retry_count > 0 for t in mine)
        assert got.cost_tokens == sum(t.cost_tokens or 0 for t in mine)
        assert got.latency_ms_avg == pytest.approx(sum(latencies) / len(mine))
        assert got.latency_ms_p50 == pytest.approx(_quantile(latencies, 0.5))
        assert got.latency_ms_p95 == pytest.approx(_quantile(latencies, 0.95))
        assert got.latency_ms_p99 == pytest.approx(_quantile(latencies, 0.99))

    versions = node_metrics(
        env.ch, window, "llm.chat", by_version=True, until=until, database=env.database
    )
    assert sorted((m.node_version, m.attempts) for m in versions) == sorted(
        (v, sum(1 for t in inside if t.node == "llm.chat" and t.node_version == v))
        for v in {t.node_version for t in inside if t.node == "llm.chat"}
    )

    flows = workflow_metrics(env.ch, window, until=until, database=env.database)
    assert len(flows) == len({(t.workflow_id, t.workflow_version) for t in inside})
    for flow in flows:
        mine = [
            t
            for t in inside
            if (t.workflow_id, t.workflow_version) == (flow.workflow_id, flow.workflow_version)
        ]
        assert flow.attempts == len(mine)
        assert flow.runs == len({t.run_id for t in mine})
        assert flow.failed_runs == len({t.run_id for t in mine if t in failures_of})
        assert flow.failures == sum(t in failures_of for t in mine)
        assert flow.cost_tokens == sum(t.cost_tokens or 0 for t in mine)
        assert flow.cache_hit_rate == pytest.approx(sum(t.cache_hit for t in mine) / len(mine))
        assert flow.step_latency_ms_p95 == pytest.approx(
            _quantile([float(t.latency_ms) for t in mine], 0.95)
        )

    groups = top_failures(env.ch, window, limit=10, until=until, database=env.database)
    expected: dict[tuple[str, str], list[Trace]] = {}
    for t in failures_of:
        key = (t.node, t.error.error_class if t.error else t.status.value)
        expected.setdefault(key, []).append(t)
    assert [(g.node, g.error_class, g.failures) for g in groups] == sorted(
        ((n, c, len(ts)) for (n, c), ts in expected.items()), key=lambda x: (-x[2], x[0], x[1])
    )
    for g in groups:
        ts = expected[(g.node, g.error_class)]
        assert g.runs == len({t.run_id for t in ts})
        assert g.retryable == sum(bool(t.error and t.error.retryable) for t in ts)
        assert g.first_seen == min(t.start for t in ts)
        assert g.last_seen == max(t.start for t in ts)
        latest = max(ts, key=lambda t: t.start)
        assert g.last_message == (latest.error.message if latest.error else "")
    assert len(top_failures(env.ch, window, limit=2, until=until, database=env.database)) == 2

    cells = reliability_matrix(
        env.ch, window, timedelta(minutes=5), until=until, database=env.database
    )
    want: dict[tuple[str, datetime], list[Trace]] = {}
    for t in inside:
        bucket = t.start.replace(minute=t.start.minute // 5 * 5, second=0, microsecond=0)
        want.setdefault((t.node, bucket), []).append(t)
    assert [(c.node, c.bucket_start) for c in cells] == sorted(want)
    for c in cells:
        ts = want[(c.node, c.bucket_start)]
        assert c.attempts == len(ts)
        assert c.failures == sum(t in failures_of for t in ts)
        assert c.latency_ms_p95 == pytest.approx(_quantile([float(t.latency_ms) for t in ts], 0.95))


def _retry_trace(i: int, reason: str, circuit: str, held_ms: int, **overrides: Any) -> Trace:
    """A trace of a retry decision, as processors/scheduler/runtime/traces.py writes it."""
    start = BASE + timedelta(minutes=10, seconds=i)
    fields: dict[str, Any] = {
        "run_id": f"run-{i}",
        "seq": 5,
        "workflow_id": "wf-0",
        "workflow_version": 1,
        "step_id": "call",
        "node": "http.request",
        "node_version": "1.0.0",
        "status": TraceStatus.SKIPPED,
        "start": start,
        "end": start + timedelta(milliseconds=100 + held_ms),
        "latency_ms": 100 + held_ms,
        "inputs_hash": f"{i:064x}",
        "metrics": {"backoff_ms": 100.0, "held_ms": float(held_ms)},
        "retry_count": 1,
        "cache_hit": False,
        "context": {
            "source": "scheduler",
            "kind": "retry",
            "reason": reason,
            "circuit": circuit,
            "dependency": "http.request sick.example",
            "error_class": "HttpStatus503",
        },
    }
    fields.update(overrides)
    return Trace(**fields)


def test_retry_decisions_are_counted_apart_from_attempts(env: Env) -> None:
    apply(env.ch, env.settings, database=env.database)
    until = BASE + timedelta(minutes=30)
    window = timedelta(minutes=30)
    attempts = [
        _trace(i, start=BASE + timedelta(minutes=10, seconds=i), node="http.request")
        for i in range(12)
    ]
    transform = {"source": "scheduler", "kind": "retry", "reason": "backoff", "circuit": "closed",
                 "dependency": "transform"}  # fmt: skip
    retries = [
        _retry_trace(0, "backoff", "closed", 0),
        _retry_trace(1, "budget", "closed", 700),
        _retry_trace(2, "circuit_open", "open", 5_000),
        _retry_trace(3, "circuit_open", "open", 6_500),
        _retry_trace(4, "half_open", "half_open", 2_000),
        _retry_trace(5, "backoff", "closed", 0),  # the circuit closed again: the last state
        _retry_trace(6, "backoff", "closed", 0, node="transform", context=transform),
    ]
    _send(env, attempts + retries)
    _wait("rows in traces", env.count, len(attempts) + len(retries))

    def retry_rows() -> int:
        query = f"SELECT sum(retries) AS n FROM {env.database}.retry_metrics_1m"
        return int(env.ch.query(query)[0]["n"])

    _wait("retries in retry_metrics_1m", retry_rows, len(retries))
    for rollup in ("node_metrics_1m", "workflow_metrics_1m"):
        # _wait fails at once on more: not one retry row is counted as an attempt.
        _wait(f"attempts in {rollup}", _rollup_attempts(env, rollup), len(attempts))
    (http,) = node_metrics(env.ch, window, until=until, database=env.database)
    assert http.node == "http.request" and http.attempts == len(attempts)
    failed = [t for t in attempts if t.status in (TraceStatus.ERROR, TraceStatus.TIMEOUT)]
    groups = top_failures(env.ch, window, until=until, database=env.database)
    assert sum(g.failures for g in groups) == len(failed)

    got = retry_metrics(env.ch, window, until=until, database=env.database)
    assert [(r.node, r.dependency, r.retries) for r in got] == [
        ("http.request", "http.request sick.example", 6),
        ("transform", "transform", 1),
    ]
    sick = got[0]
    assert (sick.held, sick.held_by_budget, sick.held_by_circuit) == (4, 1, 3)
    assert sick.held_ms_avg == pytest.approx((700 + 5_000 + 6_500 + 2_000) / 4)
    assert (sick.held_ms_max, sick.decided_while_open, sick.last_circuit) == (6_500, 3, "closed")
    assert sick.retries_per_s == pytest.approx(6 / window.total_seconds())
    only = retry_metrics(env.ch, window, "transform", until=until, database=env.database)
    assert [r.node for r in only] == ["transform"]

    with _api(env) as client:
        payload = _ok(
            client.get(
                "/v1/metrics/retries",
                params={"window": "30m", "until": _iso(until), "node": "http.request"},
            )
        )
    rows = [(r["dependency"], r["held_by_circuit"], r["last_circuit"]) for r in payload["data"]]
    assert rows == [("http.request sick.example", 3, "closed")]


def test_migrations_are_recorded_idempotent_and_refuse_edits(env: Env) -> None:
    assert apply(env.ch, env.settings, database=env.database) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert apply(env.ch, env.settings, database=env.database) == []
    recorded = applied_versions(env.ch, env.database)
    migrations = load_migrations()
    assert recorded == {m.version: m.checksum for m in migrations}
    edited = [Migration(m.version, m.name, m.template + "\n-- edited\n") for m in migrations]
    with pytest.raises(MigrationError, match=r"001_traces to be unchanged"):
        apply(env.ch, env.settings, database=env.database, migrations=edited)
    tables = {
        r["name"]
        for r in env.ch.query(
            "SELECT name FROM system.tables WHERE database = %(db)s", {"db": env.database}
        )
    }
    assert tables == {
        "schema_migrations",
        "traces",
        "traces_errors",
        "traces_queue",
        "traces_ingest",  # the parsed block, routed to the two views below (007, ADR 0067)
        "traces_ingest_mv",
        "traces_mv",
        "traces_errors_mv",
        "node_metrics_1m",
        "node_metrics_1m_mv",
        "workflow_metrics_1m",
        "workflow_metrics_1m_mv",
        "retry_metrics_1m",
        "retry_metrics_1m_mv",
        "replay_steps",  # A/B replay per-step rows (005, written by the replay runner)
        "quality_metrics_1m",  # quality scores (006, ADR 0035)
        "quality_metrics_1m_mv",
    }


def test_templates_render_the_settings_catalog_topic_and_quote_values(env: Env) -> None:
    params = template_params(env.settings, database=env.database)
    assert params.traces_topic == env.catalog.traces.topic
    assert params.consumer_group == consumer_group(env.settings, env.database)
    assert params.consumer_group != consumer_group(env.settings, "other")
    ingest = render(load_migrations()[2], params)
    queue = next(s for s in ingest if "ENGINE = Kafka" in s)
    assert f"kafka_topic_list = '{env.catalog.traces.topic}'" in queue
    assert f"kafka_broker_list = '{env.settings.kafka_bootstrap}'" in queue
    assert all("$" not in s and not s.endswith(";") for s in ingest)
    hostile = template_params(env.settings.model_copy(update={"kafka_bootstrap": "a',b\\"}))
    assert "kafka_broker_list = 'a\\',b\\\\'" in render(load_migrations()[2], hostile)[0]
    with pytest.raises(MigrationError, match="database name"):
        template_params(env.settings, database="x; DROP")


def test_cli_parses_migrate_and_serve() -> None:
    parser = argparse.ArgumentParser()
    add_traces_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["traces", "serve", "--database", "abc", "--report-every", "5"])
    assert (args.traces_action, args.database, args.report_every) == ("serve", "abc", 5.0)
    args = parser.parse_args(["traces", "migrate"])
    assert args.database == "reflux" and args.flush_interval_ms == 250
    assert callable(args.handler)


def test_traces_of_engine_runs_match_their_run_events(env: Env, harness: Any) -> None:
    """Worker traces (executed steps) and scheduler traces (cache hit, skip) of real runs land
    in ClickHouse, and each row agrees with the run events of its step."""
    apply(env.ch, env.settings, database=env.database)
    harness.register(
        {
            "id": "traced",
            "inputs": {"n": {"type": "integer", "required": True}},
            "steps": [
                {
                    "id": "first",
                    "node": "transform@^1",
                    "cache": {"enabled": True, "ttl": "1h"},
                    "params": {"expression": "n", "data": {"n": "{{ inputs.n }}"}},
                },
                {
                    "id": "never",
                    "node": "transform@^1",
                    "needs": ["first"],
                    "when": "steps.first.output.result > `100`",
                    "params": {"expression": "`1`"},
                },
                {
                    "id": "last",
                    "node": "transform@^1",
                    "needs": ["first"],
                    "params": {"expression": "x", "data": {"x": "{{ steps.first.output.result }}"}},
                },
            ],
        }
    )
    runs = []
    for _ in range(2):  # the second run's "first" is a cache hit
        run_id = harness.start("traced", {"n": 5})
        assert harness.wait(run_id).status == "succeeded"
        runs.append(run_id)

    def rows() -> list[dict[str, Any]]:
        return env.ch.query(
            f"SELECT run_id, step_id, node, node_version, status, invocation_id, retry_count, "
            f"cache_hit, workflow_id, workflow_version, seq, start, `end`, latency_ms "
            f"FROM {env.database}.traces WHERE run_id IN %(runs)s ORDER BY run_id, seq",
            {"runs": tuple(runs)},
        )

    _wait("traces", lambda: len(rows()), 6)
    by_step = {(r["run_id"], r["step_id"]): r for r in rows()}
    for run_id in runs:
        events = harness.events(run_id)
        for (rid, step_id), row in by_step.items():
            if rid != run_id:
                continue
            mine = [e for e in events if (e.payload.get("step") or {}).get("step_id") == step_id]
            last = mine[-1]
            assert (row["workflow_id"], row["workflow_version"]) == ("traced", 1)
            assert row["node"] == "transform"
            if last.event_type == "StepSkipped":
                assert (row["status"], row["cache_hit"]) == ("skipped", False)
                assert row["seq"] == last.seq
            elif last.payload["cache_hit"]:
                assert (row["status"], row["cache_hit"]) == ("ok", True)
                assert row["seq"] == last.seq and row["invocation_id"] is None
            else:
                dispatched = next(e for e in mine if e.event_type == "StepDispatched")
                assert (row["status"], row["cache_hit"]) == ("ok", False)
                assert row["invocation_id"] == dispatched.payload["invocation_id"]
                assert row["seq"] == dispatched.seq  # invocations carry their dispatch's seq
                assert row["node_version"] == "1.0.0"  # the version that actually ran
            assert row["retry_count"] == last.payload.get("attempt", 1) - 1
    statuses = sorted((r["step_id"], r["status"], r["cache_hit"]) for r in by_step.values())
    assert statuses == [
        ("first", "ok", False),
        ("first", "ok", True),
        ("last", "ok", False),
        ("last", "ok", False),
        ("never", "skipped", False),
        ("never", "skipped", False),
    ]


# -- the metrics API and SLO alerts over this module's store --------------------------------------
# The app gets the module's chdb session (create_app(clickhouse=...)): opening its own would close
# the module's (one chdb session per process).


@contextlib.contextmanager
def _api(env: Env, **api_fields: Any) -> Iterator[TestClient]:
    api_schema = f"t_api_{uuid.uuid4().hex[:10]}"
    fields: dict[str, Any] = {
        "read_schema": f"t_read_{uuid.uuid4().hex[:10]}",
        "api_schema": api_schema,
        "clickhouse_database": env.database,
        "alert_evaluator": False,
    }
    fields.update(api_fields)
    app = create_app(env.settings, ApiSettings(**fields), clickhouse=env.ch)
    try:
        settings = ApiSettings(**fields)
        with TestClient(app, headers=key_headers(env.settings, settings)) as client:
            yield client
    finally:
        with psycopg.connect(env.settings.postgres_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{api_schema}" CASCADE')


def _ok(response: Any) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_metrics_api_serves_the_aggregates_of_known_traces(env: Env) -> None:
    apply(env.ch, env.settings, database=env.database)
    until = BASE + timedelta(minutes=30)
    inside = [
        _trace(
            i,
            start=BASE + timedelta(minutes=10 + i % 20, seconds=i % 60),
            end=BASE + timedelta(minutes=10 + i % 20, seconds=i % 60, milliseconds=7 * i),
            latency_ms=7 * i,
        )
        for i in range(180)
    ]
    outside = [_trace(500 + i, start=BASE, end=BASE) for i in range(12)]
    _send(env, inside + outside)
    _wait("rows in traces", env.count, len(inside) + len(outside))
    for rollup in ("node_metrics_1m", "workflow_metrics_1m"):
        _wait(f"attempts in {rollup}", _rollup_attempts(env, rollup), len(inside) + len(outside))
    failed = {t.event_id for t in inside if t.status in (TraceStatus.ERROR, TraceStatus.TIMEOUT)}
    window = {"window": "20m", "until": _iso(until)}

    with _api(env) as api:
        nodes = _ok(api.get("/v1/metrics/nodes", params=window))
        assert nodes["window"] == "20m"
        assert nodes["since"] == "2025-03-04T10:10:00Z" and nodes["until"] == _iso(until)
        assert {r["node"] for r in nodes["data"]} == {"http.request", "llm.chat", "code.run"}
        for row in nodes["data"]:
            mine = [t for t in inside if t.node == row["node"]]
            latencies = [float(t.latency_ms) for t in mine]
            assert row["attempts"] == len(mine)
            assert row["failures"] == sum(t.event_id in failed for t in mine)
            assert row["error_rate"] == pytest.approx(row["failures"] / len(mine))
            assert row["throughput_per_s"] == pytest.approx(len(mine) / 1200)
            assert row["cache_hit_rate"] == pytest.approx(
                sum(t.cache_hit for t in mine) / len(mine)
            )
            assert row["cost_tokens"] == sum(t.cost_tokens or 0 for t in mine)
            assert row["latency_ms_p99"] == pytest.approx(_quantile(latencies, 0.99))
            assert row["node_version"] is None
        one = _ok(api.get("/v1/metrics/nodes", params={**window, "node": "llm.chat"}))
        assert [r["node"] for r in one["data"]] == ["llm.chat"]
        versions = _ok(
            api.get("/v1/metrics/nodes", params={**window, "node": "code.run", "by_version": True})
        )
        assert sorted((r["node_version"], r["attempts"]) for r in versions["data"]) == sorted(
            (v, sum(1 for t in inside if t.node == "code.run" and t.node_version == v))
            for v in {t.node_version for t in inside if t.node == "code.run"}
        )

        flows = _ok(api.get("/v1/metrics/workflows", params=window))["data"]
        assert len(flows) == len({(t.workflow_id, t.workflow_version) for t in inside})
        for flow in flows:
            key = (flow["workflow_id"], flow["workflow_version"])
            mine = [t for t in inside if (t.workflow_id, t.workflow_version) == key]
            runs = {t.run_id for t in mine}
            bad_runs = {t.run_id for t in mine if t.event_id in failed}
            spans = [
                (
                    max(t.end for t in mine if t.run_id == r)
                    - min(t.start for t in mine if t.run_id == r)
                )
                / timedelta(milliseconds=1)
                for r in runs
            ]
            assert flow["runs"] == len(runs) and flow["failed_runs"] == len(bad_runs)
            assert flow["success_rate"] == pytest.approx(1 - len(bad_runs) / len(runs))
            assert flow["cost_tokens"] == sum(t.cost_tokens or 0 for t in mine)
            assert flow["cost_tokens_per_run"] == pytest.approx(flow["cost_tokens"] / len(runs))
            assert flow["run_duration_ms_avg"] == pytest.approx(sum(spans) / len(spans))
            assert flow["run_duration_ms_p50"] == pytest.approx(_quantile(spans, 0.5))
            assert flow["run_duration_ms_p99"] == pytest.approx(_quantile(spans, 0.99))

        groups = _ok(api.get("/v1/metrics/failures", params={**window, "limit": 3}))["data"]
        expected: dict[tuple[str, str], int] = {}
        for t in inside:
            if t.event_id in failed:
                key = (t.node, t.error.error_class if t.error else t.status.value)
                expected[key] = expected.get(key, 0) + 1
        ranked = sorted(
            ((n, c, k) for (n, c), k in expected.items()), key=lambda x: (-x[2], x[0], x[1])
        )
        assert [(g["node"], g["error_class"], g["failures"]) for g in groups] == ranked[:3]

        matrix = _ok(api.get("/v1/metrics/reliability", params={**window, "bucket": "10m"}))
        cells: dict[tuple[str, str], list[Trace]] = {}
        for t in inside:
            bucket = t.start.replace(minute=t.start.minute // 10 * 10, second=0, microsecond=0)
            cells.setdefault((t.node, _iso(bucket)), []).append(t)
        assert matrix["bucket"] == "10m"
        assert matrix["nodes"] == sorted({t.node for t in inside})
        assert matrix["buckets"] == sorted({b for _, b in cells})
        got = {(c["node"], c["bucket_start"]): c for c in matrix["cells"]}
        assert set(got) == set(cells)
        for key, ts in cells.items():
            assert got[key]["attempts"] == len(ts)
            assert got[key]["failures"] == sum(t.event_id in failed for t in ts)

        ingest = _ok(api.get("/v1/metrics/ingest"))
        assert ingest["rows"] == len(inside) + len(outside) and ingest["error_rows"] == 0
        assert ingest["last_received_at"] is not None

        bad = api.get("/v1/metrics/nodes", params={"window": "soon"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "window"]
        # A database that was never migrated: 503 naming ClickHouse, not a 500.
    with _api(env, clickhouse_database="t_never_migrated") as api:
        missing = api.get("/v1/metrics/nodes")
        assert missing.status_code == 503
        assert missing.json()["detail"].startswith("ClickHouse could not answer")


def _read_alert_records(env: Env) -> list[tuple[bytes, Alert]]:
    """Every record on the alerts topic as (key, record)."""
    consumer = KafkaConsumer(
        {
            **kafka_client_config(env.settings),
            "group.id": f"t-alerts-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        topic = env.catalog.alerts.topic
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out: list[tuple[bytes, Alert]] = []
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p))[1] for p in partitions}

        def read() -> int:
            for message in consumer.consume(100, timeout=0.2):
                if message.error() is None:
                    out.append((message.key() or b"", decode(message.value() or b"", Alert)))
            return len(out)

        eventually(
            read,
            15,
            f"every record on {topic} (ends {ends})",
            until=lambda n: n >= sum(ends.values()),
            interval=0,  # consume() waits
        )
        return sorted(out, key=lambda kv: kv[1].at)
    finally:
        consumer.close()


def _failed(i: int, node: str, at: datetime) -> Trace:
    error = ErrorInfo(error_class="Boom", message="no", retryable=False)
    return _trace(i, node=node, start=at, end=at, status=TraceStatus.ERROR, error=error)


def test_error_rate_alert_fires_on_the_alerts_topic_is_listed_and_resolves(env: Env) -> None:
    apply(env.ch, env.settings, database=env.database)
    rule = AlertRule(
        ERROR_RATE_RULE, AlertKind.ERROR_RATE, 0.01, timedelta(minutes=5), min_samples=20
    )
    t1 = BASE + timedelta(hours=1)
    bad = [
        _trace(i, node="flaky.node", start=t1 + timedelta(seconds=i), end=t1 + timedelta(seconds=i),
               status=TraceStatus.ERROR,
               error=ErrorInfo(error_class="Boom", message="no", retryable=False))
        for i in range(25)
    ]  # fmt: skip
    few = [
        _trace(
            100 + i,
            node="rare.node",
            start=t1,
            end=t1,
            status=TraceStatus.ERROR,
            error=ErrorInfo(error_class="Boom", message="no", retryable=False),
        )
        for i in range(5)
    ]  # fmt: skip  -- 100% errors, but fewer than min_samples
    _send(env, bad + few)
    _wait("attempts in node_metrics_1m", _rollup_attempts(env, "node_metrics_1m"), 30)

    evaluator = AlertEvaluator(
        env.settings, env.ch, rules=[rule], database=env.database, catalog=env.catalog
    )
    try:
        fired = evaluator.run_once(now=t1 + timedelta(minutes=2))
        assert [(e.subject, e.state, e.value, e.samples) for e in fired] == [
            ("flaky.node", AlertState.FIRING, 1.0, 25)
        ]
        assert evaluator.run_once(now=t1 + timedelta(minutes=3)) == []  # no duplicate

        [(key, record)] = _read_alert_records(env)
        assert key == ERROR_RATE_RULE.encode()
        assert (record.rule_id, record.subject, record.state) == (
            ERROR_RATE_RULE,
            "flaky.node",
            AlertState.FIRING,
        )
        assert (record.threshold, record.window_ms, record.kind) == (
            0.01,
            300_000,
            AlertKind.ERROR_RATE,
        )

        with _api(env) as api:
            listed = _ok(api.get("/v1/alerts"))
            assert listed["count"] == 1
            [alert] = listed["data"]
            assert (alert["rule_id"], alert["subject"], alert["state"]) == (
                ERROR_RATE_RULE,
                "flaky.node",
                "firing",
            )
            assert alert["value"] == 1.0 and alert["window"] == "5m"
            assert alert["alert_id"] == record.alert_id

            # A restarted evaluator learns what is firing from the topic: no second announcement.
            restarted = AlertEvaluator(
                env.settings, env.ch, rules=[rule], database=env.database, catalog=env.catalog
            )
            try:
                assert restarted.run_once(now=t1 + timedelta(minutes=4)) == []
                assert set(restarted.active) == {(ERROR_RATE_RULE, "flaky.node")}
            finally:
                restarted.stop()

            t2 = t1 + timedelta(minutes=10)
            good = [
                _trace(
                    200 + i, node="flaky.node", start=t2, end=t2, status=TraceStatus.OK, error=None
                )
                for i in range(40)
            ]
            _send(env, good)
            _wait("attempts in node_metrics_1m", _rollup_attempts(env, "node_metrics_1m"), 70)
            resolved = evaluator.run_once(now=t2 + timedelta(minutes=1))
            assert [(e.subject, e.state, e.value) for e in resolved] == [
                ("flaky.node", AlertState.RESOLVED, 0.0)
            ]
            assert resolved[0].started_at == fired[0].started_at
            assert _ok(api.get("/v1/alerts")) == {"data": [], "count": 0}
            history = _ok(api.get("/v1/alerts", params={"state": "all"}))["data"]
            assert [(a["subject"], a["state"]) for a in history] == [("flaky.node", "resolved")]
        assert [r.state for _, r in _read_alert_records(env)] == [
            AlertState.FIRING,
            AlertState.RESOLVED,
        ]
    finally:
        evaluator.stop()


def test_the_api_runs_the_alert_evaluator_in_process(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alert_evaluator=True: the app's lifespan runs the loop (as an embedded owner does) with
    the REFLUX_ALERTS_* rules, on the wall clock."""
    apply(env.ch, env.settings, database=env.database)
    monkeypatch.setenv("REFLUX_ALERTS_INTERVAL_S", "0.5")
    now = datetime.now(UTC)
    failing = [_failed(i, "live.node", now - timedelta(seconds=30)) for i in range(30)]
    _send(env, failing)
    _wait("attempts in node_metrics_1m", _rollup_attempts(env, "node_metrics_1m"), 30)
    with _api(env, alert_evaluator=True) as api:
        alerts: list[dict[str, Any]] = eventually(
            lambda: _ok(api.get("/v1/alerts"))["data"],
            30,
            "the in-process evaluator to list an alert",
            interval=0.2,
        )
        assert [(a["rule_id"], a["subject"], a["state"]) for a in alerts] == [
            (ERROR_RATE_RULE, "live.node", "firing")
        ]


# -- the quality signal (ADR 0035): checker steps and feedback as quality_score -------------------

CHECKED = {
    "id": "checked",
    "inputs": {"answer": {"type": "string"}, "expected": {"type": "string"}},
    "steps": [
        {
            "id": "judge",
            "node": "transform@^1",
            "checker": True,
            "params": {
                "expression": "{score: (answer == expected) && `1` || `0`}",
                "data": {"answer": "{{ inputs.answer }}", "expected": "{{ inputs.expected }}"},
            },
        },
    ],
}
NO_SCORE = {
    "id": "no-score",
    "steps": [
        {"id": "judge", "node": "transform@^1", "checker": True, "params": {"expression": "`1`"}}
    ],
}


def test_checker_scores_and_feedback_become_quality_scores(env: Env, harness: Any) -> None:
    apply(env.ch, env.settings, database=env.database)
    harness.register(CHECKED)
    harness.register(NO_SCORE)
    right = harness.start("checked", {"answer": "4", "expected": "4"})
    wrong = harness.start("checked", {"answer": "5", "expected": "4"})
    broken = harness.start("no-score")
    assert harness.wait(right).status == "succeeded"
    assert harness.wait(wrong).status == "succeeded"
    failed = harness.wait(broken)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error["error_class"] == "CheckerScoreMissing"
    assert "'score'" in failed.error["message"]

    fields = {"read_schema": harness.schema, "api_schema": f"{harness.schema}_api"}
    with _api(env, **fields) as api:
        post = api.post(
            f"/v1/runs/{right}/feedback", json={"score": 0.8, "label": "good", "comment": "ok"}
        )
        assert post.status_code == 202, post.text
        accepted = post.json()
        assert accepted["run_id"] == right and accepted["score"] == 0.8
        on_step = api.post(f"/v1/runs/{wrong}/feedback", json={"score": 0.25, "step_id": "judge"})
        assert on_step.status_code == 202, on_step.text

        assert api.post("/v1/runs/nope/feedback", json={"score": 1}).status_code == 404
        for body, loc in [
            ({"score": 1.5}, ["body", "score"]),
            ({"score": "high"}, ["body", "score"]),
            ({}, ["body", "score"]),
            ({"score": 1, "label": ""}, ["body", "label"]),
            ({"score": 1, "step_id": "nope"}, ["body", "step_id"]),
            ({"score": 1, "scor": 1}, ["body", "scor"]),
        ]:
            bad = api.post(f"/v1/runs/{right}/feedback", json=body)
            assert bad.status_code == 422, (body, bad.text)
            assert [d["loc"] for d in bad.json()["detail"]] == [loc], (body, bad.text)
        unknown_step = api.post(f"/v1/runs/{right}/feedback", json={"score": 1, "step_id": "x"})
        assert "its steps: judge" in unknown_step.json()["detail"][0]["msg"]

        def scores(run_id: str) -> list[dict[str, Any]]:
            data: list[dict[str, Any]] = _ok(api.get(f"/v1/runs/{run_id}/feedback"))["data"]
            return data

        eventually(lambda: len(scores(right)), INGEST_TIMEOUT_S, "2 scores", until=lambda n: n == 2)
        eventually(lambda: len(scores(wrong)), INGEST_TIMEOUT_S, "2 scores", until=lambda n: n == 2)
        mine = _ok(api.get(f"/v1/runs/{right}/feedback"))
        assert mine["workflow_id"] == "checked" and mine["score_avg"] == pytest.approx(0.9)
        by_source = {s["source"]: s for s in mine["data"]}
        assert by_source["checker"]["score"] == 1.0 and by_source["checker"]["step_id"] == "judge"
        feedback = by_source["feedback"]
        assert (feedback["score"], feedback["label"], feedback["comment"]) == (0.8, "good", "ok")
        assert feedback["feedback_id"] == accepted["feedback_id"] and feedback["step_id"] == ""
        theirs = {(s["source"], s["step_id"]): s["score"] for s in scores(wrong)}
        assert theirs == {("checker", "judge"): 0.0, ("feedback", "judge"): 0.25}
        assert scores(broken) == []  # no score: the attempt failed
        assert api.get("/v1/runs/nope/feedback").status_code == 404

        def quality() -> dict[tuple[str, str], dict[str, Any]]:
            rows = _ok(api.get("/v1/metrics/quality", params={"workflow_id": "checked"}))["data"]
            return {(r["step_id"], r["source"]): r for r in rows}

        eventually(quality, INGEST_TIMEOUT_S, "quality rollup", until=lambda q: len(q) == 3)
        rollup = quality()
        assert rollup[("judge", "checker")]["scores"] == 2
        assert rollup[("judge", "checker")]["runs"] == 2
        assert rollup[("judge", "checker")]["score_avg"] == pytest.approx(0.5)
        assert rollup[("", "feedback")]["score_avg"] == pytest.approx(0.8)
        assert rollup[("judge", "feedback")]["score_min"] == pytest.approx(0.25)
        # Feedback is not an attempt: no "feedback" node, and the workflow counts its 2 attempts.
        nodes = _ok(api.get("/v1/metrics/nodes"))["data"]
        assert "feedback" not in {n["node"] for n in nodes}
        flows = _ok(api.get("/v1/metrics/workflows", params={"workflow_id": "checked"}))["data"]
        assert [(f["attempts"], f["runs"]) for f in flows] == [(2, 2)]
