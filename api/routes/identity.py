"""``/v1/api-keys`` (create, list, rotate, revoke) and ``/v1/audit``: admins only (ADR 0046);
``/v1/me``: who the caller is and what its role allows, for anyone with a key.

A key's secret is in the answer to its creation and to each rotation, never again: the API
keeps its SHA-256 only (:mod:`api.auth.keys`). The audit log is the projection of the ``audit``
topic (every write, refused ones included), newest first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, field_validator

from api.auth import keys
from api.auth.guard import ForbiddenError, Principal, PrincipalDep
from api.auth.roles import ROUTE_ACCESS, Role, satisfies
from api.db import with_conn
from api.deps import ApiSettingsDep, PoolDep, StoreDep
from api.errors import ConflictError, NotFoundError
from api.models.common import errors
from api.store import ApiStore
from foundation.tenancy import PLATFORM_TENANT, TENANT_PATTERN
from projections.postgres.identifiers import table

__all__ = ["audit_router", "keys_router", "me_router"]

keys_router = APIRouter(prefix="/api-keys", tags=["identity"])
audit_router = APIRouter(prefix="/audit", tags=["identity"])
me_router = APIRouter(prefix="/me", tags=["identity"])


class ApiKeyCreate(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = Field(
        pattern=keys.NAME_PATTERN,
        description="Who or what holds the key; writes by it are recorded as `user:<name>`",
        examples=["ci-deployer"],
    )
    role: Role
    tenant: str | None = Field(
        default=None,
        pattern=TENANT_PATTERN,
        description=(
            "The key's tenant; default: the caller's. Only admins of the platform tenant "
            f"({PLATFORM_TENANT!r}) create keys for other tenants"
        ),
    )
    expires_at: datetime | None = Field(
        default=None, description="When the key stops working (UTC if no offset); none: never"
    )

    @field_validator("expires_at")
    @classmethod
    def _future(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        if value <= datetime.now(UTC):
            raise ValueError("Expected a time in the future")
        return value


class ApiKeyPublic(BaseModel):
    id: str
    name: str
    role: Role
    tenant: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    rotated_at: datetime | None
    revoked_at: datetime | None
    status: str = Field(description="active | expired | revoked")


class ApiKeySecret(ApiKeyPublic):
    key: str = Field(description="The secret key: shown once; send it as `Authorization: Bearer`")


class ApiKeyList(BaseModel):
    data: list[ApiKeyPublic]
    count: int


def _public(key: keys.ApiKey) -> dict[str, Any]:
    now = datetime.now(UTC)
    status = (
        "revoked"
        if key.revoked_at is not None
        else "expired"
        if key.expires_at is not None and key.expires_at <= now
        else "active"
    )
    return {
        "id": key.key_id,
        "name": key.name,
        "role": key.role,
        "tenant": key.tenant,
        "created_at": key.created_at,
        "created_by": key.created_by,
        "expires_at": key.expires_at,
        "rotated_at": key.rotated_at,
        "revoked_at": key.revoked_at,
        "status": status,
    }


def public_key(key: keys.ApiKey) -> ApiKeyPublic:
    """A key as the API shows it (``reflux api-keys list --json`` prints the same)."""
    return ApiKeyPublic(**_public(key))


@keys_router.post(
    "",
    status_code=201,
    response_model=ApiKeySecret,
    summary="Create an API key; the answer holds its secret, shown this once",
    responses=errors(422, 503),
)
async def create_api_key(
    body: ApiKeyCreate, store: StoreDep, principal: PrincipalDep
) -> ApiKeySecret:
    tenant = body.tenant or principal.tenant
    if not _manages(principal, tenant):
        raise ForbiddenError(
            f"an admin of tenant {principal.tenant!r} creates keys of that tenant only; keys of "
            f"tenant {tenant!r} are created by its admins or the platform tenant's "
            f"({PLATFORM_TENANT!r})"
        )
    key, secret = await store.call(
        keys.create_key,
        store.schema,
        name=body.name,
        role=body.role,
        tenant=tenant,
        expires_at=body.expires_at,
        created_by=principal.actor,
    )
    return ApiKeySecret(**_public(key), key=secret)


@keys_router.get(
    "",
    response_model=ApiKeyList,
    summary="Every API key (never a secret), oldest first",
    responses=errors(503),
)
async def list_api_keys(store: StoreDep, principal: PrincipalDep) -> ApiKeyList:
    every = await store.call(keys.list_keys, store.schema)
    rows = [k for k in every if _manages(principal, k.tenant)]
    return ApiKeyList(data=[ApiKeyPublic(**_public(k)) for k in rows], count=len(rows))


@keys_router.post(
    "/{key_id}/rotate",
    response_model=ApiKeySecret,
    summary="A new secret for a key (shown once); the old secret stops working at once",
    responses=errors(404, 409, 503),
)
async def rotate_api_key(key_id: str, store: StoreDep, principal: PrincipalDep) -> ApiKeySecret:
    await _managed_key(store, principal, key_id)
    try:
        rotated = await store.call(keys.rotate_key, store.schema, key_id)
    except ValueError as exc:
        raise ConflictError(str(exc)) from exc
    if rotated is None:
        raise NotFoundError(f"API key {key_id!r} not found")
    key, secret = rotated
    return ApiKeySecret(**_public(key), key=secret)


@keys_router.delete(
    "/{key_id}",
    response_model=ApiKeyPublic,
    summary="Revoke a key: it is refused from now on (401 'revoked')",
    responses=errors(404, 503),
)
async def revoke_api_key(key_id: str, store: StoreDep, principal: PrincipalDep) -> ApiKeyPublic:
    await _managed_key(store, principal, key_id)
    key = await store.call(keys.revoke_key, store.schema, key_id)
    if key is None:
        raise NotFoundError(f"API key {key_id!r} not found")
    return ApiKeyPublic(**_public(key))


def _manages(principal: Principal, tenant: str) -> bool:
    """Whether the (admin) principal manages keys and reads the audit of ``tenant``: its own
    tenant's, or any tenant's for the platform tenant's admins (ADR 0051)."""
    return principal.tenant in (tenant, PLATFORM_TENANT)


