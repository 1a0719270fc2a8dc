"""``database.query@1.0.0``: one parameterized SQL statement against PostgreSQL (psycopg 3).

Safety rules, each enforced here rather than left to the workflow author:

- **Configured databases only.** The step names a connection (``connection: orders``) the
  operator configured in ``<secrets_dir>/databases.yaml`` (name -> the secret holding its DSN,
  granted to the workflow). A ``dsn`` param is accepted only when it points at the same
  (host, port, database, user) as a configured connection granted to the workflow. The
  platform's own PostgreSQL (host:port of ``Settings.postgres_dsn``, any database) is refused
  even when configured. Refusals are non-retryable ``DatabasePolicy`` errors naming the rule
  (:mod:`node_workers.nodes.database_policy`; ADR 0044 in docs/decisions/).

- **Parameters only.** Values go in ``params`` and reach the server separately from the SQL
  text (psycopg placeholders ``%s`` / ``%(name)s``); the node never formats values into SQL.
  The statement is always sent with the extended protocol, which accepts exactly one
  statement, so a ``; DROP TABLE ...`` smuggled into the SQL text (e.g. by a template) fails
  instead of running. A literal ``%`` in the SQL is therefore always written ``%%``.
- **Read-only by default.** The statement runs in a ``SET TRANSACTION READ ONLY`` transaction
  that is rolled back; a write fails with ``ReadOnlyViolation``. ``read_only: false`` commits.
- **Bounded.** ``SET LOCAL statement_timeout`` (capped by the invocation deadline) and
  ``max_rows``: read-only results are streamed row by row and abandoned past the limit, so a
  huge ``SELECT`` cannot exhaust a worker's memory; the output says ``truncated: true``.
- **No secrets in errors.** Messages carry the Postgres message, never the DSN or password.

Classification: connection failures -> retryable ``DatabaseUnavailable``; statement/lock
timeouts -> retryable ``DatabaseTimeout``; serialization failures and deadlocks -> retryable
``DatabaseConflict``; a write in read-only mode -> ``ReadOnlyViolation``; everything else the
server or psycopg refuses (syntax, undefined table, bad placeholder count, constraint
violation) -> non-retryable ``DatabaseError`` with the Postgres message.

A connection is opened per attempt: connection errors surface as themselves (a pool would turn
them into pool timeouts), and no session state can leak between workflows sharing a worker.

Workload: I/O (psycopg's async connection: waiting on the server never blocks the loop). With no
pool, nothing in the worker queues a started attempt: the limit is the *server's*. A worker runs
up to its I/O concurrency (256 by default) of these at once, each one connection, while
PostgreSQL accepts ``max_connections`` (100 by default) in all; beyond it the server refuses
(SQLSTATE 53300, retryable ``DatabaseUnavailable``). Give the group a limit below what the
target servers accept (``--node-concurrency database.query=50``).
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Any, Final, cast
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from pydantic import Field, SecretStr, field_validator, model_validator

from foundation.errors import RefluxError, classify
from foundation.settings import Settings, get_settings
from node_workers.node import (
    Node,
    NodeContext,
    NodeError,
    NodeModel,
    NonRetryableNodeError,
    RetryableNodeError,
    Workload,
)
from node_workers.nodes.database_policy import (
    DatabaseTarget,
    PlatformDatabase,
    policy_error,
    target_of,
)
from node_workers.secrets import SecretResolver, SecretUnavailable, resolver_from_settings
from node_workers.secrets.databases import CONNECTION_NAME, DatabasesFile

__all__ = [
    "DEFAULT_MAX_ROWS",
    "DatabaseQueryInput",
    "DatabaseQueryNode",
    "DatabaseQueryOutput",
    "classify_db_error",
    "scrub",
    "to_json_value",
]

DEFAULT_MAX_ROWS: Final = 1000
APPLICATION_NAME: Final = "reflux-worker"
_NO_RESULT: Final = "didn't produce a result"  # psycopg's stream() on a statement without rows
_IP_TYPES: Final = (
    IPv4Address,
    IPv6Address,
    IPv4Interface,
    IPv6Interface,
    IPv4Network,
    IPv6Network,
)
# SQLSTATE classes: 08 connection exception, 53 insufficient resources, 57P0x server going away.
_UNAVAILABLE_STATES: Final = frozenset({"57P01", "57P02", "57P03"})


class DatabaseQueryInput(NodeModel):
    connection: str | None = Field(default=None, pattern=f"^{CONNECTION_NAME.pattern}$")
    """A database the operator configured (``databases.yaml`` in the secrets folder)."""
    dsn: SecretStr | None = None
    """Instead of ``connection`` (kept for older definitions): a libpq connection string,
    usually ``{{ secrets.NAME }}``, accepted only when it points at a configured connection
    granted to the workflow (same host, port, database and user)."""
    sql: str = Field(min_length=1)
    """One statement with ``%s`` / ``%(name)s`` placeholders; write a literal ``%`` as ``%%``."""
    params: list[Any] | dict[str, Any] = Field(default_factory=list)
    """Positional (list, for ``%s``) or named (object, for ``%(name)s``) values."""
    read_only: bool = True
    max_rows: int = Field(default=DEFAULT_MAX_ROWS, ge=1, le=100_000)
    statement_timeout_ms: int = Field(default=10_000, ge=1, le=3_600_000)
    connect_timeout_s: int = Field(default=10, ge=1, le=300)

    @model_validator(mode="after")
    def _one_target(self) -> DatabaseQueryInput:
        if (self.connection is None) == (self.dsn is None):
            raise ValueError(
                "Expected exactly one of connection (a configured database, preferred) or dsn"
            )
        return self

    @field_validator("dsn")
    @classmethod
    def _parses(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        if not value.get_secret_value().strip():
            # libpq would fill an empty string in from PG* environment variables: hidden config.
            raise ValueError("Expected a PostgreSQL connection string, but it is empty")
        # psycopg's own parse error may quote the string, password included; ours does not.
        try:
            conninfo_to_dict(value.get_secret_value())
        except psycopg.Error:
            raise ValueError(
                "Expected a PostgreSQL connection string (URI or key=value pairs), "
                "but it does not parse"
            ) from None
        return value


class DatabaseQueryOutput(NodeModel):
    rows: list[dict[str, Any]]
    """At most ``max_rows`` rows as ``{column: value}``, values JSON-safe (see to_json_value)."""
    row_count: int
    """Rows in ``rows``; for a write (``read_only: false``), the rows the statement affected
    or returned, which may exceed ``len(rows)``."""
    columns: list[str]
    """Column names in order; empty for a statement without result columns or, in read-only
    mode, for an empty result (streamed results describe their columns with the first row)."""
    truncated: bool
    """The statement produced more than ``max_rows`` rows; the rest were dropped."""


def to_json_value(value: Any) -> Any:
    """A JSON-safe copy of a value psycopg loaded.

    ``numeric`` -> string (exact; cast to ``float8`` in SQL for a number); non-finite floats ->
    ``"NaN"``/``"Infinity"``/``"-Infinity"``; timestamps, dates, times -> ISO 8601; intervals ->
    seconds (float); ``bytea`` -> base64; uuid, inet/cidr -> string; json/jsonb and arrays ->
    converted recursively; anything else (ranges, geometric types) -> its ``str``.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | dt_time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (UUID, *_IP_TYPES)):
        return str(value)
    if isinstance(value, dict):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(item) for item in value]
    return str(value)


