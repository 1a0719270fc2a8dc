"""``/v1/runs``: start and control runs (commands on Kafka), read them (projections), watch them
(SSE) and rebuild their state at any seq (time travel)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from pydantic import ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api.auth.guard import PrincipalDep, acting_as
from api.config import MAX_WAIT_MS
from api.deps import (
    ApiSettingsDep,
    ConnDep,
    PoolDep,
    PublisherDep,
    ReadModelDep,
    StoreDep,
    TopicsDep,
)
from api.errors import (
    ConflictError,
    FieldIssue,
    NotFoundError,
    ReplayFailedError,
    RequestInvalidError,
)
from api.ids import (
    API_SOURCE,
    IDEMPOTENCY_KEY_PATTERN,
    new_command_id,
    run_id_for,
    tenant_key,
)
from api.models.common import errors
from api.models.graph import (
    MutationBatchCreate,
    MutationCreate,
    MutationRequest,
    RunGraphPublic,
)
from api.models.runs import (
    CommandAccepted,
    CommandApplied,
    CommandCreate,
    RebindCreate,
    RedriveCreate,
    RunAccepted,
    RunCreate,
    RunDetail,
    RunEventsPublic,
    RunsPublic,
    RunStatePublic,
    SignalCreate,
)
from api.publisher import Publisher
from api.ratelimit.concurrency import admitted
from api.readmodel import (
    TERMINAL_EVENTS,
    ReadModel,
    event_public,
    load_run_detail,
    run_public,
)
from api.routes.mutations import routed_version
from api.run_graph import (
    check_mutation,
    check_mutations,
    current_graph,
    graph_view,
    progress_of_rows,
    progress_of_state,
)
from api.store import request_fingerprint
from api.timetravel import UnknownEventTypeError, state_at, state_view
from api.validation import check_inputs, current_node_catalog, parse_definition
from api.waiting import poll_until
from foundation.telemetry import caller_trace_context
from processors.scheduler.evolve import EvolveError
from processors.scheduler.state import RunState
from projections.postgres import queries
from projections.postgres.queries import RunEventRow
from schemas.base import RefluxRecord
from schemas.models import (
    CancelRun,
    MutateGraph,
    PauseRun,
    RebindRun,
    RedriveStep,
    ResumeRun,
    SignalRun,
    StartRun,
)
from schemas.statuses import TERMINAL_RUN_STATUSES
from streams.topics import TopicCatalog
from streams.tracing import trace_headers
from workflows.meta_waits import SIGNAL_NAME_PATTERN
from workflows.semver import VersionConstraint
from workflows.validation import WorkflowValidationError

__all__ = ["router"]

router = APIRouter(prefix="/runs", tags=["runs"])

WaitQuery = Annotated[
    int | None,
    Query(ge=0, le=MAX_WAIT_MS, description=f"Wait up to this many ms (max {MAX_WAIT_MS})."),
]
OptionalCommandBody = Annotated[CommandCreate | None, Body()]


def run_not_found(run_id: str) -> NotFoundError:
    return NotFoundError(f"run {run_id!r} not found")


async def _require_run(read_model: ReadModel, run_id: str) -> queries.RunRow:
    row = await read_model.run(run_id)
    if row is None:
        raise run_not_found(run_id)
    return row


def _deadline(wait_ms: int) -> float:
    return time.monotonic() + wait_ms / 1000


# -- starting runs ------------------------------------------------------------------------------


@router.post(
    "",
    status_code=202,
    response_model=RunAccepted | RunDetail,
    summary="Start a run",
    responses={
        200: {"model": RunDetail, "description": "With wait_ms: the run finished in time."},
        202: {"model": RunAccepted, "description": "StartRun is on the broker."},
        **errors(404, 409, 422, 503),
    },
)
async def start_run(
    body: RunCreate,
    *,
    request: Request,
    response: Response,
    api: ApiSettingsDep,
    pool: PoolDep,
    store: StoreDep,
    read_model: ReadModelDep,
    publisher: PublisherDep,
    topics: TopicsDep,
    principal: PrincipalDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="The same key yields the same run_id (and the run starts once).",
        ),
    ] = None,
) -> RunAccepted | RunDetail:
    """Checks the workflow version exists and the inputs fit it, then publishes ``StartRun`` on
    ``commands`` (keyed by run id) and answers 202. With ``wait_ms`` it waits for the run to
    finish: 200 with the run when it did, else 202 with the run as far as it got."""
    if idempotency_key and body.idempotency_key and idempotency_key != body.idempotency_key:
        raise RequestInvalidError(
            [
                FieldIssue(
                    "idempotency_key",
                    "Expected the Idempotency-Key header and body field to agree, but they differ",
                    "idempotency_key_mismatch",
                )
            ]
        )
    key = idempotency_key or body.idempotency_key
    # The caller's tenant's key (ADR 0051): two tenants' equal keys name two runs.
    scoped_key = tenant_key(principal.tenant, key) if key is not None else None
    run_id = run_id_for(API_SOURCE, scoped_key)
    version = body.version
    if version is None:
        # Not simply the latest: mutation proposals may split new runs between versions.
        version = await routed_version(pool, api, body.workflow_id, run_id)
    workflow = await read_model.workflow(body.workflow_id, version)
    if workflow is None or workflow.tenant != principal.tenant:  # another's: as if missing
        if body.version is None or workflow is not None:
            raise NotFoundError(f"workflow {body.workflow_id!r} not found")
        raise NotFoundError(f"workflow {body.workflow_id!r} has no version {body.version}")
    definition = await run_in_threadpool(parse_definition, workflow.definition)
    await run_in_threadpool(check_inputs, definition, body.inputs)

    if key is not None and scoped_key is not None:
        fingerprint = request_fingerprint(body.workflow_id, body.version, body.inputs)
        claimed = await store.claim_key(scoped_key, run_id, body.workflow_id, fingerprint)
        if claimed.fingerprint != fingerprint:
            raise ConflictError(
                f"Expected Idempotency-Key {key!r} to be reused with the same request, but it "
                f"was first used for another one (workflow {claimed.workflow_id!r}, run "
                f"{claimed.run_id!r}); use a new key for a new run"
            )
        run_id = claimed.run_id
    command = StartRun(
        run_id=run_id,
        workflow_id=body.workflow_id,
        workflow_version=workflow.version,
        # The caller's inputs, not the defaulted ones: the scheduler applies defaults itself
        # from the definition it runs, so the command stays what the caller asked for.
        inputs=body.inputs,
        # Namespaced by source like the trigger router's keys, so sources never collide.
        idempotency_key=f"{API_SOURCE}:{key}" if key is not None else None,
        source=API_SOURCE,
        requested_by=principal.actor,  # who started it: the principal (ADR 0046)
        tenant=principal.tenant,  # the scheduler checks it against the workflow's (ADR 0051)
        # This request's span (or the caller's traceparent): the run joins its trace (ADR 0062).
        trace_context=caller_trace_context(),
    )
    # Published again on a retry with the same key: the first attempt may not have reached the
    # broker, and the scheduler starts a run id only once.
    async with admitted(request, body.workflow_id, definition, run_id, tenant=workflow.tenant):
        await run_in_threadpool(
            publisher.publish,
            topics.commands,
            run_id,
            command,
            trace_headers(command.trace_context),
        )
    if not body.wait_ms:
        return RunAccepted(run_id=run_id)

    async def finished() -> RunDetail | None:
        detail = await read_model.run_detail(run_id)
        return detail if detail is not None and detail.status in TERMINAL_RUN_STATUSES else None

    detail = await poll_until(finished, body.wait_ms, api.poll_interval_s)
    if detail is not None:
        response.status_code = 200
        return detail
    # Not finished in time: 202 with the run as it stands now (None if not projected yet).
    return RunAccepted(run_id=run_id, run=await read_model.run_detail(run_id))


# -- reading runs -------------------------------------------------------------------------------


@router.get(
    "", response_model=RunsPublic, summary="List runs, newest first", responses=errors(422, 503)
)
def list_runs(
    conn: ConnDep,
    *,
    api: ApiSettingsDep,
    principal: PrincipalDep,
    workflow_id: str | None = None,
    status: Annotated[
        str | None, Query(description=f"One of {', '.join(queries.RUN_STATUSES)}")
    ] = None,
    source: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            description="How the run was started: `api`, `webhook`, `schedule`, `parent` (a child "
            "run), or a trigger's source.",
        ),
    ] = None,
    started_after: Annotated[
        datetime | None, Query(description="Runs started at or after this time (ISO 8601).")
    ] = None,
    started_before: Annotated[
        datetime | None, Query(description="Runs started before this time (ISO 8601).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_LIMIT)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> RunsPublic:
    if status is not None and status not in queries.RUN_STATUSES:
        raise RequestInvalidError(
            [
                FieldIssue(
                    "status",
                    f"Expected one of {list(queries.RUN_STATUSES)}, but got {status!r}",
                    "enum",
                )
            ],
            prefix=("query",),
        )
    try:
        page = queries.list_runs(
            conn,
            workflow_id,
            status,
            limit,
            cursor,
            schema=api.read_schema,
            tenant=principal.tenant,
            source=source,
            started_after=started_after,
            started_before=started_before,
        )
    except queries.InvalidQueryError as exc:
        raise RequestInvalidError(
            [FieldIssue("cursor", str(exc), "cursor_invalid")], prefix=("query",)
        ) from exc
    return RunsPublic(data=[run_public(row) for row in page.items], next_cursor=page.next_cursor)


@router.get(
    "/{run_id}",
    response_model=RunDetail,
    summary="A run with its steps",
    responses=errors(404, 503),
)
def get_run(run_id: str, conn: ConnDep, api: ApiSettingsDep) -> RunDetail:
    detail = load_run_detail(conn, run_id, schema=api.read_schema)
    if detail is None:
        raise run_not_found(run_id)
    return detail


@router.get(
    "/{run_id}/events",
    response_model=RunEventsPublic,
    summary="A run's events in seq order",
    responses=errors(404, 503),
)
def get_events(
    run_id: str,
    *,
    conn: ConnDep,
    api: ApiSettingsDep,
    after_seq: Annotated[int, Query(ge=-1, description="Only events with seq > after_seq")] = -1,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_EVENTS_LIMIT)] = 1000,
) -> RunEventsPublic:
    if queries.get_run(conn, run_id, schema=api.read_schema) is None:
        raise run_not_found(run_id)
    rows = queries.get_events(conn, run_id, after_seq, limit, schema=api.read_schema)
    return RunEventsPublic(
        run_id=run_id,
        data=[event_public(row) for row in rows],
        next_after_seq=rows[-1].seq if rows else after_seq,
    )


def _events_through(conn: Any, run_id: str, seq: int, schema: str) -> list[RunEventRow]:
    events: list[RunEventRow] = []
    after = -1
    while True:
        page = queries.get_events(conn, run_id, after, queries.MAX_EVENTS_LIMIT, schema=schema)
        events.extend(row for row in page if row.seq <= seq)
        if not page or page[-1].seq >= seq or len(page) < queries.MAX_EVENTS_LIMIT:
            return events
        after = page[-1].seq


def _check_seq(last_seq: int, seq: int | None) -> int:
    """The seq to replay to (default: the last projected event); 422 beyond it."""
    target = last_seq if seq is None else seq
    if target > last_seq:
        raise RequestInvalidError(
            [
                FieldIssue(
                    "seq",
                    f"Expected seq <= {last_seq} (the run's last projected event), "
                    f"but got {target}",
                    "seq_out_of_range",
                )
            ],
            prefix=("query",),
        )
    return target


def _replay(run_id: str, rows: list[RunEventRow]) -> RunState | None:
    try:
        return state_at(rows)
    except (UnknownEventTypeError, EvolveError, ValidationError) as exc:
        # The projection holds something the engine cannot replay: a server-side problem.
        raise ReplayFailedError(
            f"Expected run {run_id!r} to replay, but it does not: {exc}"
        ) from exc


@router.get(
    "/{run_id}/state",
    response_model=RunStatePublic,
    summary="Time travel: the run's state after event `seq`",
    responses=errors(404, 422, 503),
)
def get_state(
    run_id: str,
    *,
    conn: ConnDep,
    api: ApiSettingsDep,
    seq: Annotated[
        int | None, Query(ge=0, description="Fold events up to this seq (default: all).")
    ] = None,
) -> RunStatePublic:
    """Folds the run's events up to ``seq`` with the scheduler's own ``fold`` (replay)."""
    run = queries.get_run(conn, run_id, schema=api.read_schema)
    if run is None:
        raise run_not_found(run_id)
    target = _check_seq(run.last_seq, seq)
    rows = _events_through(conn, run_id, target, api.read_schema)
    state = _replay(run_id, rows)
    return RunStatePublic(
        run_id=run_id,
        seq=rows[-1].seq if rows else -1,
        event_count=len(rows),
        state=state_view(state),
    )


_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "id": {"type": "string", "description": "The event's seq."},
        "event": {"type": "string", "description": "The event type, e.g. RunStarted."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "The run event as JSON (seq, event_type, event_id, payload, ...).",
        },
    },
}


@router.get(
    "/{run_id}/stream",
    summary="Server-sent events of a run",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "`text/event-stream`: one SSE event per run event (id = seq, "
            "event = event type, data = the event as JSON); ends after the terminal event.",
            # The schema of one event (how SSE-aware tools, schemathesis among them, read it).
            "content": {"text/event-stream": {"schema": _SSE_EVENT}},
        },
        **errors(404, 422, 503),
    },
)
async def stream_run(
    run_id: str,
    *,
    request: Request,
    read_model: ReadModelDep,
    api: ApiSettingsDep,
    after_seq: Annotated[int | None, Query(ge=-1)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    """Replays the run's events after ``Last-Event-ID`` (or ``after_seq``), then follows new ones
    as the projection receives them."""
    start = after_seq if after_seq is not None else -1
    if last_event_id:
        try:
            start = int(last_event_id)
        except ValueError:
            raise RequestInvalidError(
                [
                    FieldIssue(
                        "Last-Event-ID",
                        f"Expected an event seq (integer), but got {last_event_id!r}",
                        "int_parsing",
                    )
                ],
                prefix=("header",),
            ) from None
    await _require_run(read_model, run_id)
    return EventSourceResponse(
        _follow(request, read_model, run_id, start, api.poll_interval_s), ping=15
    )


async def _follow(
    request: Request, read_model: ReadModel, run_id: str, after: int, poll_s: float
) -> AsyncIterator[ServerSentEvent]:
    while True:
        rows = await read_model.events(run_id, after, 500)
        for row in rows:
            after = row.seq
            yield ServerSentEvent(
                data=event_public(row).model_dump_json(),
                event=row.event_type,
                id=str(row.seq),
            )
            if row.event_type in TERMINAL_EVENTS and await _ended_at(read_model, run_id, row.seq):
                return
        if rows:
            continue
        # Nothing new: stop if the run ended before `after` (a resume past the end).
        run = await read_model.run(run_id)
        if run is not None and run.status in TERMINAL_RUN_STATUSES and run.last_seq <= after:
            return
        if await request.is_disconnected():
            return
        await anyio.sleep(poll_s)


async def _ended_at(read_model: ReadModel, run_id: str, seq: int) -> bool:
    """Whether the run's last event is the terminal one at ``seq``: a re-driven or rebound run
    ends more than once (its status is that of its last terminal event), and a stream replaying
    its log goes on past an earlier end."""
    run = await read_model.run(run_id)
    return run is None or run.last_seq <= seq


# -- controlling runs ---------------------------------------------------------------------------

EventMatch = Callable[[RunEventRow], bool]


def _caused_by(row: RunEventRow, command: RefluxRecord) -> bool:
    """Whether an effect event may be this command's: a causation id, when the scheduler sets
    one, must name the command."""
    cause = row.payload.get("causation_id")
    return cause is None or cause in {
        getattr(command, "command_id", None),
        getattr(command, "event_id", None),
    }


async def _command(
    run_id: str,
    *,
    command: RefluxRecord,
    effect: EventMatch,
    wait_ms: int | None,
    response: Response,
    read_model: ReadModel,
    publisher: Publisher,
    topics: TopicCatalog,
    poll_s: float,
) -> CommandAccepted | CommandApplied:
    run = await _require_run(read_model, run_id)
    command_id: str = getattr(command, "command_id")  # noqa: B009  every command has one
    await run_in_threadpool(publisher.publish, topics.commands, run_id, command)
    if not wait_ms:
        return CommandAccepted(command_id=command_id, run_id=run_id)
    # Events at or before last_seq were projected before the command existed.
    after = run.last_seq
    deadline = _deadline(wait_ms)
    while True:
        for row in await read_model.events(run_id, after):
            after = row.seq
            if row.event_type == "CommandRejected" and row.payload.get("command_id") == command_id:
                raise ConflictError(str(row.payload.get("reason") or "command rejected"))
            if effect(row) and _caused_by(row, command):
                response.status_code = 200
                return CommandApplied(
                    command_id=command_id, run_id=run_id, event_type=row.event_type, seq=row.seq
                )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return CommandAccepted(command_id=command_id, run_id=run_id)
        await anyio.sleep(min(poll_s, remaining))


def _of_type(event_type: str) -> EventMatch:
    return lambda row: row.event_type == event_type


_COMMAND_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": CommandApplied, "description": "With wait_ms: the command took effect."},
    202: {"model": CommandAccepted, "description": "The command is on the broker."},
    **errors(404, 409, 422, 503),
}


LifecycleCommand = type[CancelRun] | type[PauseRun] | type[ResumeRun]


def _lifecycle_route(
    action: str, command_cls: LifecycleCommand, effect_type: str, summary: str
) -> None:
    """``POST /v1/runs/{run_id}/<action>``: publish the command; with ``wait_ms`` answer 200
    on its effect event and 409 with the scheduler's reason on ``CommandRejected``."""

    async def endpoint(
        run_id: str,
        *,
        response: Response,
        api: ApiSettingsDep,
        read_model: ReadModelDep,
        publisher: PublisherDep,
        topics: TopicsDep,
        principal: PrincipalDep,
        wait_ms: WaitQuery = None,
        body: OptionalCommandBody = None,
    ) -> CommandAccepted | CommandApplied:
        extra = body or CommandCreate()
        command = command_cls(
            run_id=run_id,
            command_id=new_command_id(),
            reason=extra.reason,
            requested_by=acting_as(principal, extra.requested_by, "requested_by"),
        )
        return await _command(
            run_id,
            command=command,
            effect=_of_type(effect_type),
            wait_ms=wait_ms,
            response=response,
            read_model=read_model,
            publisher=publisher,
            topics=topics,
            poll_s=api.poll_interval_s,
        )

    endpoint.__name__ = f"{action}_run"
    endpoint.__doc__ = (
        f"Publishes ``{command_cls.__name__}``; with ``wait_ms`` answers 200 on "
        f"``{effect_type}`` and 409 with the scheduler's reason on ``CommandRejected``."
    )
    router.post(
        f"/{{run_id}}/{action}",
        status_code=202,
        response_model=CommandAccepted | CommandApplied,
        summary=summary,
        responses=_COMMAND_RESPONSES,
    )(endpoint)


