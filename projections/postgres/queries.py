"""The read API over the run-engine read models, for the FastAPI layer.

Every function takes a psycopg connection (autocommit or inside the caller's transaction) and a
keyword ``schema`` (default ``"reflux"``), and returns frozen dataclasses whose fields are the
table columns: JSON columns hold Python values, timestamps are aware datetimes. They are storage
rows: the API maps them to its own Public models rather than returning them as they are.

Errors: invalid arguments (unknown status, bad cursor, limit out of range) raise
:class:`InvalidQueryError`, a non-retryable error the API turns into a 400/422.

``list_runs`` pages newest first with an opaque keyset cursor, so a page is stable while new runs
arrive (no OFFSET drift).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg.rows import class_row

from foundation.errors import NonRetryableError
from projections.postgres.identifiers import DEFAULT_SCHEMA, table
from schemas.models import NodeStatus
from schemas.statuses import PROJECTED_RUN_STATUSES, PROJECTED_STEP_STATUSES

__all__ = [
    "MAX_LIMIT",
    "NODE_STATUSES",
    "RUN_STATUSES",
    "STEP_STATUSES",
    "InvalidQueryError",
    "NodeRow",
    "NodeVersionRow",
    "RunEventRow",
    "RunGraphRow",
    "RunMutationRow",
    "RunPage",
    "RunRow",
    "StepRow",
    "WorkflowRow",
    "WorkflowSummary",
    "get_events",
    "get_node",
    "get_node_version",
    "get_run",
    "get_run_graph",
    "get_run_mutations",
    "get_steps",
    "get_workflow",
    "list_node_versions",
    "list_nodes",
    "list_runs",
    "list_workflow_versions",
    "list_workflows",
]

# Plain strings (they appear in messages and query descriptions), from the one vocabulary.
RUN_STATUSES: Final = tuple(status.value for status in PROJECTED_RUN_STATUSES)
STEP_STATUSES: Final = tuple(status.value for status in PROJECTED_STEP_STATUSES)
NODE_STATUSES: Final = tuple(status.value for status in NodeStatus)
MAX_LIMIT: Final = 1000
MAX_EVENTS_LIMIT: Final = 10_000


class InvalidQueryError(NonRetryableError):
    error_class = "InvalidQuery"


@dataclass(frozen=True, slots=True)
class RunRow:
    run_id: str
    workflow_id: str
    workflow_version: int
    status: str
    """One of :data:`RUN_STATUSES`."""
    inputs: Any
    outputs: Any
    """Set when succeeded."""
    error: dict[str, Any] | None
    """ErrorInfo (``error_class``, ``message``, ``retryable``) when failed."""
    failed_step: str | None
    """step_id of the step that failed the run."""
    source: str
    source_key: str | None
    idempotency_key: str | None
    deadline: datetime | None
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    last_seq: int
    """seq of the last event applied: clients can wait for ``last_seq >= n``."""
    parent_run_id: str | None = None
    """A child run's parent (meta.workflow / meta.loop; migration 007), else None."""
    parent_step_id: str | None = None
    parent_attempt: int | None = None
    parent_iteration: int | None = None
    tenant: str = "default"
    """The run's tenant (its workflow's; migration 011)."""


@dataclass(frozen=True, slots=True)
class StepRow:
    run_id: str
    step_id: str
    node: str
    node_version: str
    status: str
    """One of :data:`STEP_STATUSES`."""
    attempt: int
    """Current (or next, in retry_wait) attempt, 1-based; 0 for a step skipped before any."""
    invocation_id: str | None
    params: Any
    output: Any
    output_ref: dict[str, Any] | None
    """PayloadRef (``uri``, ``size_bytes``, ``sha256``, ``content_type``) of a large output."""
    error: dict[str, Any] | None
    skip_reason: str | None
    cache_hit: bool | None
    duration_ms: int | None
    scheduled_at: datetime | None
    started_at: datetime | None
    """When a worker started the current attempt (StepStarted, the worker's clock); rows from
    before migration 003 hold the dispatch time."""
    next_attempt_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    dispatched_at: datetime | None
    """When the current attempt's invocation was sent to the workers."""
    worker: str | None
    """The worker process that started the current attempt."""


@dataclass(frozen=True, slots=True)
class RunEventRow:
    run_id: str
    seq: int
    event_type: str
    """The event model's class name, e.g. ``"StepSucceeded"``."""
    event_id: str
    occurred_at: datetime
    payload: dict[str, Any]
    """The event model's JSON dump (``model_dump(mode="json")``)."""


