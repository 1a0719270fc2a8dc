"""Child runs: the ``meta.workflow`` and ``meta.loop`` steps, and the parent/child protocol.

Pure like the rest of the core (no I/O): :func:`processors.scheduler.decide.decide` calls in here
through small hooks, and everything that must reach *another* run goes into the decision's
``commands`` (the outbox), which the runtime writes to the commands topic in the same Kafka
transaction as the run's events (docs/decisions/0025-child-runs-and-the-scheduler-outbox.md).

The protocol, all of it through the commands topic (parent and child may live on different
partitions, owned by different scheduler instances):

- a child-run step is scheduled like any step (``StepScheduled``, params rendered), then
  ``ChildRunRequested`` records the child's run id, workflow and rendered inputs, and the outbox
  carries the child's ``StartRun`` (with ``parent``). The child's run id is derived from
  (parent run id, step id, attempt, iteration): a redelivered decision, or the same attempt
  decided twice, names the same child, whose ``StartRun`` is idempotent;
- when the child ends (its run reaches a terminal status, or its ``StartRun`` is rejected), its
  decision's outbox carries ``ChildRunFinished`` to the parent, which ends the step (meta.workflow)
  or the iteration (meta.loop: ``ChildRunEnded``, then the next iteration or the step's end).
  A notification for another attempt, iteration or child is stale and ignored;
- cancelling, pausing and resuming the parent sends ``CancelRun`` / ``PauseRun`` /
  ``ResumeRun`` to every child in flight.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, NamedTuple, Protocol

from foundation.errors import NonRetryableError
from processors.scheduler.spans import run_trace
from processors.scheduler.state import RunState, RunStatus, StepStatus
from schemas.models import (
    CancelRun,
    ChildRunEnded,
    ChildRunFinished,
    ChildRunRequested,
    ErrorInfo,
    ParentRef,
    PauseRun,
    ResumeRun,
    StartRun,
    StepFailed,
    StepRef,
    StepScheduled,
    StepSucceeded,
)
from schemas.statuses import TERMINAL_RUN_STATUSES
from workflows.expressions import evaluate_when, render_params
from workflows.meta_children import (
    LOOP_NODE,
    MetaLoopParams,
    MetaWorkflowParams,
    is_child_run_node,
    parse_child_run_params,
)
from workflows.model import StepDefinition, WorkflowDefinition
from workflows.validation import WorkflowValidationError, validate_inputs


class _Registered(Protocol):
    @property
    def version(self) -> int: ...
    @property
    def definition(self) -> WorkflowDefinition: ...


class DecisionContext(Protocol):
    """What the hooks read of decide's ``DecisionContext`` (a Protocol: decide imports this
    module, so this module must not import decide)."""

    @property
    def now(self) -> datetime: ...
    @property
    def new_id(self) -> Callable[[], str]: ...
    @property
    def lookup_workflow(self) -> Callable[[str, int | None], _Registered | None]: ...


__all__ = [
    "BUILTIN_VERSION",
    "CHILD_SOURCE",
    "ChildOps",
    "RunCommand",
    "child_error",
    "child_finished",
    "child_run_id",
    "children_in_flight",
    "command_id",
    "end_children_of_failed_run",
    "is_child_run_node",
    "map_child_run_id",
    "notify_parent",
    "propagate",
    "rejected_child",
    "resume_loops",
    "schedule_child_step",
]

RunCommand = StartRun | CancelRun | PauseRun | ResumeRun | ChildRunFinished
"""Commands a decision sends to *other* runs (``Decision.commands``, the outbox)."""

BUILTIN_VERSION: Final = "builtin"
"""The ``node_version`` of a meta step: run by the scheduler, not a catalog version."""

CHILD_SOURCE: Final = "parent"
"""``StartRun.source`` of a child run (the parent is in ``StartRun.parent``)."""

_NAMESPACE: Final = uuid.UUID("6f1c7a52-2d3e-4b8e-9a57-0c4d25f0e1a9")
"""uuid5 namespace of child run ids and of the outbox's command ids."""

