"""Forge models: generate a node (OpenAPI operation, description), the registered draft."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.models.nodes import NODE_NAME_PATTERN, SEMVER_PATTERN

__all__ = ["ForgeOpenApiCreate", "ForgeTestPublic", "ForgeTimingsPublic", "ForgedNodePublic"]

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
