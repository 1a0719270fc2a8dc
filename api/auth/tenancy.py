"""Tenant scoping of the /v1 routes (ADR 0051).

Every workflow, run, mutation, replay, diagnosis and node belongs to a tenant; a principal sees
and changes only its own tenant's (and uses, but cannot change, the platform's node catalog).

Two halves:

- :func:`scope_to_tenant`, a dependency of the /v1 router after ``authorize``: for each
  resource a route's *path* names (``{run_id}``, ``{workflow_id}``, ``{mutation_id}``, ...), the
  owner's tenant is read from the read model and compared with the principal's. Another
  tenant's resource is answered exactly like a missing one (404 ``<kind> '<id>' not found``),
  so ids of other tenants are not disclosed. A resource the read model does not know yet
  passes: the route answers 404 itself (or creates it).
- Routes that take resources in the *body* or list them filter by :func:`tenant_of` themselves
  (``POST /v1/runs``, ``/v1/mutations``, ``/v1/replays``, every list).

A start-hook or step-resume call authenticated by its HMAC signature alone has no principal: the
signature is the workflow's (or the step's), so the run is the workflow's tenant's.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import psycopg
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from api.auth.guard import ForbiddenError, Principal
from api.config import ApiSettings
from api.errors import NotFoundError
from foundation.tenancy import PLATFORM_TENANT
from projections.postgres.identifiers import table
from projections.traces.queries import WorkflowScope

__all__ = [
    "OWNER_PARAMS",
    "require_platform",
    "scope_to_tenant",
    "tenant_of",
    "visible_node_tenants",
    "workflow_scope",
]

Kind = Literal["run", "workflow", "mutation", "replay", "diagnosis", "node"]

OWNER_PARAMS: Final[dict[str, Kind]] = {
    "run_id": "run",
    "run_a": "run",
    "run_b": "run",
    "workflow_id": "workflow",
    "mutation_id": "mutation",
    "replay_id": "replay",
    "diagnosis_id": "diagnosis",
    "name": "node",
}
"""Path parameters that name a resource, and which kind (the word of its 404)."""


def _owner_sql(kind: Kind, schema: str) -> str:
    workflows = table(schema, "workflows")
    by_workflow = (
        f"(SELECT w.tenant FROM {workflows} w WHERE w.workflow_id = x.workflow_id LIMIT 1)"
    )
    match kind:
        case "run":
            return f"SELECT tenant FROM {table(schema, 'runs')} WHERE run_id = %s"
        case "workflow":
            return f"SELECT tenant FROM {workflows} WHERE workflow_id = %s LIMIT 1"
        case "mutation":
            proposals = table(schema, "mutation_proposals")
            return f"SELECT {by_workflow} FROM {proposals} x WHERE x.mutation_id = %s"
        case "replay":
            return f"SELECT {by_workflow} FROM {table(schema, 'replays')} x WHERE x.replay_id = %s"
        case "diagnosis":
            # A diagnosis of a node (no workflow) aggregates every tenant's runs: the platform's.
            return (
                f"SELECT COALESCE({by_workflow}, '{PLATFORM_TENANT}') "
                f"FROM {table(schema, 'diagnoses')} x WHERE x.diagnosis_id = %s"
            )
        case "node":
            return f"SELECT tenant FROM {table(schema, 'nodes')} WHERE name = %s"


def tenant_of(conn: psycopg.Connection[Any], schema: str, kind: Kind, value: str) -> str | None:
    """The tenant owning the resource, or ``None`` when the read model does not know it (a
    mutation or replay of a workflow it does not know counts as unknown too)."""
    try:
        row = conn.execute(_owner_sql(kind, schema), (value,)).fetchone()
    except psycopg.errors.UndefinedTable:
        return None  # a read model without that table (historian not migrated): nothing to own
    return None if row is None or row[0] is None else str(row[0])


def visible_node_tenants(principal_tenant: str) -> tuple[str, ...]:
    """Whose node versions a tenant sees and uses: its own and the platform's catalog."""
    return tuple(dict.fromkeys((principal_tenant, PLATFORM_TENANT)))


def _owners(
    conn: psycopg.Connection[Any], schema: str, named: list[tuple[str, Kind, str]]
) -> list[tuple[str, Kind, str, str | None]]:
    return [
        (param, kind, value, tenant_of(conn, schema, kind, value)) for param, kind, value in named
    ]


async def scope_to_tenant(request: Request) -> None:
    """The /v1 router's dependency after ``authorize``; see the module docstring."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        return  # a signed hook without a key: the signature binds the workflow or step
    named = [
        (param, OWNER_PARAMS[param], str(value))
        for param, value in request.path_params.items()
        if param in OWNER_PARAMS
    ]
    if not named:
        return
    api: ApiSettings = request.app.state.api_settings
    pool = request.app.state.pool

    def look() -> list[tuple[str, Kind, str, str | None]]:
        with pool.connection(timeout=api.pool_timeout_s) as conn:
            return _owners(conn, api.read_schema, named)

    for _param, kind, value, owner in await run_in_threadpool(look):
        if owner is None or owner == principal.tenant:
            continue
        if kind == "node" and owner == PLATFORM_TENANT:
            if request.method in ("GET", "HEAD"):
                continue
            raise ForbiddenError(
                f"node {value!r} belongs to the platform catalog (tenant {PLATFORM_TENANT!r}); "
                f"only that tenant's admins change it, and tenant {principal.tenant!r} uses it"
            )
        raise NotFoundError(f"{kind} {value!r} not found")


def workflow_scope(conn: psycopg.Connection[Any], schema: str, tenant: str) -> WorkflowScope:
    """The workflows whose traces ``tenant`` sees: its own; for the platform tenant, every
    workflow no other tenant owns (traces of workflows the read model does not know count as
    the platform's, as unknown resources do above)."""
    workflows = table(schema, "workflows")
    platform = tenant == PLATFORM_TENANT
    try:
        rows = conn.execute(
            f"SELECT DISTINCT workflow_id FROM {workflows} WHERE "
            + ("tenant <> %s" if platform else "tenant = %s"),
            (tenant,),
        ).fetchall()
    except psycopg.errors.UndefinedTable:
        rows = []  # no read model (a traces-only deployment): no tenant owns a workflow yet
    ids = tuple(str(r[0]) for r in rows)
    return WorkflowScope(besides=ids) if platform else WorkflowScope(only=ids)


def require_platform(principal: Principal, what: str) -> None:
    """403 unless the principal is the platform tenant's: ``what`` aggregates every tenant."""
    if principal.tenant != PLATFORM_TENANT:
        raise ForbiddenError(
            f"{what} aggregate every tenant's runs: they are the platform tenant's "
            f"({PLATFORM_TENANT!r}); tenant {principal.tenant!r} reads its workflows' metrics "
            "(/v1/metrics/workflows, /v1/metrics/quality, /v1/metrics/failures)"
        )