CHILD_FAILED: Final = "ChildRunFailed"
CHILD_CANCELLED: Final = "ChildRunCancelled"
CHILD_REJECTED: Final = "ChildRunRejected"
CHILD_WORKFLOW_NOT_FOUND: Final = "ChildWorkflowNotFound"
CHILD_INPUTS_INVALID: Final = "ChildInputsInvalid"
LOOP_MAX_ITERATIONS: Final = "LoopMaxIterations"
CHILD_DEPTH_EXCEEDED: Final = "ChildDepthExceeded"

MAX_CHILD_DEPTH: Final = 16
"""Child runs nest at most this deep (a workflow that starts itself fails at that depth)."""


class _Writer(Protocol):
    """What the hooks need of decide's writer (decide.py's ``_Writer``)."""

    commands: list[RunCommand]

    @property
    def ctx(self) -> DecisionContext: ...
    @property
    def run(self) -> RunState: ...

    def emit(self, cls: Any, **fields: Any) -> Any: ...


class ChildOps(NamedTuple):
    """decide.py's own helpers, passed in (decide imports this module, not the reverse)."""

    after_failure: Callable[[Any, str, ErrorInfo], None]
    advance: Callable[[Any], None]
    context: Callable[[Any, StepDefinition | None], dict[str, Any]]


# -- ids ------------------------------------------------------------------------------------------


def child_run_id(parent_run_id: str, step_id: str, attempt: int, iteration: int | None) -> str:
    """The child's run id: the same (run, step, attempt, iteration) always names the same child."""
    name = f"child:{parent_run_id}:{step_id}:{attempt}:{iteration or 0}"
    return str(uuid.uuid5(_NAMESPACE, name))


def map_child_run_id(
    parent_run_id: str, step_id: str, attempt: int, item: int, item_attempt: int
) -> str:
    """The run id of the child that runs ``item`` of a map step over a sub-workflow (one per
    map attempt, item and item attempt: a retried item is a new child)."""
    name = f"mapchild:{parent_run_id}:{step_id}:{attempt}:{item}:{item_attempt}"
    return str(uuid.uuid5(_NAMESPACE, name))


def _command_id(*parts: object) -> str:
    """Outbox command ids are derived too, so the receiver's dedupe (processed ids) holds."""
    return str(uuid.uuid5(_NAMESPACE, ":".join(str(p) for p in parts)))


command_id = _command_id
"""Public name for the other outbox writers (the map over a sub-workflow)."""


# -- scheduling a child-run step ------------------------------------------------------------------


def schedule_child_step(w: _Writer, ops: ChildOps, step_id: str, attempt: int) -> None:
    """``_schedule`` for a meta.workflow / meta.loop step: StepScheduled, then the first child."""
    run = w.run
    definition = run.step_definition(step_id)
    raw = definition.params if isinstance(definition.params, dict) else {}
    # A loop's inputs and until are evaluated per iteration (they see loop.*), not now.
    deferred = {
        k: raw[k] for k in ("inputs", "until") if definition.node_name == LOOP_NODE and k in raw
    }
    now_rendered = {k: v for k, v in raw.items() if k not in deferred}
    try:
        params = render_params(
            now_rendered, ops.context(w, definition), path=f"steps.{step_id}.params"
        )
        parsed = parse_child_run_params(definition.node_name, {**params, **deferred})
    except NonRetryableError as exc:
        _fail_unstarted(w, ops, step_id, attempt, _error_of(exc))
        return
    except ValueError as exc:  # pydantic: a rendered workflow_id that is not a string, ...
        error = ErrorInfo(
            error_class="MetaParamsInvalid",
            message=f"steps.{step_id}.params: {exc}",
            retryable=False,
        )
        _fail_unstarted(w, ops, step_id, attempt, error)
        return
    w.emit(
        StepScheduled,
        step=StepRef(step_id=step_id, node=definition.node_name, node_version=BUILTIN_VERSION),
        attempt=attempt,
        params={**params, **deferred},
        params_ref=None,
        cache_key=None,
    )
    iteration = 1 if isinstance(parsed, MetaLoopParams) else None
    _request_child(w, ops, step_id, parsed, iteration, previous=None)


