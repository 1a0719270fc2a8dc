"""``/v1/nodes``: the node catalog. Writes publish a ``NodeCatalogEntry`` on the compacted
``nodes`` topic (202); reads come from the projection (``nodes``, ``node_versions``).

Registering a version also creates its major's invoke topic when it is missing, so invocations
never wait for a topic only a worker's start would have created (409 when the broker refuses
it, e.g. a name that collides with another topic's).

Lifecycle checks (promote draft -> staging -> production, deprecate, weights in 0..1) run
against the projected state, so a change is judged against what the projector has applied:
with ``wait_ms`` a write answers once its own entry is visible, which makes the next write
safe. Two writers changing one version at the same moment race (last entry wins); the catalog
is an operator tool, not a high-contention one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from api.auth.guard import ForbiddenError, PrincipalDep
from api.auth.tenancy import tenant_of, visible_node_tenants
from api.config import MAX_WAIT_MS, ApiSettings
from api.db import with_conn
from api.deps import ApiSettingsDep, ConnDep, PoolDep, PublisherDep, SettingsDep, TopicsDep
from api.errors import ApiError, ConflictError, FieldIssue, NotFoundError, RequestInvalidError
from api.models.common import errors
from api.models.nodes import (
    ArtifactPublished,
    ArtifactTestPublic,
    NodesPublic,
    NodeSummaryPublic,
    NodeVersionAccepted,
    NodeVersionCreate,
    NodeVersionPublic,
    NodeVersionsPublic,
    RolloutUpdate,
)
from api.publisher import Publisher
from api.validation import builtin_catalog
from api.waiting import poll_until
from foundation.tenancy import PLATFORM_TENANT
from node_workers.artifacts.bundle import (
    ArtifactError,
    NodeArtifact,
    artifact_digest,
    parse_artifact,
)
from node_workers.artifacts.publish import (
    ArtifactImmutableError,
    artifact_catalog_entry,
    check_immutable,
)
from node_workers.artifacts.store import ArtifactDigestMismatchError, ArtifactStore
from node_workers.artifacts.tests_runner import ArtifactTestReport, run_artifact_tests
from processors.node_catalog import TransitionError, catalog_key, deprecated, promoted, reweighted
from projections.postgres import queries
from projections.postgres.queries import NodeVersionRow
from schemas.models import NodeCatalogEntry, NodeStatus
from streams.admin import TopicRefusedError, create_missing_topics
from streams.topics import TopicCatalog, TopicCatalogError

__all__ = ["router"]

router = APIRouter(prefix="/nodes", tags=["nodes"])

WaitQuery = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_WAIT_MS,
        description="Wait up to this many ms for the read model to show the entry "
        f"(max {MAX_WAIT_MS}).",
    ),
]


def _version_public(row: NodeVersionRow) -> NodeVersionPublic:
    return NodeVersionPublic.model_validate(row, from_attributes=True)


def _not_found(name: str, version: str | None = None) -> NotFoundError:
    if version is None:
        return NotFoundError(f"node {name!r} not found in the catalog")
    return NotFoundError(f"node {name!r} has no version {version!r} in the catalog")


async def _version_row(
    pool: ConnectionPool[Any], api: ApiSettings, name: str, version: str
) -> NodeVersionRow | None:
    return await with_conn(
        pool,
        api.pool_timeout_s,
        queries.get_node_version,
        name,
        version,
        schema=api.read_schema,
    )


async def _publish(
    entry: NodeCatalogEntry,
    *,
    publisher: Publisher,
    topics: TopicCatalog,
    pool: ConnectionPool[Any],
    api: ApiSettings,
    wait_ms: int | None,
) -> NodeVersionAccepted:
    key = catalog_key(entry.name, entry.version)
    await run_in_threadpool(publisher.publish, topics.nodes, key, entry)
    applied = False
    if wait_ms:

        async def projected() -> bool | None:
            row = await _version_row(pool, api, entry.name, entry.version)
            return True if row is not None and row.last_event_id == entry.event_id else None

        applied = bool(await poll_until(projected, wait_ms, api.poll_interval_s))
    return NodeVersionAccepted(
        name=entry.name,
        version=entry.version,
        status=entry.status.value,
        rollout_weight=entry.rollout_weight,
        event_id=entry.event_id,
        applied=applied,
    )


def _next_entry(row: NodeVersionRow, **changes: Any) -> NodeCatalogEntry:
    """The version's full state with ``changes``: the compacted topic keeps only the last entry
    per version, so every entry repeats everything (manifest, code, weight)."""
    fields: dict[str, Any] = {
        "name": row.name,
        "version": row.version,
        "status": NodeStatus(row.status),
        "rollout_weight": row.rollout_weight,
        "manifest": row.manifest,
        "code_uri": row.code_url,
        "tenant": row.tenant,
    }
    fields.update(changes)
    return NodeCatalogEntry(**fields)


async def _check_name_owner(
    pool: ConnectionPool[Any], api: ApiSettings, name: str, tenant: str
) -> None:
    """Refuses a registration of a node name that another tenant owns (see register)."""
    owner = await with_conn(
        pool, api.pool_timeout_s, lambda conn: tenant_of(conn, api.read_schema, "node", name)
    )
    if owner is None and name in builtin_catalog().names():
        owner = PLATFORM_TENANT  # a built-in, even before its workers registered it
    if owner is None or owner == tenant:
        return
    if owner == PLATFORM_TENANT:
        raise ForbiddenError(
            f"node {name!r} belongs to the platform catalog (tenant {PLATFORM_TENANT!r}); "
            f"register your own node under another name"
        )
    raise ConflictError(f"node name {name!r} is taken by another tenant; choose another name")


async def _require(
    pool: ConnectionPool[Any], api: ApiSettings, name: str, version: str
) -> NodeVersionRow:
    row = await _version_row(pool, api, name, version)
    if row is None:
        raise _not_found(name, version)
    return row


@router.get("", response_model=NodesPublic, summary="List catalogued nodes", responses=errors(503))
def list_nodes(
    conn: ConnDep,
    api: ApiSettingsDep,
    principal: PrincipalDep,
    category: Annotated[str | None, Query()] = None,
) -> NodesPublic:
    """The caller's tenant's nodes and the platform's catalog (ADR 0051)."""
    rows = queries.list_nodes(
        conn,
        category=category,
        schema=api.read_schema,
        tenants=visible_node_tenants(principal.tenant),
    )
    data = [NodeSummaryPublic.model_validate(row, from_attributes=True) for row in rows]
    return NodesPublic(data=data, count=len(data))


