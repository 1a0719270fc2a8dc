"""The two small tables the API owns, in its own Postgres schema (``ApiSettings.api_schema``).

- ``api_workflow_versions``: the next version number per workflow, allocated atomically with one
  upsert, so two concurrent registrations can never get the same version.
- ``api_idempotency``: idempotency key -> run id plus a fingerprint of the request, so a retry gets
  the same run id and a *different* request with a reused key is refused instead of silently
  answered with someone else's run.
- ``api_keys``: API keys, hashed (:mod:`api.auth.keys`, ADR 0046).

These are not read models (nothing here is derived from a log); the projector never touches them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from api.db import with_conn
from api.errors import ConflictError
from foundation.tenancy import DEFAULT_TENANT
from projections.postgres.identifiers import quote_schema
from schemas.base import canonical_json

__all__ = [
    "ApiStore",
    "IdempotencyRecord",
    "allocate_workflow_version",
    "claim_idempotency_key",
    "ensure_api_schema",
    "request_fingerprint",
]

P = ParamSpec("P")
T = TypeVar("T")


def ensure_api_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    """Create the schema and tables if missing; idempotent and safe to run concurrently."""
    quoted = quote_schema(schema)
    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"reflux-api:{schema}",)
        )
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.api_workflow_versions ("
            " workflow_id text PRIMARY KEY,"
            " version integer NOT NULL,"
            " updated_at timestamptz NOT NULL DEFAULT now())"
        )
        # Tenancy (ADR 0051): a workflow id belongs to the tenant that allocated it first.
        conn.execute(
            f"ALTER TABLE {quoted}.api_workflow_versions "
            f"ADD COLUMN IF NOT EXISTS tenant text NOT NULL DEFAULT '{DEFAULT_TENANT}'"
        )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.api_idempotency ("
            " idempotency_key text PRIMARY KEY,"
            " run_id text NOT NULL,"
            " workflow_id text NOT NULL,"
            " fingerprint text NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now())"
        )
        # API keys (api.auth.keys, ADR 0046): the secret only as its SHA-256.
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.api_keys ("
            " key_id text PRIMARY KEY,"
            " name text NOT NULL,"
            " role text NOT NULL,"
            " tenant text NOT NULL,"
            " secret_sha256 text NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now(),"
            " created_by text NOT NULL,"
            " expires_at timestamptz,"
            " rotated_at timestamptz,"
            " revoked_at timestamptz)"
        )


class WorkflowIdTakenError(ConflictError):
    """The workflow id belongs to another tenant (ADR 0051)."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(
            f"workflow id {workflow_id!r} is taken by another tenant; register under another id"
        )


def allocate_workflow_version(
    conn: psycopg.Connection[Any],
    schema: str,
    workflow_id: str,
    at_least: int = 1,
    tenant: str = DEFAULT_TENANT,
) -> int:
    """The next version of ``workflow_id`` (1 for a new one), committed before it is used;
    :class:`WorkflowIdTakenError` when another tenant owns the id.

    ``at_least`` lets the caller pass ``max(projected version) + 1`` so an empty allocation table
    (e.g. a fresh API schema next to an existing read model) never re-issues a registered version.
    A registration that fails after allocating leaves a gap; versions are unique and increasing,
    not necessarily contiguous.
    """
    quoted = quote_schema(schema)
    with conn.transaction():
        row = conn.execute(
            f"INSERT INTO {quoted}.api_workflow_versions AS v (workflow_id, version, tenant) "
            "VALUES (%(id)s, %(min)s, %(tenant)s) "
            "ON CONFLICT (workflow_id) DO UPDATE "
            "SET version = GREATEST(v.version + 1, %(min)s), updated_at = now() "
            "WHERE v.tenant = %(tenant)s "
            "RETURNING version",
            {"id": workflow_id, "min": at_least, "tenant": tenant},
        ).fetchone()
    if row is None:  # the conflict's WHERE refused: another tenant's id
        raise WorkflowIdTakenError(workflow_id)
    return int(row[0])


def request_fingerprint(workflow_id: str, version: int | None, inputs: Any) -> str:
    payload = canonical_json({"workflow_id": workflow_id, "version": version, "inputs": inputs})
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    run_id: str
    workflow_id: str
    fingerprint: str
    created: bool
    """True when this call stored the key; False when it existed already."""


def claim_idempotency_key(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    key: str,
    run_id: str,
    workflow_id: str,
    fingerprint: str,
) -> IdempotencyRecord:
    """Store ``key -> run_id`` unless the key exists; return what is stored either way."""
    quoted = quote_schema(schema)
    with conn.transaction():
        row = conn.execute(
            f"INSERT INTO {quoted}.api_idempotency "
            "(idempotency_key, run_id, workflow_id, fingerprint) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (idempotency_key) DO NOTHING RETURNING run_id",
            (key, run_id, workflow_id, fingerprint),
        ).fetchone()
        if row is not None:
            return IdempotencyRecord(run_id, workflow_id, fingerprint, created=True)
        existing = conn.execute(
            f"SELECT run_id, workflow_id, fingerprint FROM {quoted}.api_idempotency "
            "WHERE idempotency_key = %s",
            (key,),
        ).fetchone()
    assert existing is not None
    return IdempotencyRecord(existing[0], existing[1], existing[2], created=False)


class ApiStore:
    """Async access to the API's tables; creates them on first use if startup could not."""

    def __init__(self, pool: ConnectionPool[Any], schema: str, timeout: float) -> None:
        self.pool = pool
        self.schema = schema
        self.timeout = timeout
        self._ready = False

    def _ensure(self, conn: psycopg.Connection[Any]) -> None:
        if not self._ready:
            ensure_api_schema(conn, self.schema)
            self._ready = True

    def ensure(self) -> None:
        with self.pool.connection(timeout=self.timeout) as conn:
            self._ensure(conn)

    async def allocate_version(
        self, workflow_id: str, at_least: int, tenant: str = DEFAULT_TENANT
    ) -> int:
        def call(conn: psycopg.Connection[Any]) -> int:
            self._ensure(conn)
            return allocate_workflow_version(conn, self.schema, workflow_id, at_least, tenant)

        return await with_conn(self.pool, self.timeout, call)

    async def claim_key(
        self, key: str, run_id: str, workflow_id: str, fingerprint: str
    ) -> IdempotencyRecord:
        def call(conn: psycopg.Connection[Any]) -> IdempotencyRecord:
            self._ensure(conn)
            return claim_idempotency_key(
                conn,
                self.schema,
                key=key,
                run_id=run_id,
                workflow_id=workflow_id,
                fingerprint=fingerprint,
            )

        return await with_conn(self.pool, self.timeout, call)

    async def call(
        self,
        fn: Callable[Concatenate[psycopg.Connection[Any], P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``fn(conn, *args, **kwargs)`` on a pooled connection once the tables exist."""

        def run(conn: psycopg.Connection[Any]) -> T:
            self._ensure(conn)
            return fn(conn, *args, **kwargs)

        return await with_conn(self.pool, self.timeout, run)
