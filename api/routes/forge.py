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
from starlette.concurrency import run_in_threadpool

from api.auth.guard import PrincipalDep
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


def refused(exc: ForgeRefused) -> RequestInvalidError:
    """422 naming each failing test (``tests.<name>``), or the sandbox's reason."""
    failing = [t for t in exc.report.tests if not t.passed]
    issues = [FieldIssue(f"tests.{t.name}", t.message, exc.error_class) for t in failing]
    return RequestInvalidError(issues or [FieldIssue("tests", str(exc), exc.error_class)])


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
            _test_and_register, settings, artifact, principal.tenant, generate_s
        )
    except ForgeRefused as exc:
        raise refused(exc) from exc
    except ArtifactImmutableError as exc:  # registered by someone else meanwhile
        raise ConflictError(str(exc)) from exc
    if wait_ms:

        async def projected() -> bool | None:
            row = await _version_row(pool, api, m.name, m.version)
            return True if row is not None else None

        await poll_until(projected, wait_ms, api.poll_interval_s)
    if not result.created:  # this very artifact was registered before: nothing changed
        response.status_code = 200
    response.headers["Location"] = f"/v1/nodes/{m.name}/versions/{m.version}"
    warnings: Any = artifact.provenance.get("warnings") or []
    return forged_public(result, [str(w) for w in warnings])


def _test_and_register(
    settings: Any, artifact: NodeArtifact, tenant: str, generate_s: float
) -> ForgeResult:
    return test_and_register(settings, artifact, tenant=tenant, generate_s=generate_s)


# -- POST /v1/forge/new: from a description, with an LLM (docs/forge.md#from-a-description) -------


def _refused_by_the_forge(exc: ForgeRefused) -> RequestInvalidError:
    """422: why (the last round's reason) at ``description``, and each failing test."""
    failing = [t for t in exc.report.tests if not t.passed]
    return RequestInvalidError(
        [
            FieldIssue("description", str(exc), exc.error_class),
            *(FieldIssue(f"tests.{t.name}", t.message, exc.error_class) for t in failing),
        ]
    )


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
        raise _refused_by_the_forge(exc) from exc
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

        async def projected() -> bool | None:
            row = await _version_row(pool, api, m.name, m.version)
            return True if row is not None else None

        await poll_until(projected, wait_ms, api.poll_interval_s)
    response.headers["Location"] = f"/v1/nodes/{m.name}/versions/{m.version}"
    summary = forge_summary(result)
    return ForgedLlmNodePublic(
        **forged_public(result, []).model_dump(),
        rounds=summary["rounds"],
        provenance=summary["provenance"],
    )