@router.get(
    "/{name}/versions",
    response_model=NodeVersionsPublic,
    summary="Every version of a node, oldest first",
    responses=errors(404, 503),
)
def list_versions(name: str, conn: ConnDep, api: ApiSettingsDep) -> NodeVersionsPublic:
    rows = queries.list_node_versions(conn, name, schema=api.read_schema)
    if not rows:
        raise _not_found(name)
    data = [_version_public(row) for row in rows]
    return NodeVersionsPublic(name=name, data=data, count=len(data))


@router.get(
    "/{name}/versions/{version}",
    response_model=NodeVersionPublic,
    summary="One version of a node",
    responses=errors(404, 503),
)
def get_version(name: str, version: str, conn: ConnDep, api: ApiSettingsDep) -> NodeVersionPublic:
    row = queries.get_node_version(conn, name, version, schema=api.read_schema)
    if row is None:
        raise _not_found(name, version)
    return _version_public(row)


@router.post(
    "",
    status_code=202,
    response_model=NodeVersionAccepted,
    summary="Register a node version (draft by default)",
    responses=errors(409, 422, 503),
)
async def register_version(
    body: NodeVersionCreate,
    *,
    response: Response,
    pool: PoolDep,
    api: ApiSettingsDep,
    publisher: PublisherDep,
    topics: TopicsDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    wait_ms: WaitQuery = None,
) -> NodeVersionAccepted:
    """Publishes the version's first ``NodeCatalogEntry``, after creating its major's invoke
    topic if missing. Versions are immutable: registering one the catalog has is 409 (ship a
    new version instead); so is a version whose invoke topic the broker refuses. A node name
    belongs to the tenant of its first version: another tenant's name is 409, the platform's
    (and the built-in nodes') 403 for every other tenant (ADR 0051)."""
    await _check_name_owner(pool, api, body.name, principal.tenant)
    existing = await _version_row(pool, api, body.name, body.version)
    if existing is not None:
        raise ConflictError(
            f"Expected {catalog_key(body.name, body.version)} not to be registered, but it is "
            f"({existing.status})"
        )
    try:
        spec = topics.invoke_topic(body.name, int(body.version.split(".", 1)[0]))
        await run_in_threadpool(create_missing_topics, [spec], settings=settings)
    except (TopicCatalogError, TopicRefusedError) as exc:
        raise ConflictError(
            f"Expected an invoke topic for {catalog_key(body.name, body.version)}, but {exc}"
        ) from exc
    entry = NodeCatalogEntry(
        name=body.name,
        version=body.version,
        status=NodeStatus(body.status),
        rollout_weight=body.rollout_weight,
        manifest=body.manifest,
        code_uri=body.code_uri,
        tenant=principal.tenant,
    )
    accepted = await _publish(
        entry, publisher=publisher, topics=topics, pool=pool, api=api, wait_ms=wait_ms
    )
    response.headers["Location"] = f"/v1/nodes/{body.name}/versions/{body.version}"
    return accepted


