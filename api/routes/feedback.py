"""``/v1/runs/{run_id}/feedback``: a quality score on a run, as a trace of that run (ADR 0035).

``POST`` checks the run (404) and the optional step against the run's definition and projected
steps (422 at ``body.step_id``), then publishes one feedback trace (:func:`schemas.quality.
feedback_trace`) on the traces topic and answers 202 once the broker has it. ClickHouse ingests it
like every trace; ``GET`` reads the run's scores back from there (checker steps and feedback).
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api.deps import ApiSettingsDep, ClickHouseDep, PublisherDep, ReadModelDep
from api.errors import FieldIssue, NotFoundError, RequestInvalidError, UnavailableError
from api.models.common import errors
from api.models.feedback import (
    FeedbackAccepted,
    FeedbackCreate,
    QualityScorePublic,
    RunQualityPublic,
)
from api.readmodel import ReadModel
from projections.clickhouse import ClickHouseError
from projections.traces import queries as trace_queries
from schemas.quality import feedback_trace

__all__ = ["router"]

router = APIRouter(prefix="/runs", tags=["runs"])


def _run_not_found(run_id: str) -> NotFoundError:
    return NotFoundError(f"run {run_id!r} not found")


async def _known_steps(
    read_model: ReadModel, workflow_id: str, version: int, run_id: str
) -> set[str]:
    """Steps of the run's definition, plus steps a graph mutation added (projected steps)."""
    known: set[str] = set()
    workflow = await read_model.workflow(workflow_id, version)
    if workflow is not None and isinstance(workflow.definition, dict):
        known |= {str(s.get("id")) for s in workflow.definition.get("steps", [])}
    detail = await read_model.run_detail(run_id)
    if detail is not None:
        known |= {step.step_id for step in detail.steps}
    return known


@router.post(
    "/{run_id}/feedback",
    status_code=202,
    response_model=FeedbackAccepted,
    summary="Score a run (or one of its steps): the score becomes a trace with quality_score",
    responses=errors(404, 422, 503),
)
async def post_feedback(
    run_id: str,
    body: FeedbackCreate,
    read_model: ReadModelDep,
    publisher: PublisherDep,
) -> FeedbackAccepted:
    """``score`` in [0, 1]; ``label`` (<= 64 chars) and ``comment`` (<= 2000) optional;
    ``step_id`` when the feedback is about one step. Any run status: feedback usually comes after
    the run ended."""
    run = await read_model.run(run_id)
    if run is None:
        raise _run_not_found(run_id)
    if body.step_id is not None:
        known = await _known_steps(read_model, run.workflow_id, run.workflow_version, run_id)
        if body.step_id not in known:
            listed = ", ".join(sorted(known)[:20])
            raise RequestInvalidError(
                [
                    FieldIssue(
                        "step_id",
                        f"run {run_id!r} has no step {body.step_id!r} (its steps: {listed})",
                        "value_error.unknown_step",
                    )
                ]
            )
    trace = feedback_trace(
        run_id=run_id,
        workflow_id=run.workflow_id,
        workflow_version=run.workflow_version,
        score=body.score,
        at=datetime.now(UTC),
        step_id=body.step_id,
        label=body.label,
        comment=body.comment,
    )
    await run_in_threadpool(publisher.publish_trace, trace)
    return FeedbackAccepted(
        feedback_id=trace.context["feedback_id"],
        run_id=run_id,
        event_id=trace.event_id,
        score=body.score,
    )


@router.get(
    "/{run_id}/feedback",
    response_model=RunQualityPublic,
    summary="A run's quality scores: feedback and checker steps, oldest first",
    responses=errors(404, 503),
)
async def get_feedback(
    run_id: str, read_model: ReadModelDep, api: ApiSettingsDep, ch: ClickHouseDep
) -> RunQualityPublic:
    """Read from the traces store: a feedback shows up once ClickHouse ingested its trace
    (a flush interval, ~0.25 s)."""
    run = await read_model.run(run_id)
    if run is None:
        raise _run_not_found(run_id)

    def query() -> list[trace_queries.QualityScore]:
        return trace_queries.run_quality(ch, run_id, database=api.clickhouse_database)

    try:
        scores = await run_in_threadpool(query)
    except ClickHouseError as exc:
        raise UnavailableError(f"ClickHouse could not answer the quality query: {exc}") from None
    data = [_public(s) for s in scores]
    return RunQualityPublic(
        run_id=run_id,
        workflow_id=run.workflow_id,
        workflow_version=run.workflow_version,
        score_avg=sum(s.score for s in data) / len(data) if data else None,
        data=data,
    )


def _public(score: trace_queries.QualityScore) -> QualityScorePublic:
    return QualityScorePublic(
        step_id=score.step_id,
        source="feedback" if score.source == "feedback" else "checker",
        score=score.score,
        at=score.at,
        feedback_id=score.feedback_id,
        label=score.label,
        comment=score.comment,
    )