def _adapt(value: Any) -> Any:
    # psycopg adapts lists to arrays but has no default for dicts; JSON objects go as jsonb.
    return Jsonb(value) if isinstance(value, dict) else value


def _query_params(params: list[Any] | dict[str, Any]) -> list[Any] | dict[str, Any]:
    if isinstance(params, dict):
        return {name: _adapt(value) for name, value in params.items()}
    return [_adapt(value) for value in params]


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret replaced by ``***`` (defence in depth: libpq does not echo
    passwords, but a message must never be the place we find out it started to)."""
    # Very short secrets would mangle ordinary words and are not worth hiding from a message.
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _secrets(dsn: str) -> list[str]:
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        password = None
    return [dsn, *([str(password)] if password else [])]


def classify_db_error(
    exc: BaseException, *, connecting: bool = False, secrets: Sequence[str] = ()
) -> NodeError:
    """The node error for an exception from psycopg (or the socket under it); ``secrets``
    (the DSN, the password) are scrubbed from the message."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    detail = scrub(str(exc).strip(), secrets) or type(exc).__name__
    where = "connecting" if connecting else "running the statement"
    if (connecting and isinstance(exc, psycopg.OperationalError)) or isinstance(
        exc, OSError | psycopg.InterfaceError
    ):
        return RetryableNodeError(
            f"Database unavailable while {where}: {detail}", error_class="DatabaseUnavailable"
        )
    if isinstance(exc, pg_errors.QueryCanceled | pg_errors.LockNotAvailable):
        return RetryableNodeError(
            f"Statement timed out ({sqlstate}): {detail}", error_class="DatabaseTimeout"
        )
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        return NonRetryableNodeError(
            f"Expected a read-only statement (set read_only: false to write), but: {detail}",
            error_class="ReadOnlyViolation",
        )
    if sqlstate.startswith("40"):  # serialization_failure, deadlock_detected
        return RetryableNodeError(
            f"Transaction conflict ({sqlstate}): {detail}", error_class="DatabaseConflict"
        )
    if (
        sqlstate.startswith(("08", "53"))
        or sqlstate in _UNAVAILABLE_STATES
        or (isinstance(exc, psycopg.OperationalError) and not sqlstate)  # connection lost
    ):
        return RetryableNodeError(
            f"Database unavailable while {where} ({sqlstate or 'no SQLSTATE'}): {detail}",
            error_class="DatabaseUnavailable",
        )
    prefix = f"{sqlstate} " if sqlstate else ""
    return NonRetryableNodeError(f"{prefix}{detail}", error_class="DatabaseError")


