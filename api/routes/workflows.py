"""``/v1/workflows``: register immutable workflow versions (a command on Kafka) and read them
(from the projection)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from starlette.concurrency import run_in_threadpool

from api.auth.guard import Principal, PrincipalDep, acting_as
from api.bodies import YAML_TYPES, decode_body, media_type
from api.deps import ApiSettingsDep, ConnDep, PublisherDep, ReadModelDep, StoreDep, TopicsDep
from api.errors import NotFoundError
from api.models.common import errors
from api.models.workflows import (
    WorkflowCreated,
    WorkflowPublic,
    WorkflowsPublic,
    WorkflowSummaryPublic,
    WorkflowValidated,
    WorkflowVersionPublic,
    WorkflowVersionsPublic,
)
from api.readmodel import ReadModel, workflow_version_public
from api.store import WorkflowIdTakenError
from api.validation import parse_definition
from projections.postgres import queries
from schemas.models import WorkflowRegistered
from workflows import WorkflowDefinition

__all__ = ["router"]

router = APIRouter(prefix="/workflows", tags=["workflows"])

_EXAMPLE_YAML = """\
id: order-sync
inputs:
  order_id: {type: integer, required: true}
steps:
  - id: fetch
    node: http.request@^1
    params: {url: "https://shop.example/orders/{{ inputs.order_id }}"}
  - id: store
    node: database.query@^1
    needs: [fetch]
    params: {sql: "insert into orders values (:o)", args: {o: "{{ steps.fetch.output }}"}}
"""

_DEFINITION_BODY = {
    "required": True,
    "description": "A workflow definition (the `id` names the workflow), as JSON or YAML.",
    "content": {
        "application/json": {
            "schema": {"type": "object", "additionalProperties": True},
            "example": {
                "id": "order-sync",
                "inputs": {"order_id": {"type": "integer", "required": True}},
                "steps": [{"id": "fetch", "node": "http.request@^1", "params": {"url": "..."}}],
            },
        },
        "application/yaml": {"schema": {"type": "string"}, "example": _EXAMPLE_YAML},
    },
}


def _not_found(workflow_id: str, version: int | None = None) -> NotFoundError:
    if version is None:
        return NotFoundError(f"workflow {workflow_id!r} not found")
    return NotFoundError(f"workflow {workflow_id!r} has no version {version}")


async def _checked_definition(
    request: Request, read_model: ReadModel, principal: Principal
) -> tuple[WorkflowDefinition, int]:
    """The parsed definition and the workflow's latest version (0: none yet), or the 422 / 409
    that registering it would answer."""
    raw = await request.body()
    content_type = request.headers.get("content-type")
    # YAML goes to the parser as text, so its errors can name lines and columns.
    source = raw if media_type(content_type) in YAML_TYPES else decode_body(raw, content_type)
    definition = await run_in_threadpool(parse_definition, source)
    latest = await read_model.workflow(definition.id)
    if latest is not None and latest.tenant != principal.tenant:
        raise WorkflowIdTakenError(definition.id)
    return definition, 0 if latest is None else latest.version


@router.post(
    "",
    status_code=201,
    response_model=WorkflowCreated,
    summary="Register a new version of a workflow",
    responses=errors(409, 422, 503),
    openapi_extra={"requestBody": _DEFINITION_BODY},
)
async def register_workflow(
    request: Request,
    *,
    response: Response,
    api: ApiSettingsDep,
    store: StoreDep,
    read_model: ReadModelDep,
    publisher: PublisherDep,
    topics: TopicsDep,
    principal: PrincipalDep,
    registered_by: Annotated[str | None, Header(alias="X-Reflux-User", max_length=200)] = None,
) -> WorkflowCreated:
    """Validates the definition (cycles, unknown steps, templates, ...: 422 with the field path),
    allocates the next version atomically and publishes ``WorkflowRegistered`` on ``workflows``.
    Versions are immutable: registering again always creates a new version. The workflow
    belongs to the caller's tenant; an id another tenant registered is refused (409)."""
    definition, latest_version = await _checked_definition(request, read_model, principal)
    version = await store.allocate_version(
        definition.id, at_least=latest_version + 1, tenant=principal.tenant
    )
    registered_at = datetime.now(UTC)
    record = WorkflowRegistered(
        workflow_id=definition.id,
        version=version,
        definition=definition.to_json_dict(),
        registered_at=registered_at,
        # The principal (ADR 0046); X-Reflux-User may only name it (or anyone, for an admin).
        registered_by=acting_as(principal, registered_by, "X-Reflux-User"),
        tenant=principal.tenant,
    )
    # Keyed by id@version: compaction must keep every version (runs pin old ones).
    key = f"{definition.id}@{version}"
    await run_in_threadpool(publisher.publish, topics.workflows, key, record)
    response.headers["Location"] = f"{request.url.path}/{definition.id}/versions/{version}"
    return WorkflowCreated(
        workflow_id=definition.id, version=version, registered_at=record.registered_at
    )


