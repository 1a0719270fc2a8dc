"""Bodies and answers of ``/v1/mutations`` and ``/v1/workflows/{id}/improvement``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.config import MAX_WAIT_MS
from api.models.common import StrictFraction, VersionNumber

__all__ = [
    "ACTOR_PATTERN",
    "DecisionCreate",
    "GraphChange",
    "ImprovementPublic",
    "ImprovementUpdate",
    "MutationAccepted",
    "MutationCreate",
    "MutationDetail",
    "MutationEventPublic",
    "MutationPublic",
    "MutationsPublic",
    "VersionEffectPublic",
]

ACTOR_PATTERN = r"^(user:[^\s:]{1,100}|optimizer(:[A-Za-z0-9._-]{1,100})?)$"

_WAIT = Field(
    default=None,
    ge=0,
    le=MAX_WAIT_MS,
    description=f"Wait up to this many ms for the outcome (max {MAX_WAIT_MS}): 200 with the "
    "proposal when the request took effect, 409 when the processor refused it.",
)


class GraphChange(BaseModel):
    """One operation on the base version's definition (``workflows.mutations``)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["add_step", "remove_step", "update_params", "replace_node"]
    step_id: str = Field(min_length=1, max_length=200)
    data: Any = Field(
        default_factory=dict,
        description="add_step: the step; update_params: the new params; replace_node: "
        '{"node": "http.request@^2"}; remove_step: {}',
    )


class MutationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workflow_id: str = Field(min_length=1, max_length=200)
    base_version: VersionNumber | None = Field(
        default=None, description="The version the diff applies to (default: the latest)."
    )
    changes: list[GraphChange] = Field(min_length=1, max_length=200)
    rationale: str = Field(min_length=1, max_length=10_000)
    evidence: Any = Field(default=None, description="Free JSON supporting the proposal.")
    author: str | None = Field(
        default=None,
        pattern=ACTOR_PATTERN,
        description="'user:<name>' or 'optimizer' (default: user:<X-Reflux-User>).",
    )
    mutation_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9._-]{1,100}$", description="Default: a new UUID."
    )
    wait_ms: int | None = _WAIT


class DecisionCreate(BaseModel):
    """Body of approve / reject / rollback / keep (all optional)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=10_000)
    canary_weight: StrictFraction | None = Field(
        default=None,
        gt=0.0,
        description="approve only: share of new runs for the new version (default 0.2).",
    )
    actor: str | None = Field(
        default=None, pattern=ACTOR_PATTERN, description="Default: user:<X-Reflux-User>."
    )
    wait_ms: int | None = _WAIT


class MutationAccepted(BaseModel):
    mutation_id: str
    request_id: str
    status: Literal["accepted"] = "accepted"


class MutationEventPublic(BaseModel):
    status: str
    actor: str | None
    reason: str | None
    request_id: str | None
    occurred_at: datetime


class VersionEffectPublic(BaseModel):
    version: int
    runs: int
    succeeded: int
    failed: int
    running: int
    success_rate: float | None
    p50_ms: float | None
    p95_ms: float | None


class MutationPublic(BaseModel):
    mutation_id: str
    workflow_id: str
    base_version: int
    status: str
    author: str
    rationale: str
    canary_weight: float | None
    applied_version: int | None
    previous_version: int | None = Field(
        description="What new runs got before the apply: the canary's other side, and what a "
        "rollback restores (usually the base version)."
    )
    reason: str | None
    created_at: datetime
    updated_at: datetime


class MutationDetail(MutationPublic):
    changes: list[dict[str, Any]]
    evidence: Any
    report: Any = Field(description="The validation report: checks run, their errors, not_run.")
    score: float | None
    history: list[MutationEventPublic]
    effect: list[VersionEffectPublic] | None = Field(
        description="Once applied: runs of the previous and the new version started since "
        "the apply (counts, success rate, p50/p95 duration)."
    )


class MutationsPublic(BaseModel):
    data: list[MutationPublic]
    count: int


class ImprovementUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: Literal["off", "propose", "auto"]
    wait_ms: int | None = _WAIT


class ImprovementPublic(BaseModel):
    workflow_id: str
    policy: str
    actor: str | None
    updated_at: datetime | None
    request_id: str | None = None
