"""``/v1/forge``: the node forge (issue 17, docs/forge.md, ADR 0071). Each route makes an
artifact, tests it in the sandbox and registers it as a draft; promotion is the catalog's
(``POST /v1/nodes/{name}/versions/{version}/promote``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.auth.guard import PrincipalDep
from api.deps import SettingsDep
from api.errors import ApiError, UnavailableError
from api.models.common import errors
from node_workers.forge.llm import ForgeLlmAuthError, ForgeLlmError, forge_new, forge_summary
from node_workers.forge.pipeline import ForgeRefused

__all__ = ["router"]

router = APIRouter(prefix="/forge", tags=["forge"])


# -- POST /v1/forge/new: from a description, with an LLM ------------------------------------------


class ForgeNewCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "description": "Total of an order line: price times quantity, rounded to cents",
                    "examples": [{"input": {"price": 2.5, "qty": 3}, "output": {"total": 7.5}}],
                }
            ]
        },
    )

    description: str = Field(min_length=1, max_length=4000, description="What the node does.")
    examples: list[dict[str, Any]] = Field(
        default_factory=list, max_length=20, description="Inputs and expected outputs."
    )
    model: str | None = Field(
        default=None, min_length=1, description="Model name (default: REFLUX_FORGE_LLM_MODEL)."
    )
    rounds: int | None = Field(
        default=None, ge=1, le=10, description="Answers asked at most before refusing."
    )
    name: str | None = Field(default=None, description="The node's name (default: the model's).")


class ForgedTestPublic(BaseModel):
    name: str
    passed: bool
    message: str


class ForgedNodePublic(BaseModel):
    name: str
    version: str
    status: str
    digest: str
    code_uri: str
    rounds: int
    tests: list[ForgedTestPublic]
    timings: dict[str, float]
    provenance: dict[str, Any]
    """The artifact's provenance without the prompt's text (its sha256 is there)."""


class ForgeRefusedError(ApiError):
    error_class = "ForgeRefused"
    status_code = 422


@router.post(
    "/new",
    status_code=201,
    response_model=ForgedNodePublic,
    summary="Forge a node from a description with an LLM; registered as a draft",
    responses=errors(409, 422, 503),
)
async def forge_new_node(
    body: ForgeNewCreate, *, settings: SettingsDep, principal: PrincipalDep
) -> ForgedNodePublic:
    """Asks the operator's model (``REFLUX_FORGE_LLM_*``) for manifest, code and tests, runs the
    tests in the sandbox, feeds failures back for at most ``rounds`` answers, then registers the
    artifact as a draft of the caller's tenant. 422 with the last reason when the forge refuses
    (tests still failing, limits or egress the operator does not allow); 503 when the model
    cannot be asked. Blocking: a forge takes seconds to minutes."""
    try:
        result = await run_in_threadpool(
            forge_new,
            settings,
            body.description,
            examples=body.examples,
            model=body.model,
            max_rounds=body.rounds,
            name=body.name,
            tenant=principal.tenant,
        )
    except ForgeRefused as exc:
        raise ForgeRefusedError(str(exc)) from exc
    except (ForgeLlmError, ForgeLlmAuthError) as exc:
        raise UnavailableError(f"The forge's model cannot be asked: {exc}") from exc
    return ForgedNodePublic.model_validate(forge_summary(result))
