"""``/v1/schedules``: cron schedules that start runs of a workflow (ADR 0056).

A schedule is a record on the compacted ``schedules`` topic (the latest per id is the schedule,
a tombstone deletes it); the schedule processor fires its slots. Writes publish the record and
answer once the broker has it; reads come from the topic read as a table, caught up to its end
on every request (so a schedule just written is there). A schedule is its workflow's tenant's
(ADR 0051): another tenant's answers 404, as a missing one does.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from api.auth.guard import Principal, PrincipalDep
from api.deps import PublisherDep, ReadModelDep, TopicsDep
from api.errors import ConflictError, FieldIssue, NotFoundError, RequestInvalidError
from api.models.common import errors
from api.models.schedules import ScheduleCreate, SchedulePublic, SchedulesPublic
from api.publisher import Publisher
from api.validation import check_inputs, parse_definition
from processors.schedules.cron import CronError
from processors.schedules.firing import rule_of
from processors.schedules.plan import ScheduleRuleError
from processors.schedules.view import LazySchedulesView, SchedulesView
from schemas.models import CatchupPolicy, OverlapPolicy, Schedule
from streams.topics import TopicCatalog

__all__ = ["close_view", "router", "schedules_view"]

router = APIRouter(prefix="/schedules", tags=["schedules"])

_LOCK = threading.Lock()
CATCH_UP_TIMEOUT_S = 5.0
_BODY_FIELD = {"jitter_ms": "jitter_s", "catchup_window_ms": "catchup_window_s"}
"""Record fields the core names -> the body fields they come from."""
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)
NEXT_SLOTS = 3


def schedules_view(request: Request) -> SchedulesView:
    """The app's view of the schedules topic, opened by the first request that needs it (the
    lifespan closes it), caught up to the topic's end."""
    state = request.app.state
    with _LOCK:
        lazy = getattr(state, "schedules_view", None)
        if lazy is None:
            lazy = state.schedules_view = LazySchedulesView(state.settings, state.topics)
    view = lazy.get()
    view.catch_up(CATCH_UP_TIMEOUT_S)
    return view


def close_view(state: Any) -> None:
    """The lifespan's end: closes the view if a request opened it."""
    lazy: LazySchedulesView | None = getattr(state, "schedules_view", None)
    if lazy is not None:
        lazy.close()


def _next_slots(schedule: Schedule, now: datetime) -> list[datetime]:
    rule = rule_of(schedule)
    if rule.paused:
        return []
    slots: list[datetime] = []
    for slot in rule.cron.slots_after(max(now, rule.floor())):
        if (rule.end_at is not None and slot > rule.end_at) or len(slots) >= NEXT_SLOTS:
            break
        slots.append(slot)
    return slots


def public(schedule: Schedule, now: datetime | None = None) -> SchedulePublic:
    return SchedulePublic(
        schedule_id=schedule.schedule_id,
        tenant=schedule.tenant,
        workflow_id=schedule.workflow_id,
        workflow_version=schedule.workflow_version,
        cron=schedule.cron,
        timezone=schedule.timezone,
        start_at=schedule.start_at,
        end_at=schedule.end_at,
        jitter_s=schedule.jitter_ms / 1000,
        catchup=schedule.catchup.value,
        catchup_window_s=schedule.catchup_window_ms / 1000,
        overlap=schedule.overlap.value,
        inputs=schedule.inputs,
        paused=schedule.paused,
        created_at=schedule.created_at,
        resumed_at=schedule.resumed_at,
        created_by=schedule.created_by,
        next_slots=_next_slots(schedule, now or datetime.now(UTC)),
    )


def _aware(value: datetime | None, path: str, issues: list[FieldIssue]) -> datetime | None:
    if value is not None and value.tzinfo is None:
        issues.append(
            FieldIssue(
                path, "Expected an instant with a zone (e.g. ...Z), but got none", "value_error"
            )
        )
        return None
    if value is not None and not _EARLIEST <= value < _LATEST:
        issues.append(
            FieldIssue(path, f"Expected an instant in 1970..9000, but got {value}", "value_error")
        )
        return None
    return value


def _record(body: ScheduleCreate, principal: Principal, version: int | None) -> Schedule:
    """The record a valid body stands for; 422 at the field path otherwise."""
    issues: list[FieldIssue] = []
    start_at = _aware(body.start_at, "start_at", issues)
    end_at = _aware(body.end_at, "end_at", issues)
    if issues:
        raise RequestInvalidError(issues)
    schedule = Schedule(
        schedule_id=body.schedule_id or str(uuid.uuid4()),
        tenant=principal.tenant,
        workflow_id=body.workflow_id,
        workflow_version=version,
        cron=body.cron,
        timezone=body.timezone,
        start_at=start_at,
        end_at=end_at,
        jitter_ms=round(body.jitter_s * 1000),
        catchup=CatchupPolicy(body.catchup),
        catchup_window_ms=round(body.catchup_window_s * 1000),
        overlap=OverlapPolicy(body.overlap),
        inputs=body.inputs,
        paused=body.paused,
        created_at=datetime.now(UTC),
        created_by=principal.actor,
    )
    try:
        rule_of(schedule)
    except CronError as exc:
        raise RequestInvalidError([FieldIssue(exc.field, str(exc), "value_error")]) from None
    except ScheduleRuleError as exc:
        path = _BODY_FIELD.get(exc.field, exc.field)
        raise RequestInvalidError([FieldIssue(path, str(exc), "value_error")]) from None
    return schedule