_lifecycle_route("cancel", CancelRun, "RunCancelled", "Cancel a run")
_lifecycle_route("pause", PauseRun, "RunPaused", "Pause a run")
_lifecycle_route("resume", ResumeRun, "RunResumed", "Resume a paused run")


@router.post(
    "/{run_id}/steps/{step_id}/redrive",
    status_code=202,
    response_model=CommandAccepted | CommandApplied,
    summary="Re-drive one step of a run, or (downstream) everything from a step on",
    responses=_COMMAND_RESPONSES,
)
async def redrive_step(
    run_id: str,
    *,
    step_id: str,
    response: Response,
    api: ApiSettingsDep,
    read_model: ReadModelDep,
    publisher: PublisherDep,
    topics: TopicsDep,
    principal: PrincipalDep,
    wait_ms: WaitQuery = None,
    body: Annotated[RedriveCreate | None, Body()] = None,
) -> CommandAccepted | CommandApplied:
    """Publishes ``RedriveStep``; with ``wait_ms`` answers 200 when the step is scheduled again
    (``downstream``: when the steps are reset) and 409 with the scheduler's reason (e.g. the
    step is not failed, the run is cancelled or paused, a step downstream is in flight) on
    rejection. See docs/workflows.md (re-drive) and docs/decisions/0026."""
    detail = await read_model.run_detail(run_id)
    if detail is None:
        raise run_not_found(run_id)
    if step_id not in {step.step_id for step in detail.steps}:
        raise NotFoundError(f"step {step_id!r} not found in run {run_id!r}")
    extra = body or RedriveCreate()
    command = RedriveStep(
        run_id=run_id,
        step_id=step_id,
        command_id=new_command_id(),
        reason=extra.reason,
        requested_by=acting_as(principal, extra.requested_by, "requested_by"),
        downstream=extra.downstream,
    )

    def effect(row: RunEventRow) -> bool:
        if extra.downstream:
            return row.event_type == "StepsReset" and row.payload.get("from_step") == step_id
        step = row.payload.get("step") or {}
        # The step scheduled again: a StepScheduled, or a dispatch that schedules (ADR 0075).
        scheduling = row.event_type == "StepScheduled" or (
            row.event_type == "StepDispatched" and row.payload.get("scheduled") is True
        )
        return scheduling and step.get("step_id") == step_id

    return await _command(
        run_id,
        command=command,
        effect=effect,
        wait_ms=wait_ms,
        response=response,
        read_model=read_model,
        publisher=publisher,
        topics=topics,
        poll_s=api.poll_interval_s,
    )


