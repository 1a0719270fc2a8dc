"""Replay for debugging, HTTP side (docs/replay.md): ``GET /v1/runs/{a}/diff/{b}`` (two runs
side by side), ``GET /v1/runs/{id}/export`` (a run bundle) and ``POST /v1/runs/import`` (load
a bundle into this REFLUX: its own topics and object store; ADR 0028).

Runs are read from the projection's ``run_events`` (the run log as projected) and folded by the
pure modules of :mod:`processors.replay`; claim-checked payloads come from the object store.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from api.auth.guard import PrincipalDep
from api.deps import ApiSettingsDep, ConnDep, PublisherDep, SettingsDep, TopicsDep
from api.errors import (
    ConflictError,
    FieldIssue,
    NotFoundError,
    ReplayFailedError,
    RequestInvalidError,
)
from api.models.common import errors
from api.publisher import Publisher
from api.store import WorkflowIdTakenError
from foundation.errors import NonRetryableError
from foundation.objectstore import BlobStore, S3BlobStore
from foundation.settings import Settings
from foundation.tenancy import DEFAULT_TENANT
from processors.replay.bundle import (
    Bundle,
    BundleError,
    BundlePayload,
    BundleWorkflow,
    child_run_ids,
    payload_refs,
    read_bundle,
    workflows_used,
    write_bundle,
)
from processors.replay.diff import diff_runs
from processors.replay.explain import UnknownEventError, event_from_json
from processors.scheduler.evolve import EvolveError
from projections.postgres import queries
from schemas.models import PayloadRef, RunStarted, WorkflowRegistered
from schemas.run_log import RunEvent
from streams.topics import TopicCatalog

__all__ = ["BUNDLE_MEDIA_TYPE", "router"]

router = APIRouter(prefix="/runs", tags=["runs"])

BUNDLE_MEDIA_TYPE = "application/vnd.reflux.run-bundle+gzip"
MAX_CHILD_RUNS = 1000
"""A bundle with children holds at most this many runs (a map over 10,000 items would not fit
in one HTTP answer; export such children one by one)."""


class RunDiffPublic(BaseModel):
    a: str
    b: str
    equal: bool
    different: int
    compared: int
    steps: list[str]
    fields: list[dict[str, Any]]


class RunImported(BaseModel):
    run_id: str
    runs: list[str]
    events: int
    workflows_registered: list[str]
    workflows_present: list[str]
    payloads: int


# -- reading --------------------------------------------------------------------------------------


def run_log(conn: Any, run_id: str, schema: str) -> list[RunEvent]:
    """The run's projected events, as event models (404 when the run is unknown)."""
    if queries.get_run(conn, run_id, schema=schema) is None:
        raise NotFoundError(f"run {run_id!r} not found")
    events: list[RunEvent] = []
    after = -1
    while True:
        page = queries.get_events(conn, run_id, after, queries.MAX_EVENTS_LIMIT, schema=schema)
        try:
            events += [event_from_json(row.event_type, row.payload) for row in page]
        except (UnknownEventError, ValidationError) as exc:
            raise ReplayFailedError(f"Expected run {run_id!r} to replay, but: {exc}") from exc
        if len(page) < queries.MAX_EVENTS_LIMIT:
            return events
        after = page[-1].seq


def blob_store(request: Request, settings: Settings) -> BlobStore:
    """The object store, created on first use (most API requests never need it)."""
    store: BlobStore | None = getattr(request.app.state, "replay_blobs", None)
    if store is None:
        store = S3BlobStore(settings)
        request.app.state.replay_blobs = store
    return store


def load_payload(store: BlobStore, ref: PayloadRef) -> Any:
    data = store.get(ref.uri)
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise NonRetryableError(
            f"Expected {ref.uri} to have sha256 {ref.sha256}, but it has {digest}",
            error_class="PayloadCorrupt",
        )
    return json.loads(data)


# -- diff -----------------------------------------------------------------------------------------