def _params(run: RunState, step_id: str) -> MetaWorkflowParams:
    """The params rendered at StepScheduled (valid: they were parsed before it was written)."""
    step = run.steps[step_id]
    return parse_child_run_params(run.step_definition(step_id).node_name, step.params)


def _request_child(
    w: _Writer,
    ops: ChildOps,
    step_id: str,
    params: MetaWorkflowParams,
    iteration: int | None,
    *,
    previous: Any,
) -> None:
    """ChildRunRequested + the child's StartRun in the outbox; or the step fails for good when
    the child cannot start (unknown workflow, inputs that do not render or validate)."""
    run = w.run
    step = run.steps[step_id]
    attempt = step.attempt
    definition = run.step_definition(step_id)
    inputs: Any = params.inputs
    if iteration is not None:
        context = {
            **ops.context(w, definition),
            "loop": {"iteration": iteration, "previous": previous},
        }
        try:
            inputs = render_params(inputs, context, path=f"steps.{step_id}.params.inputs")
        except NonRetryableError as exc:
            _fail_attempt(w, ops, step_id, _error_of(exc))
            return
    registered = w.ctx.lookup_workflow(params.workflow_id, params.workflow_version)
    if registered is None:
        which = (
            "latest" if params.workflow_version is None else f"version {params.workflow_version}"
        )
        error = ErrorInfo(
            error_class=CHILD_WORKFLOW_NOT_FOUND,
            message=f"Expected workflow {params.workflow_id!r} ({which}) to be registered for "
            f"step {step_id!r}, but it is not",
            retryable=False,
        )
        _fail_attempt(w, ops, step_id, error)
        return
    try:
        validate_inputs(registered.definition, inputs)
    except WorkflowValidationError as exc:
        error = ErrorInfo(
            error_class=CHILD_INPUTS_INVALID,
            message=f"Expected valid inputs for child workflow {params.workflow_id!r} of step "
            f"{step_id!r}, but " + "; ".join(str(e) for e in exc.errors),
            retryable=False,
        )
        _fail_attempt(w, ops, step_id, error)
        return
    depth = (run.parent.depth if run.parent is not None else 0) + 1
    if depth > MAX_CHILD_DEPTH:
        error = ErrorInfo(
            error_class=CHILD_DEPTH_EXCEEDED,
            message=f"Expected child runs to nest at most {MAX_CHILD_DEPTH} deep, but step "
            f"{step_id!r} would start one at depth {depth} (a workflow that starts itself?)",
            retryable=False,
        )
        _fail_attempt(w, ops, step_id, error)
        return
    child = child_run_id(run.run_id, step_id, attempt, iteration)
    w.emit(
        ChildRunRequested,
        step=run.step_ref(step_id),
        attempt=attempt,
        iteration=iteration,
        child_run_id=child,
        workflow_id=params.workflow_id,
        # Pinned now: the child runs the version the parent decided on, whatever is
        # registered by the time its StartRun is read.
        workflow_version=registered.version,
        inputs=inputs,
    )
    w.commands.append(
        child_start(
            w,
            child,
            ParentRef(
                run_id=run.run_id,
                step_id=step_id,
                attempt=attempt,
                iteration=iteration,
                depth=depth,
            ),
            workflow_id=params.workflow_id,
            workflow_version=registered.version,
            inputs=inputs,
            reason=f"step {step_id!r} of run {run.run_id}",
        )
    )