@router.post(
    "/{run_id}/rebind",
    status_code=202,
    response_model=CommandAccepted | CommandApplied,
    summary="Continue a failed or paused run on another version of its workflow",
    responses=_COMMAND_RESPONSES,
)
async def rebind_run(
    run_id: str,
    *,
    response: Response,
    api: ApiSettingsDep,
    read_model: ReadModelDep,
    publisher: PublisherDep,
    topics: TopicsDep,
    principal: PrincipalDep,
    wait_ms: WaitQuery = None,
    body: Annotated[RebindCreate | None, Body()] = None,
) -> CommandAccepted | CommandApplied:
    """Publishes ``RebindRun`` for a registered version (default: the latest, resolved here so
    the scheduler rebinds to the version the caller saw); with ``wait_ms`` answers 200 on
    ``RunRebound`` and 409 with the scheduler's reason -- naming the step and the mapping rule
    -- on rejection. See docs/workflows.md (rebind) and docs/decisions/0026."""
    extra = body or RebindCreate()
    run = await _require_run(read_model, run_id)
    workflow = await read_model.workflow(run.workflow_id, extra.version)
    if workflow is None:
        which = "no registered version" if extra.version is None else f"no version {extra.version}"
        raise NotFoundError(f"workflow {run.workflow_id!r} has {which}")
    command = RebindRun(
        run_id=run_id,
        command_id=new_command_id(),
        reason=extra.reason,
        requested_by=acting_as(principal, extra.requested_by, "requested_by"),
        workflow_version=workflow.version,
        redrive_failed=extra.redrive_failed,
    )
    return await _command(
        run_id,
        command=command,
        effect=_of_type("RunRebound"),
        wait_ms=wait_ms,
        response=response,
        read_model=read_model,
        publisher=publisher,
        topics=topics,
        poll_s=api.poll_interval_s,
    )