def _owned(view: SchedulesView, schedule_id: str, principal: Principal) -> Schedule:
    schedule = view.get(schedule_id)
    if schedule is None or schedule.tenant != principal.tenant:  # another's: as if missing
        raise NotFoundError(f"schedule {schedule_id!r} not found")
    return schedule


@router.post(
    "",
    status_code=201,
    response_model=SchedulePublic,
    summary="Create a schedule: a cron expression in a time zone that starts runs",
    responses=errors(404, 409, 422, 503),
)
async def create_schedule(
    *,
    body: ScheduleCreate,
    request: Request,
    principal: PrincipalDep,
    read_model: ReadModelDep,
    publisher: PublisherDep,
    topics: TopicsDep,
) -> SchedulePublic:
    """Checks the workflow (the caller's tenant's) and the inputs against it, then publishes
    the schedule; answers 201 once the broker has it."""
    workflow = await read_model.workflow(body.workflow_id, body.workflow_version)
    if workflow is None or workflow.tenant != principal.tenant:
        if body.workflow_version is None or workflow is not None:
            raise NotFoundError(f"workflow {body.workflow_id!r} not found")
        raise NotFoundError(f"workflow {body.workflow_id!r} has no version {body.workflow_version}")
    definition = await run_in_threadpool(parse_definition, workflow.definition)
    await run_in_threadpool(check_inputs, definition, body.inputs)
    schedule = _record(body, principal, body.workflow_version)
    view = await run_in_threadpool(schedules_view, request)
    if view.get(schedule.schedule_id) is not None:
        raise ConflictError(
            f"schedule {schedule.schedule_id!r} exists already; delete it first or use another id"
        )
    await run_in_threadpool(publisher.publish, topics.schedules, schedule.schedule_id, schedule)
    return public(schedule)


@router.get(
    "",
    response_model=SchedulesPublic,
    summary="The caller's tenant's schedules, by id",
    responses=errors(503),
)
async def list_schedules(request: Request, principal: PrincipalDep) -> SchedulesPublic:
    view = await run_in_threadpool(schedules_view, request)
    now = datetime.now(UTC)
    data = [public(s, now) for s in view.all() if s.tenant == principal.tenant]
    return SchedulesPublic(data=data, count=len(data))


@router.get(
    "/{schedule_id}",
    response_model=SchedulePublic,
    summary="One schedule, with its next slots",
    responses=errors(404, 503),
)
async def get_schedule(
    schedule_id: str, request: Request, principal: PrincipalDep
) -> SchedulePublic:
    view = await run_in_threadpool(schedules_view, request)
    return public(_owned(view, schedule_id, principal))


def _republish(
    publisher: Publisher, topics: TopicCatalog, schedule: Schedule, **changes: object
) -> Schedule:
    # A new event_id: the record is a new version of the schedule.
    updated = schedule.model_copy(update={**changes, "event_id": str(uuid.uuid4())})
    publisher.publish(topics.schedules, updated.schedule_id, updated)
    return updated


@router.post(
    "/{schedule_id}/pause",
    response_model=SchedulePublic,
    summary="Pause a schedule: no slot fires until it is resumed",
    responses=errors(404, 503),
)
async def pause_schedule(
    schedule_id: str,
    request: Request,
    principal: PrincipalDep,
    publisher: PublisherDep,
    topics: TopicsDep,
) -> SchedulePublic:
    view = await run_in_threadpool(schedules_view, request)
    schedule = _owned(view, schedule_id, principal)
    if not schedule.paused:
        schedule = await run_in_threadpool(_republish, publisher, topics, schedule, paused=True)
    return public(schedule)


@router.post(
    "/{schedule_id}/resume",
    response_model=SchedulePublic,
    summary="Resume a paused schedule: slots passed while paused do not fire",
    responses=errors(404, 503),
)
async def resume_schedule(
    schedule_id: str,
    request: Request,
    principal: PrincipalDep,
    publisher: PublisherDep,
    topics: TopicsDep,
) -> SchedulePublic:
    view = await run_in_threadpool(schedules_view, request)
    schedule = _owned(view, schedule_id, principal)
    if schedule.paused:
        # Milliseconds, as the record keeps them: the floor must not fall inside a slot's ms.
        now = datetime.now(UTC)
        resumed = now - timedelta(microseconds=now.microsecond % 1000)
        schedule = await run_in_threadpool(
            _republish, publisher, topics, schedule, paused=False, resumed_at=resumed
        )
    return public(schedule)


@router.delete(
    "/{schedule_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a schedule: nothing fires from it any more",
    responses=errors(404, 503),
)
async def delete_schedule(
    schedule_id: str,
    request: Request,
    principal: PrincipalDep,
    publisher: PublisherDep,
    topics: TopicsDep,
) -> Response:
    view = await run_in_threadpool(schedules_view, request)
    _owned(view, schedule_id, principal)
    await run_in_threadpool(publisher.publish_tombstone, topics.schedules, schedule_id)
    return Response(status_code=204)
