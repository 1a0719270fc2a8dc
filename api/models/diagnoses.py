"""Answers of ``/v1/diagnoses``: the critic's findings as the historian stored them, the
proposals that answered them, and similar past incidents."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "DiagnosesPublic",
    "DiagnosisDetail",
    "DiagnosisPublic",
    "ProposalOutcomePublic",
    "SimilarIncidentPublic",
    "SimilarPublic",
]


class ProposalOutcomePublic(BaseModel):
    """A mutation proposal that answered the diagnosis (its ``evidence.diagnosis_id``)."""

    mutation_id: str
    workflow_id: str
    base_version: int
    author: str
    strategy: str | None
    status: str = Field(description="proposed ... applied, kept, rolled_back or rejected")
    rationale: str
    changes: list[dict[str, Any]]
    predicted_effect: dict[str, Any] | None
    replay_verdict: str | None = Field(description="The A/B replay's verdict, when replayed")
    effect: dict[str, Any] | None = Field(
        description="What was measured: the evidence of the keep / rollback decision"
    )
    applied_version: int | None
    reason: str | None
    proposed_at: datetime
    updated_at: datetime


class DiagnosisPublic(BaseModel):
    diagnosis_id: str
    subject: str = Field(
        description="'workflow:<id>/step:<step_id>', 'workflow:<id>' or 'node:<name>@<version>'"
    )
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
    traces_seen: int
    explanation: str


class DiagnosesPublic(BaseModel):
    data: list[DiagnosisPublic]
    count: int


class DiagnosisDetail(DiagnosisPublic):
    metrics: dict[str, float]
    example_run_ids: list[str]
    evidence: Any
    context: str = Field(description="The text the historian embedded")
    embedding_model: str
    proposals: list[ProposalOutcomePublic] = Field(description="Newest first")


class SimilarIncidentPublic(DiagnosisPublic):
    similarity: float = Field(description="Cosine similarity of the context embeddings")
    score: float = Field(description="The ranking score: similarity, plus a bonus if kept")
    kept: bool = Field(description="A proposal that answered it was kept")
    proposals: list[ProposalOutcomePublic]


class SimilarPublic(BaseModel):
    diagnosis_id: str
    embedding_model: str
    data: list[SimilarIncidentPublic]
    count: int