@router.get(
    "/{run_a}/diff/{run_b}",
    response_model=RunDiffPublic,
    summary="Two runs side by side: inputs, graph, each step's params, output, status, "
    "attempts and timings, with per-field `equal` flags",
    responses=errors(404, 503),
)
def get_diff(
    run_a: str,
    run_b: str,
    *,
    request: Request,
    conn: ConnDep,
    api: ApiSettingsDep,
    settings: SettingsDep,
) -> RunDiffPublic:
    events_a = run_log(conn, run_a, api.read_schema)
    events_b = run_log(conn, run_b, api.read_schema)
    store = blob_store(request, settings)
    try:
        diff = diff_runs(events_a, events_b, load_payload=lambda ref: load_payload(store, ref))
    except (EvolveError, ValueError) as exc:
        raise ReplayFailedError(
            f"Expected runs {run_a!r} and {run_b!r} to fold, but: {exc}"
        ) from exc
    return RunDiffPublic.model_validate(diff.to_json())


# -- export ---------------------------------------------------------------------------------------


def export_bundle(
    conn: Any, store: BlobStore, run_id: str, schema: str, *, with_children: bool
) -> Bundle:
    """The run (and, when asked, its child runs, transitively) with what replaying it needs."""
    logs: dict[str, list[RunEvent]] = {run_id: run_log(conn, run_id, schema)}
    queue = child_run_ids(logs[run_id]) if with_children else []
    while queue:
        child = queue.pop(0)
        if child in logs or queries.get_run(conn, child, schema=schema) is None:
            continue  # requested but never started (or not projected): nothing to carry
        if len(logs) > MAX_CHILD_RUNS:
            raise RequestInvalidError(
                [
                    FieldIssue(
                        "with_children",
                        f"Expected at most {MAX_CHILD_RUNS} child runs, "
                        "but the run has more; export them one by one",
                        "too_many",
                    )
                ],
                prefix=("query",),
            )
        logs[child] = run_log(conn, child, schema)
        queue += child_run_ids(logs[child])
    workflows: list[BundleWorkflow] = []
    for workflow_id, version in sorted({u for log in logs.values() for u in workflows_used(log)}):
        row = queries.get_workflow(conn, workflow_id, version, schema=schema)
        if row is not None:  # a run started from an inline definition has no registered one
            workflows.append(BundleWorkflow(workflow_id, version, row.definition))
    payloads = []
    for ref in {r.uri: r for log in logs.values() for r in payload_refs(log)}.values():
        data = store.get(ref.uri)
        payloads.append(
            BundlePayload(
                ref.uri, hashlib.sha256(data).hexdigest(), len(data), ref.content_type, data
            )
        )
    return Bundle(
        run_id=run_id,
        events=logs,
        workflows=workflows,
        payloads=payloads,
        exported_at=datetime.now(UTC),
    )


@router.get(
    "/{run_id}/export",
    summary="Export a run to one file: its log, the workflow versions it used, its "
    "claim-checked payloads and a manifest with checksums (ADR 0028)",
    response_class=Response,
    responses={
        200: {"content": {BUNDLE_MEDIA_TYPE: {}}, "description": "the run bundle"},
        **errors(404, 503),
    },
)
def export_run(
    run_id: str,
    *,
    request: Request,
    conn: ConnDep,
    api: ApiSettingsDep,
    settings: SettingsDep,
    with_children: Annotated[bool, Query(description="also export its child runs")] = False,
) -> Response:
    bundle = export_bundle(
        conn, blob_store(request, settings), run_id, api.read_schema, with_children=with_children
    )
    return Response(
        write_bundle(bundle),
        media_type=BUNDLE_MEDIA_TYPE,
        headers={"content-disposition": f'attachment; filename="{run_id}.reflux"'},
    )


# -- one claim-checked payload --------------------------------------------------------------------


@router.get(
    "/{run_id}/payload",
    summary="One claim-checked payload of a run (a large step output, params or map items), "
    "as JSON: the `uri` of a claim check the run's events hold",
    responses=errors(404, 422, 503),
)
def get_payload(
    run_id: str,
    *,
    request: Request,
    conn: ConnDep,
    api: ApiSettingsDep,
    settings: SettingsDep,
    uri: Annotated[str, Query(min_length=1, max_length=2000, description="The claim check's uri")],
) -> Any:
    """Loads only a uri that one of the run's own events names (so a caller who may read the
    run reads its payloads, and nothing else in the bucket), checked against its sha256."""
    refs = {ref.uri: ref for ref in payload_refs(run_log(conn, run_id, api.read_schema))}
    ref = refs.get(uri)
    if ref is None:
        raise NotFoundError(f"run {run_id!r} holds no claim check {uri!r}")
    try:
        return load_payload(blob_store(request, settings), ref)
    except json.JSONDecodeError as exc:
        raise ReplayFailedError(f"Expected {uri} to hold JSON, but: {exc}") from exc


