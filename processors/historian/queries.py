"""Reads of the historian's tables (migration 009): diagnoses by filters, one diagnosis, the
proposals that answered diagnoses, and nearest neighbours by cosine distance on the HNSW index.

Used by :class:`~processors.historian.postgres.PostgresHistorian` and the API
(``/v1/diagnoses``). ``OPERATOR(public.<=>)`` names pgvector's cosine distance wherever the
session's search_path points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg.rows import class_row

from foundation.tenancy import PLATFORM_TENANT
from processors.historian.lookup import PastIncident, PastProposal
from processors.historian.ranking import candidates_for, rank
from projections.postgres.identifiers import DEFAULT_SCHEMA, table

__all__ = [
    "DiagnosisRow",
    "ProposalRow",
    "embedding_of",
    "get_diagnosis",
    "list_diagnoses",
    "nearest",
    "proposals_for",
    "similar_incidents",
]

_HNSW_DEFAULT_EF: Final = 40

_DIAGNOSIS_COLUMNS: Final = (
    "diagnosis_id, subject, kind, severity, detector, workflow_id, workflow_version, step_id, "
    "node, node_version, error_class, detected_at, occurred_at, traces_seen, metrics, "
    "example_run_ids, evidence, explanation, context, embedding_model"
)
_PROPOSAL_COLUMNS: Final = (
    "mutation_id, diagnosis_id, workflow_id, base_version, author, strategy, status, rationale, "
    "changes, predicted_effect, replay_verdict, effect, applied_version, reason, proposed_at, "
    "updated_at"
)


@dataclass(frozen=True, slots=True)
class DiagnosisRow:
    diagnosis_id: str
    subject: str
    kind: str
    severity: str
    detector: str
    workflow_id: str | None
    workflow_version: int | None
    step_id: str | None
    node: str | None
    node_version: str | None
    error_class: str | None
    detected_at: datetime
    occurred_at: datetime
    traces_seen: int
    metrics: dict[str, float]
    example_run_ids: list[str]
    evidence: Any
    explanation: str
    context: str
    embedding_model: str


@dataclass(frozen=True, slots=True)
class ProposalRow:
    mutation_id: str
    diagnosis_id: str | None
    workflow_id: str
    base_version: int
    author: str
    strategy: str | None
    status: str
    rationale: str
    changes: list[dict[str, Any]]
    predicted_effect: dict[str, Any] | None
    replay_verdict: str | None
    effect: dict[str, Any] | None
    applied_version: int | None
    reason: str | None
    proposed_at: datetime
    updated_at: datetime

    def past(self) -> PastProposal:
        """As the optimizer sees it: the measured effect with the replay verdict folded in."""
        effect: dict[str, Any] | None = None
        if isinstance(self.effect, dict):
            effect = dict(self.effect)
        elif self.effect is not None:
            effect = {"evidence": self.effect}
        if self.replay_verdict is not None:
            effect = {**(effect or {}), "replay_verdict": self.replay_verdict}
        return PastProposal(
            mutation_id=self.mutation_id,
            strategy=self.strategy,
            status=self.status,
            changes=list(self.changes),
            effect=effect,
        )


def _of_tenant(schema: str) -> str:
    """SQL true for a diagnosis of the tenant given as its one parameter: its workflow's tenant;
    a node's diagnosis (no workflow) aggregates every tenant's runs: the platform's (ADR 0051)."""
    diagnoses, workflows = table(schema, "diagnoses"), table(schema, "workflows")
    return (
        f"COALESCE((SELECT w.tenant FROM {workflows} w "
        f"WHERE w.workflow_id = {diagnoses}.workflow_id LIMIT 1), '{PLATFORM_TENANT}') = %s"
    )


