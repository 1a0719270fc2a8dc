"""``/v1/hooks/{workflow_id}``: webhook triggers; ``/v1/hooks/runs/{run_id}/steps/{step_id}``:
webhook calls that resume a waiting ``webhook.trigger`` step.

Rules for starting a run (documented in docs/api.md):

- The body must be JSON. An object becomes the run's inputs; any other value arrives as
  ``{"payload": <value>}`` (:func:`processors.triggers.mapping.inputs_from_payload`).
- If ``ApiSettings.webhook_secrets`` has a secret for the workflow, the request must carry
  ``X-Reflux-Signature: sha256=<hex HMAC-SHA256 of the raw body>`` (401 otherwise).
- ``Idempotency-Key`` (e.g. the sender's delivery id) makes redeliveries start one run; without
  it the API draws a random key. run_id = ``uuid5(TRIGGER_NAMESPACE, "webhook:" + key)``.
- The API validates (workflow exists, inputs fit) and publishes a ``Trigger`` on ``triggers``; the
  trigger router turns it into ``StartRun``.

Resuming a step: the JSON body is stored as received in the step's Redis mailbox
(:mod:`node_workers.webhooks`) and the answer is 202 at once. The API does not check that the
run or step exists (the projection may lag, and a call may come before the step waits) nor the
signature (the step's secret is resolved in the worker only): the waiting node does.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.bodies import decode_body
from api.deps import ApiSettingsDep, PublisherDep, ReadModelDep, TopicsDep
from api.errors import ApiError, NotFoundError, UnauthorizedError
from api.ids import WEBHOOK_SOURCE, run_id_for
from api.models.common import ErrorMessage, errors
from api.models.hooks import HookAccepted
from api.signatures import SIGNATURE_HEADER, SignatureError, verify_signature
from api.validation import check_inputs, parse_definition
from foundation.errors import RetryableError
from node_workers.webhooks import (
    MAX_BODY_BYTES,
    MAX_QUEUED,
    RUN_ID_PATTERN,
    STEP_ID_PATTERN,
    Delivery,
    MailboxFullError,
    WebhookMailbox,
    passed_headers,
)
from processors.triggers.mapping import inputs_from_payload
from schemas.models import Trigger

__all__ = ["WebhookDelivered", "router"]

router = APIRouter(prefix="/hooks", tags=["hooks"])


@router.post(
    "/{workflow_id}",
    status_code=202,
    response_model=HookAccepted,
    summary="Start a run of a workflow from a webhook",
    responses=errors(401, 404, 422, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "Any JSON; an object becomes the inputs, other values `inputs.payload`.",
            "content": {"application/json": {"schema": {}, "example": {"order_id": 42}}},
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
        str | None, Header(alias=SIGNATURE_HEADER, description="sha256=<hex HMAC of the body>")
    ] = None,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)
    ] = None,
) -> HookAccepted:
    raw = await request.body()
    secret = api.webhook_secrets.get(workflow_id)
    if secret is not None:
        try:
            verify_signature(secret, raw, signature)
        except SignatureError as exc:
            raise UnauthorizedError(str(exc)) from exc
    payload = decode_body(raw, request.headers.get("content-type"))
    workflow = await read_model.workflow(workflow_id)
    if workflow is None:
        raise NotFoundError(f"workflow {workflow_id!r} not found")
    definition = await run_in_threadpool(parse_definition, workflow.definition)
    inputs = inputs_from_payload(payload)
    # The body *is* the inputs, so an input's loc is its path in the body.
    await run_in_threadpool(lambda: check_inputs(definition, inputs, ("body",), under_inputs=False))
    key = idempotency_key or str(uuid.uuid4())
    trigger = Trigger(
        source=WEBHOOK_SOURCE,
        source_key=workflow_id,
        workflow_id=workflow_id,
        # Pinned to the version the inputs were checked against.
        workflow_version=workflow.version,
        payload=payload,
        idempotency_key=key,
    )
    await run_in_threadpool(publisher.publish, topics.triggers, trigger.source_key, trigger)
    return HookAccepted(
        run_id=run_id_for(WEBHOOK_SOURCE, key),
        workflow_id=workflow_id,
        workflow_version=workflow.version,
        idempotency_key=key,
    )


# -- resuming a waiting step ----------------------------------------------------------------------


class PayloadTooLargeError(ApiError):
    error_class = "PayloadTooLargeError"
    status_code = 413


class MailboxFullApiError(ApiError, RetryableError):
    error_class = "MailboxFullApiError"
    status_code = 429


class WebhookDelivered(BaseModel):
    run_id: str
    step_id: str
    delivery_id: str = Field(description="Names the stored call; the step's output repeats it")
    status: Literal["accepted", "duplicate"] = Field(
        description="`duplicate`: this Idempotency-Key was delivered before; nothing was stored"
    )
    queued: int = Field(description="Calls waiting in the step's mailbox, this one included")


def _mailbox(request: Request) -> WebhookMailbox:
    # Created on first use (one Redis pool per app): most API processes never resume a step.
    state = request.app.state
    mailbox: WebhookMailbox | None = getattr(state, "webhook_mailbox", None)
    if mailbox is None:
        mailbox = state.webhook_mailbox = WebhookMailbox.from_settings(state.settings)
    return mailbox


@router.post(
    "/runs/{run_id}/steps/{step_id}",
    status_code=202,
    response_model=WebhookDelivered,
    summary="Deliver a webhook call to a waiting webhook.trigger step",
    responses={
        **errors(422, 503),
        413: {"model": ErrorMessage, "description": f"The body is over {MAX_BODY_BYTES} bytes"},
        429: {"model": ErrorMessage, "description": f"{MAX_QUEUED} calls wait already"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "Any JSON; it becomes the step's `output.payload`. Signed with "
            "`X-Reflux-Signature: sha256=<hex>` when the step declares a `secret`.",
            "content": {"application/json": {"schema": {}, "example": {"approved": True}}},
        }
    },
)
async def resume_step(
    run_id: Annotated[str, Path(pattern=RUN_ID_PATTERN)],
    step_id: Annotated[str, Path(pattern=STEP_ID_PATTERN)],
    *,
    request: Request,
    signature: Annotated[
        str | None, Header(alias=SIGNATURE_HEADER, description="sha256=<hex HMAC of the body>")
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
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLargeError(f"Expected a body of at most {MAX_BODY_BYTES} bytes")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLargeError(
            f"Expected a body of at most {MAX_BODY_BYTES} bytes, but got {len(raw)}"
        )
    decode_body(raw, request.headers.get("content-type"))  # 422 unless JSON; stored as bytes
    delivery = Delivery(body=raw, signature=signature, headers=passed_headers(request.headers))
    mailbox = _mailbox(request)
    try:
        outcome = await run_in_threadpool(
            mailbox.deliver, run_id, step_id, delivery, idempotency_key
        )
    except MailboxFullError as exc:
        raise MailboxFullApiError(f"{exc} (at most {MAX_QUEUED})") from exc
    return WebhookDelivered(
        run_id=run_id,
        step_id=step_id,
        delivery_id=outcome.delivery_id,
        status="duplicate" if outcome.duplicate else "accepted",
        queued=outcome.queued,
    )
