"""database.query@1.0.0 against real PostgreSQL: a second instance started from the project's own
service code (tests/integration/postgres_fixtures.py) is the operator's configured database
(one fresh schema per test); the platform's own database is refused."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from foundation.settings import Settings
from infra.services.postgres import Postgres
from node_workers.node import NodeContext, NodeError, validate_params
from node_workers.nodes.database_query import DatabaseQueryNode, DatabaseQueryOutput
from tests.integration.postgres_fixtures import password_dsn, second_postgres  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@dataclass
class Db:
    dsn: str
    """The configured database's DSN, password included (what the operator's secret holds)."""
    schema: str
    secrets_dir: Path
    platform: Settings
    connection: str = "shop"
    connections: dict[str, str] | None = None

    @property
    def t(self) -> str:
        """The test table, schema-qualified: (id serial, name text unique, amount numeric)."""
        return f"{self.schema}.t"

    def scalar(self, sql: str) -> Any:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(sql).fetchone()
            return None if row is None else row[0]

    def configure(self, name: str, dsn: str, *, granted: str = "*") -> None:
        """The operator adds connection ``name`` (its DSN in secret ``<NAME>_DSN``)."""
        secret = f"{name.upper()}_DSN"
        (self.secrets_dir / secret).write_text(dsn)
        self.connections = {**(self.connections or {}), name: secret}
        (self.secrets_dir / "databases.yaml").write_text(
            "".join(f"{n}: {s}\n" for n, s in self.connections.items())
        )
        grants = (self.secrets_dir / "grants.yaml").read_text() if name != "shop" else ""
        (self.secrets_dir / "grants.yaml").write_text(f"{grants}{secret}: ['{granted}']\n")

    def node(self) -> DatabaseQueryNode:
        node = DatabaseQueryNode()
        node.bind(self.platform.model_copy(update={"secrets_dir": self.secrets_dir}))
        return node

    def run(self, params: dict[str, Any], ctx: NodeContext | None = None) -> DatabaseQueryOutput:
        node = self.node()
        return asyncio.run(
            node.execute(
                validate_params(node, params),
                ctx or NodeContext("inv-1", "run", "q", 1, workflow_id="shop-orders"),
            )
        )

    def error(self, params: dict[str, Any], ctx: NodeContext | None = None) -> NodeError:
        with pytest.raises(NodeError) as info:
            self.run(params, ctx)
        return info.value


@pytest.fixture
def db(
    local_services: Settings,
    second_postgres: Postgres,  # noqa: F811
    tmp_path: Path,
) -> Iterator[Db]:
    schema = f"test_dbq_{uuid.uuid4().hex[:10]}"
    dsn = password_dsn(second_postgres)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {schema}.t (id serial PRIMARY KEY, name text UNIQUE, amount numeric)"
        )
        conn.execute(
            f"INSERT INTO {schema}.t (name, amount) VALUES ('ann', 12.50), ('bob', 3), ('cy', 7.25)"
        )
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    db = Db(dsn, schema, secrets_dir, local_services)
    db.configure("shop", dsn, granted="shop-*")
    try:
        yield db
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_select_with_positional_and_named_params(db: Db) -> None:
    ctx = NodeContext("inv-1", "run", "q", 1, workflow_id="shop-orders")
    out = db.run(
        {
            "connection": db.connection,
            "sql": f"SELECT name, amount FROM {db.t} WHERE amount > %s ORDER BY name",
            "params": [5],
        },
        ctx,
    )
    assert out.columns == ["name", "amount"]
    assert out.rows == [{"name": "ann", "amount": "12.50"}, {"name": "cy", "amount": "7.25"}]
    assert (out.row_count, out.truncated) == (2, False)
    assert ctx.metrics["rows"] == 2 and ctx.metrics["duration_ms"] > 0
    named = db.run(
        {
            "connection": db.connection,
            "sql": f"SELECT id FROM {db.t} WHERE name = %(who)s OR name = %(who2)s ORDER BY id",
            "params": {"who": "bob", "who2": "cy"},
        }
    )
    assert named.rows == [{"id": 2}, {"id": 3}]


def test_values_become_json(db: Db) -> None:
    out = db.run(
        {
            "connection": db.connection,
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
    out = db.run({"connection": db.connection, "sql": sql, "params": [50_000], "max_rows": 10})
    assert [r["n"] for r in out.rows] == list(range(1, 11))
    assert (out.row_count, out.truncated) == (10, True)
    exact = db.run({"connection": db.connection, "sql": sql, "params": [10], "max_rows": 10})
    assert (exact.row_count, exact.truncated) == (10, False)


def test_empty_result(db: Db) -> None:
    sql = f"SELECT name FROM {db.t} WHERE false"
    ro = db.run({"connection": db.connection, "sql": sql})
    assert (ro.rows, ro.row_count, ro.truncated) == ([], 0, False)
    rw = db.run({"connection": db.connection, "sql": sql, "read_only": False})
    assert rw.columns == ["name"] and rw.rows == []


def test_read_only_refuses_writes(db: Db) -> None:
    error = db.error(
        {
            "connection": db.connection,
            "sql": f"INSERT INTO {db.t} (name) VALUES (%s)",
            "params": ["x"],
        }
    )
    assert (error.error_class, error.retryable) == ("ReadOnlyViolation", False)
    assert "read-only transaction" in str(error)
    # Even a function with side effects runs read-only.
    error = db.error(
        {"connection": db.connection, "sql": "SELECT nextval(%s)", "params": [f"{db.t}_id_seq"]}
    )
    assert error.error_class == "ReadOnlyViolation"
    assert db.scalar(f"SELECT count(*) FROM {db.t}") == 3


def test_writes_commit_when_allowed(db: Db) -> None:
    ctx = NodeContext("inv-1", "run", "q", 1, workflow_id="shop-orders")
    out = db.run(
        {
            "connection": db.connection,
            "sql": f"INSERT INTO {db.t} (name, amount) VALUES (%s, %s), (%s, %s)"
            " RETURNING id, name",
            "params": ["dee", "1.5", "eve", 2],
            "read_only": False,
        },
        ctx,
    )
    assert out.rows == [{"id": 4, "name": "dee"}, {"id": 5, "name": "eve"}]
    assert out.row_count == 2
    update = db.run(
        {
            "connection": db.connection,
            "sql": f"UPDATE {db.t} SET amount = amount + 1 WHERE amount < %s",
            "params": [10],
            "read_only": False,
        }
    )
    assert (update.rows, update.columns, update.row_count) == ([], [], 4)
    # 12.50 + 3 + 7.25 + 1.5 + 2, plus 1 for each of the four rows under 10
    assert db.scalar(f"SELECT sum(amount) FROM {db.t}") == Decimal("30.25")


def test_write_returning_more_than_max_rows_commits_and_truncates(db: Db) -> None:
    out = db.run(
        {
            "connection": db.connection,
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
        db.run(
            {
                "connection": db.connection,
                "sql": f"INSERT INTO {db.t} (name) VALUES (%s)",
                "params": [target],
                "read_only": False,
            }
        )
    found = db.run(
        {
            "connection": db.connection,
            "sql": f"SELECT name FROM {db.t} WHERE name = %s",
            "params": [evil],
        }
    )
    assert found.rows == [{"name": evil}]
    assert db.scalar(f"SELECT count(*) FROM {db.t}") == 5  # the table is still there
    sneaky = db.run(
        {
            "connection": db.connection,
            "sql": f"SELECT count(*) AS n FROM {db.t} WHERE name = %s",
            "params": ["' OR '1'='1"],
        }
    )
    assert sneaky.rows == [{"n": 0}]


def test_stacked_statements_are_refused(db: Db) -> None:
    # A template that smuggled "; DROP TABLE" into the SQL text itself cannot run a batch.
    for read_only in (True, False):
        error = db.error(
            {
                "connection": db.connection,
                "sql": f"SELECT 1; DROP TABLE {db.t}",
                "read_only": read_only,
            }
        )
        assert (error.error_class, error.retryable) == ("DatabaseError", False)
        assert "multiple commands" in str(error)
    assert db.scalar(f"SELECT count(*) FROM {db.t}") == 3


def test_statement_timeout_is_retryable(db: Db) -> None:
    started = datetime.now(UTC)
    error = db.error(
        {"connection": db.connection, "sql": "SELECT pg_sleep(5)", "statement_timeout_ms": 200}
    )
    assert (error.error_class, error.retryable) == ("DatabaseTimeout", True)
    assert "57014" in str(error) and "statement timeout" in str(error)
    assert datetime.now(UTC) - started < timedelta(seconds=3)


def test_deadline_caps_the_statement_timeout(db: Db) -> None:
    deadline = datetime.now(UTC) + timedelta(milliseconds=400)
    ctx = NodeContext("i", "r", "s", 1, deadline=deadline, workflow_id="shop-orders")
    error = db.error({"connection": db.connection, "sql": "SELECT pg_sleep(5)"}, ctx)
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
    error = db.error({"connection": db.connection, "sql": query, "params": params})
    assert (error.error_class, error.retryable) == ("DatabaseError", False)
    assert fragment in str(error), str(error)


def test_constraint_violation_rolls_back_the_write(db: Db) -> None:
    error = db.error(
        {
            "connection": db.connection,
            "sql": f"INSERT INTO {db.t} (name) VALUES (%s), (%s)",
            "params": ["new", "ann"],
            "read_only": False,
        }
    )
    assert (error.error_class, error.retryable) == ("DatabaseError", False)
    assert "23505" in str(error)
    assert db.scalar(f"SELECT count(*) FROM {db.t} WHERE name = 'new'") == 0


def test_read_only_statement_without_rows(db: Db) -> None:
    out = db.run({"connection": db.connection, "sql": "SET LOCAL work_mem = '8MB'"})
    assert (out.rows, out.columns, out.row_count) == ([], [], 0)


def test_unreachable_database_is_retryable_and_hides_the_password(db: Db) -> None:
    with socket.socket() as sock:  # free a moment ago, nobody listens now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dsn = f"postgresql://reflux:hunter2-secret@127.0.0.1:{port}/reflux"
    db.configure("down", dsn)
    ctx = NodeContext("inv-1", "run", "q", 1, workflow_id="shop-orders")
    error = db.error({"connection": "down", "sql": "SELECT 1", "connect_timeout_s": 2}, ctx)
    assert (error.error_class, error.retryable) == ("DatabaseUnavailable", True)
    assert "hunter2-secret" not in str(error) and dsn not in str(error)
    # Not chained: a logged traceback cannot show the psycopg exception either.
    assert error.__cause__ is None and error.__suppress_context__
    assert "duration_ms" in ctx.metrics


def test_unknown_database_is_retryable_unavailable(db: Db) -> None:
    # libpq reports connection failures without a SQLSTATE; all of them count as unavailable.
    db.configure("gone", db.dsn.rsplit("/", 1)[0] + f"/nodb_{uuid.uuid4().hex[:8]}")
    error = db.error({"connection": "gone", "sql": "SELECT 1"})
    assert (error.error_class, error.retryable) == ("DatabaseUnavailable", True)
    assert "does not exist" in str(error)


# -- the database policy (docs/decisions/0044-database-access-and-platform-credentials.md) -----


def test_a_dsn_param_matching_the_configured_connection_still_works(db: Db) -> None:
    out = db.run({"dsn": db.dsn, "sql": f"SELECT count(*) AS n FROM {db.t}"})
    assert out.rows == [{"n": 3}]


def test_a_dsn_param_to_another_database_is_refused(db: Db) -> None:
    other = db.dsn.rsplit("/", 1)[0] + "/postgres"  # same server, a database nobody configured
    error = db.error({"dsn": other, "sql": "SELECT 1"})
    assert (error.error_class, error.retryable) == ("DatabasePolicy", False)
    assert "configured-connection" in str(error) and "/postgres" in str(error)


def test_a_connection_not_granted_to_the_workflow_is_unavailable(db: Db) -> None:
    ctx = NodeContext("inv-1", "run", "q", 1, workflow_id="another-team")
    error = db.error({"connection": "shop", "sql": "SELECT 1"}, ctx)
    assert (error.error_class, error.retryable) == ("SecretUnavailable", False)


@pytest.mark.parametrize("how", ["connection", "dsn"])
def test_the_platform_database_is_refused_even_when_configured(db: Db, how: str) -> None:
    platform = db.platform.postgres_dsn  # its role, its passfile: a working DSN
    with psycopg.connect(platform, autocommit=True) as conn:  # reachable for the platform...
        assert conn.execute("SELECT 1").fetchone() == (1,)
    db.configure("platform", platform)  # ...and configured by a careless operator
    host, port = platform.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)
    for params in (
        {"connection": "platform"} if how == "connection" else {"dsn": platform},
        {"dsn": f"postgresql://reflux@localhost:{port}/postgres"},
        {"dsn": f"host=127.0.0.2 port={port} dbname=template1 user=postgres"},
    ):
        error = db.error({**params, "sql": "SELECT 1"})
        assert (error.error_class, error.retryable) == ("DatabasePolicy", False), str(error)
        if "connection" in params or params.get("dsn") == platform:
            assert "platform-database" in str(error), str(error)
            assert f"{host}:{port}" in str(error)