def list_diagnoses(
    conn: psycopg.Connection[Any],
    *,
    workflow_id: str | None = None,
    kind: str | None = None,
    severity: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    schema: str = DEFAULT_SCHEMA,
    tenant: str | None = None,
) -> list[DiagnosisRow]:
    """Newest first (by detection time); ``tenant``: that tenant's only."""
    where: list[str] = []
    params: list[Any] = []
    if tenant is not None:
        where.append(_of_tenant(schema))
        params.append(tenant)
    for column, value in (("workflow_id", workflow_id), ("kind", kind), ("severity", severity)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if since is not None:
        where.append("detected_at >= %s")
        params.append(since)
    sql = f"SELECT {_DIAGNOSIS_COLUMNS} FROM {table(schema, 'diagnoses')}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY detected_at DESC, diagnosis_id LIMIT %s"
    params.append(limit)
    with conn.cursor(row_factory=class_row(DiagnosisRow)) as cursor:
        return cursor.execute(sql, params).fetchall()


def get_diagnosis(
    conn: psycopg.Connection[Any], diagnosis_id: str, *, schema: str = DEFAULT_SCHEMA
) -> DiagnosisRow | None:
    with conn.cursor(row_factory=class_row(DiagnosisRow)) as cursor:
        return cursor.execute(
            f"SELECT {_DIAGNOSIS_COLUMNS} FROM {table(schema, 'diagnoses')} "
            "WHERE diagnosis_id = %s",
            (diagnosis_id,),
        ).fetchone()


def embedding_of(
    conn: psycopg.Connection[Any], diagnosis_id: str, *, schema: str = DEFAULT_SCHEMA
) -> tuple[str, str] | None:
    """The stored embedding (pgvector text) and its model."""
    row = conn.execute(
        f"SELECT embedding::text, embedding_model FROM {table(schema, 'diagnoses')} "
        "WHERE diagnosis_id = %s",
        (diagnosis_id,),
    ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def proposals_for(
    conn: psycopg.Connection[Any], diagnosis_ids: Sequence[str], *, schema: str = DEFAULT_SCHEMA
) -> dict[str, list[ProposalRow]]:
    """The proposals that answered each diagnosis, newest first."""
    if not diagnosis_ids:
        return {}
    with conn.cursor(row_factory=class_row(ProposalRow)) as cursor:
        rows = cursor.execute(
            f"SELECT {_PROPOSAL_COLUMNS} FROM {table(schema, 'diagnosis_proposals')} "
            "WHERE diagnosis_id = ANY(%s) ORDER BY proposed_at DESC, mutation_id",
            (list(diagnosis_ids),),
        ).fetchall()
    out: dict[str, list[ProposalRow]] = {}
    for row in rows:
        assert row.diagnosis_id is not None
        out.setdefault(row.diagnosis_id, []).append(row)
    return out


def nearest(
    conn: psycopg.Connection[Any],
    vector: str,
    model: str,
    limit: int,
    schema: str = DEFAULT_SCHEMA,
    *,
    tenant: str | None = None,
) -> list[tuple[DiagnosisRow, float]]:
    """The ``limit`` diagnoses nearest to ``vector`` (same model; of ``tenant`` when given),
    with their similarity."""
    only = f"AND {_of_tenant(schema)} " if tenant is not None else ""
    with conn.transaction():
        # HNSW returns at most ef_search rows per scan: raise it for larger candidate sets.
        conn.execute(
            "SELECT set_config('hnsw.ef_search', %s, true)",
            (str(max(_HNSW_DEFAULT_EF, limit)),),
        )
        rows = conn.execute(
            f"SELECT {_DIAGNOSIS_COLUMNS}, "
            "1 - (embedding OPERATOR(public.<=>) %s::public.vector) AS similarity "
            f"FROM {table(schema, 'diagnoses')} WHERE embedding_model = %s {only}"
            "ORDER BY embedding OPERATOR(public.<=>) %s::public.vector LIMIT %s",
            (vector, model, *([tenant] if tenant is not None else []), vector, limit),
        ).fetchall()
    return [(DiagnosisRow(*row[:-1]), float(row[-1])) for row in rows]


def similar_incidents(
    conn: psycopg.Connection[Any],
    vector: str,
    model: str,
    k: int,
    *,
    exclude: str | None = None,
    min_similarity: float = 0.0,
    schema: str = DEFAULT_SCHEMA,
    tenant: str | None = None,
) -> list[tuple[DiagnosisRow, PastIncident]]:
    """The ``k`` best past incidents for an embedding (:func:`~processors.historian.ranking.rank`
    over the nearest :func:`~processors.historian.ranking.candidates_for` ``k``)."""
    found = nearest(
        conn, vector, model, candidates_for(k) + (1 if exclude else 0), schema, tenant=tenant
    )
    proposals = proposals_for(conn, [row.diagnosis_id for row, _ in found], schema=schema)
    rows = {row.diagnosis_id: row for row, _ in found}
    incidents = [
        PastIncident(
            diagnosis_id=row.diagnosis_id,
            kind=row.kind,
            subject=row.subject,
            similarity=similarity,
            explanation=row.explanation,
            proposals=tuple(p.past() for p in proposals.get(row.diagnosis_id, [])),
        )
        for row, similarity in found
    ]
    ranked = rank(incidents, k, exclude=exclude, min_similarity=min_similarity)
    return [(rows[i.diagnosis_id], i) for i in ranked]