@router.post(
    "/{run_id}/signals/{name}",
    status_code=202,
    response_model=CommandAccepted | CommandApplied,
    summary="Deliver a named signal (and its payload) to the run's steps waiting for it",
    responses=_COMMAND_RESPONSES,
)
async def signal_run(
    run_id: str,
    name: Annotated[str, Path(pattern=SIGNAL_NAME_PATTERN, description="The signal's name.")],
    *,
    response: Response,
    api: ApiSettingsDep,
    read_model: ReadModelDep,
    publisher: PublisherDep,
    topics: TopicsDep,
    principal: PrincipalDep,
    wait_ms: WaitQuery = None,
    body: Annotated[SignalCreate | None, Body()] = None,
) -> CommandAccepted | CommandApplied:
    """Publishes ``SignalRun``: every ``meta.signal`` step of the run waiting for ``name``
    succeeds with ``{"signal", "payload", "timed_out": false}`` (ADR 0057). With ``wait_ms``
    answers 200 on that ``StepSucceeded`` and 409 with the scheduler's reason when no step waits
    for the signal (not started yet, already signalled, timed out, another name: a signal is
    not kept for later)."""
    extra = body or SignalCreate()
    command = SignalRun(
        run_id=run_id,
        command_id=new_command_id(),
        reason=extra.reason,
        requested_by=acting_as(principal, extra.requested_by, "requested_by"),
        signal=name,
        payload=extra.payload,
    )
    return await _command(
        run_id,
        command=command,
        effect=_of_type("StepSucceeded"),
        wait_ms=wait_ms,
        response=response,
        read_model=read_model,
        publisher=publisher,
        topics=topics,
        poll_s=api.poll_interval_s,
    )


