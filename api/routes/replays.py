"""``/v1/replays``: A/B replays of recorded runs against a candidate (docs/replay.md, ADR 0030).

``POST`` checks the request against the read models (workflow, versions, proposal), stores the
queued replay and publishes a ``ReplayRequested`` on ``reflux.replays``; the replay runner runs
it and writes progress and the report, which ``GET`` serves (and ``/events`` streams as SSE).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api.auth.guard import PrincipalDep
from api.db import with_conn
from api.deps import ApiSettingsDep, PoolDep, PublisherDep, ReadModelDep, TopicsDep
from api.errors import FieldIssue, NotFoundError, RequestInvalidError
from api.models.common import errors
from api.models.replays import ReplayAccepted, ReplayCreate, ReplayPublic, ReplaysPublic
from processors.mutations.validation import candidate_definition
from processors.replay import storage
from projections.postgres import mutation_queries as mq
from schemas.models import GraphMutation, ReplayRequested
from workflows.model import WorkflowDefinition

__all__ = ["router"]

router = APIRouter(prefix="/replays", tags=["replays"])


def _invalid(path: str, message: str) -> RequestInvalidError:
    return RequestInvalidError([FieldIssue(path, message, "value_error")])


def _public(row: storage.ReplayRow, runs: list[dict[str, Any]] | None = None) -> ReplayPublic:
    return ReplayPublic(
        replay_id=row.replay_id,
        workflow_id=row.workflow_id,
        mutation_id=row.mutation_id,
        requested_by=row.requested_by,
        status=row.status,
        total=row.total,
        done=row.done,
        verdict=row.verdict,
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        spec=row.spec,
        report=row.summary,
        runs=runs,
    )


@router.post(
    "",
    status_code=202,
    response_model=ReplayAccepted,
    summary="Start an A/B replay of recorded runs against a candidate",
    responses=errors(404, 422, 503),
)
async def create_replay(
    body: ReplayCreate,
    *,
    pool: PoolDep,
    api: ApiSettingsDep,
    read_model: ReadModelDep,
    publisher: PublisherDep,
    topics: TopicsDep,
    principal: PrincipalDep,
) -> ReplayAccepted:
    latest = await read_model.workflow(body.workflow_id)
    if latest is None or latest.tenant != principal.tenant:  # another tenant's: as if missing
        raise NotFoundError(f"workflow {body.workflow_id!r} not found")
    for path, version in (
        ("selection.workflow_version", body.selection.workflow_version),
        ("candidate.workflow_version", body.candidate.workflow_version),
    ):
        if version is not None and await read_model.workflow(body.workflow_id, version) is None:
            raise _invalid(path, f"workflow {body.workflow_id!r} has no version {version}")
    candidate: dict[str, Any] = {
        "workflow_version": body.candidate.workflow_version,
        "node_pins": body.candidate.node_pins,
        "mutation_id": body.candidate.mutation_id,
    }
    chosen = [
        body.candidate.workflow_version is not None,
        body.candidate.mutation_id is not None,
    ]
    if sum(chosen) > 1:
        raise _invalid("candidate", "Expected one of workflow_version or mutation_id, not both")
    if not any(chosen) and not body.candidate.node_pins:
        raise _invalid(
            "candidate", "Expected a workflow_version, a mutation_id or node_pins, but got none"
        )
    if body.candidate.mutation_id is not None:
        candidate["definition"] = await _proposal_definition(
            pool, api, read_model, body.workflow_id, body.candidate.mutation_id
        )
    spec = {
        "selection": {
            "workflow_id": body.workflow_id,
            **json.loads(body.selection.model_dump_json()),
        },
        "candidate": candidate,
        "policy": body.policy.model_dump(),
        "confidence": body.confidence,
    }
    # Shadow topic prefixes and schemas are built from it: lowercase hex, no dashes, short.
    replay_id = uuid.uuid4().hex[:24]
    await with_conn(
        pool,
        api.pool_timeout_s,
        lambda conn: storage.insert_queued(
            conn,
            api.read_schema,
            replay_id=replay_id,
            workflow_id=body.workflow_id,
            mutation_id=body.candidate.mutation_id,
            requested_by=principal.actor,
            spec=spec,
        ),
    )
    request = ReplayRequested(
        replay_id=replay_id,
        workflow_id=body.workflow_id,
        spec=spec,
        requested_by=principal.actor,
        mutation_id=body.candidate.mutation_id,
    )
    await run_in_threadpool(publisher.publish, topics.replays, replay_id, request)
    return ReplayAccepted(replay_id=replay_id)


async def _proposal_definition(
    pool: Any, api: Any, read_model: Any, workflow_id: str, mutation_id: str
) -> dict[str, Any]:
    row = await with_conn(
        pool, api.pool_timeout_s, mq.get_mutation, mutation_id, schema=api.read_schema
    )
    if row is None or row.workflow_id != workflow_id:
        raise _invalid(
            "candidate.mutation_id",
            f"workflow {workflow_id!r} has no mutation proposal {mutation_id!r}",
        )
    base = await read_model.workflow(workflow_id, row.base_version)
    if base is None:
        raise _invalid(
            "candidate.mutation_id",
            f"the proposal's base version {row.base_version} is not registered",
        )
    changes = [GraphMutation.model_validate(change) for change in row.changes]
    try:
        derived = candidate_definition(WorkflowDefinition.from_json_dict(base.definition), changes)
    except ValueError as exc:
        raise _invalid(
            "candidate.mutation_id", f"the proposal's changes do not apply: {exc}"
        ) from exc
    return derived.to_json_dict()


@router.get("", response_model=ReplaysPublic, summary="List A/B replays, newest first")
async def list_replays(
    pool: PoolDep,
    api: ApiSettingsDep,
    principal: PrincipalDep,
    *,
    workflow_id: str | None = None,
    mutation_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> ReplaysPublic:
    rows = await with_conn(
        pool,
        api.pool_timeout_s,
        lambda conn: storage.list_replays(
            conn,
            api.read_schema,
            workflow_id=workflow_id,
            mutation_id=mutation_id,
            limit=limit,
            tenant=principal.tenant,
        ),
    )
    data = [_public(row).model_copy(update={"spec": None}) for row in rows]
    return ReplaysPublic(data=data, count=len(data))


async def _row(pool: Any, api: Any, replay_id: str) -> storage.ReplayRow:
    row = await with_conn(pool, api.pool_timeout_s, storage.get_replay, api.read_schema, replay_id)
    if row is None:
        raise NotFoundError(f"replay {replay_id!r} not found")
    return row


@router.get(
    "/{replay_id}",
    response_model=ReplayPublic,
    summary="A replay: status, progress, report",
    responses=errors(404, 503),
)
async def get_replay(
    replay_id: str,
    pool: PoolDep,
    api: ApiSettingsDep,
    include_runs: bool = True,
) -> ReplayPublic:
    row = await _row(pool, api, replay_id)
    runs = None
    if include_runs and row.status == "completed":
        runs = await with_conn(
            pool, api.pool_timeout_s, storage.list_replay_runs, api.read_schema, replay_id
        )
    return _public(row, runs)


@router.get(
    "/{replay_id}/events",
    summary="Server-sent progress of a replay",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "`text/event-stream`: `progress` events ({status, done, total}) as "
            "the replay advances, then one `completed` or `failed` event with the report; ends.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **errors(404, 503),
    },
)
async def stream_replay(
    replay_id: str, *, request: Request, pool: PoolDep, api: ApiSettingsDep
) -> EventSourceResponse:
    await _row(pool, api, replay_id)
    return EventSourceResponse(_follow(request, pool, api, replay_id), ping=15)


async def _follow(
    request: Request, pool: Any, api: Any, replay_id: str
) -> AsyncIterator[ServerSentEvent]:
    last: tuple[str, int, int | None] | None = None
    while True:
        row = await _row(pool, api, replay_id)
        state = (row.status, row.done, row.total)
        if state != last:
            last = state
            if row.status in storage.TERMINAL:
                body = {
                    "status": row.status,
                    "done": row.done,
                    "total": row.total,
                    "verdict": row.verdict,
                    "error": row.error,
                    "report": row.summary,
                }
                yield ServerSentEvent(data=json.dumps(body, default=str), event=row.status)
                return
            progress = {"status": row.status, "done": row.done, "total": row.total}
            yield ServerSentEvent(data=json.dumps(progress), event="progress")
        if await request.is_disconnected():
            return
        await anyio.sleep(api.poll_interval_s)
