"""``/v1/hooks/{workflow_id}``: webhook triggers.

Rules (documented in docs/api.md):

- The body must be JSON. An object becomes the run's inputs; any other value arrives as
  ``{"payload": <value>}`` (:func:`processors.triggers.mapping.inputs_from_payload`).
- If ``ApiSettings.webhook_secrets`` has a secret for the workflow, the request must carry
  ``X-Reflux-Signature: sha256=<hex HMAC-SHA256 of the raw body>`` (401 otherwise).
- ``Idempotency-Key`` (e.g. the sender's delivery id) makes redeliveries start one run; without
  it the API draws a random key. run_id = ``uuid5(TRIGGER_NAMESPACE, "webhook:" + key)``.
- The API validates (workflow exists, inputs fit) and publishes a ``Trigger`` on ``triggers``; the
  trigger router turns it into ``StartRun``.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Request
from starlette.concurrency import run_in_threadpool

from api.bodies import decode_body
from api.deps import ApiSettingsDep, CatalogDep, PublisherDep, ReadModelDep
from api.errors import NotFoundError, UnauthorizedError
from api.ids import WEBHOOK_SOURCE, run_id_for
from api.models.common import errors
from api.models.hooks import HookAccepted
from api.signatures import SIGNATURE_HEADER, SignatureError, verify_signature
from api.validation import check_inputs, parse_definition
from processors.triggers.mapping import inputs_from_payload
from schemas.models import Trigger

__all__ = ["router"]

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
    catalog: CatalogDep,
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
    await run_in_threadpool(publisher.publish, catalog.triggers, trigger.source_key, trigger)
    return HookAccepted(
        run_id=run_id_for(WEBHOOK_SOURCE, key),
        workflow_id=workflow_id,
        workflow_version=workflow.version,
        idempotency_key=key,
    )
