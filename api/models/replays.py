"""Request and response bodies of ``/v1/replays`` (A/B replay, docs/replay.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.models.common import IsoDateTime, VersionNumber

__all__ = [
    "CandidateIn",
    "PolicyIn",
    "ReplayAccepted",
    "ReplayCreate",
    "ReplayPublic",
    "ReplaysPublic",
    "SelectionIn",
]


class SelectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workflow_version: VersionNumber | None = Field(None, description="Only runs of this version.")
    since: IsoDateTime | None = None
    until: IsoDateTime | None = None
    status: str | None = Field(None, description="Only runs that ended so (e.g. succeeded).")
    inputs_filter: str | None = Field(None, description="JMESPath on inputs; truthy selects.")
    sample_size: int = Field(
        50, strict=True, ge=1, le=10_000, description="The newest N matching runs."
    )


class CandidateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workflow_version: VersionNumber | None = Field(None, description="A registered version.")
    mutation_id: str | None = Field(None, description="A proposal: its derived definition.")
    node_pins: dict[str, str] = Field(default_factory=dict, description="node -> exact version")


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_node: dict[str, Literal["record", "stub", "skip", "live"]] = Field(default_factory=dict)
    stubs: dict[str, Any] = Field(default_factory=dict)
    pace: Literal["free", "recorded"] = Field(
        default="free",
        description="Fold mode: 'free' replays every run at once; 'recorded' at most as many "
        "at once as the originals had in flight (a fair latency comparison).",
    )


class ReplayCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workflow_id: str = Field(min_length=1)
    selection: SelectionIn = Field(default_factory=lambda: SelectionIn.model_validate({}))
    candidate: CandidateIn
    policy: PolicyIn = Field(default_factory=lambda: PolicyIn.model_validate({}))
    confidence: float = Field(0.95, strict=True, ge=0.5, lt=1.0, allow_inf_nan=False)


class ReplayAccepted(BaseModel):
    replay_id: str
    status: str = "queued"


class ReplayPublic(BaseModel):
    replay_id: str
    workflow_id: str
    mutation_id: str | None
    requested_by: str
    status: str
    total: int | None
    done: int
    verdict: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    spec: dict[str, Any] | None = None
    report: dict[str, Any] | None = Field(None, description="The aggregate report.")
    runs: list[dict[str, Any]] | None = Field(None, description="Per-run reports (include_runs).")


class ReplaysPublic(BaseModel):
    data: list[ReplayPublic]
    count: int
