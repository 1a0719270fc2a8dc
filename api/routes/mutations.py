"""``/v1/mutations``: workflow mutation proposals (docs/mutations.md), and
``/v1/workflows/{id}/improvement``: the workflow's improvement policy.

Writes are ``MutationRequest`` records on ``reflux.mutations`` (keyed by workflow id), answered
by the mutation processor; the API checks what it can against the read model first (unknown
proposal 404, illegal transition 409 naming the current status, bad field 422 with its path),
and with ``wait_ms`` waits for the processor's answer (200 with the proposal, or 409 with the
reason it refused). Reads come from the proposal read models (migration 005).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from api.auth.guard import Principal, PrincipalDep, acting_as
from api.config import ApiSettings
from api.db import with_conn
from api.deps import ApiSettingsDep, PoolDep, PublisherDep, ReadModelDep, TopicsDep
from api.errors import ConflictError, FieldIssue, NotFoundError, RequestInvalidError
from api.models.common import errors
from api.models.mutations import (
    DecisionCreate,
    ImprovementPublic,
    ImprovementUpdate,
    MutationAccepted,
    MutationCreate,
    MutationDetail,
    MutationEventPublic,
    MutationPublic,
    MutationsPublic,
    VersionEffectPublic,
)
from api.publisher import Publisher
from api.waiting import poll_until
from processors.mutations.lifecycle import TRANSITIONS, is_optimizer
from processors.mutations.routing import choose_workflow_version, route_for
from projections.postgres import mutation_queries as mq
from projections.postgres import queries
from schemas.models import (
    GraphMutation,
    GraphMutationType,
    ImprovementPolicy,
    MutationAction,
    MutationRequest,
    MutationStatus,
)
from streams.topics import TopicCatalog

__all__ = ["routed_version", "router", "workflow_router"]

router = APIRouter(prefix="/mutations", tags=["mutations"])
workflow_router = APIRouter(prefix="/workflows", tags=["workflows"])

UserHeader = Annotated[str | None, Header(alias="X-Reflux-User", max_length=100)]

_STATUSES = tuple(s.value for s in MutationStatus if s is not MutationStatus.REVERTED)
_TARGET = {
    MutationAction.APPROVE: MutationStatus.APPROVED,
    MutationAction.REJECT: MutationStatus.REJECTED,
    MutationAction.ROLLBACK: MutationStatus.ROLLED_BACK,
    MutationAction.KEEP: MutationStatus.KEPT,
}
# The status that ends a request's work (what wait_ms waits for).
_SETTLED = {
    MutationAction.APPROVE: {"applied"},
    MutationAction.REJECT: {"rejected"},
    MutationAction.ROLLBACK: {"rolled_back"},
    MutationAction.KEEP: {"kept"},
}


def _person(header: str | None) -> str:
    name = "".join(ch for ch in (header or "anonymous") if not ch.isspace() and ch != ":")
    return f"user:{name or 'anonymous'}"


def _actor(principal: Principal, claimed: str | None, user: str | None, field: str) -> str:
    """Who did it: the principal (ADR 0046); a body field or ``X-Reflux-User`` may only name
    the principal itself, or anyone when the principal is an admin (:func:`acting_as`)."""
    if claimed is None and user is not None:
        claimed, field = _person(user), "X-Reflux-User"
    return acting_as(principal, claimed, field)


def _not_found(mutation_id: str) -> NotFoundError:
    return NotFoundError(f"mutation {mutation_id!r} not found")


async def _publish(publisher: Publisher, topics: TopicCatalog, request: MutationRequest) -> None:
    await run_in_threadpool(publisher.publish, topics.mutations, request.workflow_id, request)


async def _detail(pool: ConnectionPool[Any], api: ApiSettings, mutation_id: str) -> MutationDetail:
    def load(conn: Any) -> MutationDetail | None:
        row = mq.get_mutation(conn, mutation_id, schema=api.read_schema)
        if row is None:
            return None
        history = mq.list_mutation_events(conn, mutation_id, schema=api.read_schema)
        effect = None
        if row.applied_version is not None:
            since = next((e.occurred_at for e in history if e.status == "applied"), None)
            effect = [
                VersionEffectPublic.model_validate(e, from_attributes=True)
                for e in mq.version_effect(
                    conn,
                    row.workflow_id,
                    (row.previous_version or row.base_version, row.applied_version),
                    since,
                    schema=api.read_schema,
                )
            ]
        return MutationDetail(
            **MutationPublic.model_validate(row, from_attributes=True).model_dump(),
            changes=list(row.changes),
            evidence=row.evidence,
            report=row.report,
            score=row.score,
            history=[MutationEventPublic.model_validate(e, from_attributes=True) for e in history],
            effect=effect,
        )

    detail = await with_conn(pool, api.pool_timeout_s, load)
    if detail is None:
        raise _not_found(mutation_id)
    return detail


async def _await(
    pool: ConnectionPool[Any],
    api: ApiSettings,
    request: MutationRequest,
    *,
    settled: set[str],
    wait_ms: int,
    response: Response,
    follow_proposal: bool = False,
) -> MutationDetail | MutationAccepted:
    """200 + the proposal once the request's settling status is projected, 409 on a refusal,
    202 when ``wait_ms`` ran out first. ``follow_proposal`` (a new proposal): the proposal's own
    status counts too, since a replay-validated proposal is settled by the replay runner's
    ``replay_verdict`` request, not by the ``propose`` request (ADR 0030)."""
    assert request.mutation_id is not None
    mutation_id = request.mutation_id

    async def settled_yet() -> bool | None:
        outcome = await with_conn(
            pool, api.pool_timeout_s, mq.request_outcome, request.event_id, schema=api.read_schema
        )
        if outcome is None:
            return None
        if outcome.refused_reason is not None:
            raise ConflictError(outcome.refused_reason)
        if settled.intersection(outcome.statuses):
            return True
        if follow_proposal:
            current = await with_conn(
                pool, api.pool_timeout_s, mq.get_mutation, mutation_id, schema=api.read_schema
            )
            if current is not None and current.status in settled:
                return True
        return None

    if await poll_until(settled_yet, wait_ms, api.poll_interval_s):
        response.status_code = 200
        return await _detail(pool, api, mutation_id)
    return MutationAccepted(mutation_id=mutation_id, request_id=request.event_id)


async def _policy(pool: ConnectionPool[Any], api: ApiSettings, workflow_id: str) -> str:
    row = await with_conn(
        pool, api.pool_timeout_s, mq.get_policy, workflow_id, schema=api.read_schema
    )
    return ImprovementPolicy.PROPOSE.value if row is None else row.policy


_WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": MutationDetail, "description": "With wait_ms: the request took effect."},
    202: {"model": MutationAccepted, "description": "The request is on reflux.mutations."},
    **errors(404, 409, 422, 503),
}


@router.get("", response_model=MutationsPublic, summary="List proposals", responses=errors(422))
async def list_mutations(
    pool: PoolDep,
    api: ApiSettingsDep,
    principal: PrincipalDep,
    *,
    workflow_id: str | None = None,
    status: Annotated[str | None, Query(description=f"One of {', '.join(_STATUSES)}")] = None,
    author: Annotated[str | None, Query(description="'user:<name>' or 'optimizer'")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> MutationsPublic:
    if status is not None and status not in _STATUSES:
        raise RequestInvalidError(
            [
                FieldIssue(
                    "status", f"Expected one of {', '.join(_STATUSES)}, but got {status!r}", "enum"
                )
            ],
            prefix=("query",),
        )
    rows = await with_conn(
        pool,
        api.pool_timeout_s,
        lambda conn: mq.list_mutations(
            conn,
            workflow_id=workflow_id,
            status=status,
            author=author,
            limit=limit,
            schema=api.read_schema,
            tenant=principal.tenant,
        ),
    )
    data = [MutationPublic.model_validate(row, from_attributes=True) for row in rows]
    return MutationsPublic(data=data, count=len(data))


@router.get(
    "/{mutation_id}",
    response_model=MutationDetail,
    summary="A proposal: diff, evidence, validation report, history, measured effect",
    responses=errors(404, 503),
)
async def get_mutation(mutation_id: str, pool: PoolDep, api: ApiSettingsDep) -> MutationDetail:
    return await _detail(pool, api, mutation_id)


@router.post(
    "",
    status_code=202,
    response_model=MutationDetail | MutationAccepted,
    summary="Propose a change to a workflow",
    responses=_WRITE_RESPONSES,
)
async def propose(
    body: MutationCreate,
    *,
    response: Response,
    pool: PoolDep,
    api: ApiSettingsDep,
    read_model: ReadModelDep,
    publisher: PublisherDep,
    topics: TopicsDep,
    principal: PrincipalDep,
    user: UserHeader = None,
) -> MutationDetail | MutationAccepted:
    """Publishes a ``propose`` request; the processor validates it (proposed -> validating ->
    validated | rejected, with the report) and, under policy ``auto``, approves and applies it.
    The diff itself is judged by the processor's validation, not here: an invalid diff is a
    ``rejected`` proposal with its report."""
    latest = await read_model.workflow(body.workflow_id)
    if latest is None or latest.tenant != principal.tenant:  # another tenant's: as if missing
        raise NotFoundError(f"workflow {body.workflow_id!r} not found")
    base = body.base_version or latest.version
    if body.base_version is not None and await read_model.workflow(body.workflow_id, base) is None:
        raise RequestInvalidError(
            [
                FieldIssue(
                    "base_version",
                    f"workflow {body.workflow_id!r} has no version {base}",
                    "value_error",
                )
            ]
        )
    author = _actor(principal, body.author, user, "author")
    policy = await _policy(pool, api, body.workflow_id)
    if is_optimizer(author) and policy == ImprovementPolicy.OFF.value:
        raise ConflictError(
            f"workflow {body.workflow_id!r} has improvement policy 'off': proposals from the "
            "optimizer are refused"
        )
    mutation_id = body.mutation_id or str(uuid.uuid4())
    if body.mutation_id is not None:
        existing = await with_conn(
            pool, api.pool_timeout_s, mq.get_mutation, mutation_id, schema=api.read_schema
        )
        if existing is not None:
            raise ConflictError(f"mutation {mutation_id!r} exists ({existing.status})")
    request = MutationRequest(
        workflow_id=body.workflow_id,
        mutation_id=mutation_id,
        action=MutationAction.PROPOSE,
        actor=author,
        base_version=base,
        changes=[
            GraphMutation(type=GraphMutationType(c.type), step_id=c.step_id, data=c.data)
            for c in body.changes
        ],
        rationale=body.rationale,
        evidence=body.evidence,
    )
    await _publish(publisher, topics, request)
    response.headers["Location"] = f"/v1/mutations/{mutation_id}"
    if not body.wait_ms:
        return MutationAccepted(mutation_id=mutation_id, request_id=request.event_id)
    # Under policy auto a validated proposal goes on to applied, unless a canary is running.
    canaries = await with_conn(
        pool,
        api.pool_timeout_s,
        lambda conn: mq.list_mutations(
            conn, workflow_id=body.workflow_id, status="applied", limit=1, schema=api.read_schema
        ),
    )
    auto = policy == ImprovementPolicy.AUTO.value and not canaries
    settled = {"rejected", "applied"} | (set() if auto else {"validated"})
    return await _await(
        pool,
        api,
        request,
        settled=settled,
        wait_ms=body.wait_ms,
        response=response,
        follow_proposal=True,
    )


def _decision_route(action: MutationAction, summary: str) -> None:
    async def endpoint(
        mutation_id: str,
        *,
        response: Response,
        pool: PoolDep,
        api: ApiSettingsDep,
        publisher: PublisherDep,
        topics: TopicsDep,
        principal: PrincipalDep,
        body: DecisionCreate | None = None,
        user: UserHeader = None,
    ) -> MutationDetail | MutationAccepted:
        extra = body or DecisionCreate()
        row = await with_conn(
            pool, api.pool_timeout_s, mq.get_mutation, mutation_id, schema=api.read_schema
        )
        if row is None:
            raise _not_found(mutation_id)
        current = MutationStatus(row.status)
        if _TARGET[action] not in TRANSITIONS.get(current, frozenset()):
            raise ConflictError(
                f"Cannot {action.value} mutation {mutation_id!r}: it is {current.value}"
            )
        if extra.canary_weight is not None and action is not MutationAction.APPROVE:
            raise RequestInvalidError(
                [
                    FieldIssue(
                        "canary_weight", "only an approval sets a canary weight", "value_error"
                    )
                ]
            )
        request = MutationRequest(
            workflow_id=row.workflow_id,
            mutation_id=mutation_id,
            action=action,
            actor=_actor(principal, extra.actor, user, "actor"),
            canary_weight=extra.canary_weight,
            reason=extra.reason,
        )
        await _publish(publisher, topics, request)
        if not extra.wait_ms:
            return MutationAccepted(mutation_id=mutation_id, request_id=request.event_id)
        return await _await(
            pool,
            api,
            request,
            settled=_SETTLED[action],
            wait_ms=extra.wait_ms,
            response=response,
        )

    endpoint.__name__ = f"{action.value}_mutation"
    endpoint.__doc__ = (
        f"Publishes a ``{action.value}`` request: 409 naming the current status when the "
        "proposal cannot move that way; with ``wait_ms`` 200 once it has."
    )
    router.post(
        f"/{{mutation_id}}/{action.value}",
        status_code=202,
        response_model=MutationDetail | MutationAccepted,
        summary=summary,
        responses=_WRITE_RESPONSES,
    )(endpoint)


_decision_route(
    MutationAction.APPROVE,
    "Approve a validated proposal: registers the new version, routes canary_weight of new runs",
)
_decision_route(MutationAction.REJECT, "Reject a proposal that is not approved yet")
_decision_route(MutationAction.KEEP, "Keep an applied proposal: every new run gets the new version")
_decision_route(
    MutationAction.ROLLBACK,
    "Roll an applied proposal back: new runs get the previous version again",
)


@workflow_router.get(
    "/{workflow_id}/improvement",
    response_model=ImprovementPublic,
    summary="A workflow's improvement policy (default: propose)",
    responses=errors(404, 503),
)
async def get_improvement(
    workflow_id: str, pool: PoolDep, api: ApiSettingsDep, read_model: ReadModelDep
) -> ImprovementPublic:
    row = await with_conn(
        pool, api.pool_timeout_s, mq.get_policy, workflow_id, schema=api.read_schema
    )
    if row is None:
        if await read_model.workflow(workflow_id) is None:
            raise NotFoundError(f"workflow {workflow_id!r} not found")
        return ImprovementPublic(
            workflow_id=workflow_id, policy="propose", actor=None, updated_at=None
        )
    return ImprovementPublic.model_validate(row, from_attributes=True)


@workflow_router.put(
    "/{workflow_id}/improvement",
    status_code=202,
    response_model=ImprovementPublic,
    summary="Set a workflow's improvement policy: off | propose | auto",
    responses={
        200: {"model": ImprovementPublic, "description": "Applied within `wait_ms`"},
        **errors(404, 422, 503),
    },
)
async def set_improvement(
    workflow_id: str,
    body: ImprovementUpdate,
    *,
    response: Response,
    pool: PoolDep,
    api: ApiSettingsDep,
    read_model: ReadModelDep,
    publisher: PublisherDep,
    topics: TopicsDep,
    principal: PrincipalDep,
    user: UserHeader = None,
) -> ImprovementPublic:
    """``off``: proposals from the optimizer are refused; ``propose``: a person approves;
    ``auto``: a validated proposal is approved and applied without a person. Stored as an
    ``ImprovementPolicySet`` record (the processor's answer to the request) and projected."""
    if await read_model.workflow(workflow_id) is None:
        raise NotFoundError(f"workflow {workflow_id!r} not found")
    actor = _actor(principal, None, user, "actor")
    request = MutationRequest(
        workflow_id=workflow_id,
        action=MutationAction.SET_POLICY,
        actor=actor,
        policy=ImprovementPolicy(body.policy),
    )
    await _publish(publisher, topics, request)
    accepted = ImprovementPublic(
        workflow_id=workflow_id,
        policy=body.policy,
        actor=actor,
        updated_at=None,
        request_id=request.event_id,
    )
    if not body.wait_ms:
        return accepted

    async def applied() -> Any:
        row = await with_conn(
            pool, api.pool_timeout_s, mq.get_policy, workflow_id, schema=api.read_schema
        )
        return row if row is not None and row.policy == body.policy else None

    row = await poll_until(applied, body.wait_ms, api.poll_interval_s)
    if row is None:
        return accepted
    response.status_code = 200
    return ImprovementPublic.model_validate(row, from_attributes=True)


def _routed_version(conn: Any, workflow_id: str, run_id: str, schema: str) -> int | None:
    row = mq.current_route(conn, workflow_id, schema=schema)
    route = (
        None
        if row is None
        else route_for(
            row.mutation_id,
            MutationStatus(row.status),
            base_version=row.base_version,
            applied_version=row.applied_version,
            previous_version=row.previous_version,
            canary_weight=row.canary_weight,
        )
    )
    registered = {
        version.version: version.registered_by
        for version in queries.list_workflow_versions(conn, workflow_id, schema=schema)
    }
    return choose_workflow_version(workflow_id, run_id, route, registered)


async def routed_version(
    pool: ConnectionPool[Any], api: ApiSettings, workflow_id: str, run_id: str
) -> int | None:
    """The version a run started without one gets: the split set by mutation proposals, by run
    id, as the scheduler chooses it (:mod:`processors.mutations.routing`); ``None`` when the
    workflow has no version. ``POST /v1/runs`` pins it, so the inputs are checked against the
    definition the run will have."""
    return await with_conn(
        pool, api.pool_timeout_s, _routed_version, workflow_id, run_id, api.read_schema
    )
