"""Workflow models: a registration answer, version views and list wrappers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "WorkflowCreated",
    "WorkflowPublic",
    "WorkflowSummaryPublic",
    "WorkflowValidated",
    "WorkflowVersionPublic",
    "WorkflowVersionsPublic",
    "WorkflowsPublic",
]


class WorkflowCreated(BaseModel):
    """A version was allocated and ``WorkflowRegistered`` is on the broker; the read model shows
    it once the projector has caught up."""

    workflow_id: str = Field(examples=["order-sync"])
    version: int = Field(ge=1, examples=[3])
    registered_at: datetime


class WorkflowValidated(BaseModel):
    """A dry run's answer: the definition is valid; registering it now would create
    ``version``."""

    workflow_id: str = Field(examples=["order-sync"])
    version: int = Field(ge=1, description="The version registering it now would allocate.")
    definition: dict[str, Any] = Field(description="The normalised definition (JSON).")


class WorkflowVersionPublic(BaseModel):
    workflow_id: str
    version: int
    definition: dict[str, Any] = Field(description="The normalised definition (JSON).")
    registered_at: datetime
    registered_by: str | None = None


class WorkflowSummaryPublic(BaseModel):
    workflow_id: str
    latest_version: int
    version_count: int
    registered_at: datetime = Field(description="When the latest version was registered.")
    registered_by: str | None = None


class WorkflowPublic(WorkflowSummaryPublic):
    definition: dict[str, Any] = Field(description="Definition of the latest version.")


class WorkflowsPublic(BaseModel):
    data: list[WorkflowSummaryPublic]
    count: int


class WorkflowVersionsPublic(BaseModel):
    workflow_id: str
    data: list[WorkflowVersionPublic]
    count: int