@dataclass(frozen=True, slots=True)
class WorkflowRow:
    workflow_id: str
    version: int
    definition: Any
    registered_at: datetime
    registered_by: str | None
    tenant: str


@dataclass(frozen=True, slots=True)
class WorkflowSummary:
    workflow_id: str
    latest_version: int
    version_count: int
    registered_at: datetime
    """When the latest version was registered."""
    registered_by: str | None
    """Who registered the latest version."""


@dataclass(frozen=True, slots=True)
class RunPage:
    items: list[RunRow]
    next_cursor: str | None
    """Pass back as ``cursor`` for the next page; ``None`` on the last page."""


def _columns(row_type: type) -> str:
    # Explicit columns, so a migration that adds one does not break these row types.
    return ", ".join(f.name for f in fields(row_type))


def _check_limit(limit: int, maximum: int) -> None:
    if not 1 <= limit <= maximum:
        raise InvalidQueryError(f"Expected limit between 1 and {maximum}, but got {limit}")


def get_run(
    conn: psycopg.Connection, run_id: str, *, schema: str = DEFAULT_SCHEMA
) -> RunRow | None:
    with conn.cursor(row_factory=class_row(RunRow)) as cursor:
        cursor.execute(
            f"SELECT {_columns(RunRow)} FROM {table(schema, 'runs')} WHERE run_id = %s", (run_id,)
        )
        return cursor.fetchone()


@dataclass(frozen=True, slots=True)
class RunGraphRow:
    """A run's current definition (migration 004): as started, with every mutation applied."""

    run_id: str
    status: str
    last_seq: int
    definition: Any
    """``None`` for a run projected before migration 004 without its ``RunStarted`` row."""


@dataclass(frozen=True, slots=True)
class RunMutationRow:
    """One ``GraphMutated`` of a run, with who asked for it and why."""

    run_id: str
    seq: int
    type: str
    step_id: str
    data: Any
    mutation_id: str | None
    command_id: str | None
    requested_by: str | None
    reason: str | None
    event_id: str
    at: datetime


def get_run_graph(
    conn: psycopg.Connection, run_id: str, *, schema: str = DEFAULT_SCHEMA
) -> RunGraphRow | None:
    with conn.cursor(row_factory=class_row(RunGraphRow)) as cursor:
        cursor.execute(
            f"SELECT {_columns(RunGraphRow)} FROM {table(schema, 'runs')} WHERE run_id = %s",
            (run_id,),
        )
        return cursor.fetchone()


def get_run_mutations(
    conn: psycopg.Connection, run_id: str, *, schema: str = DEFAULT_SCHEMA
) -> list[RunMutationRow]:
    """The run's applied graph mutations in log order."""
    with conn.cursor(row_factory=class_row(RunMutationRow)) as cursor:
        cursor.execute(
            f"SELECT {_columns(RunMutationRow)} FROM {table(schema, 'run_mutations')} "
            "WHERE run_id = %s ORDER BY seq",
            (run_id,),
        )
        return cursor.fetchall()


