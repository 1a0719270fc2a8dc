"""``webhook.trigger@1.0.0``: wait, inside a run, for an inbound webhook call; its payload is the
step's output.

While an attempt waits it publishes a *waiting record* (its attempt number and, with a
``secret``, the step's callback key for this run: ``foundation.signatures.callback_key``, never
the secret). The call goes to ``POST /v1/hooks/runs/{run_id}/steps/{step_id}``: the API refuses
it (409) unless the step waits, verifies its ``Reflux-Signature`` with the callback key
(timestamp window, method and path in the MAC, replay store) and only then stores it in the
step's mailbox (:mod:`node_workers.webhooks`) and answers 202. The attempt takes deliveries from
that mailbox, oldest first, until one passes its checks:

- ``secret``: the signature is verified again here, with the key derived from the secret this
  worker resolved (``{{ secrets.NAME }}``; secrets never go to Redis), and the stored path must
  be this step's.
- ``expect``: a JMESPath condition on the payload (JMESPath truthiness).

A refused delivery is dropped for good (logged with the reason, counted in the ``rejected``
metric) and the attempt keeps waiting. Waiting holds one of the worker's I/O concurrency slots
(workload I/O: hundreds of waits per process) and one Redis connection; the mailbox client's
pool is sized to the node's concurrency (:meth:`WebhookTriggerNode.set_concurrency`).

Long waits: this node waits *in a worker* (one slot, one attempt at most 24 h). The durable
alternative is the scheduler's ``meta.signal`` step and ``POST /v1/runs/{id}/signals/{name}``:
the wait is run state with a timer, holds no worker and survives restarts (ADR 0057).

Timeouts: the attempt waits ``timeout_s`` (capped by the invocation deadline minus a margin),
then fails with the **retryable** ``WebhookTimeout``: a retry policy with ``max_attempts: N``
waits N times; ``non_retryable: [WebhookTimeout]`` (or the default single attempt) ends the
step.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Final

from jmespath.exceptions import JMESPathError
from pydantic import Field, field_validator

from foundation.errors import ServiceUnavailableError
from foundation.settings import Settings, get_settings
from foundation.signatures import callback_key
from node_workers.node import (
    Node,
    NodeContext,
    NodeModel,
    NonRetryableNodeError,
    RetryableNodeError,
    Workload,
)
from node_workers.nodes.condition import jmespath_truthy
from node_workers.nodes.transform import compile_expression
from node_workers.webhooks import (
    DEFAULT_MAX_WAITS,
    Delivery,
    MailboxKeys,
    WebhookWaiter,
    signature_problem,
)

__all__ = [
    "DEADLINE_MARGIN_S",
    "MAX_WAIT_S",
    "WebhookTriggerInput",
    "WebhookTriggerNode",
    "WebhookTriggerOutput",
    "refusal",
]

MAX_WAIT_S: Final = 24 * 3600.0
"""A wait holds a worker slot; longer waits are a retry policy's job (or a human task queue)."""
DEFAULT_WAIT_S: Final = 240.0
"""Below the worker's default timeout (300 s) for steps that declare no ``timeout``."""
DEADLINE_MARGIN_S: Final = 0.5
"""Stop waiting this long before the invocation deadline, so the step fails as
``WebhookTimeout`` rather than racing the step-timeout timer."""
POLL_S: Final = 1.0
"""Longest single blocking call on Redis: keeps cancellation (shutdown, revoke) prompt."""


