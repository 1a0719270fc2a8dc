"""``/v1/hooks/{workflow_id}``: webhook triggers; ``/v1/hooks/runs/{run_id}/steps/{step_id}``:
webhook calls that resume a waiting ``webhook.trigger`` step. Both are authenticated by their
signatures only (no API key), so both check everything before they write anything.

Signatures (:mod:`foundation.signatures`, docs/triggers.md, ADR 0047): ``Reflux-Signature:
t=<unix>,v1=<hex HMAC-SHA256 of "t.METHOD.PATH." + body>``; 401 with the reason when it is
missing, malformed, outside the replay window (``webhook_tolerance_s``), wrong, or a replay of a
message already accepted within the window (replay store on the noeviction webhook Redis).

Rules for starting a run (documented in docs/api.md):

- The body must be JSON, at most ``webhook_max_body_bytes`` (413). An object becomes the run's
  inputs; any other value arrives as ``{"payload": <value>}``.
- If ``ApiSettings.webhook_secrets`` has a secret (or secrets) for the workflow, the request must
  be signed with one of them (401 otherwise).
- ``Idempotency-Key`` (e.g. the sender's delivery id) makes redeliveries start one run; without
  it the API draws a random key. run_id = ``uuid5(TRIGGER_NAMESPACE, "webhook:" + key)``.
- A CloudEvent (``application/cloudevents+json``, or binary mode with ``ce-*`` headers;
  :mod:`api.hook_events`, ADR 0053): its data is the body above, ``source:id`` its key.
- The API validates (workflow exists, inputs fit) and publishes a ``Trigger`` on ``triggers``; the
  trigger router turns it into ``StartRun``.

Resuming a step: only while an attempt of the step waits (its waiting record, published by the
node: 409 otherwise); signed with the callback key the record names when the step has a secret;
then the body is stored in the step's mailbox (:mod:`node_workers.webhooks`) and the answer is
202. The check of the record's attempt, the replay claim and the append are one Redis script.

A ``meta.signal`` step (ADR 0057: the wait is scheduler state, no worker) can be resumed here
too, when its workflow has a webhook secret (``webhook_secrets``: the same the workflow's start
hook uses, held by the API): the call must be signed with it; the body becomes the step's
``output.payload`` through a ``SignalRun`` command named after the step's signal. Without a
secret for the workflow the answer is 409 (use ``POST /v1/runs/{id}/signals/{name}``).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, NamedTuple

from fastapi import APIRouter, Header, Path, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.bodies import decode_body
from api.config import ApiSettings
from api.deps import ApiSettingsDep, PublisherDep, ReadModelDep, TopicsDep
from api.errors import ApiError, ConflictError, NotFoundError, UnauthorizedError
from api.hook_events import hook_cloud_event
from api.ids import IDEMPOTENCY_KEY_PATTERN, WEBHOOK_SOURCE, run_id_for, tenant_key
from api.models.common import ErrorMessage, errors
from api.models.hooks import HookAccepted
from api.publisher import Publisher
from api.ratelimit.concurrency import admitted
from api.readmodel import ReadModel
from api.signatures import (
    SIGNATURE_HEADER,
    SignatureError,
    Verified,
    signature_header,
    verify,
)
from api.validation import check_inputs, parse_definition
from foundation.errors import RetryableError
from foundation.telemetry import caller_trace_context
from node_workers.webhooks import (
    MAX_BODY_BYTES,
    MAX_MAILBOX_BYTES,
    MAX_QUEUED,
    RUN_ID_PATTERN,
    STEP_ID_PATTERN,
    Delivery,
    MailboxFullError,
    NotWaitingError,
    ReplayedError,
    WebhookMailbox,
    passed_headers,
    start_replay_key,
)
from processors.triggers.mapping import inputs_from_payload
from schemas.models import SignalRun, Trigger
from streams.topics import TopicCatalog
from streams.tracing import trace_headers
from workflows.meta_waits import SIGNAL_NODE

__all__ = ["WebhookDelivered", "router"]

router = APIRouter(prefix="/hooks", tags=["hooks"])


_SIGNATURE_DOC = "t=<unix seconds>,v1=<hex HMAC-SHA256 of 't.METHOD.PATH.' + body>"
_SIGNATURE_401: dict[str, Any] = {
    "model": ErrorMessage,
    "description": "Webhook signature refused: missing, malformed, too_old, wrong, replayed or "
    "legacy (the detail says which)",
}


class PayloadTooLargeError(ApiError):
    error_class = "PayloadTooLargeError"
    status_code = 413


class WebhookSignatureError(UnauthorizedError):
    """401 whose detail starts with the reason: ``missing``, ``malformed``, ``too_old``,
    ``wrong``, ``legacy`` or ``replayed``."""

    error_class = "WebhookSignatureError"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"Webhook signature refused ({reason}): {message}")
        self.reason = reason


def _verified(
    request: Request, secrets: str | list[str] | None, raw: bytes, tolerance_s: int
) -> Verified | None:
    """The request's signature checked against ``secrets`` (None: the hook is unsigned), or a
    401 naming why it is refused."""
    if secrets is None:
        return None
    try:
        return verify(
            signature_header(request.headers),
            secrets,
            request.method,
            request.url.path,
            raw,
            tolerance_s=tolerance_s,
        )
    except SignatureError as exc:
        raise WebhookSignatureError(exc.reason, str(exc)) from exc


async def _read_capped(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is over ``limit`` bytes: a declared length is
    checked before reading, a chunked body while reading (never buffered beyond the limit)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"Expected a body of at most {limit} bytes, but Content-Length is {declared}"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"Expected a body of at most {limit} bytes, but got more")
        chunks.append(chunk)
    return b"".join(chunks)


def _mailbox(request: Request) -> WebhookMailbox:
    # Created on first use (one Redis pool per app): most API processes never see a webhook.
    state = request.app.state
    mailbox: WebhookMailbox | None = getattr(state, "webhook_mailbox", None)
    if mailbox is None:
        mailbox = state.webhook_mailbox = WebhookMailbox.from_settings(state.settings)
    return mailbox


@router.post(
    "/{workflow_id}",
    status_code=202,
    response_model=HookAccepted,
    summary="Start a run of a workflow from a webhook",
    responses={
        **errors(404, 422, 503),
        401: _SIGNATURE_401,
        413: {"model": ErrorMessage, "description": "The body is over webhook_max_body_bytes"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "Any JSON; an object becomes the inputs, other values `inputs.payload`.",
            "content": {
                "application/json": {"schema": {}, "example": {"order_id": 42}},
                # Or binary mode: ce-specversion, ce-id, ce-source, ce-type headers + the data.
                "application/cloudevents+json": {"schema": {"type": "object"}},
            },
        }
    },
)
async def webhook(
    workflow_id: str,
    *,
    request: Request,
    api: ApiSettingsDep,
    read_model: ReadModelDep,
    publisher: PublisherDep,
    topics: TopicsDep,
    signature: Annotated[
        str | None, Header(alias=SIGNATURE_HEADER, description=_SIGNATURE_DOC)
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key", min_length=1, max_length=200, pattern=IDEMPOTENCY_KEY_PATTERN
        ),
    ] = None,
) -> HookAccepted:
    raw = await _read_capped(request, api.webhook_max_body_bytes)
    verified = _verified(
        request, api.webhook_secrets.get(workflow_id), raw, api.webhook_tolerance_s
    )
    # A CloudEvent (structured or binary mode) brings its data and its key (api.hook_events).
    event = hook_cloud_event(request.headers, raw, idempotency_key)
    payload = (
        event.payload
        if event is not None
        else decode_body(raw, request.headers.get("content-type"))
    )
    workflow = await read_model.workflow(workflow_id)
    if workflow is None:
        raise NotFoundError(f"workflow {workflow_id!r} not found")
    definition = await run_in_threadpool(parse_definition, workflow.definition)
    inputs = inputs_from_payload(payload)
    # The body (a CloudEvent's data) *is* the inputs, so an input's loc is its path there.
    loc = event.inputs_loc if event is not None else ("body",)
    await run_in_threadpool(lambda: check_inputs(definition, inputs, loc, under_inputs=False))
    key = (event.key if event is not None else idempotency_key) or str(uuid.uuid4())
    # The run is the workflow's tenant's (the signature, or the guard for a key, bound the
    # caller to the workflow); its keys are that tenant's own (ADR 0051).
    scoped_key = tenant_key(workflow.tenant, key)
    trigger = Trigger(
        source=WEBHOOK_SOURCE,
        source_key=workflow_id,
        workflow_id=workflow_id,
        # Pinned to the version the inputs were checked against.
        workflow_version=workflow.version,
        payload=payload,
        idempotency_key=scoped_key,
    )
    replay_key: str | None = None
    mailbox = _mailbox(request)
    if verified is not None:
        # Claimed only now: a request refused above (404, 422) may be sent again as it is.
        replay_key = start_replay_key(
            request.app.state.settings.topic_prefix, workflow_id, verified.replay_id
        )
        if not await run_in_threadpool(mailbox.claim_replay, replay_key, verified):
            raise WebhookSignatureError(
                "replayed",
                "this signed request was accepted before (same t, method, path and body); "
                "sign every delivery anew, with its own timestamp",
            )
    try:
        run_id = run_id_for(WEBHOOK_SOURCE, scoped_key)
        async with admitted(request, workflow_id, definition, run_id, tenant=workflow.tenant):
            await run_in_threadpool(
                publisher.publish,
                topics.triggers,
                trigger.source_key,
                trigger,
                # The request's span (or the sender's traceparent): the trigger router puts it
                # on the StartRun, and the run joins that trace (ADR 0062).
                trace_headers(caller_trace_context()),
            )
    except BaseException:
        if replay_key is not None:  # not started: the sender may retry the same request
            await run_in_threadpool(mailbox.release_replay, replay_key)
        raise
    return HookAccepted(
        run_id=run_id,
        workflow_id=workflow_id,
        workflow_version=workflow.version,
        idempotency_key=key,
    )


# -- resuming a waiting step ----------------------------------------------------------------------


class MailboxFullApiError(ApiError, RetryableError):
    error_class = "MailboxFullApiError"
    status_code = 429


class StepNotWaitingError(ConflictError, RetryableError):
    error_class = "StepNotWaitingError"


class WebhookDelivered(BaseModel):
    run_id: str
    step_id: str
    delivery_id: str = Field(description="Names the stored call; the step's output repeats it")
    status: Literal["accepted", "duplicate"] = Field(
        description="`duplicate`: this Idempotency-Key was delivered before; nothing was stored"
    )
    queued: int = Field(description="Calls waiting in the step's mailbox, this one included")
    attempt: int = Field(description="The waiting attempt of the step the call was stored for")


@router.post(
    "/runs/{run_id}/steps/{step_id}",
    status_code=202,
    response_model=WebhookDelivered,
    summary="Deliver a webhook call to a waiting webhook.trigger (or meta.signal) step",
    responses={
        **errors(422, 503),
        401: _SIGNATURE_401,
        409: {
            "model": ErrorMessage,
            "description": "No attempt of the step waits for a call; nothing was stored",
        },
        413: {"model": ErrorMessage, "description": f"The body is over {MAX_BODY_BYTES} bytes"},
        429: {
            "model": ErrorMessage,
            "description": f"{MAX_QUEUED} calls or {MAX_MAILBOX_BYTES} bytes wait already",
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "Any JSON; it becomes the step's `output.payload`. Signed with "
            f"`{SIGNATURE_HEADER}: {_SIGNATURE_DOC}` using the step's callback key when the "
            "step declares a `secret`.",
            "content": {"application/json": {"schema": {}, "example": {"approved": True}}},
        }
    },
)
async def resume_step(
    run_id: Annotated[str, Path(pattern=RUN_ID_PATTERN)],
    step_id: Annotated[str, Path(pattern=STEP_ID_PATTERN)],
    *,
    request: Request,
    api: ApiSettingsDep,
    read_model: ReadModelDep,
    publisher: PublisherDep,
    topics: TopicsDep,
    signature: Annotated[
        str | None, Header(alias=SIGNATURE_HEADER, description=_SIGNATURE_DOC)
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="A redelivery with the same key is answered `duplicate`, not stored",
        ),
    ] = None,
) -> WebhookDelivered:
    raw = await _read_capped(request, MAX_BODY_BYTES)
    payload = decode_body(raw, request.headers.get("content-type"))  # 422 unless JSON
    mailbox = _mailbox(request)
    waiting = await run_in_threadpool(mailbox.waiting, run_id, step_id)
    if waiting is None:
        signalled = await _signal_step(
            _SignalTarget(run_id, step_id, raw, payload, idempotency_key),
            request=request,
            api=api,
            read_model=read_model,
            publisher=publisher,
            topics=topics,
        )
        if signalled is not None:
            return signalled
        raise StepNotWaitingError(
            f"Expected step {step_id!r} of run {run_id!r} to be waiting for a webhook call, but "
            "no attempt of it waits (not started yet, between attempts, finished, or not a "
            "webhook.trigger or meta.signal step); nothing was stored"
        )
    verified = _verified(request, waiting.key, raw, api.webhook_tolerance_s)
    delivery = Delivery(
        body=raw,
        signature=signature,
        headers=passed_headers(request.headers),
        method=request.method,
        path=request.url.path,
    )
    try:
        outcome = await run_in_threadpool(
            lambda: mailbox.deliver(
                run_id,
                step_id,
                delivery,
                idempotency_key,
                attempt=waiting.attempt,
                verified=verified,
            )
        )
    except NotWaitingError as exc:
        raise StepNotWaitingError(str(exc)) from exc
    except ReplayedError as exc:
        raise WebhookSignatureError("replayed", str(exc)) from exc
    except MailboxFullError as exc:
        raise MailboxFullApiError(str(exc)) from exc
    return WebhookDelivered(
        run_id=run_id,
        step_id=step_id,
        delivery_id=outcome.delivery_id,
        status="duplicate" if outcome.duplicate else "accepted",
        queued=outcome.queued,
        attempt=waiting.attempt,
    )


# -- resuming a meta.signal step (ADR 0057) --------------------------------------------------------


class _SignalTarget(NamedTuple):
    run_id: str
    step_id: str
    raw: bytes
    payload: Any
    idempotency_key: str | None


async def _waiting_signal(
    read_model: ReadModel, run_id: str, step_id: str
) -> tuple[str, int] | None:
    """The signal a ``meta.signal`` step of the run waits for now, and its attempt (per the read
    model)."""
    detail = await read_model.run_detail(run_id)
    if detail is None:
        return None
    step = next((s for s in detail.steps if s.step_id == step_id), None)
    if step is None or step.node != SIGNAL_NODE or step.status != "running":
        return None
    name: str | None = None
    after = -1
    while True:  # the last StepWaitStarted of the step names its signal
        rows = await read_model.events(run_id, after)
        if not rows:
            return None if name is None else (name, step.attempt)
        for row in rows:
            after = row.seq
            started = row.event_type == "StepWaitStarted"
            if started and (row.payload.get("step") or {}).get("step_id") == step_id:
                name = row.payload.get("signal")


async def _signal_step(
    target: _SignalTarget,
    *,
    request: Request,
    api: ApiSettings,
    read_model: ReadModel,
    publisher: Publisher,
    topics: TopicCatalog,
) -> WebhookDelivered | None:
    """A signed call for a waiting ``meta.signal`` step: ``SignalRun`` on the commands topic.
    ``None``: the step is not a meta.signal step waiting now (the caller answers 409)."""
    run_id, step_id = target.run_id, target.step_id
    found = await _waiting_signal(read_model, run_id, step_id)
    if found is None:
        return None
    name, attempt = found
    run = await read_model.run(run_id)
    assert run is not None  # run_detail found it
    secret = api.webhook_secrets.get(run.workflow_id)
    if secret is None:
        raise StepNotWaitingError(
            f"Step {step_id!r} of run {run_id!r} is a meta.signal step waiting for signal "
            f"{name!r}; this route delivers to it only when workflow {run.workflow_id!r} has a "
            f"webhook secret to sign with (webhook_secrets). Use POST /v1/runs/{run_id}/signals/"
            f"{name} (API key, operator role) instead; nothing was delivered"
        )
    verified = _verified(request, secret, target.raw, api.webhook_tolerance_s)
    assert verified is not None
    mailbox = _mailbox(request)
    replay_key = start_replay_key(
        request.app.state.settings.topic_prefix, f"signal:{run_id}:{step_id}", verified.replay_id
    )
    if not await run_in_threadpool(mailbox.claim_replay, replay_key, verified):
        raise WebhookSignatureError(
            "replayed", "this signed request was accepted before; sign every delivery anew"
        )
    # A redelivery with the same Idempotency-Key is the same command: the scheduler decides it
    # once (command ids are deduped per run).
    key = target.idempotency_key or str(uuid.uuid4())
    command_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"reflux:signal:{run_id}:{step_id}:{key}"))
    command = SignalRun(
        run_id=run_id,
        command_id=command_id,
        requested_by=f"webhook:{step_id}",
        reason="signed webhook call",
        signal=name,
        payload=target.payload,
    )
    try:
        await run_in_threadpool(publisher.publish, topics.commands, run_id, command)
    except BaseException:
        await run_in_threadpool(mailbox.release_replay, replay_key)
        raise
    return WebhookDelivered(
        run_id=run_id,
        step_id=step_id,
        delivery_id=command_id,
        status="accepted",
        queued=0,
        attempt=attempt,
    )
