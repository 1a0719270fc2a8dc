"""The ClickHouse port (``projections.clickhouse.ClickHouse``) behaves the same on both adapters.

``connect()`` picks the adapter from the DSN alone: ``chdb://`` is :class:`EmbeddedClickHouse`
(chdb in this process), ``http://`` is :class:`HttpClickHouse` (clickhouse-connect). Every test
here runs against both, with the same body:

- ``embedded``: chdb 3.7.2 in the test process, on a folder of its own;
- ``server``: a real ClickHouse 25.8 server in a child process, started from the ClickHouse
  build inside the chdb wheel (tests/support/clickhouse_server.py: no ClickHouse server package
  can be installed on the development machine), reached over HTTP.

chdb allows one session per process: this module opens its own (module scope) and no other
module's session is open meanwhile (``--dist loadfile`` keeps a module in one process).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from foundation.errors import NonRetryableError
from foundation.settings import Settings
from projections.clickhouse import ClickHouse, ClickHouseError, connect
from projections.traces.migrations import apply, drop
from projections.traces.queries import (
    ingest_status,
    node_metrics,
    reliability_matrix,
    retry_metrics,
    top_failures,
)
from schemas.models import ErrorInfo, Trace, TraceStatus
from schemas.trace_json import encode_trace
from streams.admin import ensure_topics
from streams.producer import Producer
from streams.topics import TopicCatalog
from tests.support.clickhouse_server import ClickHouseServer, start_clickhouse_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

BACKENDS = ["embedded", "server"]
MODES = {"embedded": "embedded", "server": "server"}


@dataclass
class Backend:
    name: str
    settings: Settings
    """The services' settings with this backend's REFLUX_CLICKHOUSE_DSN."""
    ch: ClickHouse

    def reconnect(self) -> ClickHouse:
        """Close the connection and open a new one on the same store."""
        self.ch.close()
        self.ch = connect(self.settings)
        return self.ch


@pytest.fixture(scope="module")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    server = start_clickhouse_server(tmp_path_factory.mktemp("clickhouse-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(
    request: pytest.FixtureRequest,
    local_services: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Backend]:
    if request.param == "embedded":
        dsn = f"chdb://{tmp_path_factory.mktemp('chdb')}"
    else:
        dsn = request.getfixturevalue("clickhouse_server").dsn
    settings = local_services.model_copy(update={"clickhouse_dsn": dsn})
    b = Backend(request.param, settings, connect(settings))
    try:
        yield b
    finally:
        b.ch.close()


@pytest.fixture
def database(backend: Backend) -> Iterator[str]:
    name = f"t_ctr_{uuid.uuid4().hex[:10]}"
    backend.ch.command(f"CREATE DATABASE {name}")
    yield name
    drop(backend.ch, name)


# -- the protocol ---------------------------------------------------------------------------------


def test_connect_picks_the_adapter_from_the_dsn(backend: Backend) -> None:
    assert backend.ch.mode == MODES[backend.name]
    assert backend.ch.query("SELECT version() AS v")[0]["v"].startswith("25.8.")


VALUES: dict[str, Any] = {
    "s": 'it\'s "quoted", back\\slashed,\nmulti-line, ünïcødé 🚀',
    "u64": 2**64 - 1,
    "i64": -(2**63),
    "f": 1.5e-7,
    "n": None,
    "arr": ["a", "b'c", ""],
    "b": True,
}
"""Bound client-side (clickhouse-connect's formatting, the same in both modes). A dict is not
among the bindable values: it is formatted as JSON, which is not a Map literal."""


def test_bound_values_round_trip_with_their_types(backend: Backend, database: str) -> None:
    ch = backend.ch
    ch.command(
        f"CREATE TABLE {database}.t (id UInt32, s String, u64 UInt64, i64 Int64, f Float64, "
        "n Nullable(String), arr Array(String), m Map(String, Float64), b Bool) "
        "ENGINE = MergeTree ORDER BY id"
    )
    ch.command(
        f"INSERT INTO {database}.t VALUES "
        "(1, %(s)s, %(u64)s, %(i64)s, %(f)s, %(n)s, %(arr)s, map('x', 1.5, 'y', -2.0), %(b)s)",
        VALUES,
    )
    rows = ch.query(f"SELECT s, u64, i64, f, n, arr, m, b FROM {database}.t")
    assert rows == [{**VALUES, "m": {"x": 1.5, "y": -2.0}}]
    # 64-bit integers are numbers, not strings, in both modes.
    assert type(rows[0]["u64"]) is int and type(rows[0]["i64"]) is int


def test_a_bound_string_is_data_never_sql(backend: Backend, database: str) -> None:
    ch = backend.ch
    ch.command(f"CREATE TABLE {database}.t (s String) ENGINE = MergeTree ORDER BY s")
    hostile = f"x'); DROP TABLE {database}.t; --"
    ch.command(f"INSERT INTO {database}.t VALUES (%(s)s)", {"s": hostile})
    assert ch.query(f"SELECT s FROM {database}.t WHERE s = %(s)s", {"s": hostile}) == [
        {"s": hostile}
    ]


def test_a_tuple_parameter_expands_for_in(backend: Backend, database: str) -> None:
    ch = backend.ch
    ch.command(f"CREATE TABLE {database}.t (k String, v Int32) ENGINE = MergeTree ORDER BY k")
    ch.command(f"INSERT INTO {database}.t VALUES ('a', 1), ('b', 2), ('c', 3)")
    rows = ch.query(
        f"SELECT k, v FROM {database}.t WHERE k IN %(keys)s ORDER BY k", {"keys": ("a", "c")}
    )
    assert rows == [{"k": "a", "v": 1}, {"k": "c", "v": 3}]


def test_an_empty_result_is_an_empty_list(backend: Backend, database: str) -> None:
    backend.ch.command(f"CREATE TABLE {database}.t (k String) ENGINE = MergeTree ORDER BY k")
    assert backend.ch.query(f"SELECT k FROM {database}.t") == []


def test_failures_are_clickhouse_errors_that_name_the_problem(
    backend: Backend, database: str
) -> None:
    with pytest.raises(ClickHouseError) as missing:
        backend.ch.query(f"SELECT * FROM {database}.no_such_table")
    assert "no_such_table" in str(missing.value) and "UNKNOWN_TABLE" in str(missing.value)
    assert isinstance(missing.value, NonRetryableError)
    assert missing.value.error_class == "ClickHouse"
    with pytest.raises(ClickHouseError, match="SYNTAX_ERROR"):
        backend.ch.command("CREATE TABLE (")


def test_data_outlives_the_connection(backend: Backend, database: str) -> None:
    backend.ch.command(f"CREATE TABLE {database}.t (k String) ENGINE = MergeTree ORDER BY k")
    backend.ch.command(f"INSERT INTO {database}.t VALUES ('kept')")
    assert backend.reconnect().query(f"SELECT k FROM {database}.t") == [{"k": "kept"}]


# -- the traces store on top of it ----------------------------------------------------------------

BASE = datetime(2025, 3, 4, 10, 0, 0, tzinfo=UTC)
NODES = ("http.request", "llm.chat", "code.run")


def _trace(i: int) -> Trace:
    start = BASE + timedelta(minutes=i % 15, seconds=i % 60)
    failed = i % 5 == 1
    return Trace(
        run_id=f"run-{i % 9}",
        seq=i,
        workflow_id="wf",
        workflow_version=1,
        step_id=f"step-{i % 4}",
        node=NODES[i % 3],
        node_version="1.0.0",
        invocation_id=f"inv-{i}",
        status=TraceStatus.ERROR if failed else TraceStatus.OK,
        error=ErrorInfo(error_class="Boom", message=f"no {i}", retryable=i % 2 == 0)
        if failed
        else None,
        start=start,
        end=start + timedelta(milliseconds=10 * i),
        latency_ms=10 * i,
        inputs_hash=f"{i:064x}",
        metrics={},
        retry_count=0,
        cache_hit=False,
        cost_tokens=None,
        context={},
    )


@pytest.fixture
def traces_store(backend: Backend, kafka_settings: Settings) -> Iterator[tuple[Settings, str]]:
    """This test's traces topic and a traces database of the backend reading it; the database
    (and with it the Kafka table's consumer) goes before the topic does."""
    settings = kafka_settings.model_copy(update={"clickhouse_dsn": backend.settings.clickhouse_dsn})
    catalog = TopicCatalog.from_settings(settings)
    ensure_topics(catalog, [catalog.traces], settings=settings)
    database = f"t_ctr_{uuid.uuid4().hex[:10]}"
    try:
        yield settings, database
    finally:
        drop(backend.ch, database)


def test_traces_ingest_from_kafka_and_the_metrics_queries_agree(
    backend: Backend, traces_store: tuple[Settings, str]
) -> None:
    settings, database = traces_store
    ch = backend.ch
    assert apply(ch, settings, database=database) == [1, 2, 3, 4, 5, 6, 7, 8]
    traces = [_trace(i) for i in range(90)]
    # Retry decisions of the scheduler (004_retry_metrics.sql): counted apart, not as attempts.
    retries = [
        _trace(90 + i).model_copy(
            update={
                "node": NODES[0],
                "status": TraceStatus.SKIPPED,
                "error": None,
                "metrics": {"held_ms": 1_000.0 * i},
                "context": {"kind": "retry", "reason": "circuit_open" if i else "backoff",
                            "circuit": "open" if i else "closed", "dependency": "d"},
            }
        )
        for i in range(3)
    ]  # fmt: skip
    catalog = TopicCatalog.from_settings(settings)
    with Producer(settings, client_id="contract-clickhouse") as producer:
        for trace in traces + retries:
            producer.send(catalog.traces.topic, trace.node, encode_trace(trace))

    def count(table: str, expression: str = "count()") -> int:
        return int(ch.query(f"SELECT {expression} AS n FROM {database}.{table}")[0]["n"])

    eventually(lambda: count("traces"), 60, "93 rows in traces", until=lambda n: n == 93)
    eventually(
        lambda: count("retry_metrics_1m", "sum(retries)"),
        30,
        "every retry decision in the retry_metrics_1m rollup",
        until=lambda n: n == 3,
    )
    eventually(
        lambda: count("node_metrics_1m", "sum(attempts)"),
        30,
        "every attempt in the node_metrics_1m rollup",
        until=lambda n: n == 90,
    )

    window, until = timedelta(minutes=30), BASE + timedelta(minutes=20)
    failed = [t for t in traces if t.status is TraceStatus.ERROR]
    metrics = {m.node: m for m in node_metrics(ch, window, until=until, database=database)}
    assert set(metrics) == set(NODES)
    for name, got in metrics.items():
        mine = [t for t in traces if t.node == name]
        assert (got.attempts, got.failures) == (len(mine), sum(t in failed for t in mine))
        assert got.latency_ms_avg == pytest.approx(sum(t.latency_ms for t in mine) / len(mine))

    groups = top_failures(ch, window, until=until, database=database)
    assert [(g.node, g.error_class, g.failures) for g in groups] == sorted(
        ((n, "Boom", sum(t.node == n for t in failed)) for n in {t.node for t in failed}),
        key=lambda g: (-g[2], g[0]),
    )
    for group in groups:
        mine = [t for t in failed if t.node == group.node]
        # Timestamps come back as aware datetimes whatever the adapter returns for DateTime64.
        assert group.first_seen == min(t.start for t in mine)
        assert group.last_seen == max(t.start for t in mine)

    cells = reliability_matrix(ch, window, timedelta(minutes=5), until=until, database=database)
    want = sorted(
        {(t.node, t.start.replace(minute=t.start.minute // 5 * 5, second=0)) for t in traces}
    )
    assert [(c.node, c.bucket_start) for c in cells] == want

    (held,) = retry_metrics(ch, window, until=until, database=database)
    assert (held.retries, held.held, held.held_by_circuit, held.held_ms_max) == (3, 2, 2, 2_000)

    status = ingest_status(ch, database=database)
    assert (status.rows, status.error_rows) == (93, 0)
    assert status.last_received_at is not None and status.last_received_at.tzinfo is UTC


def test_replay_step_rows_are_written_once_per_run_step_and_side(
    backend: Backend, traces_store: tuple[Settings, str]
) -> None:
    """Migration 005 (replay_steps) and the runner's writer (processors/replay/storage.py)."""
    from processors.replay.report import build_report
    from processors.replay.shadow import ReplayPair, RunOutcome, StepOutcome
    from processors.replay.storage import write_clickhouse_steps

    settings, database = traces_store
    ch = backend.ch
    assert apply(ch, settings, database=database) == [1, 2, 3, 4, 5, 6, 7, 8]

    def run(run_id: str, status: str, ms: float) -> RunOutcome:
        step = StepOutcome("shape", status, 1, ms, {"v": 1}, "executed", None, 1)
        return RunOutcome(run_id, status, {"v": 1}, None, ms, {"shape": step})

    pairs = [
        ReplayPair(run(f"o{i}", "succeeded", 10.0 + i), run(f"o{i}", "failed", 5.0))
        for i in range(3)
    ]
    _, runs = build_report(pairs)
    assert write_clickhouse_steps(ch, database, "rid1", "wf", runs) == 6
    # A replay run again after a crash rewrites its rows (ReplacingMergeTree on the key).
    assert write_clickhouse_steps(ch, database, "rid1", "wf", runs) == 6
    rows = ch.query(
        f"SELECT side, status, count() AS n, sum(duration_ms) AS ms FROM {database}.replay_steps "
        "FINAL WHERE replay_id = 'rid1' GROUP BY side, status ORDER BY side"
    )
    assert [(r["side"], r["status"], int(r["n"]), float(r["ms"])) for r in rows] == [
        ("candidate", "failed", 3, 15.0),
        ("original", "succeeded", 3, 33.0),
    ]