# -- living graphs ------------------------------------------------------------------------------


def _input_schema_lookup(conn: Any, schema: str) -> Callable[[str, str], Any]:
    """``(node, constraint) -> input JSON Schema`` of the best catalogued version, if any."""

    def lookup(name: str, constraint: str) -> Any:
        rows = queries.list_node_versions(conn, name, schema=schema)
        best = VersionConstraint.parse(constraint).best(row.version for row in rows)
        for row in rows:
            if row.version == best and isinstance(row.manifest, dict):
                found = row.manifest.get("input_schema")
                return found if isinstance(found, dict) else None
        return None

    return lookup


def _load_graph(conn: Any, run_id: str, schema: str) -> tuple[queries.RunGraphRow, Any]:
    row = queries.get_run_graph(conn, run_id, schema=schema)
    if row is None:
        raise run_not_found(run_id)
    try:
        return row, current_graph(row)
    except WorkflowValidationError as exc:
        raise ReplayFailedError(
            f"Expected run {run_id!r}'s projected definition to be valid, but: {exc}"
        ) from exc


def _prepare_mutation(
    conn: Any,
    run_id: str,
    body: MutationCreate | MutationBatchCreate,
    schema: str,
    requested_by: str | None = None,
) -> MutateGraph:
    _, graph = _load_graph(conn, run_id, schema)
    catalog, input_schema = current_node_catalog(), _input_schema_lookup(conn, schema)
    fields: dict[str, Any] = {}
    if isinstance(body, MutationBatchCreate):
        fields["mutations"] = check_mutations(body, graph, catalog, input_schema)
    else:
        # One mutation stays v1-shaped (`mutation`): its rejection reason has no index.
        fields["mutation"] = check_mutation(body, graph, catalog, input_schema)
    return MutateGraph(
        run_id=run_id,
        command_id=new_command_id(),
        reason=body.reason,
        requested_by=requested_by if requested_by is not None else body.requested_by,
        **fields,
    )