def child_start(
    w: _Writer,
    child: str,
    parent: ParentRef,
    *,
    workflow_id: str,
    workflow_version: int | None,
    inputs: dict[str, Any],
    reason: str,
) -> StartRun:
    """The ``StartRun`` of a child run (meta.workflow, a loop iteration, a map item): its
    derived command id and idempotency key make a repeated decision start one child."""
    return StartRun(
        run_id=child,
        event_id=w.ctx.new_id(),
        occurred_at=w.ctx.now,
        schema_version=StartRun.SCHEMA_VERSION,
        command_id=_command_id(child, "start"),
        reason=reason,
        requested_by=f"run:{parent.run_id}",
        workflow_id=workflow_id,
        workflow_version=workflow_version,
        inputs=inputs,
        idempotency_key=f"child:{child}",
        deadline=None,
        source=CHILD_SOURCE,
        source_key=None,
        parent=parent,
        tenant=w.run.tenant,
        # The child's spans join the parent's trace, under the parent run's span (ADR 0062).
        trace_context=run_trace(w.run.run_id, w.run.trace_context).run_context(),
    )


# -- the child's end, at the parent ---------------------------------------------------------------

_RECORDING = (RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.FAILED)


def child_finished(w: _Writer, ops: ChildOps, cmd: ChildRunFinished) -> None:
    """The parent hears that a child ended. Stale news (another attempt, iteration or child, a
    step or run that moved on) changes nothing."""
    run = w.run
    if run.status not in _RECORDING:
        return
    step = run.steps.get(cmd.step_id)
    if (
        step is None
        or step.status is not StepStatus.RUNNING
        or step.child_run_id != cmd.child_run_id
        or step.attempt != cmd.attempt
        or not is_child_run_node(run.step_definition(cmd.step_id).node_name)
    ):
        return
    params = _params(run, cmd.step_id)
    if isinstance(params, MetaLoopParams):
        _iteration_ended(w, ops, cmd, params)
    elif cmd.status == RunStatus.SUCCEEDED.value:
        _succeed(w, cmd.step_id, cmd.outputs)
    else:
        _fail_attempt(w, ops, cmd.step_id, _child_error(cmd))
    ops.advance(w)


def _iteration_ended(
    w: _Writer, ops: ChildOps, cmd: ChildRunFinished, params: MetaLoopParams
) -> None:
    run = w.run
    step = run.steps[cmd.step_id]
    iteration = step.iteration
    w.emit(
        ChildRunEnded,
        step=run.step_ref(cmd.step_id),
        attempt=step.attempt,
        iteration=iteration,
        child_run_id=cmd.child_run_id,
        status=cmd.status,
        outputs=cmd.outputs,
    )
    if cmd.status != RunStatus.SUCCEEDED.value:
        _fail_attempt(w, ops, cmd.step_id, _child_error(cmd))
        return
    definition = run.step_definition(cmd.step_id)
    if params.until is not None:
        context = {
            **ops.context(w, definition),
            "output": cmd.outputs,
            "loop": {"iteration": iteration, "output": cmd.outputs},
        }
        try:
            done = evaluate_when(params.until, context, path=f"steps.{cmd.step_id}.params.until")
        except NonRetryableError as exc:
            _fail_attempt(w, ops, cmd.step_id, _error_of(exc))
            return
        if done:
            _succeed(w, cmd.step_id, _loop_output(cmd.outputs, iteration, completed=True))
            return
    if iteration >= params.max_iterations:
        if params.until is None or params.on_max == "succeed":
            completed = params.until is None
            _succeed(w, cmd.step_id, _loop_output(cmd.outputs, iteration, completed=completed))
            return
        error = ErrorInfo(
            error_class=LOOP_MAX_ITERATIONS,
            message=f"step {cmd.step_id!r}: 'until' ({params.until}) did not hold after "
            f"max_iterations={params.max_iterations} iterations (on_max: fail)",
            retryable=False,
        )
        _fail_attempt(w, ops, cmd.step_id, error)
        return
    if w.run.status is RunStatus.RUNNING:
        _request_child(w, ops, cmd.step_id, params, iteration + 1, previous=cmd.outputs)
    # Paused (or failed, waiting for a re-drive): the next iteration starts on ResumeRun.


def resume_loops(w: _Writer, ops: ChildOps) -> None:
    """After RunResumed: a loop whose iteration ended while the run was paused starts the next."""
    run = w.run
    for step_id in run.graph.topological_order:
        step = w.run.steps[step_id]
        if step.status is not StepStatus.RUNNING or step.child_run_id is not None:
            continue
        if run.step_definition(step_id).node_name != LOOP_NODE or step.iteration == 0:
            continue
        params = _params(w.run, step_id)
        _request_child(w, ops, step_id, params, step.iteration + 1, previous=step.iteration_output)