class WebhookTriggerInput(NodeModel):
    timeout_s: float = Field(default=DEFAULT_WAIT_S, gt=0, le=MAX_WAIT_S)
    """How long one attempt waits; keep it below the step's ``timeout``."""
    secret: str | None = Field(default=None, min_length=1)
    """The step's secret; the sender signs with the key derived from it for the run and step
    (``foundation.signatures.sign_callback``). Write ``{{ secrets.NAME }}``. Without one, any
    caller who can reach the API may resume the step while it waits."""
    expect: str | None = Field(default=None, min_length=1)
    """JMESPath condition on the payload; deliveries where it is false are dropped."""

    @field_validator("expect")
    @classmethod
    def _expression(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                compile_expression(value)
            except NonRetryableNodeError as exc:
                raise ValueError(str(exc)) from None
        return value


class WebhookTriggerOutput(NodeModel):
    payload: Any
    """The body's JSON value."""
    received_at: datetime
    """When the API received the call (not when the step took it)."""
    headers: dict[str, str]
    """The kept headers (content type, user agent, idempotency key, request and event ids)."""
    delivery_id: str
    verified: bool
    """The signature was checked against ``secret``."""


def refusal(
    params: WebhookTriggerInput, delivery: Delivery, run_id: str, step_id: str
) -> tuple[str | None, Any]:
    """``(None, payload)`` when the delivery resumes the step, else ``(reason, None)``.

    Pure, so the rules are unit-tested without Redis. Signature first: an unsigned payload's
    content must not influence anything, not even which condition error is logged.
    """
    if params.secret is not None:
        problem = signature_problem(params.secret, run_id, step_id, delivery)
        if problem is not None:
            return problem, None
    try:
        payload = delivery.payload()
    except ValueError as exc:
        return f"the body is not JSON: {exc}", None
    if params.expect is not None:
        try:
            matched = jmespath_truthy(compile_expression(params.expect).search(payload))
        except JMESPathError as exc:
            return f"expect {params.expect!r} failed on the payload: {exc}", None
        if not matched:
            return f"expect {params.expect!r} is false for the payload", None
    return None, payload


class WebhookTriggerNode(Node[WebhookTriggerInput, WebhookTriggerOutput]):
    name = "webhook.trigger"
    version = "1.0.0"
    Input = WebhookTriggerInput
    Output = WebhookTriggerOutput
    cacheable = False  # the output is whatever call arrives, never a function of the params
    # Taking a delivery consumes it: a shadow replay must use the recorded payload, not wait.
    side_effects = True
    workload = Workload.IO
    own_pool = True  # long attempts: never holding the slots of short ones
    description = "Wait for a webhook call to this step (signed, optionally filtered)."

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        waiter: WebhookWaiter | None = None,
        poll_s: float = POLL_S,
    ) -> None:
        # Settings are read on first use: the API builds every built-in node only to list
        # versions, and must not need Redis settings for that.
        self._settings = settings
        self._waiter = waiter
        self.poll_s = poll_s
        self._max_waits = DEFAULT_MAX_WAITS

    def set_concurrency(self, limit: int) -> None:
        # Read when the waiter's connection pool is created, at the first wait.
        self._max_waits = limit
        if self._waiter is not None:
            self._waiter.max_waits = limit

    def bind(self, settings: Settings) -> None:
        # The serving runtime's settings win over the environment, unless given explicitly.
        if self._settings is None and self._waiter is None:
            self._settings = settings

    @property
    def waiter(self) -> WebhookWaiter:
        if self._waiter is None:
            settings = self._settings or get_settings()
            self._waiter = WebhookWaiter(
                settings.webhook_store_url, settings.topic_prefix, max_waits=self._max_waits
            )
        return self._waiter

    async def execute(self, params: WebhookTriggerInput, ctx: NodeContext) -> WebhookTriggerOutput:
        started = time.monotonic()
        budget = params.timeout_s
        remaining = ctx.remaining_s()
        if remaining is not None:
            budget = max(min(budget, remaining - DEADLINE_MARGIN_S), 0.0)
        keys = self.waiter.keys(ctx.run_id, ctx.step_id)
        recovered = await self.waiter.recover(keys)
        if recovered:
            ctx.record("recovered", recovered)
        key = (
            None if params.secret is None else callback_key(params.secret, ctx.run_id, ctx.step_id)
        )
        await self.waiter.announce(keys, ctx.attempt, key, budget)
        try:
            return await self._wait(params, ctx, keys, started=started, budget=budget)
        finally:
            # Calls stop being accepted the moment this attempt stops waiting (a call the API
            # stored just before stays in the mailbox for the next attempt, if any).
            try:
                await self.waiter.withdraw(keys, ctx.attempt)
            except ServiceUnavailableError as exc:
                # The outcome stands; the record expires with its TTL (the wait + a margin).
                ctx.logger.warning("could not withdraw the wait of step %s: %s", ctx.step_id, exc)

    async def _wait(
        self,
        params: WebhookTriggerInput,
        ctx: NodeContext,
        keys: MailboxKeys,
        *,
        started: float,
        budget: float,
    ) -> WebhookTriggerOutput:
        until = started + budget
        rejected = 0
        while True:
            left = until - time.monotonic()
            raw = await self.waiter.take(keys, min(self.poll_s, max(left, 0.0)))
            if raw is None:
                if left <= 0:
                    break
                continue
            reason, payload, delivery = self._check(params, raw, ctx.run_id, ctx.step_id)
            if reason is None and delivery is not None:
                ctx.record("waited_ms", round((time.monotonic() - started) * 1000, 3))
                ctx.record("rejected", rejected)
                ctx.record("body_bytes", len(delivery.body))
                return WebhookTriggerOutput(
                    payload=payload,
                    received_at=delivery.received_at,
                    headers=delivery.headers,
                    delivery_id=delivery.delivery_id,
                    verified=params.secret is not None,
                )
            rejected += 1
            ctx.logger.warning(
                "webhook delivery %s for step %s of run %s refused: %s",
                delivery.delivery_id if delivery is not None else "<unreadable>",
                ctx.step_id,
                ctx.run_id,
                reason,
            )
            await self.waiter.drop(keys, raw)
        ctx.record("waited_ms", round((time.monotonic() - started) * 1000, 3))
        ctx.record("rejected", rejected)
        raise RetryableNodeError(
            f"Expected a webhook call to POST /v1/hooks/runs/{ctx.run_id}/steps/{ctx.step_id} "
            f"within {budget:.1f}s, but none "
            + ("arrived" if rejected == 0 else f"was accepted ({rejected} refused)"),
            error_class="WebhookTimeout",
        )

    @staticmethod
    def _check(
        params: WebhookTriggerInput, raw: bytes, run_id: str, step_id: str
    ) -> tuple[str | None, Any, Delivery | None]:
        try:
            delivery = Delivery.decode(raw)
        except ValueError as exc:
            return str(exc), None, None
        reason, payload = refusal(params, delivery, run_id, step_id)
        return reason, payload, delivery

    async def aclose(self) -> None:
        if self._waiter is not None:
            await self._waiter.aclose()