def _all_mutated(command: MutateGraph) -> EventMatch:
    """The effect of a list: its last ``GraphMutated`` (all of them land in one transaction)."""
    expected = len(command.mutations) or 1
    seen = 0

    def match(row: RunEventRow) -> bool:
        nonlocal seen
        if row.event_type == "GraphMutated" and _caused_by(row, command):
            seen += 1
        return seen >= expected

    return match


@router.post(
    "/{run_id}/mutations",
    status_code=202,
    response_model=CommandAccepted | CommandApplied,
    summary="Change a running run's graph: one mutation, or a list applied all or nothing",
    responses=_COMMAND_RESPONSES,
)
async def mutate_run(
    run_id: str,
    body: Annotated[MutationRequest, Body()],
    *,
    response: Response,
    api: ApiSettingsDep,
    pool: PoolDep,
    read_model: ReadModelDep,
    publisher: PublisherDep,
    topics: TopicsDep,
    principal: PrincipalDep,
    wait_ms: WaitQuery = None,
) -> CommandAccepted | CommandApplied:
    """Publishes ``MutateGraph`` after checking what does not depend on the run's state (422
    naming the field, ``mutations[i].`` for a list); with ``wait_ms`` answers 200 once every
    ``GraphMutated`` is there (the seq of the last) and 409 with the scheduler's reason on
    ``CommandRejected`` (a step that already ran, a cycle, a dependency on a missing step, ...;
    ``mutations[i]: ...`` names the operation of a list that was refused)."""
    requested_by = acting_as(principal, body.requested_by, "requested_by")

    def prepare() -> MutateGraph:
        with pool.connection(timeout=api.pool_timeout_s) as conn:
            return _prepare_mutation(conn, run_id, body, api.read_schema, requested_by)

    command = await run_in_threadpool(prepare)
    return await _command(
        run_id,
        command=command,
        effect=_all_mutated(command),
        wait_ms=wait_ms if wait_ms is not None else body.wait_ms,
        response=response,
        read_model=read_model,
        publisher=publisher,
        topics=topics,
        poll_s=api.poll_interval_s,
    )