async def _managed_key(store: ApiStore, principal: Principal, key_id: str) -> None:
    """404 for a key of a tenant the principal does not manage, as for a missing one."""
    key = await store.call(keys.get_key, store.schema, key_id)
    if key is not None and not _manages(principal, key.tenant):
        raise NotFoundError(f"API key {key_id!r} not found")


# -- audit ----------------------------------------------------------------------------------------


class AuditEntry(BaseModel):
    event_id: str
    occurred_at: datetime
    actor: str
    principal_kind: str = Field(description="api_key | oidc | anonymous")
    principal_id: str | None
    role: str | None
    tenant: str
    method: str
    route: str
    path: str
    resource_ids: dict[str, str]
    status_code: int
    client: str | None
    reason: str | None = Field(description="Why a refused write was refused")


class AuditPage(BaseModel):
    data: list[AuditEntry]
    count: int


_AUDIT_COLUMNS = (
    "event_id, occurred_at, actor, principal_kind, principal_id, role, tenant, method, route, "
    "path, resource_ids, status_code, client, reason"
)


@audit_router.get(
    "",
    response_model=AuditPage,
    summary="The audit log: every write (refused ones included), newest first",
    responses=errors(422, 503),
)
async def list_audit(
    *,
    pool: PoolDep,
    api: ApiSettingsDep,
    principal: PrincipalDep,
    actor: Annotated[str | None, Query(max_length=200, description="e.g. user:ci")] = None,
    tenant: Annotated[str | None, Query(max_length=63)] = None,
    since: Annotated[datetime | None, Query(description="Only entries at or after this")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    if principal.tenant != PLATFORM_TENANT:
        if tenant not in (None, principal.tenant):
            return AuditPage(data=[], count=0)  # another tenant's log: nothing of it is visible
        tenant = principal.tenant
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("actor", actor), ("tenant", tenant)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if since is not None:
        where.append("occurred_at >= %s")
        params.append(since)
    sql = (
        f"SELECT {_AUDIT_COLUMNS} FROM {table(api.read_schema, 'audit_log')}"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + " ORDER BY occurred_at DESC, event_id DESC LIMIT %s"
    )
    params.append(limit)

    def query(conn: Any) -> list[tuple[Any, ...]]:
        return list(conn.execute(sql, params).fetchall())

    rows = await with_conn(pool, api.pool_timeout_s, query)
    names = [c.strip() for c in _AUDIT_COLUMNS.split(",")]
    entries = [AuditEntry(**dict(zip(names, row, strict=True))) for row in rows]
    return AuditPage(data=entries, count=len(entries))


class Me(BaseModel):
    kind: str = Field(description="How the caller authenticated: `api_key` or `oidc`")
    name: str = Field(description="The key's name or the token's subject")
    actor: str = Field(description="What the API records as the author of the caller's writes")
    role: Role
    tenant: str
    allowed: list[str] = Field(
        description=(
            "Every /v1 operation (`METHOD /v1/template`, as in the route table of docs/api.md) "
            "the caller's role allows; a client hides what is not in it rather than offer a "
            "button answered by 403"
        )
    )


@me_router.get(
    "",
    response_model=Me,
    summary="Who the caller is, and the operations its role allows",
)
async def me(principal: PrincipalDep) -> Me:
    # A signed (webhook) route is authorized by its signature, not by a role: never "allowed".
    allowed = [
        operation
        for operation, need in ROUTE_ACCESS.items()
        if isinstance(need, Role) and satisfies(principal.role, need)
    ]
    return Me(
        kind=principal.kind,
        name=principal.name,
        actor=principal.actor,
        role=principal.role,
        tenant=principal.tenant,
        allowed=sorted(allowed),
    )
