"""Run one attempt of a node for one invocation and capture what happened, without Kafka.

Every way an attempt can end becomes an :class:`Attempt` (never an exception): success, a node's
own :class:`~node_workers.errors.NodeError`, invalid params, an unreachable params blob, the
deadline, or a bug in the node. The runtime only has to publish it; unit tests only have to
look at it.

Timeouts (docs/decisions/0013-execution-and-queue-timeouts.md): the step timeout
(``NodeInvocation.timeout_ms``) counts from the moment this worker starts the attempt, never from
the dispatch, so time spent in the invoke topic or waiting for a concurrency slot is not
execution time. An absolute ``deadline`` (invocations from older schedulers) still applies too.
An invocation whose ``start_by`` passed before it got a slot is not started at all
(:func:`too_late_to_start`): the scheduler fails such a step with ``QueueTimeout``.

Secrets: ``{{ secrets.NAME }}`` placeholders in the loaded params are resolved here, after the
params are hashed (``inputs_hash`` stays the hash of the placeholders) and right before they are
validated, so a value exists only in this process. Every way out of an attempt (output, error
message and class, metric names) passes the resolver's redactor first (docs/secrets.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import BaseModel

from foundation.errors import RefluxError, classify
from foundation.telemetry import context_of
from node_workers.node import AnyNode, NodeContext, validate_params
from node_workers.secrets import SecretResolver, no_secrets, secret_names
from node_workers.tracing import worker_tracer
from schemas.base import canonical_json
from schemas.models import ErrorInfo, NodeInvocation, TraceStatus
from schemas.quality import QUALITY_SCORE, CheckerScoreError, checker_score, is_checker

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "QUEUE_TIMEOUT",
    "Attempt",
    "ParamsLoader",
    "attempt_deadline",
    "error_info",
    "inputs_hash",
    "run_attempt",
    "too_late_to_start",
]

log = logging.getLogger(__name__)

# Without a deadline an attempt still must end: a hung node would hold a concurrency slot and
# its partition's commits forever.
DEFAULT_TIMEOUT_S: Final = 300.0

ParamsLoader = Callable[[NodeInvocation], Awaitable[Any]]

QUEUE_TIMEOUT: Final = "QueueTimeout"
"""Error class of an invocation not started by its ``start_by`` (the step's queue_timeout)."""


def attempt_deadline(invocation: NodeInvocation, started_at: datetime) -> datetime | None:
    """When an attempt started at ``started_at`` must end: the step timeout counted from the
    start, or the invocation's absolute deadline, whichever comes first (None: neither)."""
    candidates = [
        d
        for d in (
            started_at + timedelta(milliseconds=invocation.timeout_ms)
            if invocation.timeout_ms is not None
            else None,
            invocation.deadline,
        )
        if d is not None
    ]
    return min(candidates) if candidates else None


def too_late_to_start(invocation: NodeInvocation, now: datetime) -> Attempt | None:
    """The outcome of an invocation whose ``start_by`` passed before a worker could start it
    (``QueueTimeout``, not retryable: another attempt would queue behind it), else None."""
    if invocation.start_by is None or now <= invocation.start_by:
        return None
    late_ms = int((now - invocation.start_by).total_seconds() * 1000)
    return Attempt(
        status=TraceStatus.ERROR,
        started_at=now,
        finished_at=now,
        inputs_hash=inputs_hash(invocation.params)
        if invocation.params_ref is None
        else invocation.params_ref.sha256,
        error=ErrorInfo(
            error_class=QUEUE_TIMEOUT,
            message=(
                f"Attempt {invocation.attempt} ({invocation.invocation_id}) was not started: a "
                f"worker got to it {late_ms} ms after its start_by {invocation.start_by} (the "
                "step's queue_timeout)"
            ),
            retryable=False,
        ),
    )


def inputs_hash(params: Any) -> str:
    """sha256 of the canonical JSON params (the trace's ``inputs_hash``)."""
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()


def error_info(exc: BaseException) -> ErrorInfo:
    """An ``ErrorInfo`` for any exception (:func:`foundation.errors.classify`: unknown exceptions
    are bugs, hence non-retryable); a bug's message starts with its class name."""
    found = classify(exc)
    message = str(exc) if isinstance(exc, RefluxError) else f"{found.error_class}: {exc}"
    return ErrorInfo(error_class=found.error_class, message=message, retryable=found.retryable)


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one attempt, ready to become a NodeResult and a Trace."""

    status: TraceStatus
    started_at: datetime
    finished_at: datetime
    inputs_hash: str
    output: Any = None
    """The JSON output (``Output.model_dump(mode="json")``) when status is ok."""
    error: ErrorInfo | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    cost_tokens: int | None = None

    @property
    def latency_ms(self) -> int:
        return max(int((self.finished_at - self.started_at).total_seconds() * 1000), 0)


def _now() -> datetime:
    return datetime.now(UTC)


async def _inline_params(invocation: NodeInvocation) -> Any:
    if invocation.params_ref is not None:
        raise RefluxError(
            "Expected inline params, but the invocation carries a params_ref and no store "
            "was configured",
            error_class="Configuration",
        )
    return {} if invocation.params is None else invocation.params


async def run_attempt(
    node: AnyNode,
    invocation: NodeInvocation,
    *,
    load_params: ParamsLoader = _inline_params,
    default_timeout_s: float = DEFAULT_TIMEOUT_S,
    logger: logging.Logger | None = None,
    secrets: SecretResolver | None = None,
    started_at: datetime | None = None,
) -> Attempt:
    """:func:`_run_attempt` in a span, child of the invocation's ``traceparent`` (ADR 0062)."""
    with worker_tracer().start_as_current_span(
        f"{node.key} {invocation.step.step_id}",
        context=context_of(invocation.trace_context),
        kind=SpanKind.CONSUMER,
        attributes={
            "reflux.run_id": invocation.run_id,
            "reflux.step_id": invocation.step.step_id,
            "reflux.node": node.key,
            "reflux.attempt": invocation.attempt,
            "reflux.invocation_id": invocation.invocation_id,
        },
    ) as span:
        attempt = await _run_attempt(
            node,
            invocation,
            load_params=load_params,
            default_timeout_s=default_timeout_s,
            logger=logger,
            secrets=secrets,
            started_at=started_at,
        )
        if attempt.error is not None:
            span.set_attribute("error.type", attempt.error.error_class)
            span.set_status(Status(StatusCode.ERROR))
        return attempt


async def _run_attempt(
    node: AnyNode,
    invocation: NodeInvocation,
    *,
    load_params: ParamsLoader,
    default_timeout_s: float,
    logger: logging.Logger | None,
    secrets: SecretResolver | None,
    started_at: datetime | None,
) -> Attempt:
    """Resolve secrets, validate params, run ``node.execute`` under the attempt's deadline
    (:func:`attempt_deadline` from ``started_at``, default now), capture the end (redacted).

    Without ``secrets`` any placeholder fails the attempt with ``SecretUnavailable``.
    ``asyncio.CancelledError`` propagates: a cancelled attempt (shutdown, revoked partition)
    produces no result and is re-delivered from the last committed offset.
    """
    resolver = secrets if secrets is not None else no_secrets()
    redactor = resolver.redactor
    started = started_at or _now()
    deadline = attempt_deadline(invocation, started)
    ctx = NodeContext(
        invocation_id=invocation.invocation_id,
        run_id=invocation.run_id,
        step_id=invocation.step.step_id,
        attempt=invocation.attempt,
        deadline=deadline,
        idempotency_key=invocation.idempotency_key,
        workflow_id=invocation.workflow_id,
        tenant=invocation.tenant,
        trace_context=dict(invocation.trace_context),
        logger=logging.LoggerAdapter(
            logger or log,
            {"run_id": invocation.run_id, "step_id": invocation.step.step_id},
        ),
    )
    digest = ""

    def ended(
        status: TraceStatus, *, output: Any = None, error: ErrorInfo | None = None
    ) -> Attempt:
        return Attempt(
            status=status,
            started_at=started,
            finished_at=_now(),
            inputs_hash=digest,
            output=redactor.redact(output),
            error=redactor.redact_error(error),
            metrics={redactor.redact_text(name): value for name, value in ctx.metrics.items()},
            cost_tokens=ctx.cost_tokens,
        )

    if invocation.params_ref is not None:
        digest = invocation.params_ref.sha256  # until the params are loaded
    try:
        if invocation.step.node != node.name:
            raise RefluxError(
                f"Expected an invocation of {node.name}, but got one of {invocation.step.node!r}"
                f" on {node.name}'s topic",
                error_class="UnknownNode",
            )
        raw = await load_params(invocation)
        encoded = canonical_json(raw).encode()
        digest = hashlib.sha256(encoded).hexdigest()  # = inputs_hash(raw), serialized once
        ctx.params_bytes = len(encoded)
        if secret_names(raw):
            # In a thread: a provider may block (files, a Vault round trip). Grants bind to the
            # tenant, the workflow and its version (ADR 0050).
            raw, ctx.secrets = await asyncio.to_thread(
                lambda: resolver.resolve_with_destinations(
                    raw,
                    workflow_id=invocation.workflow_id,
                    workflow_version=invocation.workflow_version,
                    tenant=invocation.tenant,
                )
            )
        params = validate_params(node, raw)
        remaining = ctx.remaining_s()
        if remaining is not None and remaining <= 0:
            return ended(
                TraceStatus.TIMEOUT,
                error=ErrorInfo(
                    error_class="NodeTimeout",
                    message=f"Deadline {deadline} passed before the attempt started",
                    retryable=True,
                ),
            )
        timeout = default_timeout_s if remaining is None else remaining
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                output = await node.execute(params, ctx)
        except TimeoutError:
            if not scope.expired():  # the node's own TimeoutError, not the deadline
                raise
            return ended(
                TraceStatus.TIMEOUT,
                error=ErrorInfo(
                    error_class="NodeTimeout",
                    message=f"Expected {node.key} to finish within {timeout:.3f}s, but it did not",
                    retryable=True,
                ),
            )
        if not isinstance(output, BaseModel):
            raise RefluxError(
                f"Expected {node.key}.execute to return {node.Output.__name__}, "
                f"but it returned {type(output).__name__}",
                error_class="InvalidOutput",
            )
        dumped = output.model_dump(mode="json", by_alias=True)
        if is_checker(invocation.trace_context):
            # A checker step (schemas/quality.py): no usable score fails the attempt for good.
            try:
                ctx.metrics[QUALITY_SCORE] = checker_score(dumped)
            except CheckerScoreError as exc:
                return ended(
                    TraceStatus.ERROR,
                    error=ErrorInfo(
                        error_class=CheckerScoreError.error_class,
                        message=f"{node.key} step {invocation.step.step_id!r}: {exc}",
                        retryable=False,
                    ),
                )
        return ended(TraceStatus.OK, output=dumped)
    except asyncio.CancelledError:
        raise
    except RefluxError as exc:
        return ended(TraceStatus.ERROR, error=error_info(exc))
    except Exception as exc:
        ctx.logger.exception("%s crashed on invocation %s", node.key, invocation.invocation_id)
        return ended(TraceStatus.ERROR, error=error_info(exc))