async def _transition(
    name: str,
    version: str,
    rule: Callable[[str, NodeStatus], NodeStatus],
    *,
    pool: ConnectionPool[Any],
    api: ApiSettings,
    publisher: Publisher,
    topics: TopicCatalog,
    wait_ms: int | None,
    **overrides: Any,
) -> NodeVersionAccepted:
    """Applies a status transition rule (promote, deprecate): 409 with its reason if refused."""
    row = await _require(pool, api, name, version)
    try:
        target = rule(catalog_key(name, version), NodeStatus(row.status))
    except TransitionError as exc:
        raise ConflictError(str(exc)) from exc
    return await _publish(
        _next_entry(row, status=target, **overrides),
        publisher=publisher,
        topics=topics,
        pool=pool,
        api=api,
        wait_ms=wait_ms,
    )


@router.post(
    "/{name}/versions/{version}/promote",
    status_code=202,
    response_model=NodeVersionAccepted,
    summary="Promote a version: draft -> staging -> production",
    responses=errors(404, 409, 503),
)
async def promote_version(
    name: str,
    version: str,
    *,
    pool: PoolDep,
    api: ApiSettingsDep,
    publisher: PublisherDep,
    topics: TopicsDep,
    wait_ms: WaitQuery = None,
) -> NodeVersionAccepted:
    return await _transition(
        name,
        version,
        promoted,
        pool=pool,
        api=api,
        publisher=publisher,
        topics=topics,
        wait_ms=wait_ms,
    )


@router.post(
    "/{name}/versions/{version}/deprecate",
    status_code=202,
    response_model=NodeVersionAccepted,
    summary="Deprecate a version: new runs are refused, running ones finish",
    responses=errors(404, 409, 503),
)
async def deprecate_version(
    name: str,
    version: str,
    *,
    pool: PoolDep,
    api: ApiSettingsDep,
    publisher: PublisherDep,
    topics: TopicsDep,
    wait_ms: WaitQuery = None,
) -> NodeVersionAccepted:
    # A deprecated version takes no share of new runs.
    return await _transition(
        name,
        version,
        deprecated,
        pool=pool,
        api=api,
        publisher=publisher,
        topics=topics,
        wait_ms=wait_ms,
        rollout_weight=0.0,
    )


@router.put(
    "/{name}/versions/{version}/rollout",
    status_code=202,
    response_model=NodeVersionAccepted,
    summary="Set the share of range-resolved runs routed to a version",
    responses=errors(404, 409, 422, 503),
)
async def set_rollout(
    name: str,
    version: str,
    body: RolloutUpdate,
    *,
    pool: PoolDep,
    api: ApiSettingsDep,
    publisher: PublisherDep,
    topics: TopicsDep,
    wait_ms: WaitQuery = None,
) -> NodeVersionAccepted:
    """Among the production versions a step's range allows, newest first, each takes its weight
    of the share the newer ones left; the oldest takes the rest (docs/nodes.md)."""
    row = await _require(pool, api, name, version)
    try:
        weight = reweighted(catalog_key(name, version), NodeStatus(row.status), body.weight)
    except TransitionError as exc:
        raise ConflictError(str(exc)) from exc
    return await _publish(
        _next_entry(row, rollout_weight=weight),
        publisher=publisher,
        topics=topics,
        pool=pool,
        api=api,
        wait_ms=wait_ms,
    )