def _loop_output(output: Any, iterations: int, *, completed: bool) -> dict[str, Any]:
    return {"output": output, "iterations": iterations, "completed": completed}


def _succeed(w: _Writer, step_id: str, output: Any) -> None:
    run = w.run
    step = run.steps[step_id]
    started = step.started_at or w.ctx.now
    w.emit(
        StepSucceeded,
        step=run.step_ref(step_id),
        attempt=step.attempt,
        invocation_id=step.child_run_id,
        output=output,
        output_ref=None,
        cache_hit=False,
        duration_ms=max(0, int((w.ctx.now - started).total_seconds() * 1000)),
    )


def _fail_attempt(w: _Writer, ops: ChildOps, step_id: str, error: ErrorInfo) -> None:
    step = w.run.steps[step_id]
    w.emit(
        StepFailed,
        step=w.run.step_ref(step_id),
        attempt=step.attempt,
        invocation_id=step.child_run_id,
        error=error,
    )
    ops.after_failure(w, step_id, error)


def _fail_unstarted(
    w: _Writer, ops: ChildOps, step_id: str, attempt: int, error: ErrorInfo
) -> None:
    """Params that do not render: the step fails before StepScheduled (like a ``when`` error)."""
    w.emit(StepFailed, step=w.run.step_ref(step_id), attempt=attempt, error=error)
    ops.after_failure(w, step_id, error)


def _error_of(exc: NonRetryableError) -> ErrorInfo:
    return ErrorInfo(error_class=exc.error_class, message=str(exc), retryable=False)


def child_error(cmd: ChildRunFinished) -> ErrorInfo:
    """The error a failed, cancelled or rejected child gives its parent's step (or map item)."""
    return _child_error(cmd)


def _child_error(cmd: ChildRunFinished) -> ErrorInfo:
    """The step's error: the child's own error class, so the step's retry spec
    (``non_retryable``) can tell failures apart; the message names the child."""
    if cmd.status == RunStatus.CANCELLED.value:
        detail = cmd.error.message if cmd.error is not None else "cancelled"
        return ErrorInfo(
            error_class=CHILD_CANCELLED,
            message=f"child run {cmd.child_run_id} was cancelled: {detail}",
            retryable=False,
        )
    if cmd.error is None:
        return ErrorInfo(
            error_class=CHILD_FAILED,
            message=f"child run {cmd.child_run_id} failed",
            retryable=True,
        )
    return ErrorInfo(
        error_class=cmd.error.error_class,
        message=f"child run {cmd.child_run_id} failed: {cmd.error.message}",
        retryable=cmd.error.retryable,
    )


# -- the outbox: notifications and propagation ----------------------------------------------------


def notify_parent(
    before: RunState | None, after: RunState | None, ctx: DecisionContext
) -> ChildRunFinished | None:
    """A child run that reached a terminal status in this decision tells its parent."""
    if after is None or after.parent is None or after.status not in TERMINAL_RUN_STATUSES:
        return None
    if before is not None and before.status == after.status:
        return None
    parent = after.parent
    error = after.error
    if after.status is RunStatus.CANCELLED and error is None:
        error = ErrorInfo(error_class=CHILD_CANCELLED, message="cancelled", retryable=False)
    return ChildRunFinished(
        run_id=parent.run_id,
        event_id=ctx.new_id(),
        occurred_at=ctx.now,
        command_id=_command_id(after.run_id, "finished", after.last_seq),
        reason=f"child run {after.run_id} {after.status.value}",
        requested_by=f"run:{after.run_id}",
        child_run_id=after.run_id,
        step_id=parent.step_id,
        attempt=parent.attempt,
        iteration=parent.iteration,
        status=after.status.value,
        outputs=after.outputs if after.status is RunStatus.SUCCEEDED else None,
        error=None if after.status is RunStatus.SUCCEEDED else error,
    )


