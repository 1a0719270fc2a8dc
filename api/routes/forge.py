"""``/v1/forge``: new nodes generated from an OpenAPI operation (or a description), tested in
the sandbox and registered as drafts of the caller's tenant (ADR 0071, docs/forge.md).

A forge call blocks for the sandbox test run (seconds); the draft it registers then goes
through the catalog lifecycle (``/v1/nodes/{name}/versions/{version}/promote``). Nothing is
registered when generation fails (422 naming the document's field path) or a generated test
fails (422 listing the failing tests). A version the catalog already has with other code is
409: versions are immutable, ship a new one.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Response
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from api.auth.guard import PrincipalDep
from api.config import ApiSettings
from api.deps import ApiSettingsDep, PoolDep, SettingsDep
from api.errors import ConflictError, FieldIssue, RequestInvalidError, UnavailableError
from api.models.common import errors
from api.models.forge import (
    ForgedLlmNodePublic,
    ForgedNodePublic,
    ForgeNewCreate,
    ForgeOpenApiCreate,
    ForgeTestPublic,
    ForgeTimingsPublic,
)
from api.routes.nodes import WaitQuery, _check_name_owner, _version_row
from api.waiting import poll_until
from node_workers.artifacts.bundle import NodeArtifact, artifact_digest
from node_workers.artifacts.publish import ArtifactImmutableError, check_immutable
from node_workers.forge.llm import (
    ForgeLlmAuthError,
    ForgeLlmError,
    forge_artifact,
    forge_summary,
    register_forged,
)
from node_workers.forge.openapi import (
    OpenApiError,
    OperationNotFoundError,
    artifact_from_openapi,
    load_openapi_text,
)
from node_workers.forge.pipeline import ForgeRefused, ForgeResult, test_and_register
from processors.node_catalog import catalog_key

__all__ = ["router"]

router = APIRouter(prefix="/forge", tags=["forge"])


def _invalid(field: str, message: str, kind: str) -> RequestInvalidError:
    return RequestInvalidError([FieldIssue(field, message, kind)])


def _generate(body: ForgeOpenApiCreate) -> NodeArtifact:
    where = "document" if body.document is not None else "text"
    try:
        document = (
            body.document if body.document is not None else load_openapi_text(body.text or "")
        )
        return artifact_from_openapi(
            document,
            body.operation_id,
            name=body.name,
            version=body.version,
            secret=body.secret,
            server_url=body.server_url,
        )
    except OperationNotFoundError as exc:
        raise _invalid("operation_id", str(exc), exc.error_class) from exc
    except OpenApiError as exc:  # the message names the field path inside the document
        raise _invalid(where, str(exc), exc.error_class) from exc


def forged_public(result: ForgeResult, warnings: list[str]) -> ForgedNodePublic:
    m = result.artifact.manifest
    return ForgedNodePublic(
        name=m.name,
        version=m.version,
        status=result.status,
        digest=result.digest,
        code_uri=result.code_uri,
        created=result.created,
        tests=[
            ForgeTestPublic(name=t.name, passed=t.passed, message=t.message)
            for t in result.report.tests
        ],
        timings=ForgeTimingsPublic(
            generate_s=result.timings.generate_s,
            sandbox_s=result.timings.sandbox_s,
            register_s=result.timings.register_s,
            total_s=result.timings.total_s,
        ),
        egress=list(m.egress),
        secrets=list(m.secrets),
        warnings=warnings,
    )


def refused(exc: ForgeRefused, *, reason_at: str | None = None) -> RequestInvalidError:
    """422 naming each failing test (``tests.<name>``), after the reason at ``reason_at`` when
    given; the reason at ``tests`` when no test failed (a sandbox policy)."""
    failing = [t for t in exc.report.tests if not t.passed]
    issues = [FieldIssue(f"tests.{t.name}", t.message, exc.error_class) for t in failing]
    if reason_at is not None:
        issues.insert(0, FieldIssue(reason_at, str(exc), exc.error_class))
    return RequestInvalidError(issues or [FieldIssue("tests", str(exc), exc.error_class)])


async def _visible(
    pool: ConnectionPool[Any], api: ApiSettings, name: str, version: str, wait_ms: int
) -> None:
    """Returns once the catalog's read model shows ``name@version`` (or ``wait_ms`` passed), so a
    promote right after is judged against it."""

    async def projected() -> bool | None:
        return True if await _version_row(pool, api, name, version) is not None else None

    await poll_until(projected, wait_ms, api.poll_interval_s)


@router.post(
    "/openapi",
    status_code=201,
    response_model=ForgedNodePublic,
    summary="Generate a node from an OpenAPI operation; test it in the sandbox; register a draft",
    responses=errors(409, 422, 503),
)
async def forge_openapi(
    body: ForgeOpenApiCreate,
    *,
    response: Response,
    pool: PoolDep,
    api: ApiSettingsDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    wait_ms: WaitQuery = None,
) -> ForgedNodePublic:
    """Typed HTTP node from ``operation_id``: input = its parameters and ``body``, output = its
    success response's JSON schema, auth bound to a secret, egress = the server's host:port,
    tests from the document's examples (run in the sandbox with no network). 201 with the
    draft's digest, test results and timings (200 and ``created: false`` when the catalog has
    this very artifact already); with ``wait_ms``, once the catalog's read model shows it (so
    a promote right after is judged against it)."""
    started = time.monotonic()
    artifact = await run_in_threadpool(_generate, body)
    generate_s = time.monotonic() - started
    m = artifact.manifest
    await _check_name_owner(pool, api, m.name, principal.tenant)
    existing = await _version_row(pool, api, m.name, m.version)
    digest = artifact_digest(artifact)
    if existing is not None:
        try:
            check_immutable(catalog_key(m.name, m.version), existing.manifest, digest)
        except ArtifactImmutableError as exc:
            raise ConflictError(str(exc)) from exc
    try:
        result = await run_in_threadpool(
            test_and_register, settings, artifact, tenant=principal.tenant, generate_s=generate_s
        )
    except ForgeRefused as exc:
        raise refused(exc) from exc
    except ArtifactImmutableError as exc:  # registered by someone else meanwhile
        raise ConflictError(str(exc)) from exc
    if wait_ms:
        await _visible(pool, api, m.name, m.version, wait_ms)
    if not result.created:  # this very artifact was registered before: nothing changed
        response.status_code = 200
    response.headers["Location"] = f"/v1/nodes/{m.name}/versions/{m.version}"
    warnings: Any = artifact.provenance.get("warnings") or []
    return forged_public(result, [str(w) for w in warnings])


# -- POST /v1/forge/new: from a description, with an LLM (docs/forge.md#from-a-description) -------


@router.post(
    "/new",
    status_code=201,
    response_model=ForgedLlmNodePublic,
    summary="Forge a node from a description with an LLM; test it in the sandbox; register a draft",
    responses=errors(409, 422, 503),
)
async def forge_new_node(
    body: ForgeNewCreate,
    *,
    response: Response,
    pool: PoolDep,
    api: ApiSettingsDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    wait_ms: WaitQuery = None,
) -> ForgedLlmNodePublic:
    """Asks the operator's model (``REFLUX_FORGE_LLM_*``) for manifest, code and tests, runs
    the tests in the sandbox (no network) and feeds failures back, for at most ``rounds``
    answers; registers the first passing artifact as a draft of the caller's tenant. 422 with
    the last reason when the forge refuses (tests still failing, limits or egress the operator
    does not allow); 503 when the model cannot be asked. Blocks for the whole forge (seconds to
    minutes)."""
    try:
        outcome = await run_in_threadpool(
            lambda: forge_artifact(
                settings,
                body.description,
                examples=body.examples,
                model=body.model,
                max_rounds=body.rounds,
                name=body.name,
                version=body.version,
                tenant=principal.tenant,
            )
        )
    except ForgeRefused as exc:
        raise refused(exc, reason_at="description") from exc  # the last round's reason
    except (ForgeLlmError, ForgeLlmAuthError) as exc:
        raise UnavailableError(f"The forge's model cannot be asked: {exc}") from exc
    m = outcome.artifact.manifest
    await _check_name_owner(pool, api, m.name, principal.tenant)
    try:
        result = await run_in_threadpool(
            register_forged, settings, outcome, tenant=principal.tenant
        )
    except ArtifactImmutableError as exc:  # that version exists with other code
        raise ConflictError(str(exc)) from exc
    if wait_ms:
        await _visible(pool, api, m.name, m.version, wait_ms)
    response.headers["Location"] = f"/v1/nodes/{m.name}/versions/{m.version}"
    summary = forge_summary(result)
    return ForgedLlmNodePublic(
        **forged_public(result, []).model_dump(),
        rounds=summary["rounds"],
        provenance=summary["provenance"],
    )