# -- import ---------------------------------------------------------------------------------------


def import_bundle(
    bundle: Bundle,
    *,
    conn: Any,
    schema: str,
    store: BlobStore,
    bucket: str,
    publisher: Publisher,
    topics: TopicCatalog,
    tenant: str = DEFAULT_TENANT,
) -> RunImported:
    """Register the definitions, store the payloads, append the events to this REFLUX's run
    log (the projector projects them; a scheduler recovering the partition holds the run).

    Everything imported becomes ``tenant``'s (the importer's, ADR 0051), whatever tenant the
    bundle's records name: a bundle cannot place a run, and so its steps' secrets, in another
    tenant."""
    existing = [rid for rid in bundle.runs if queries.get_run(conn, rid, schema=schema) is not None]
    if existing:
        raise ConflictError(
            f"runs {existing} already exist here: imported runs keep their ids (ADR 0028); "
            "import into a REFLUX with another topic prefix"
        )
    for payload in bundle.payloads:
        owner, _, key = payload.uri.removeprefix("s3://").partition("/")
        if not payload.uri.startswith("s3://") or owner != bucket:
            raise RequestInvalidError(
                [
                    FieldIssue(
                        "payloads",
                        f"Expected payloads in bucket s3://{bucket}/, but the "
                        f"bundle holds {payload.uri}",
                        "bucket_mismatch",
                    )
                ]
            )
        store.put(key, payload.data, payload.content_type)
    registered: list[str] = []
    present: list[str] = []
    for wf in bundle.workflows:
        row = queries.get_workflow(conn, wf.workflow_id, wf.version, schema=schema)
        name = f"{wf.workflow_id}@{wf.version}"
        if row is not None:
            if row.tenant != tenant:
                raise WorkflowIdTakenError(wf.workflow_id)
            if row.definition != wf.definition:
                raise ConflictError(
                    f"workflow {name} exists here with another definition; import into a "
                    "REFLUX with another topic prefix"
                )
            present.append(name)
            continue
        record = WorkflowRegistered(
            workflow_id=wf.workflow_id,
            version=wf.version,
            definition=wf.definition,
            registered_at=datetime.now(UTC),
            registered_by="reflux runs import",
            tenant=tenant,
        )
        publisher.publish(topics.workflows, name, record)
        registered.append(name)
    count = 0
    # Children first: a parent's ChildRunRequested is answered by their ends, already there.
    for run_id in reversed(bundle.runs):
        for event in bundle.events[run_id]:
            owned = (
                event.model_copy(update={"tenant": tenant})
                if isinstance(event, RunStarted)
                else event
            )
            publisher.publish(topics.runs, run_id, owned)
            count += 1
    return RunImported(
        run_id=bundle.run_id,
        runs=list(bundle.runs),
        events=count,
        workflows_registered=registered,
        workflows_present=present,
        payloads=len(bundle.payloads),
    )


@router.post(
    "/import",
    status_code=201,
    response_model=RunImported,
    summary="Import a run bundle (from `GET /v1/runs/{id}/export`): same run ids, same events",
    responses=errors(409, 422, 503),
    openapi_extra={
        "requestBody": {
            "content": {BUNDLE_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
            "required": True,
        }
    },
)
async def import_run(
    request: Request,
    *,
    conn: ConnDep,
    api: ApiSettingsDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    topics: TopicsDep,
    principal: PrincipalDep,
) -> RunImported:
    raw = await request.body()
    try:
        bundle = await run_in_threadpool(read_bundle, raw)
    except BundleError as exc:
        raise RequestInvalidError([FieldIssue("bundle", str(exc), "bundle_invalid")]) from exc
    return await run_in_threadpool(
        import_bundle,
        bundle,
        conn=conn,
        schema=api.read_schema,
        store=blob_store(request, settings),
        bucket=settings.s3_bucket,
        publisher=publisher,
        topics=topics,
        tenant=principal.tenant,
    )