def _same_target(dsn: str, wanted: DatabaseTarget, name: str) -> bool:
    try:
        return target_of(dsn, f"connection {name!r}") == wanted
    except NodeError:
        return False  # a broken configured DSN matches nothing; naming it reports why


def _columns(description: Sequence[Any] | None) -> list[str]:
    names = [column.name for column in description or []]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise NonRetryableNodeError(
                f"Expected unique column names, but {name!r} appears more than once "
                "(give the columns distinct names with AS)",
                error_class="DatabaseError",
            )
        seen.add(name)
    return names


def _rows(names: list[str], raw: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [
        {name: to_json_value(value) for name, value in zip(names, row, strict=True)} for row in raw
    ]


class DatabaseQueryNode(Node[DatabaseQueryInput, DatabaseQueryOutput]):
    name = "database.query"
    version = "1.0.0"
    Input = DatabaseQueryInput
    Output = DatabaseQueryOutput
    cacheable = False
    side_effects = True  # with read_only: false; read-only invocations are cacheable instead
    workload = Workload.IO
    description = "Run one parameterized SQL statement on PostgreSQL; output rows as JSON."

    def __init__(self) -> None:
        self._secrets: SecretResolver | None = None
        self._databases: DatabasesFile | None = None
        self._platform: PlatformDatabase | None = None

    def bind(self, settings: Settings) -> None:
        # Its own resolver over the same files as the worker's: grants and redaction apply to
        # a connection's DSN exactly as to a {{ secrets.NAME }} in params.
        self._secrets = resolver_from_settings(settings)
        self._databases = DatabasesFile.in_folder(settings.secrets_dir)
        self._platform = PlatformDatabase.from_dsn(settings.postgres_dsn)

    def cacheable_for(self, params: DatabaseQueryInput) -> bool:
        return params.read_only

    def _configured(self) -> tuple[SecretResolver, DatabasesFile | None, PlatformDatabase]:
        if self._secrets is None or self._platform is None:
            self.bind(get_settings())  # used outside a worker runtime (scripts, tests)
        assert self._secrets is not None and self._platform is not None
        return self._secrets, self._databases, self._platform

    async def resolve_dsn(self, params: DatabaseQueryInput, workflow_id: str) -> str:
        """The DSN the step may use, or a ``DatabasePolicy`` error (see module docstring)."""
        secrets, databases, _ = self._configured()
        configured = databases.current() if databases is not None else None
        names = configured.secrets if configured is not None else {}
        source = configured.source if configured is not None else "no secrets_dir"
        if params.connection is not None:
            secret = names.get(params.connection)
            if secret is None:
                raise policy_error(
                    "configured-connection",
                    f"Expected params.connection {params.connection!r} to be a database the "
                    f"operator configured ({source}), but it is not; configured: "
                    f"{sorted(names) or 'none'}",
                )
            value = secrets.resolve(f"{{{{ secrets.{secret} }}}}", workflow_id=workflow_id)
            return str(value)
        assert params.dsn is not None
        given = params.dsn.get_secret_value()
        wanted = target_of(given, "params.dsn")
        for name, secret in names.items():
            try:
                value = secrets.resolve(f"{{{{ secrets.{secret} }}}}", workflow_id=workflow_id)
            except SecretUnavailable:
                continue  # not this workflow's database
            if _same_target(str(value), wanted, name):
                return given
        raise policy_error(
            "configured-connection",
            f"Expected params.dsn to point at a database the operator configured for this "
            f"workflow ({source}), but {wanted} is none of them; name one with "
            "params.connection instead",
        )

    async def execute(self, params: DatabaseQueryInput, ctx: NodeContext) -> DatabaseQueryOutput:
        _, _, platform = self._configured()
        try:
            dsn = await self.resolve_dsn(params, ctx.workflow_id)
        except NodeError:
            raise
        except RefluxError as exc:  # not granted, not set, provider down, broken databases file
            found = classify(exc)
            error = RetryableNodeError if found.retryable else NonRetryableNodeError
            raise error(str(exc), error_class=found.error_class) from None
        what = f"connection {params.connection!r}" if params.connection else "params.dsn"
        target = target_of(dsn, what)
        # A secret placed in params.dsn goes to that database: its hosts must allow it (ADR 0050).
        ctx.secrets.check(target.host, target.port, node="database.query", target=what)
        address = await platform.checked_address(target)
        secrets = _secrets(dsn)
        timeout_ms = params.statement_timeout_ms
        remaining = ctx.remaining_s()
        if remaining is not None:
            timeout_ms = max(1, min(timeout_ms, int(remaining * 1000)))
        started = time.perf_counter()
        try:
            # `from None`: the psycopg exception is not chained into logs; the message we
            # raise instead is scrubbed of the DSN and password.
            try:
                conn = await psycopg.AsyncConnection.connect(
                    dsn,
                    # The address the policy checked: the host is not resolved a second time.
                    hostaddr=address,
                    connect_timeout=params.connect_timeout_s,
                    application_name=APPLICATION_NAME,
                )
            except (psycopg.Error, OSError) as exc:
                raise classify_db_error(exc, connecting=True, secrets=secrets) from None
            try:
                out = await self._run(conn, params, timeout_ms)
            except (psycopg.Error, OSError) as exc:
                raise classify_db_error(exc, secrets=secrets) from None
            finally:
                await conn.close()  # without a commit, an unfinished write is rolled back
        finally:
            ctx.record("duration_ms", round((time.perf_counter() - started) * 1000, 3))
        ctx.record("rows", len(out.rows))
        ctx.record("truncated", int(out.truncated))
        return out

    async def _run(
        self, conn: psycopg.AsyncConnection[Any], params: DatabaseQueryInput, timeout_ms: int
    ) -> DatabaseQueryOutput:
        values = _query_params(params.params)
        limit = params.max_rows
        async with conn.cursor() as cur:
            # Both must come first in the transaction; psycopg has just sent BEGIN.
            if params.read_only:
                await cur.execute("SET TRANSACTION READ ONLY")
            # set_config(..., is_local => true) is SET LOCAL with the value as a parameter.
            await cur.execute("SELECT set_config('statement_timeout', %s, true)", [str(timeout_ms)])
            if params.read_only:
                raw: list[tuple[Any, ...]] = []
                truncated = False
                try:
                    # Streamed, and abandoned past the limit (psycopg cancels the rest).
                    # (psycopg types stream() as an iterator; it is an async generator.)
                    stream = cast(AsyncGenerator[Any, None], cur.stream(params.sql, values))
                    async with aclosing(stream) as rows:
                        async for row in rows:
                            if len(raw) == limit:
                                truncated = True
                                break
                            raw.append(row)
                except psycopg.ProgrammingError as exc:
                    # A statement without a result set (e.g. SET LOCAL) ran fine.
                    if exc.sqlstate or _NO_RESULT not in str(exc):
                        raise
                names = _columns(cur.description) if raw else []
                await conn.rollback()  # nothing to keep, and a cancelled stream aborted it
                return DatabaseQueryOutput(
                    rows=_rows(names, raw), row_count=len(raw), columns=names, truncated=truncated
                )
            # prepare=True forces the extended protocol: one statement, never a batch.
            await cur.execute(params.sql, values, prepare=True)
            names = _columns(cur.description) if cur.description is not None else []
            fetched = await cur.fetchmany(limit + 1) if cur.description is not None else []
            affected = cur.rowcount
            await conn.commit()
        return DatabaseQueryOutput(
            rows=_rows(names, fetched[:limit]),
            row_count=max(affected, 0),
            columns=names,
            truncated=len(fetched) > limit,
        )
