"""The node artifact: a node version that carries its own code (ADR 0070, node artifacts).

An artifact is one immutable JSON document -- manifest, code files, tests, provenance -- stored in
the object store under its SHA-256 digest and named by it in the catalog. Built-in and
``--module`` nodes are compiled into a worker; an artifact node is data, run by the generic
artifact worker group inside the ``code.run`` sandbox. The forge (``node_workers.forge``)
produces artifacts from an OpenAPI operation or from a description; people can write one by hand.

This module is the pure contract: the models, their checks (field paths in every error), the
canonical bytes and the digest. No I/O.

The code contract (what runs inside the sandbox; the guest module is
``node_workers/artifacts/guest/reflux_node``, importable there as ``reflux_node``):

- ``files[entry]`` (default ``node.py``) defines ``run(input: dict, ctx: reflux_node.Context) ->
  dict``. ``input`` has been validated against ``manifest.input_schema``; the returned value is
  validated against ``manifest.output_schema`` by the worker (a mismatch fails the attempt with
  ``OutputSchemaViolation`` naming the field path).
- ``ctx.http(method, url, *, headers=None, params=None, json=None, data=None, timeout=10.0)``
  returns a ``reflux_node.Response`` (``status``, ``headers``, ``body`` bytes, ``.json()``,
  ``.text()``). The sandbox has no network: requests go over a unix socket to the worker's
  allow-listing egress proxy, which lets through only hosts in ``manifest.egress`` that the
  platform's egress policy also permits; a refused host raises ``reflux_node.EgressDenied``
  with the proxy's reason, and the attempt fails with error class ``EgressDenied``.
- ``ctx.secret(name)`` returns a secret declared in ``manifest.secrets`` and granted to the
  run's tenant and node; anything else raises ``reflux_node.NodeFailure``.
- ``ctx.log(*values)`` writes a line to the attempt's log.
- ``raise reflux_node.NodeFailure(message, error_class="...", retryable=False)`` fails the attempt
  with that class; any other exception fails it with ``NodeCodeError`` and its message.
- Only the work folder (``/work``) is writable; a write elsewhere fails the attempt with error
  class ``SandboxPolicy`` and the refused path.
- ``files[tests]`` (default ``test_node.py``, optional) holds ``test_*`` functions without
  arguments, plain ``assert``s, importing the entry module by its name (``import node``) and
  ``reflux_node.testing.fake_context(responses=..., secrets=...)`` for a context whose ``http``
  answers from canned responses (keyed ``"METHOD URL"``, URL without the query string, or a
  callable) and records ``ctx.requests``; tests run in the sandbox with no network at all.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from foundation.errors import NonRetryableError
from node_workers.egress.policy import parse_allow_entry
from node_workers.sandbox.models import check_relative_path
from schemas.base import canonical_json
from workflows.node_io import field_path
from workflows.semver import Version

__all__ = [
    "ARTIFACT_FORMAT",
    "DIGEST_PREFIX",
    "MAX_ARTIFACT_BYTES",
    "ArtifactError",
    "ArtifactLimits",
    "ArtifactManifest",
    "NodeArtifact",
    "artifact_bytes",
    "artifact_digest",
    "artifact_key",
    "parse_artifact",
]

ARTIFACT_FORMAT: Final = "reflux.node-artifact/1"
DIGEST_PREFIX: Final = "sha256:"
MAX_ARTIFACT_BYTES: Final = 2 * 1024 * 1024
"""Code and tests of one node; a bigger artifact is refused at parse time."""

_NODE_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)+$")
_SECRET_NAME: Final = re.compile(r"^[A-Z][A-Z0-9_]*$")
_PY_MODULE_FILE: Final = re.compile(r"^[a-z_][a-z0-9_]*\.py$")


class ArtifactError(NonRetryableError, ValueError):
    """An artifact that cannot be parsed or does not keep the contract; the message names the
    field path (``manifest.egress[1]: ...``). A ``ValueError`` too, as before."""

    error_class = "InvalidArtifact"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArtifactLimits(_Strict):
    """What one attempt may use in the sandbox (bounded again by the worker's maxima)."""

    cpu: float = Field(default=0.5, gt=0, le=2)
    """CPU cores."""
    memory_mb: int = Field(default=256, ge=32, le=2048)
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    """Wall clock of one attempt in the sandbox."""


class ArtifactManifest(_Strict):
    """What the catalog and the worker know about the node without running its code."""

    name: str
    """Dotted lowercase node name with at least two segments, e.g. ``acme.quote``."""
    version: str
    """Semver of this node version; an artifact is never changed, only superseded."""
    description: str = Field(min_length=1, max_length=2000)
    input_schema: dict[str, Any]
    """JSON Schema (2020-12) of the params."""
    output_schema: dict[str, Any]
    """JSON Schema (2020-12) of the output."""
    side_effects: bool = False
    idempotent: bool = True
    egress: tuple[str, ...] = ()
    """Hosts the code may call (``host``, ``host:port``, ``*.domain``, an address or CIDR: the
    egress policy's allow-entry syntax). Empty: no network."""
    secrets: tuple[str, ...] = ()
    """Secret names the code reads with ``ctx.secret``."""
    limits: ArtifactLimits = ArtifactLimits()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NODE_NAME.fullmatch(value):
            raise ValueError(
                f"Expected a dotted lowercase node name like 'acme.quote', but got {value!r}"
            )
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        Version.parse(value)
        return value

    @field_validator("egress")
    @classmethod
    def _egress(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            parse_allow_entry(entry)
        return value

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [name for name in value if not _SECRET_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"Expected secret names like 'ACME_TOKEN', but got {bad[0]!r}")
        return value

    @field_validator("input_schema", "output_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            raise ValueError(f"Expected a valid JSON Schema: {exc.message}") from None
        return value


class NodeArtifact(_Strict):
    """One node version with its code: the unit stored, digested, registered and run."""

    format: Literal["reflux.node-artifact/1"] = ARTIFACT_FORMAT
    manifest: ArtifactManifest
    language: Literal["python"] = "python"
    entry: str = "node.py"
    """The file that defines ``run(input, ctx)``."""
    tests: str | None = "test_node.py"
    """The file with ``test_*`` functions, or None when the artifact ships no tests."""
    files: dict[str, str]
    """Relative path -> UTF-8 text."""
    provenance: dict[str, Any] = Field(default_factory=dict)
    """How the artifact was made (forge: source, prompt, model, rounds, test results); part of
    the digest, so it cannot be rewritten after registration."""

    @field_validator("entry", "tests")
    @classmethod
    def _module_file(cls, value: str | None) -> str | None:
        if value is not None and not _PY_MODULE_FILE.fullmatch(value):
            raise ValueError(f"Expected a top-level Python file like 'node.py', but got {value!r}")
        return value

    @field_validator("files")
    @classmethod
    def _files(cls, value: dict[str, str]) -> dict[str, str]:
        for path in value:
            check_relative_path(path, what="a file path")
        return value

    @model_validator(mode="after")
    def _entry_and_tests_present(self) -> Self:
        if self.entry not in self.files:
            raise ValueError(f"Expected files to contain the entry {self.entry!r}")
        if self.tests is not None and self.tests not in self.files:
            raise ValueError(f"Expected files to contain the tests {self.tests!r}")
        if self.tests == self.entry:
            raise ValueError("Expected the tests in another file than the entry")
        return self

    @property
    def node_key(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version}"


def parse_artifact(value: Any) -> NodeArtifact:
    """The artifact in ``value`` (a dict, or JSON text/bytes); :class:`ArtifactError` naming the
    first bad field path otherwise."""
    if isinstance(value, (bytes, str)):
        size = len(value.encode() if isinstance(value, str) else value)
        if size > MAX_ARTIFACT_BYTES:
            raise ArtifactError(
                f"artifact: Expected at most {MAX_ARTIFACT_BYTES} bytes, but got {size}"
            )
        try:
            return NodeArtifact.model_validate_json(value)
        except ValidationError as exc:
            raise _artifact_error(exc) from None
    try:
        artifact = NodeArtifact.model_validate(value)
    except ValidationError as exc:
        raise _artifact_error(exc) from None
    size = len(artifact_bytes(artifact))
    if size > MAX_ARTIFACT_BYTES:
        raise ArtifactError(
            f"artifact: Expected at most {MAX_ARTIFACT_BYTES} bytes, but got {size}"
        )
    return artifact


def _artifact_error(exc: ValidationError) -> ArtifactError:
    first = exc.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    return ArtifactError(f"{field_path(first['loc']) or 'artifact'}: {message}")


def artifact_bytes(artifact: NodeArtifact) -> bytes:
    """The canonical bytes stored and digested (sorted keys, no whitespace, UTF-8)."""
    return canonical_json(artifact.model_dump(mode="json")).encode()


def artifact_digest(artifact: NodeArtifact) -> str:
    """``sha256:<hex>`` of :func:`artifact_bytes`."""
    return DIGEST_PREFIX + hashlib.sha256(artifact_bytes(artifact)).hexdigest()


def artifact_key(digest: str) -> str:
    """Object-store key of the artifact with ``digest`` (content-addressed: never overwritten
    with other bytes)."""
    if not digest.startswith(DIGEST_PREFIX) or len(digest) != len(DIGEST_PREFIX) + 64:
        raise ArtifactError(f"Expected a digest like 'sha256:<64 hex>', but got {digest!r}")
    return f"artifacts/sha256/{digest.removeprefix(DIGEST_PREFIX)}.json"
