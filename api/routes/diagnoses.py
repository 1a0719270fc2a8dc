"""``/v1/diagnoses``: the critic's findings stored by the historian (ADR 0034, migration 009),
each with the proposals that answered it, and the past incidents most like one of them.

Read-only: diagnoses are written by the critic on the ``diagnoses`` topic, and the historian's
projector stores them. ``/similar`` uses the stored embedding of the diagnosis (no model in the
API) and the historian's ranking (similarity, plus a bonus when a fix was kept).
"""

from __future__ import annotations

from datetime import UTC
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.auth.guard import PrincipalDep
from api.db import with_conn
from api.deps import ApiSettingsDep, PoolDep
from api.errors import NotFoundError
from api.models.common import IsoDateTime, errors
from api.models.diagnoses import (
    DiagnosesPublic,
    DiagnosisDetail,
    DiagnosisPublic,
    ProposalOutcomePublic,
    SimilarIncidentPublic,
    SimilarPublic,
)
from processors.historian import queries as hq
from processors.historian.ranking import score
from schemas.models import DiagnosisKind, DiagnosisSeverity

__all__ = ["router"]

router = APIRouter(prefix="/diagnoses", tags=["diagnoses"])

_LIST_FIELDS = tuple(DiagnosisPublic.model_fields)


def _public(row: hq.DiagnosisRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in _LIST_FIELDS}


def _proposal(row: hq.ProposalRow) -> ProposalOutcomePublic:
    return ProposalOutcomePublic.model_validate(row, from_attributes=True)


def _not_found(diagnosis_id: str) -> NotFoundError:
    return NotFoundError(
        f"diagnosis {diagnosis_id!r} not found (the historian stores what the critic "
        "published on the diagnoses topic; is `reflux historian` running?)"
    )


@router.get("", response_model=DiagnosesPublic, summary="List diagnoses", responses=errors(422))
async def list_diagnoses(
    pool: PoolDep,
    api: ApiSettingsDep,
    principal: PrincipalDep,
    *,
    workflow_id: Annotated[str | None, Query(max_length=200)] = None,
    kind: DiagnosisKind | None = None,
    severity: DiagnosisSeverity | None = None,
    since: Annotated[
        IsoDateTime | None,
        Query(description="Detected at or after (ISO 8601; without a zone: UTC)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DiagnosesPublic:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    rows = await with_conn(
        pool,
        api.pool_timeout_s,
        lambda conn: hq.list_diagnoses(
            conn,
            workflow_id=workflow_id,
            kind=None if kind is None else kind.value,
            severity=None if severity is None else severity.value,
            since=since,
            limit=limit,
            schema=api.read_schema,
            tenant=principal.tenant,
        ),
    )
    data = [DiagnosisPublic(**_public(row)) for row in rows]
    return DiagnosesPublic(data=data, count=len(data))


@router.get(
    "/{diagnosis_id:path}/similar",
    response_model=SimilarPublic,
    summary="Past incidents like this diagnosis, best first, with what was tried for them",
    responses=errors(404, 422, 503),
)
async def similar(
    diagnosis_id: str,
    pool: PoolDep,
    api: ApiSettingsDep,
    principal: PrincipalDep,
    *,
    k: Annotated[int, Query(ge=1, le=50, description="How many")] = 5,
    min_similarity: Annotated[float, Query(ge=-1.0, le=1.0)] = 0.0,
) -> SimilarPublic:
    def load(conn: Any) -> SimilarPublic | None:
        stored = hq.embedding_of(conn, diagnosis_id, schema=api.read_schema)
        if stored is None:
            return None
        vector, model = stored
        found = hq.similar_incidents(
            conn,
            vector,
            model,
            k,
            exclude=diagnosis_id,
            min_similarity=min_similarity,
            schema=api.read_schema,
            tenant=principal.tenant,  # past incidents of the caller's tenant only
        )
        proposals = hq.proposals_for(
            conn, [row.diagnosis_id for row, _ in found], schema=api.read_schema
        )
        data = [
            SimilarIncidentPublic(
                **_public(row),
                similarity=incident.similarity,
                score=score(incident),
                kept=incident.kept,
                proposals=[_proposal(p) for p in proposals.get(row.diagnosis_id, [])],
            )
            for row, incident in found
        ]
        return SimilarPublic(
            diagnosis_id=diagnosis_id, embedding_model=model, data=data, count=len(data)
        )

    answer = await with_conn(pool, api.pool_timeout_s, load)
    if answer is None:
        raise _not_found(diagnosis_id)
    return answer


@router.get(
    "/{diagnosis_id:path}",
    response_model=DiagnosisDetail,
    summary="A diagnosis: evidence, the embedded context, and the proposals that answered it",
    responses=errors(404, 503),
)
async def get_diagnosis(diagnosis_id: str, pool: PoolDep, api: ApiSettingsDep) -> DiagnosisDetail:
    def load(conn: Any) -> DiagnosisDetail | None:
        row = hq.get_diagnosis(conn, diagnosis_id, schema=api.read_schema)
        if row is None:
            return None
        proposals = hq.proposals_for(conn, [diagnosis_id], schema=api.read_schema)
        return DiagnosisDetail(
            **_public(row),
            metrics=row.metrics,
            example_run_ids=row.example_run_ids,
            evidence=row.evidence,
            context=row.context,
            embedding_model=row.embedding_model,
            proposals=[_proposal(p) for p in proposals.get(diagnosis_id, [])],
        )

    detail = await with_conn(pool, api.pool_timeout_s, load)
    if detail is None:
        raise _not_found(diagnosis_id)
    return detail
