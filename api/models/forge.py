"""Forge models: generate a node (OpenAPI operation, description), the registered draft."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.models.nodes import NODE_NAME_PATTERN, SEMVER_PATTERN

__all__ = [
    "ForgeNewCreate",
    "ForgeOpenApiCreate",
    "ForgeTestPublic",
    "ForgeTimingsPublic",
    "ForgedLlmNodePublic",
    "ForgedNodePublic",
]

SECRET_PATTERN = r"^[A-Z][A-Z0-9_]*$"  # noqa: S105 -- a name pattern, not a secret


class ForgeOpenApiCreate(BaseModel):
    """An OpenAPI 3.0/3.1 document (parsed, or as YAML/JSON text) and the operation to wrap."""

    model_config = ConfigDict(extra="forbid")

    document: dict[str, Any] | None = Field(
        default=None, description="The OpenAPI document as JSON (or give `text`)."
    )
    text: str | None = Field(
        default=None, description="The OpenAPI document as YAML or JSON text (or `document`)."
    )
    operation_id: str = Field(min_length=1, max_length=200, examples=["getPetById"])
    name: str | None = Field(
        default=None,
        pattern=NODE_NAME_PATTERN,
        max_length=200,
        description="Node name (default: `<api title slug>.<operation slug>`).",
    )
    version: str = Field(default="0.1.0", pattern=SEMVER_PATTERN, max_length=64)
    secret: str | None = Field(
        default=None,
        pattern=SECRET_PATTERN,
        max_length=200,
        description="Secret bound to the security scheme (default: derived from its name).",
    )
    server_url: str | None = Field(
        default=None, max_length=2000, description="Base URL instead of the document's servers."
    )

    @model_validator(mode="after")
    def _one_document(self) -> Self:
        if (self.document is None) == (self.text is None):
            raise ValueError("Expected exactly one of document and text")
        return self


class ForgeTestPublic(BaseModel):
    name: str
    passed: bool
    message: str = ""


class ForgeTimingsPublic(BaseModel):
    generate_s: float
    sandbox_s: float
    """The sandbox job's own wall time."""
    register_s: float
    total_s: float


class ForgedNodePublic(BaseModel):
    """The registered draft: promote it through ``/v1/nodes/{name}/versions/{version}``."""

    name: str
    version: str
    status: str
    digest: str
    code_uri: str
    created: bool
    """False when the catalog already had this very artifact (nothing new was registered)."""
    tests: list[ForgeTestPublic]
    timings: ForgeTimingsPublic
    egress: list[str]
    secrets: list[str]
    warnings: list[str] = Field(default_factory=list)
    """Examples left out of the generated tests (they do not fit their schema)."""


# -- POST /v1/forge/new: from a description, with an LLM ------------------------------------------


class ForgeNewCreate(BaseModel):
    """A description (and examples) of the node the operator's model should write."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "description": "Total of an order line: price times quantity",
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
        default=None,
        min_length=1,
        max_length=200,
        description="Model name (default: REFLUX_FORGE_LLM_MODEL).",
    )
    rounds: int | None = Field(
        default=None, ge=1, le=10, description="Answers asked at most before refusing."
    )
    name: str | None = Field(
        default=None,
        pattern=NODE_NAME_PATTERN,
        max_length=200,
        description="Node name (default: the model's choice).",
    )
    version: str | None = Field(
        default=None,
        pattern=SEMVER_PATTERN,
        max_length=64,
        description="Node version (default: the model's choice).",
    )


class ForgedLlmNodePublic(ForgedNodePublic):
    """The registered draft and how the model made it."""

    rounds: int
    """Answers used (the last one passed its tests)."""
    provenance: dict[str, Any]
    """The artifact's provenance (description, model, endpoint host, prompt sha256, every
    round's answer sha256 and test results, file digests, timings) without the prompt's text."""