def rejected_child(cmd: StartRun, reason: str, ctx: DecisionContext) -> ChildRunFinished | None:
    """A child whose StartRun is rejected never runs: the parent's step must not wait for it."""
    if cmd.parent is None:
        return None
    return ChildRunFinished(
        run_id=cmd.parent.run_id,
        event_id=ctx.new_id(),
        occurred_at=ctx.now,
        command_id=_command_id(cmd.run_id, "rejected", cmd.command_id),
        reason=reason,
        requested_by=f"run:{cmd.run_id}",
        child_run_id=cmd.run_id,
        step_id=cmd.parent.step_id,
        attempt=cmd.parent.attempt,
        iteration=cmd.parent.iteration,
        status=RunStatus.FAILED.value,
        outputs=None,
        error=ErrorInfo(
            error_class=CHILD_REJECTED,
            message=f"the child run's StartRun was rejected: {reason}",
            retryable=False,
        ),
    )


def children_in_flight(run: RunState) -> list[str]:
    """Child runs the run waits for (its child-run steps running, a child requested)."""
    return [
        st.child_run_id
        for st in run.steps.values()
        if st.status is StepStatus.RUNNING and st.child_run_id is not None
    ]


def propagate(
    w: _Writer,
    children: list[str],
    kind: type[CancelRun] | type[PauseRun] | type[ResumeRun],
    *,
    causation: str,
    reason: str | None,
) -> None:
    """Cancel, pause or resume ``children`` with the parent (ids derived from the parent's
    command, so a repeated decision sends commands the children dedupe)."""
    run = w.run
    verb = {CancelRun: "cancelled", PauseRun: "paused", ResumeRun: "resumed"}[kind]
    for child in children:
        w.commands.append(
            kind(
                run_id=child,
                event_id=w.ctx.new_id(),
                occurred_at=w.ctx.now,
                command_id=_command_id(causation, kind.__name__, child),
                reason=f"parent run {run.run_id} {verb}" + (f": {reason}" if reason else ""),
                requested_by=f"run:{run.run_id}",
            )
        )


# -- a parent that ends does not leave children running -------------------------------------------


def end_children_of_failed_run(w: _Writer, map_children: dict[str, list[str]]) -> None:
    """The run failed in this decision (another step, its deadline, a fail-fast map): every
    step still waiting for child runs fails with ``ChildRunCancelled`` and the outbox cancels
    those children (reason naming the parent's end). Their ChildRunFinished is then stale (the
    step is no longer running) and changes nothing; a re-drive of the step starts new ones.

    ``map_children``: the children of map steps over a sub-workflow (by step id), computed by
    the caller (:func:`processors.scheduler.meta.map_children.map_children_in_flight`)."""
    run = w.run
    if run.status is not RunStatus.FAILED:
        return
    cause = run.error.message if run.error is not None else "failed"
    failed_step = f" (step {run.failed_step!r})" if run.failed_step else ""
    ended_at = run.last_seq
    for step_id in run.graph.topological_order:
        step = w.run.steps.get(step_id)
        if step is None or step.status is not StepStatus.RUNNING:
            continue
        node = run.step_definition(step_id).node_name
        if is_child_run_node(node) and step.child_run_id is not None:
            children = [step.child_run_id]
        elif step_id in map_children:
            children = map_children[step_id]
        else:
            continue
        reason = f"parent run {run.run_id} failed{failed_step}: {cause}"
        w.emit(
            StepFailed,
            step=run.step_ref(step_id),
            attempt=step.attempt,
            invocation_id=step.child_run_id,
            error=ErrorInfo(
                error_class=CHILD_CANCELLED,
                message=f"child run(s) cancelled: {reason}",
                retryable=False,
            ),
        )
        for child in children:
            w.commands.append(
                CancelRun(
                    run_id=child,
                    event_id=w.ctx.new_id(),
                    occurred_at=w.ctx.now,
                    command_id=_command_id(run.run_id, "ended", ended_at, child),
                    reason=reason,
                    requested_by=f"run:{run.run_id}",
                )
            )
