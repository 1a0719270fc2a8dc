"""Inline execution of pure steps: the scheduler evaluates them itself, as journaled events.

A step whose resolved node version is a built-in pure node (:mod:`workflows.pure_nodes`:
``transform``, ``condition``) costs no Kafka round trip when nothing about it needs a worker:
``decide`` evaluates it in the same call, so the run log gets ``StepScheduled`` ->
``StepStarted(worker="scheduler-inline")`` -> ``StepSucceeded`` / ``StepFailed`` in the same
decision, hence the same transaction, and there is no ``StepDispatched``, ``NodeInvocation``,
worker attempt or ``NodeResult``. Replay folds these events like any others (it never evaluates
again); the runtime writes one trace per inline attempt (:mod:`.runtime.traces`). Temporal's
local activities and Restate's ``ctx.run`` are the same idea
(docs/decisions/0064-inline-pure-steps.md).

Eligibility, in two parts:

- :class:`InlinePolicy` (the runtime's ``DecisionContext.inline_node``): the setting
  ``REFLUX_INLINE_NODES`` is on, ``workflows.pure_nodes`` implements exactly the resolved
  ``name@version`` (any other version, e.g. a custom worker group's, goes to its workers), and the
  catalog routes no share of runs between production versions of the node (a canary or an
  experiment compares versions by their traces: both arms must run the same way).
- :func:`inline_node_for` (per step, in ``decide``): the step does not say ``inline: false``, is
  not a ``checker`` (the worker scores checkers), has no ``{{ secrets.* }}`` placeholder in its
  params (only workers resolve secrets) and its params are at most
  :data:`~workflows.pure_nodes.SMALL_PARAMS_BYTES` of canonical JSON.

An inline step never reads or writes the step cache: evaluating it costs less than the lookup.
Its failures are the worker path's (same error class and message); they are non-retryable
(invalid params, an invalid or failing expression), so the step's retry policy does not retry
them there either. Durations are 0: ``decide`` reads no clock of its own, and an evaluation of
small params takes microseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final, Protocol, TypeVar

from foundation.errors import RefluxError, classify
from processors.node_catalog.rollout import CatalogVersion
from processors.scheduler.state import RunState
from schemas.base import RefluxRecord, canonical_json
from schemas.models import ErrorInfo, NodeStatus, PayloadRef, StepFailed, StepStarted, StepSucceeded
from workflows.expressions import SECRET_PLACEHOLDER
from workflows.model import StepDefinition
from workflows.pure_nodes import SMALL_PARAMS_BYTES, PureNode, pure_node

__all__ = [
    "INLINE_WORKER",
    "InlineNodes",
    "InlinePolicy",
    "inline_node_for",
    "run_inline",
]

INLINE_WORKER: Final = "scheduler-inline"
"""``StepStarted.worker`` of an inline attempt, and its trace's ``context["worker"]``."""

InlineNodes = Callable[[str, str], PureNode | None]
"""``(node name, resolved version) -> the pure node to evaluate inline, or None (dispatch)``."""


class InlinePolicy:
    """``DecisionContext.inline_node`` for a runtime: the setting and the catalog's rule.

    ``catalog_versions(name)`` lists the catalog's versions of a node (``None``: no catalog).
    """

    def __init__(
        self,
        enabled: bool,
        catalog_versions: Callable[[str], Sequence[CatalogVersion]] | None = None,
    ) -> None:
        self.enabled = enabled
        self.catalog_versions = catalog_versions

    def __call__(self, name: str, version: str) -> PureNode | None:
        if not self.enabled:
            return None
        node = pure_node(name, version)
        if node is None or self.catalog_versions is None:
            return node
        production = [v for v in self.catalog_versions(name) if v.status is NodeStatus.PRODUCTION]
        if len(production) > 1:
            # A rollout splits runs between versions by weight (a canary, an experiment): the
            # arms are judged on their traces, so every arm runs on the workers.
            return None
        return node


def _has_secrets(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value and SECRET_PLACEHOLDER.search(value) is not None
    if isinstance(value, dict):
        return any(_has_secrets(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_secrets(item) for item in value)
    return False


def inline_node_for(
    inline_node: InlineNodes | None, definition: StepDefinition, version: str, params: Any
) -> PureNode | None:
    """The pure node to evaluate this step with inline, or None when it goes to a worker."""
    if inline_node is None or not definition.inline or definition.checker:
        return None
    node = inline_node(definition.node_name, version)
    if node is None or _has_secrets(params):
        return None
    if len(canonical_json(params).encode()) > SMALL_PARAMS_BYTES:
        return None  # a worker evaluates large params in its own thread pool
    return node


# -- running one inline attempt -------------------------------------------------------------------

E = TypeVar("E", bound=RefluxRecord)


class _Context(Protocol):
    @property
    def now(self) -> datetime: ...
    @property
    def new_id(self) -> Callable[[], str]: ...
    @property
    def store_payload(self) -> Callable[[Any], PayloadRef | None] | None: ...


class Writer(Protocol):
    """What ``decide``'s writer offers (append = apply)."""

    @property
    def run(self) -> RunState: ...
    @property
    def ctx(self) -> _Context: ...
    def emit(self, cls: type[E], **fields: Any) -> E: ...


def _error_info(exc: Exception) -> ErrorInfo:
    # As node_workers.attempt.error_info: a RefluxError says its class and message; anything
    # else is a bug, classed by its type name and never retried.
    found = classify(exc)
    message = str(exc) if isinstance(exc, RefluxError) else f"{found.error_class}: {exc}"
    return ErrorInfo(error_class=found.error_class, message=message, retryable=found.retryable)


def run_inline(
    w: Writer,
    step_id: str,
    node: PureNode,
    params: Any,
    on_failure: Callable[[str, ErrorInfo], None],
) -> None:
    """Evaluate the just-scheduled attempt of ``step_id`` and record its outcome.

    ``on_failure(step_id, error)`` is ``decide``'s after-failure rule (retry or fail the run).
    """
    run = w.run
    step = run.steps[step_id]
    ref = run.step_ref(step_id)
    attempt_id = w.ctx.new_id()
    w.emit(
        StepStarted,
        step=ref,
        attempt=step.attempt,
        invocation_id=attempt_id,
        started_at=w.ctx.now,
        timeout_at=None,
        worker=INLINE_WORKER,
    )
    try:
        output = node.run(params)
    except Exception as exc:  # every failure is the step's, as on a worker: never the batch's
        error = _error_info(exc)
        w.emit(StepFailed, step=ref, attempt=step.attempt, invocation_id=attempt_id, error=error)
        on_failure(step_id, error)
        return
    # Outputs above the claim-check threshold go to the object store, as a worker's do.
    output_ref = w.ctx.store_payload(output) if w.ctx.store_payload is not None else None
    w.emit(
        StepSucceeded,
        step=ref,
        attempt=step.attempt,
        invocation_id=attempt_id,
        output=None if output_ref is not None else output,
        output_ref=output_ref,
        cache_hit=False,
        duration_ms=0,
    )
