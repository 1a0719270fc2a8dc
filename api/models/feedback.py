"""Feedback on runs: a quality score in [0, 1] that becomes a trace of the run (ADR 0035)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.quality import COMMENT_CHARS, SCORE_MAX, SCORE_MIN

__all__ = ["FeedbackAccepted", "FeedbackCreate", "QualityScorePublic", "RunQualityPublic"]


class FeedbackCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"score": 0.2, "label": "wrong", "comment": "VAT id"}]},
    )

    score: float = Field(
        strict=True,
        ge=SCORE_MIN,
        le=SCORE_MAX,
        allow_inf_nan=False,
        description="Quality of the run's result: 0 = wrong/bad .. 1 = right/good.",
    )
    label: str | None = Field(
        default=None, min_length=1, max_length=64, description="A short category: wrong, slow."
    )
    comment: str | None = Field(default=None, max_length=COMMENT_CHARS)
    step_id: str | None = Field(
        default=None, min_length=1, description="The step the feedback is about (default: the run)."
    )


class FeedbackAccepted(BaseModel):
    feedback_id: str
    run_id: str
    event_id: str
    """The trace's event id on the traces topic."""
    score: float


class QualityScorePublic(BaseModel):
    step_id: str
    """The checker step, the step a feedback was about, or ``""`` (feedback on the run)."""
    source: Literal["checker", "feedback"]
    score: float
    at: datetime
    feedback_id: str | None
    label: str | None
    comment: str | None


class RunQualityPublic(BaseModel):
    run_id: str
    workflow_id: str
    workflow_version: int
    score_avg: float | None
    """Mean of every score below; null when there is none."""
    data: list[QualityScorePublic]
