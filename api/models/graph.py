"""Living graphs: a mutation request on a running run, and the run's current graph."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from api.config import MAX_WAIT_MS

__all__ = [
    "MAX_MUTATIONS",
    "GraphMutationPublic",
    "GraphStepPublic",
    "MutationBatchCreate",
    "MutationCreate",
    "MutationOperation",
    "MutationRequest",
    "MutationType",
    "RunGraphPublic",
]

MutationType = Literal["add_step", "remove_step", "update_params", "replace_node"]


_DATA_DOC = (
    "add_step: the step as written in a definition (`id` optional); "
    "update_params: the step's new params (replaces them); replace_node: "
    '`{"node": "http.request", "node_version": "^2"}`; remove_step: `{}`.'
)

MAX_MUTATIONS: Final = 200
"""Operations in one atomic list (one Kafka record, one scheduler decision)."""


class MutationOperation(BaseModel):
    """One operation of an atomic list (``GraphMutation``)."""

    model_config = ConfigDict(extra="forbid")

    type: MutationType
    step_id: str = Field(min_length=1, max_length=200)
    data: dict[str, Any] = Field(default_factory=dict, description=_DATA_DOC)


class MutationCreate(MutationOperation):
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

    reason: str | None = Field(default=None, max_length=1000)
    requested_by: str | None = Field(default=None, max_length=200)
    wait_ms: int | None = Field(
        default=None,
        ge=0,
        le=MAX_WAIT_MS,
        description=f"Same as the `wait_ms` query parameter (max {MAX_WAIT_MS}).",
    )


class MutationBatchCreate(BaseModel):
    """Several changes applied all or nothing, in order (each sees the graph the previous ones
    left); the scheduler records one ``GraphMutated`` per operation, or refuses the whole list
    naming ``mutations[i]``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "mutations": [
                        {
                            "type": "add_step",
                            "step_id": "clean",
                            "data": {"node": "transform@^1", "needs": ["fetch"]},
                        },
                        {"type": "remove_step", "step_id": "store"},
                        {
                            "type": "add_step",
                            "step_id": "store",
                            "data": {
                                "node": "transform@^1",
                                "needs": ["clean"],
                                "params": {"data": "{{ steps.clean.output }}"},
                            },
                        },
                    ],
                    "reason": "clean the data before storing it",
                    "requested_by": "alice",
                }
            ]
        },
    )

    mutations: list[MutationOperation] = Field(min_length=1, max_length=MAX_MUTATIONS)
    reason: str | None = Field(default=None, max_length=1000)
    requested_by: str | None = Field(default=None, max_length=200)
    wait_ms: int | None = Field(
        default=None,
        ge=0,
        le=MAX_WAIT_MS,
        description=f"Same as the `wait_ms` query parameter (max {MAX_WAIT_MS}).",
    )


def _one_form(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A body with ``mutations`` is a list, anything else one mutation: validate it as that
    model only, so an error's path is the body's (``mutations[1].type``), not the union's."""
    if isinstance(value, (MutationCreate, MutationBatchCreate)):
        return value
    if isinstance(value, dict) and "mutations" in value:
        return MutationBatchCreate.model_validate(value)
    return MutationCreate.model_validate(value)


MutationRequest = Annotated[MutationCreate | MutationBatchCreate, WrapValidator(_one_form)]
"""``POST /v1/runs/{id}/mutations``'s body: one mutation or ``{"mutations": [...]}``."""


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
