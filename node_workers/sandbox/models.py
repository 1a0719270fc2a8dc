"""The seed's CodeRunRequest / CodeRunResult contract as pydantic models.

Field names follow the seed (``memMb``, ``timeoutSec``, ``code_ref``); Python code uses the
snake-case attribute names. Everything a request can get wrong is checked here, before any file is
written or any process started, so a bad request fails with a field path
(``params.entry: ...``) and never half-runs.
"""

from __future__ import annotations

import posixpath
import re
from typing import Final, Literal, Self

from pydantic import Field, field_validator, model_validator

from node_workers.node import NodeModel

__all__ = [
    "MAX_CODE_BYTES",
    "CodeRef",
    "CodeRunError",
    "CodeRunRequest",
    "CodeRunResult",
    "InputFile",
    "Lang",
    "Limits",
    "Network",
    "OutputFile",
    "RunMetrics",
    "RunStatus",
    "check_relative_path",
]

Lang = Literal["python", "node", "bash"]
Network = Literal["off", "limited", "full"]
RunStatus = Literal["ok", "error", "timeout"]

MAX_CODE_BYTES: Final = 1024 * 1024
_MAX_INPUTS: Final = 64
# Names become paths under /work/in and object keys: keep them boring (no spaces, no control
# characters, no shell metacharacters) so no layer has to quote them.
_SAFE_SEGMENT: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_URI: Final = re.compile(r"^(s3://[a-z0-9][a-z0-9.-]{1,62}/.+|file:///.+)$")
_PACKAGE: Final = re.compile(r"^[A-Za-z0-9@][A-Za-z0-9@/._~=<>!+-]*$")


def check_relative_path(value: str, *, what: str) -> str:
    """``value`` if it is a relative POSIX path of safe segments (no ``..``, no absolute path)."""
    if not value or value.startswith("/") or "\\" in value:
        raise ValueError(f"Expected {what} to be a relative path like 'main.py', but got {value!r}")
    if any(part in {".", ".."} for part in value.split("/")):
        raise ValueError(f"Expected {what} without '.' or '..' segments, but got {value!r}")
    if posixpath.normpath(value) != value:
        raise ValueError(f"Expected {what} to be a normalized path, but got {value!r}")
    bad = [part for part in value.split("/") if not _SAFE_SEGMENT.fullmatch(part)]
    if bad:
        raise ValueError(
            f"Expected {what} segments of letters, digits, '.', '_' and '-' (not starting with "
            f"'.' or '-'), but got {bad[0]!r} in {value!r}"
        )
    if len(value) > 255:
        raise ValueError(f"Expected {what} of at most 255 characters, but got {len(value)}")
    return value


class CodeRef(NodeModel):
    """Code stored in the object store (the seed's ``{s3Url}``)."""

    uri: str = Field(alias="s3Url")
    """The seed spells it ``s3Url``; ``uri`` is accepted too (``populate_by_name``)."""

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if not _URI.fullmatch(value):
            raise ValueError(f"Expected an object store URI (s3://bucket/key), but got {value!r}")
        return value


class InputFile(NodeModel):
    name: str
    """Path under ``/work/in`` (e.g. ``data.csv`` or ``raw/a.json``)."""
    url: str
    """Object store URI to download it from (``s3://reflux/...``)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_relative_path(value, what="an input name")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not _URI.fullmatch(value):
            raise ValueError(f"Expected an object store URI (s3://bucket/key), but got {value!r}")
        return value


class Limits(NodeModel):
    cpu: float = Field(default=1.0, gt=0, le=16)
    """vCPUs. Docker: a CPU quota (capped at the engine's CPU count). bubblewrap: a CPU-seconds
    budget of ``cpu * timeoutSec`` (RLIMIT_CPU) plus ``nice``; it cannot cap parallelism
    without cgroups."""
    mem_mb: int = Field(default=512, ge=16, le=16384, alias="memMb")
    timeout_sec: float = Field(default=60.0, gt=0, le=3600, alias="timeoutSec")
    network: Network = "off"
    processes: int = Field(default=128, ge=8, le=4096)
    """Maximum processes and threads at once (RLIMIT_NPROC / pids limit): contains fork bombs.
    Not in the seed; node's runtime alone uses about a dozen threads."""


class CodeRunRequest(NodeModel):
    lang: Lang
    entry: str
    """The file the code is written to and run, relative to ``/work`` (``main.py``)."""
    code: str | None = None
    code_ref: CodeRef | None = None
    inputs: list[InputFile] = Field(default_factory=list, max_length=_MAX_INPUTS)
    packages: list[str] = Field(default_factory=list, max_length=64)
    """pip (python) or npm (node) requirement strings; need ``limits.network`` other than off."""
    limits: Limits = Field(default_factory=Limits)

    @field_validator("entry")
    @classmethod
    def _entry(cls, value: str) -> str:
        check_relative_path(value, what="entry")
        top = value.split("/", 1)[0]
        if top in {"in", "out"}:
            raise ValueError(f"Expected entry outside in/ and out/ (reserved), but got {value!r}")
        return value

    @field_validator("code")
    @classmethod
    def _code(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) > MAX_CODE_BYTES:
            raise ValueError(
                f"Expected code of at most {MAX_CODE_BYTES} bytes (use code_ref for more), "
                f"but got {len(value.encode())}"
            )
        return value

    @field_validator("packages")
    @classmethod
    def _packages(cls, value: list[str]) -> list[str]:
        for spec in value:
            # A leading '-' would be an option to pip/npm (e.g. --index-url): refuse it.
            if not _PACKAGE.fullmatch(spec) or len(spec) > 200:
                raise ValueError(
                    f"Expected a package requirement like 'requests==2.32.3', but got {spec!r}"
                )
        return value

    @field_validator("inputs")
    @classmethod
    def _unique_inputs(cls, value: list[InputFile]) -> list[InputFile]:
        names = [item.name for item in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"Expected unique input names, but {duplicates} repeat")
        # 'a' and 'a/b' cannot both exist: one would be a file and a directory at once.
        for name in names:
            for other in names:
                if other.startswith(name + "/"):
                    raise ValueError(f"Expected input {name!r} not to be a parent of {other!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.code is None) == (self.code_ref is None):
            raise ValueError("Expected exactly one of code and code_ref")
        if self.packages and self.limits.network == "off":
            raise ValueError(
                "Expected no packages with limits.network 'off': packages cannot be installed "
                "without network; vendor them into the code or enable network"
            )
        if self.packages and self.lang == "bash":
            raise ValueError("Expected no packages for lang 'bash': there is no package manager")
        return self


class OutputFile(NodeModel):
    name: str
    """Path relative to ``/work/out``."""
    url: str
    size: int


class RunMetrics(NodeModel):
    duration_ms: float
    peak_mem_mb: float | None
    """Largest resident set of one sandboxed process; ``None`` where the backend cannot tell."""
    exit_code: int
    """The entry's exit code; ``128 + n`` when signal ``n`` killed it (shell convention);
    ``-1`` when the sandbox killed it on a wall-clock timeout."""


class CodeRunError(NodeModel):
    error_class: str
    """``CodeFailed``, ``CodeTimeout``, ``OutputTooLarge``, ``TooManyOutputs``."""
    message: str


class CodeRunResult(NodeModel):
    status: RunStatus
    outputs: list[OutputFile]
    logs: str
    """stdout and stderr interleaved, truncated to the log cap (head and tail kept)."""
    logs_truncated: bool = False
    metrics: RunMetrics
    backend: Literal["docker", "bubblewrap"]
    error: CodeRunError | None = None
    """Why ``status`` is not ok (None when ok)."""
