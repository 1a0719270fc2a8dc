"""database.query@1.0.0 against the real PostgreSQL (one fresh schema per test)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from foundation.settings import Settings
from node_workers.node import NodeContext, NodeError, validate_params
from node_workers.nodes.database_query import DatabaseQueryNode, DatabaseQueryOutput

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


@dataclass(frozen=True)
class Db:
    dsn: str
    schema: str

    @property
    def t(self) -> str:
        """The test table, schema-qualified: (id serial, name text unique, amount numeric)."""
        return f"{self.schema}.t"

    def scalar(self, sql: str) -> Any:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(sql).fetchone()
            return None if row is None else row[0]


@pytest.fixture
def db(local_services: Settings) -> Iterator[Db]:
    schema = f"test_dbq_{uuid.uuid4().hex[:10]}"
    dsn = local_services.postgres_dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {schema}.t (id serial PRIMARY KEY, name text UNIQUE, amount numeric)"
        )
        conn.execute(
            f"INSERT INTO {schema}.t (name, amount) VALUES ('ann', 12.50), ('bob', 3), ('cy', 7.25)"
        )
    try:
        yield Db(dsn, schema)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _run(params: dict[str, Any], ctx: NodeContext | None = None) -> DatabaseQueryOutput:
    node = DatabaseQueryNode()
    return asyncio.run(
        node.execute(validate_params(node, params), ctx or NodeContext("inv-1", "run", "q", 1))
    )


def _error(params: dict[str, Any], ctx: NodeContext | None = None) -> NodeError:
    with pytest.raises(NodeError) as info:
        _run(params, ctx)
    return info.value


def test_select_with_positional_and_named_params(db: Db) -> None:
    ctx = NodeContext("inv-1", "run", "q", 1)
    out = _run(
        {
            "dsn": db.dsn,
            "sql": f"SELECT name, amount FROM {db.t} WHERE amount > %s ORDER BY name",
            "params": [5],
        },
        ctx,
    )
    assert out.columns == ["name", "amount"]
    assert out.rows == [{"name": "ann", "amount": "12.50"}, {"name": "cy", "amount": "7.25"}]
    assert (out.row_count, out.truncated) == (2, False)
    assert ctx.metrics["rows"] == 2 and ctx.metrics["duration_ms"] > 0
    named = _run(
        {
            "dsn": db.dsn,
            "sql": f"SELECT id FROM {db.t} WHERE name = %(who)s OR name = %(who2)s ORDER BY id",
            "params": {"who": "bob", "who2": "cy"},
        }
    )
    assert named.rows == [{"id": 2}, {"id": 3}]


def test_values_become_json(db: Db) -> None:
    out = _run(
        {
            "dsn": db.dsn,
            "sql": (
                "SELECT %s::jsonb AS doc, %s::int[] AS ids, 1.10::numeric AS n,"
                " '2026-01-02T03:04:05Z'::timestamptz AS ts, '2026-01-02'::date AS d,"
                " interval '1 day 2 hours' AS iv, 'NaN'::float8 AS f, '\\x0102'::bytea AS b,"
                " '6f1e8c1c-1b7a-4b7e-9d55-0f2a4c1f4e01'::uuid AS u, '10.0.0.1'::inet AS ip,"
                " NULL AS nothing, true AS yes"
            ),
            "params": [{"a": [1, {"b": None}]}, [1, 2]],
        }
    )
    assert out.rows == [
        {
            "doc": {"a": [1, {"b": None}]},
            "ids": [1, 2],
            "n": "1.10",
            "ts": "2026-01-02T03:04:05+00:00",
            "d": "2026-01-02",
            "iv": 93600.0,
            "f": "NaN",
            "b": "AQI=",
            "u": "6f1e8c1c-1b7a-4b7e-9d55-0f2a4c1f4e01",
            "ip": "10.0.0.1",
            "nothing": None,
            "yes": True,
        }
    ]


def test_row_limit_truncates(db: Db) -> None:
    sql = "SELECT g AS n FROM generate_series(1, %s) AS g"
    out = _run({"dsn": db.dsn, "sql": sql, "params": [50_000], "max_rows": 10})
    assert [r["n"] for r in out.rows] == list(range(1, 11))
    assert (out.row_count, out.truncated) == (10, True)
    exact = _run({"dsn": db.dsn, "sql": sql, "params": [10], "max_rows": 10})
    assert (exact.row_count, exact.truncated) == (10, False)


def test_empty_result(db: Db) -> None:
    sql = f"SELECT name FROM {db.t} WHERE false"
    ro = _run({"dsn": db.dsn, "sql": sql})
    assert (ro.rows, ro.row_count, ro.truncated) == ([], 0, False)
    rw = _run({"dsn": db.dsn, "sql": sql, "read_only": False})
    assert rw.columns == ["name"] and rw.rows == []


def test_read_only_refuses_writes(db: Db) -> None:
    error = _error(
        {"dsn": db.dsn, "sql": f"INSERT INTO {db.t} (name) VALUES (%s)", "params": ["x"]}
    )
    assert (error.error_class, error.retryable) == ("ReadOnlyViolation", False)
    assert "read-only transaction" in str(error)
    # Even a function with side effects runs read-only.
    error = _error({"dsn": db.dsn, "sql": "SELECT nextval(%s)", "params": [f"{db.t}_id_seq"]})
    assert error.error_class == "ReadOnlyViolation"
    assert db.scalar(f"SELECT count(*) FROM {db.t}") == 3


def test_writes_commit_when_allowed(db: Db) -> None:
    ctx = NodeContext("inv-1", "run", "q", 1)
    out = _run(
        {
            "dsn": db.dsn,
            "sql": f"INSERT INTO {db.t} (name, amount) VALUES (%s, %s), (%s, %s)"
            " RETURNING id, name",
            "params": ["dee", "1.5", "eve", 2],
            "read_only": False,
        },
        ctx,
    )
    assert out.rows == [{"id": 4, "name": "dee"}, {"id": 5, "name": "eve"}]
    assert out.row_count == 2
    update = _run(
        {
            "dsn": db.dsn,
            "sql": f"UPDATE {db.t} SET amount = amount + 1 WHERE amount < %s",
            "params": [10],
            "read_only": False,
        }
    )
    assert (update.rows, update.columns, update.row_count) == ([], [], 4)
    # 12.50 + 3 + 7.25 + 1.5 + 2, plus 1 for each of the four rows under 10
    assert db.scalar(f"SELECT sum(amount) FROM {db.t}") == Decimal("30.25")


def test_write_returning_more_than_max_rows_commits_and_truncates(db: Db) -> None:
    out = _run(
        {
            "dsn": db.dsn,
            "sql": f"UPDATE {db.t} SET amount = 0 RETURNING name",
            "read_only": False,
            "max_rows": 2,
        }
    )
    assert len(out.rows) == 2 and out.truncated and out.row_count == 3
    assert db.scalar(f"SELECT count(*) FROM {db.t} WHERE amount = 0") == 3


def test_injection_through_params_is_only_data(db: Db) -> None:
    evil = "x'); DROP TABLE t; --"
    for target in (evil, f"x'); DROP TABLE {db.t}; --"):
        _run(
            {
                "dsn": db.dsn,
                "sql": f"INSERT INTO {db.t} (name) VALUES (%s)",
                "params": [target],
                "read_only": False,
            }
        )
    found = _run(
        {"dsn": db.dsn, "sql": f"SELECT name FROM {db.t} WHERE name = %s", "params": [evil]}
    )
    assert found.rows == [{"name": evil}]
    assert db.scalar(f"SELECT count(*) FROM {db.t}") == 5  # the table is still there
    sneaky = _run(
        {
            "dsn": db.dsn,
            "sql": f"SELECT count(*) AS n FROM {db.t} WHERE name = %s",
            "params": ["' OR '1'='1"],
        }
    )
    assert sneaky.rows == [{"n": 0}]


def test_stacked_statements_are_refused(db: Db) -> None:
    # A template that smuggled "; DROP TABLE" into the SQL text itself cannot run a batch.
    for read_only in (True, False):
        error = _error(
            {
                "dsn": db.dsn,
                "sql": f"SELECT 1; DROP TABLE {db.t}",
                "read_only": read_only,
            }
        )
        assert (error.error_class, error.retryable) == ("DatabaseError", False)
        assert "multiple commands" in str(error)
    assert db.scalar(f"SELECT count(*) FROM {db.t}") == 3


def test_statement_timeout_is_retryable(db: Db) -> None:
    started = datetime.now(UTC)
    error = _error({"dsn": db.dsn, "sql": "SELECT pg_sleep(5)", "statement_timeout_ms": 200})
    assert (error.error_class, error.retryable) == ("DatabaseTimeout", True)
    assert "57014" in str(error) and "statement timeout" in str(error)
    assert datetime.now(UTC) - started < timedelta(seconds=3)


def test_deadline_caps_the_statement_timeout(db: Db) -> None:
    ctx = NodeContext("i", "r", "s", 1, deadline=datetime.now(UTC) + timedelta(milliseconds=400))
    error = _error({"dsn": db.dsn, "sql": "SELECT pg_sleep(5)"}, ctx)
    assert error.error_class == "DatabaseTimeout"


@pytest.mark.parametrize(
    ("sql", "params", "fragment"),
    [
        ("SELEC name FROM {t}", [], 'syntax error at or near "SELEC"'),
        ("SELECT nope FROM {t}", [], 'column "nope" does not exist'),
        ("SELECT * FROM {schema}.missing", [], "42P01"),
        ("SELECT %s, %s", [1], "2 placeholders but 1 parameters"),
        ("SELECT 1", [1], "0 placeholders but 1 parameters"),
        ("SELECT %(a)s", {"b": 1}, "query parameter missing: a"),
        ("SELECT 'a%' AS x", [], "placeholder"),
        ("SELECT 1 AS a, 2 AS a", [], "'a' appears more than once"),
    ],
)
def test_bad_sql_is_not_retryable(db: Db, sql: str, params: Any, fragment: str) -> None:
    query = sql.format(t=db.t, schema=db.schema)
    error = _error({"dsn": db.dsn, "sql": query, "params": params})
    assert (error.error_class, error.retryable) == ("DatabaseError", False)
    assert fragment in str(error), str(error)


def test_constraint_violation_rolls_back_the_write(db: Db) -> None:
    error = _error(
        {
            "dsn": db.dsn,
            "sql": f"INSERT INTO {db.t} (name) VALUES (%s), (%s)",
            "params": ["new", "ann"],
            "read_only": False,
        }
    )
    assert (error.error_class, error.retryable) == ("DatabaseError", False)
    assert "23505" in str(error)
    assert db.scalar(f"SELECT count(*) FROM {db.t} WHERE name = 'new'") == 0


def test_read_only_statement_without_rows(db: Db) -> None:
    out = _run({"dsn": db.dsn, "sql": "SET LOCAL work_mem = '8MB'"})
    assert (out.rows, out.columns, out.row_count) == ([], [], 0)


def test_unreachable_database_is_retryable_and_hides_the_password() -> None:
    with socket.socket() as sock:  # free a moment ago, nobody listens now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dsn = f"postgresql://reflux:hunter2-secret@127.0.0.1:{port}/reflux"
    ctx = NodeContext("inv-1", "run", "q", 1)
    error = _error({"dsn": dsn, "sql": "SELECT 1", "connect_timeout_s": 2}, ctx)
    assert (error.error_class, error.retryable) == ("DatabaseUnavailable", True)
    assert "hunter2-secret" not in str(error) and dsn not in str(error)
    # Not chained: a logged traceback cannot show the psycopg exception either.
    assert error.__cause__ is None and error.__suppress_context__
    assert "duration_ms" in ctx.metrics


def test_unknown_database_is_retryable_unavailable(local_services: Settings) -> None:
    # libpq reports connection failures without a SQLSTATE; all of them count as unavailable.
    dsn = local_services.postgres_dsn.rsplit("/", 1)[0] + f"/nodb_{uuid.uuid4().hex[:8]}"
    error = _error({"dsn": dsn, "sql": "SELECT 1"})
    assert (error.error_class, error.retryable) == ("DatabaseUnavailable", True)
    assert "does not exist" in str(error)