@router.get(
    "/{run_id}/graph",
    response_model=RunGraphPublic,
    summary="A run's current graph and the mutations applied to it (who, why)",
    responses=errors(404, 503),
)
def get_graph(
    run_id: str,
    *,
    conn: ConnDep,
    api: ApiSettingsDep,
    seq: Annotated[
        int | None,
        Query(ge=0, description="Time travel: the graph after event `seq` (replayed)."),
    ] = None,
) -> RunGraphPublic:
    """The projection's current graph; with ``seq``, the graph folded from the run's events up
    to ``seq`` with the scheduler's own ``fold`` (as ``GET .../state``), and the mutations up to
    there. Both are the same graph at the last seq."""
    row, graph = _load_graph(conn, run_id, api.read_schema)
    mutations = queries.get_run_mutations(conn, run_id, schema=api.read_schema)
    if seq is None:
        steps = queries.get_steps(conn, run_id, schema=api.read_schema)
        return graph_view(row, graph, progress_of_rows(steps), mutations)
    target = _check_seq(row.last_seq, seq)
    rows = _events_through(conn, run_id, target, api.read_schema)
    state = _replay(run_id, rows)
    if state is None or state.definition is None:
        at = replace(row, status="pending", last_seq=target)
        return graph_view(at, None, {}, [])
    at = replace(row, status=str(state.status), last_seq=target)
    earlier = [m for m in mutations if m.seq <= target]
    return graph_view(at, state.definition, progress_of_state(state), earlier)