@router.post(
    "/validate",
    response_model=WorkflowValidated,
    summary="Validate a workflow definition without registering it (a dry run)",
    responses=errors(409, 422, 503),
    openapi_extra={"requestBody": _DEFINITION_BODY},
)
async def validate_workflow(
    request: Request, *, read_model: ReadModelDep, principal: PrincipalDep
) -> WorkflowValidated:
    """The same checks as registering (the same 422 with field paths, the same 409 for another
    tenant's id), but nothing is published: an editor can show every error before saving. The
    answer is what registering would create now: the next version and the normalised
    definition (a concurrent registration may take that version first)."""
    definition, latest_version = await _checked_definition(request, read_model, principal)
    return WorkflowValidated(
        workflow_id=definition.id,
        version=latest_version + 1,
        definition=definition.to_json_dict(),
    )


@router.get("", response_model=WorkflowsPublic, summary="List workflows", responses=errors(503))
def list_workflows(conn: ConnDep, api: ApiSettingsDep, principal: PrincipalDep) -> WorkflowsPublic:
    rows = queries.list_workflows(conn, schema=api.read_schema, tenant=principal.tenant)
    data = [WorkflowSummaryPublic.model_validate(row, from_attributes=True) for row in rows]
    return WorkflowsPublic(data=data, count=len(data))


@router.get(
    "/{workflow_id}",
    response_model=WorkflowPublic,
    summary="A workflow and its latest definition",
    responses=errors(404, 503),
)
def get_workflow(workflow_id: str, conn: ConnDep, api: ApiSettingsDep) -> WorkflowPublic:
    versions = queries.list_workflow_versions(conn, workflow_id, schema=api.read_schema)
    if not versions:
        raise _not_found(workflow_id)
    latest = versions[-1]
    return WorkflowPublic(
        workflow_id=workflow_id,
        latest_version=latest.version,
        version_count=len(versions),
        registered_at=latest.registered_at,
        registered_by=latest.registered_by,
        definition=latest.definition,
    )


@router.get(
    "/{workflow_id}/versions",
    response_model=WorkflowVersionsPublic,
    summary="Every version of a workflow, oldest first",
    responses=errors(404, 503),
)
def list_versions(workflow_id: str, conn: ConnDep, api: ApiSettingsDep) -> WorkflowVersionsPublic:
    rows = queries.list_workflow_versions(conn, workflow_id, schema=api.read_schema)
    if not rows:
        raise _not_found(workflow_id)
    data = [workflow_version_public(row) for row in rows]
    return WorkflowVersionsPublic(workflow_id=workflow_id, data=data, count=len(data))


@router.get(
    "/{workflow_id}/versions/{version}",
    response_model=WorkflowVersionPublic,
    summary="One version of a workflow",
    responses=errors(404, 503),
)
def get_version(
    workflow_id: str, version: int, *, conn: ConnDep, api: ApiSettingsDep
) -> WorkflowVersionPublic:
    row = queries.get_workflow(conn, workflow_id, version, schema=api.read_schema)
    if row is None:
        raise _not_found(workflow_id, version)
    return workflow_version_public(row)