def encode_cursor(row: RunRow) -> str:
    raw = json.dumps([row.started_at.isoformat(), row.run_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        started_at, run_id = json.loads(raw)
        return datetime.fromisoformat(started_at), str(run_id)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidQueryError(
            f"Expected a cursor returned by a previous page, but got {cursor!r}"
        ) from exc


def list_runs(
    conn: psycopg.Connection,
    workflow_id: str | None = None,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    *,
    schema: str = DEFAULT_SCHEMA,
    tenant: str | None = None,
    source: str | None = None,
    started_after: datetime | None = None,
    started_before: datetime | None = None,
) -> RunPage:
    """Runs newest first (``started_at``, then ``run_id``), optionally filtered (``tenant``:
    that tenant's runs only; ``started_after`` inclusive, ``started_before`` exclusive)."""
    _check_limit(limit, MAX_LIMIT)
    if status is not None and status not in RUN_STATUSES:
        raise InvalidQueryError(f"Expected status to be one of {RUN_STATUSES}, but got {status!r}")
    filters: list[tuple[str, object]] = [
        ("tenant = %s", tenant),
        ("workflow_id = %s", workflow_id),
        ("status = %s", status),
        ("source = %s", source),
        ("started_at >= %s", started_after),
        ("started_at < %s", started_before),
    ]
    where = [clause for clause, value in filters if value is not None]
    params: list[object] = [value for _, value in filters if value is not None]
    if cursor is not None:
        started_at, run_id = decode_cursor(cursor)
        where.append("(started_at, run_id) < (%s, %s)")
        params.extend([started_at, run_id])
    sql = f"SELECT {_columns(RunRow)} FROM {table(schema, 'runs')}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY started_at DESC, run_id DESC LIMIT %s"
    params.append(limit + 1)
    with conn.cursor(row_factory=class_row(RunRow)) as cur:
        rows = cur.execute(sql, params).fetchall()
    more = len(rows) > limit
    items = rows[:limit]
    return RunPage(items, encode_cursor(items[-1]) if more else None)


def get_children(
    conn: psycopg.Connection, run_id: str, *, schema: str = DEFAULT_SCHEMA, limit: int = 1000
) -> list[RunRow]:
    """The child runs of a run (meta.workflow / meta.loop steps), oldest first."""
    with conn.cursor(row_factory=class_row(RunRow)) as cursor:
        cursor.execute(
            f"SELECT {_columns(RunRow)} FROM {table(schema, 'runs')} WHERE parent_run_id = %s "
            "ORDER BY started_at, run_id LIMIT %s",
            (run_id, limit),
        )
        return cursor.fetchall()


def get_steps(
    conn: psycopg.Connection, run_id: str, *, schema: str = DEFAULT_SCHEMA
) -> list[StepRow]:
    """The run's steps in the order they were first scheduled."""
    with conn.cursor(row_factory=class_row(StepRow)) as cursor:
        cursor.execute(
            f"SELECT {_columns(StepRow)} FROM {table(schema, 'steps')} WHERE run_id = %s "
            "ORDER BY scheduled_at NULLS LAST, step_id",
            (run_id,),
        )
        return cursor.fetchall()


def get_events(
    conn: psycopg.Connection,
    run_id: str,
    after_seq: int = -1,
    limit: int = 1000,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> list[RunEventRow]:
    """Events with ``seq > after_seq`` in seq order (seq is 0-based: the default starts at 0)."""
    _check_limit(limit, MAX_EVENTS_LIMIT)
    with conn.cursor(row_factory=class_row(RunEventRow)) as cursor:
        cursor.execute(
            f"SELECT {_columns(RunEventRow)} FROM {table(schema, 'run_events')} "
            "WHERE run_id = %s AND seq > %s "
            "ORDER BY seq LIMIT %s",
            (run_id, after_seq, limit),
        )
        return cursor.fetchall()


def get_workflow(
    conn: psycopg.Connection,
    workflow_id: str,
    version: int | None = None,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> WorkflowRow | None:
    """One version of a workflow; the latest when ``version`` is None."""
    sql = f"SELECT {_columns(WorkflowRow)} FROM {table(schema, 'workflows')} "
    sql += "WHERE workflow_id = %s"
    params: list[object] = [workflow_id]
    if version is not None:
        sql += " AND version = %s"
        params.append(version)
    sql += " ORDER BY version DESC LIMIT 1"
    with conn.cursor(row_factory=class_row(WorkflowRow)) as cursor:
        return cursor.execute(sql, params).fetchone()


def list_workflows(
    conn: psycopg.Connection, *, schema: str = DEFAULT_SCHEMA, tenant: str | None = None
) -> list[WorkflowSummary]:
    """Every workflow (of ``tenant``; ``None``: of all) with its latest version, by id."""
    where, params = ("WHERE tenant = %s ", (tenant,)) if tenant is not None else ("", ())
    with conn.cursor(row_factory=class_row(WorkflowSummary)) as cursor:
        cursor.execute(
            "SELECT DISTINCT ON (workflow_id) workflow_id, version AS latest_version, "
            "count(*) OVER (PARTITION BY workflow_id) AS version_count, "
            f"registered_at, registered_by FROM {table(schema, 'workflows')} "
            f"{where}ORDER BY workflow_id, version DESC",
            params,
        )
        return cursor.fetchall()


def list_workflow_versions(
    conn: psycopg.Connection, workflow_id: str, *, schema: str = DEFAULT_SCHEMA
) -> list[WorkflowRow]:
    """Every registered version of a workflow, oldest first; empty if it is unknown."""
    with conn.cursor(row_factory=class_row(WorkflowRow)) as cursor:
        cursor.execute(
            f"SELECT {_columns(WorkflowRow)} FROM {table(schema, 'workflows')} "
            "WHERE workflow_id = %s ORDER BY version",
            (workflow_id,),
        )
        return cursor.fetchall()


# -- node catalog ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeRow:
    name: str
    latest_version: str
    """Highest registered semver, any status."""
    category: str
    created_at: datetime
    updated_at: datetime
    version_count: int
    production_versions: list[str]
    """Versions in production, oldest first (what ranges route to)."""


@dataclass(frozen=True, slots=True)
class NodeVersionRow:
    name: str
    version: str
    status: str
    """One of :data:`NODE_STATUSES`."""
    rollout_weight: float
    manifest: Any
    code_url: str | None
    created_at: datetime
    updated_at: datetime
    last_event_id: str
    """The catalog entry this row shows (lets a writer wait for its own entry)."""
    tenant: str = "default"
    """The node's tenant (migration 011)."""


# Semver order (numeric core, release after its pre-releases), as in the appliers.
_VERSION_ORDER: Final = (
    "string_to_array(split_part(v.version, '-', 1), '.')::int[], "
    "(strpos(v.version, '-') = 0), v.version"
)
_NODE_VERSION_COLUMNS: Final = (
    "n.name, v.version, v.status, v.rollout_weight, v.manifest, v.code_url, v.created_at, "
    "v.updated_at, v.last_event_id, n.tenant"
)


def list_nodes(
    conn: psycopg.Connection,
    *,
    category: str | None = None,
    schema: str = DEFAULT_SCHEMA,
    tenants: Sequence[str] | None = None,
) -> list[NodeRow]:
    """Every catalogued node (of ``tenants``; ``None``: of all) by name, with its version
    count and production versions."""
    sql = (
        "SELECT n.name, n.latest_version, n.category, n.created_at, n.updated_at, "
        "count(v.id)::int AS version_count, "
        f"coalesce(array_agg(v.version ORDER BY {_VERSION_ORDER}) "
        "FILTER (WHERE v.status = 'production'), '{}') AS production_versions "
        f"FROM {table(schema, 'nodes')} n "
        f"LEFT JOIN {table(schema, 'node_versions')} v ON v.node_id = n.id"
    )
    where: list[str] = []
    params: list[object] = []
    if category is not None:
        where.append("n.category = %s")
        params.append(category)
    if tenants is not None:
        where.append("n.tenant = ANY(%s)")
        params.append(list(tenants))
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " GROUP BY n.id ORDER BY n.name"
    with conn.cursor(row_factory=class_row(NodeRow)) as cursor:
        return cursor.execute(sql, params).fetchall()


def get_node(
    conn: psycopg.Connection, name: str, *, schema: str = DEFAULT_SCHEMA
) -> NodeRow | None:
    rows = [row for row in list_nodes(conn, schema=schema) if row.name == name]
    return rows[0] if rows else None


def list_node_versions(
    conn: psycopg.Connection,
    name: str | None = None,
    *,
    status: str | None = None,
    schema: str = DEFAULT_SCHEMA,
    tenants: Sequence[str] | None = None,
) -> list[NodeVersionRow]:
    """Versions of one node (or of every node of ``tenants``; ``None``: of all), oldest
    first; empty if none."""
    if status is not None and status not in NODE_STATUSES:
        raise InvalidQueryError(f"Expected status to be one of {NODE_STATUSES}, but got {status!r}")
    where: list[str] = []
    params: list[object] = []
    if name is not None:
        where.append("n.name = %s")
        params.append(name)
    if status is not None:
        where.append("v.status = %s")
        params.append(status)
    if tenants is not None:
        where.append("n.tenant = ANY(%s)")
        params.append(list(tenants))
    sql = (
        f"SELECT {_NODE_VERSION_COLUMNS} FROM {table(schema, 'node_versions')} v "
        f"JOIN {table(schema, 'nodes')} n ON n.id = v.node_id"
    )
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY n.name, {_VERSION_ORDER}"
    with conn.cursor(row_factory=class_row(NodeVersionRow)) as cursor:
        return cursor.execute(sql, params).fetchall()


def get_node_version(
    conn: psycopg.Connection, name: str, version: str, *, schema: str = DEFAULT_SCHEMA
) -> NodeVersionRow | None:
    with conn.cursor(row_factory=class_row(NodeVersionRow)) as cursor:
        return cursor.execute(
            f"SELECT {_NODE_VERSION_COLUMNS} FROM {table(schema, 'node_versions')} v "
            f"JOIN {table(schema, 'nodes')} n ON n.id = v.node_id "
            "WHERE n.name = %s AND v.version = %s",
            (name, version),
        ).fetchone()
