"""Living graphs: a mutation request on a running run, and the run's current graph."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.config import MAX_WAIT_MS

__all__ = [
    "GraphMutationPublic",
    "GraphStepPublic",
    "MutationCreate",
    "MutationType",
    "RunGraphPublic",
]

MutationType = Literal["add_step", "remove_step", "update_params", "replace_node"]


class MutationCreate(BaseModel):
    """One change to a run's graph (``GraphMutation`` plus who asked for it and why)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "type": "add_step",
                    "step_id": "notify",
                    "data": {"node": "transform@^1", "needs": ["fetch"], "params": {"v": 1}},
                    "reason": "tell ops when fetch is done",
                    "requested_by": "alice",
                },
                {"type": "update_params", "step_id": "fetch", "data": {"url": "https://b.test"}},
                {
                    "type": "replace_node",
                    "step_id": "fetch",
                    "data": {"node": "http.request", "node_version": "^1"},
                },
                {"type": "remove_step", "step_id": "cleanup"},
            ]
        },
    )

    type: MutationType
    step_id: str = Field(min_length=1, max_length=200)
    data: dict[str, Any] = Field(
        default_factory=dict,
        description="add_step: the step as written in a definition (`id` optional); "
        "update_params: the step's new params (replaces them); replace_node: "
        '`{"node": "http.request", "node_version": "^2"}`; remove_step: `{}`.',
    )
    reason: str | None = Field(default=None, max_length=1000)
    requested_by: str | None = Field(default=None, max_length=200)
    wait_ms: int | None = Field(
        default=None,
        ge=0,
        le=MAX_WAIT_MS,
        description=f"Same as the `wait_ms` query parameter (max {MAX_WAIT_MS}).",
    )


class GraphStepPublic(BaseModel):
    step_id: str
    node: str = Field(description="As the graph names it, e.g. `http.request@^1`.")
    needs: list[str]
    params: Any = None
    when: str | None = None
    status: str = Field(
        description="The projected step status; `pending` while it has not been scheduled."
    )
    attempt: int = 0
    node_version: str | None = Field(
        default=None, description="The concrete version dispatched, once scheduled."
    )


class GraphMutationPublic(BaseModel):
    seq: int = Field(description="The GraphMutated event's position in the run log.")
    type: MutationType
    step_id: str
    data: Any
    mutation_id: str | None = None
    command_id: str | None = None
    requested_by: str | None = None
    reason: str | None = None
    at: datetime


class RunGraphPublic(BaseModel):
    run_id: str
    status: str
    last_seq: int
    definition: dict[str, Any] = Field(description="The run's current workflow definition.")
    steps: list[GraphStepPublic]
    mutations: list[GraphMutationPublic]