class ArtifactTestsFailedError(ApiError):
    """An artifact whose own tests fail in the sandbox is not registered."""

    error_class = "ArtifactTestsFailed"
    status_code = 422


def _parse_artifact_body(raw: bytes) -> NodeArtifact:
    try:
        return parse_artifact(raw)
    except ArtifactError as exc:
        path = str(exc).partition(": ")[0]
        raise RequestInvalidError([FieldIssue(path, str(exc), "artifact")]) from exc


def _tests_failed(artifact: NodeArtifact, report: ArtifactTestReport) -> ArtifactTestsFailedError:
    loc = ["body", "files", artifact.tests or artifact.entry]
    detail = [
        {"loc": loc, "msg": f"{test.name}: {test.message}", "type": "artifact_test_failed"}
        for test in report.tests
        if not test.passed
    ] or [{"loc": loc, "msg": report.summary(), "type": "artifact_test_failed"}]
    return ArtifactTestsFailedError(detail)


@router.post(
    "/artifacts",
    status_code=201,
    response_model=ArtifactPublished,
    summary="Register a node that carries its code (an artifact), as a draft",
    responses=errors(409, 422, 503),
)
async def register_artifact(
    request: Request,
    *,
    response: Response,
    pool: PoolDep,
    api: ApiSettingsDep,
    publisher: PublisherDep,
    topics: TopicsDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    wait_ms: WaitQuery = None,
) -> ArtifactPublished:
    """The body is the artifact JSON (node_workers/artifacts/bundle.py; 422 names the field
    path). Its tests run in the sandbox first, with no network: a failing test is 422 with
    every failure. Then it is stored by digest and registered as a draft of the caller's
    tenant (201). The same artifact again is 200 and changes nothing; another artifact (or a
    compiled node) under the same name and version is 409 ``ArtifactImmutable``: supersede it
    with a new version (ADR 0070)."""
    artifact = _parse_artifact_body(await request.body())
    m = artifact.manifest
    key = catalog_key(m.name, m.version)
    digest = artifact_digest(artifact)
    await _check_name_owner(pool, api, m.name, principal.tenant)
    existing = await _version_row(pool, api, m.name, m.version)
    store = ArtifactStore.from_settings(settings)
    if existing is not None:
        try:
            check_immutable(key, existing.manifest, digest)
        except ArtifactImmutableError as exc:
            raise ConflictError(str(exc)) from exc
        response.status_code = 200
        return ArtifactPublished(
            name=m.name,
            version=m.version,
            digest=digest,
            code_uri=existing.code_url or store.uri(digest),
            status=existing.status,  # type: ignore[arg-type]  # a catalog status
            created=False,
            event_id=existing.last_event_id,
            applied=True,
        )
    report = await run_in_threadpool(run_artifact_tests, settings, artifact)
    if not report.passed:
        raise _tests_failed(artifact, report)
    try:
        stored = await run_in_threadpool(store.put, artifact)
    except ArtifactDigestMismatchError as exc:
        raise ConflictError(str(exc)) from exc
    try:
        spec = topics.invoke_topic(m.name, int(m.version.split(".", 1)[0]))
        await run_in_threadpool(create_missing_topics, [spec], settings=settings)
    except (TopicCatalogError, TopicRefusedError) as exc:
        raise ConflictError(f"Expected an invoke topic for {key}, but {exc}") from exc
    entry = artifact_catalog_entry(
        artifact, digest=digest, code_uri=stored.uri, tenant=principal.tenant
    )
    accepted = await _publish(
        entry, publisher=publisher, topics=topics, pool=pool, api=api, wait_ms=wait_ms
    )
    response.headers["Location"] = f"/v1/nodes/{m.name}/versions/{m.version}"
    return ArtifactPublished(
        name=m.name,
        version=m.version,
        digest=digest,
        code_uri=stored.uri,
        status=accepted.status,
        created=True,
        event_id=accepted.event_id,
        applied=accepted.applied,
        tests=[
            ArtifactTestPublic(name=t.name, passed=t.passed, message=t.message)
            for t in report.tests
        ],
        sandbox_s=report.sandbox_s,
    )
