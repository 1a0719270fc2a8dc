"""Node catalog models: register a version, read nodes and versions, lifecycle answers."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.models.common import PG_INT_MAX, StrictFraction

__all__ = [
    "NODE_NAME_PATTERN",
    "SEMVER_PATTERN",
    "NodeSummaryPublic",
    "NodeVersionAccepted",
    "NodeVersionCreate",
    "NodeVersionPublic",
    "NodeVersionsPublic",
    "NodesPublic",
    "RolloutUpdate",
]

NODE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$"
SEMVER_PATTERN = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"

Status = Literal["draft", "staging", "production", "deprecated"]


class NodeVersionCreate(BaseModel):
    """A new node version for the catalog (its code is deployed by workers of its major)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NODE_NAME_PATTERN, max_length=200, examples=["http.request"])
    version: str = Field(pattern=SEMVER_PATTERN, max_length=64, examples=["2.0.0"])
    manifest: dict[str, Any] = Field(
        default_factory=dict,
        description="Flags and input/output JSON schemas (what `Node.manifest()` returns); "
        "an optional `category` groups nodes.",
    )
    status: Literal["draft", "staging", "production"] = Field(
        default="draft", description="Start stage; promote it later."
    )
    rollout_weight: StrictFraction = Field(
        default=0.0, description="Share of range-resolved runs once in production."
    )
    code_uri: str | None = Field(default=None, max_length=2000)

    @field_validator("version")
    @classmethod
    def _parts_fit(cls, version: str) -> str:
        # The catalog read model orders versions by casting major.minor.patch to integer[].
        core = version.split("-", 1)[0].split(".")
        if any(int(part) > PG_INT_MAX for part in core):
            raise ValueError(
                f"Expected major, minor and patch of at most {PG_INT_MAX}, but got {version!r}"
            )
        return version


class RolloutUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: StrictFraction = Field(examples=[0.1])


class NodeVersionAccepted(BaseModel):
    """The entry is on the ``nodes`` topic; the read model and the schedulers follow shortly."""

    name: str
    version: str
    status: Status
    rollout_weight: float
    event_id: str
    applied: bool = Field(
        description="True when the read model shows this entry already (with wait_ms)."
    )


class NodeVersionPublic(BaseModel):
    name: str
    version: str
    status: Status
    rollout_weight: float
    manifest: dict[str, Any]
    code_url: str | None = None
    created_at: datetime
    updated_at: datetime


class NodeVersionsPublic(BaseModel):
    name: str
    data: list[NodeVersionPublic]
    count: int


class NodeSummaryPublic(BaseModel):
    name: str
    latest_version: str = Field(description="Highest registered version, any status.")
    category: str
    version_count: int
    production_versions: list[str] = Field(description="Versions ranges can route to.")
    created_at: datetime
    updated_at: datetime


class NodesPublic(BaseModel):
    data: list[NodeSummaryPublic]
    count: int


class ArtifactTestPublic(BaseModel):
    name: str
    passed: bool
    message: str = ""


class ArtifactPublished(BaseModel):
    """A node artifact stored by digest and registered (or already registered, unchanged)."""

    name: str
    version: str
    digest: str = Field(description="sha256:<hex> of the artifact's canonical bytes.")
    code_uri: str = Field(description="Where the object store holds the artifact.")
    status: Status
    created: bool = Field(description="False when the catalog already had this artifact.")
    event_id: str | None = None
    applied: bool = False
    tests: list[ArtifactTestPublic] = Field(default_factory=list)
    sandbox_s: float = Field(default=0.0, description="Seconds the tests ran in the sandbox.")
