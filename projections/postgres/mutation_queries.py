"""Reads over the proposal read models (migration 005) for the API: proposals, their
transitions, request outcomes, improvement policies, and the measured effect of an applied
proposal (runs per workflow version, from the ``runs`` read model)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from projections.postgres.identifiers import DEFAULT_SCHEMA, table

__all__ = [
    "MutationEventRow",
    "MutationRow",
    "PolicyRow",
    "RequestOutcome",
    "RouteRow",
    "VersionEffect",
    "current_route",
    "get_mutation",
    "get_policy",
    "list_mutation_events",
    "list_mutations",
    "request_outcome",
    "version_effect",
]


@dataclass(frozen=True, slots=True)
class MutationRow:
    mutation_id: str
    workflow_id: str
    base_version: int
    status: str
    author: str
    rationale: str
    changes: Any
    evidence: Any
    report: Any
    score: float | None
    canary_weight: float | None
    applied_version: int | None
    previous_version: int | None
    reason: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class MutationEventRow:
    event_id: str
    status: str
    actor: str | None
    reason: str | None
    request_id: str | None
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class PolicyRow:
    workflow_id: str
    policy: str
    actor: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    refused_reason: str | None
    current_status: str | None
    statuses: tuple[str, ...]
    """The lifecycle statuses the request produced (projected so far)."""


@dataclass(frozen=True, slots=True)
class VersionEffect:
    version: int
    runs: int
    succeeded: int
    failed: int
    running: int
    success_rate: float | None
    """Succeeded over finished runs; ``None`` before any finished."""
    p50_ms: float | None
    p95_ms: float | None


def _columns(row: type) -> str:
    return ", ".join(f.name for f in fields(row))


def list_mutations(
    conn: psycopg.Connection,
    *,
    workflow_id: str | None = None,
    status: str | None = None,
    author: str | None = None,
    limit: int = 100,
    schema: str = DEFAULT_SCHEMA,
    tenant: str | None = None,
) -> list[MutationRow]:
    """Newest first; ``tenant``: proposals of that tenant's workflows only."""
    where: list[str] = []
    params: list[object] = []
    for column, value in (("workflow_id", workflow_id), ("status", status), ("author", author)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if tenant is not None:
        where.append(
            f"workflow_id IN (SELECT workflow_id FROM {table(schema, 'workflows')} "
            "WHERE tenant = %s)"
        )
        params.append(tenant)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    with conn.cursor(row_factory=class_row(MutationRow)) as cursor:
        cursor.execute(
            f"SELECT {_columns(MutationRow)} FROM {table(schema, 'mutation_proposals')} "
            f"{clause}ORDER BY created_at DESC, mutation_id LIMIT %s",
            (*params, limit),
        )
        return cursor.fetchall()


def get_mutation(
    conn: psycopg.Connection, mutation_id: str, *, schema: str = DEFAULT_SCHEMA
) -> MutationRow | None:
    with conn.cursor(row_factory=class_row(MutationRow)) as cursor:
        cursor.execute(
            f"SELECT {_columns(MutationRow)} FROM {table(schema, 'mutation_proposals')} "
            "WHERE mutation_id = %s",
            (mutation_id,),
        )
        return cursor.fetchone()


def list_mutation_events(
    conn: psycopg.Connection, mutation_id: str, *, schema: str = DEFAULT_SCHEMA
) -> list[MutationEventRow]:
    with conn.cursor(row_factory=class_row(MutationEventRow)) as cursor:
        cursor.execute(
            f"SELECT {_columns(MutationEventRow)} FROM {table(schema, 'mutation_events')} "
            "WHERE mutation_id = %s ORDER BY position",
            (mutation_id,),
        )
        return cursor.fetchall()


def get_policy(
    conn: psycopg.Connection, workflow_id: str, *, schema: str = DEFAULT_SCHEMA
) -> PolicyRow | None:
    with conn.cursor(row_factory=class_row(PolicyRow)) as cursor:
        cursor.execute(
            f"SELECT {_columns(PolicyRow)} FROM {table(schema, 'workflow_improvement')} "
            "WHERE workflow_id = %s",
            (workflow_id,),
        )
        return cursor.fetchone()


def request_outcome(
    conn: psycopg.Connection, request_id: str, *, schema: str = DEFAULT_SCHEMA
) -> RequestOutcome | None:
    """What became of a request so far; ``None`` while nothing about it is projected."""
    refused = conn.execute(
        f"SELECT refused_reason, current_status FROM {table(schema, 'mutation_requests')} "
        "WHERE request_id = %s",
        (request_id,),
    ).fetchone()
    statuses = tuple(
        row[0]
        for row in conn.execute(
            f"SELECT status FROM {table(schema, 'mutation_events')} WHERE request_id = %s "
            "ORDER BY position",
            (request_id,),
        ).fetchall()
    )
    if refused is None and not statuses:
        return None
    reason, current = refused if refused is not None else (None, None)
    return RequestOutcome(reason, current, statuses)


@dataclass(frozen=True, slots=True)
class RouteRow:
    """The proposal whose transition last moved a workflow's traffic, and that transition."""

    mutation_id: str
    status: str
    base_version: int
    applied_version: int | None
    previous_version: int | None
    canary_weight: float | None


def current_route(
    conn: psycopg.Connection, workflow_id: str, *, schema: str = DEFAULT_SCHEMA
) -> RouteRow | None:
    """The latest ``applied`` / ``kept`` / ``rolled_back`` transition of the workflow."""
    with conn.cursor(row_factory=class_row(RouteRow)) as cursor:
        cursor.execute(
            "SELECT e.mutation_id, e.status, p.base_version, p.applied_version, "
            "p.previous_version, p.canary_weight "
            f"FROM {table(schema, 'mutation_events')} e "
            f"JOIN {table(schema, 'mutation_proposals')} p USING (mutation_id) "
            "WHERE e.workflow_id = %s "
            "AND e.status IN ('applied', 'kept', 'rolled_back', 'reverted') "
            "ORDER BY e.position DESC LIMIT 1",
            (workflow_id,),
        )
        return cursor.fetchone()


def version_effect(
    conn: psycopg.Connection,
    workflow_id: str,
    versions: tuple[int, ...],
    since: datetime | None,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> list[VersionEffect]:
    """Runs per version started at or after ``since``: counts, success rate and the p50/p95 of
    finished runs' durations (milliseconds)."""
    rows = conn.execute(
        "SELECT workflow_version, count(*), "
        "count(*) FILTER (WHERE status = 'succeeded'), "
        "count(*) FILTER (WHERE status = 'failed'), "
        "count(*) FILTER (WHERE finished_at IS NULL), "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY "
        "  extract(epoch FROM finished_at - started_at) * 1000), "
        "percentile_cont(0.95) WITHIN GROUP (ORDER BY "
        "  extract(epoch FROM finished_at - started_at) * 1000) "
        f"FROM {table(schema, 'runs')} WHERE workflow_id = %s "
        "AND workflow_version = ANY(%s) AND (%s::timestamptz IS NULL OR started_at >= %s) "
        "GROUP BY workflow_version",
        (workflow_id, list(versions), since, since),
    ).fetchall()
    found = {int(r[0]): r for r in rows}
    out = []
    for version in versions:
        r = found.get(version)
        if r is None:
            out.append(VersionEffect(version, 0, 0, 0, 0, None, None, None))
            continue
        runs, ok, failed, running = int(r[1]), int(r[2]), int(r[3]), int(r[4])
        finished = runs - running
        out.append(
            VersionEffect(
                version,
                runs,
                ok,
                failed,
                running,
                ok / finished if finished else None,
                None if r[5] is None else float(r[5]),
                None if r[6] is None else float(r[6]),
            )
        )
    return out
