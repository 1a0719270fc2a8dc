"""``meta.map`` over a sub-workflow: one child run per item (ADR 0024 addendum, ADR 0025).

The map's bookkeeping (``MapStarted``, ``MapState``, the output assembled in item order, the
spills, the per-item retries with the step's retry spec, ``fail_fast`` / ``collect``) is the
node form's (:mod:`processors.scheduler.meta.map`); what differs is who runs an item:

- children are started in **batches**: one ``MapChunkDispatched`` (the batch's items and item
  attempt) and, in the outbox, one ``StartRun`` per child, with ``parent`` naming the map step,
  its attempt and the item index (``ParentRef.iteration``). The child's run id is derived from
  (parent, step, map attempt, item, item attempt), so a re-decided batch starts nobody twice.
  A batch starts when at least ``chunk_concurrency`` slots (a quarter of the cap) are free, or
  fewer when fewer items are left: not one start record per finished child;
- at most ``concurrency`` children are in flight (``MapState.children_running``);
- each child's end (``ChildRunFinished``, through the commands topic) is one small
  ``MapChildEnded``: the item's entry (the child's outputs, or its error), and how the step's
  retry spec judged it (succeeded, failed for good, or retry: a new child after a backoff
  timer). A child's end cannot be batched with another's: they are separate inputs;
- ``fail_fast``: the first item failed for good fails the step and the run, and the outbox
  cancels the children still in flight (their ends are then stale and ignored).

Everything is pure (I/O only through the context's payload hooks) and written before it
matters, so a replay folds to the same state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

from foundation.errors import NonRetryableError
from processors.scheduler.backoff import backoff_ms, should_retry
from processors.scheduler.child_runs import (
    CHILD_DEPTH_EXCEEDED,
    CHILD_INPUTS_INVALID,
    CHILD_WORKFLOW_NOT_FOUND,
    MAX_CHILD_DEPTH,
    RunCommand,
    child_error,
    child_start,
    command_id,
    map_child_run_id,
)
from processors.scheduler.map_state import MapChunkState, MapState
from processors.scheduler.meta import map as node_map
from processors.scheduler.state import RunState, RunStatus, StepStatus
from schemas.base import canonical_json
from schemas.models import (
    CancelRun,
    ChildRunFinished,
    MapChildEnded,
    MapChunkDispatched,
    MapStarted,
    ParentRef,
    PayloadRef,
    StepRef,
)
from workflows.expressions import render_params
from workflows.meta import MapParams
from workflows.model import WorkflowDefinition
from workflows.validation import WorkflowValidationError, validate_inputs

__all__ = [
    "MAX_CHILD_BATCH",
    "child_batching",
    "map_child_finished",
    "map_children_in_flight",
    "map_timer_due",
    "pump_children",
    "pump_map",
    "start_any_map",
    "start_map_children",
]

MAX_CHILD_BATCH: Final = 100
"""Children started by one ``MapChunkDispatched`` at most: bounds the record and the decision's
outbox (100 StartRun commands)."""

WORKFLOW_NODE_REF: Final = "meta.workflow"
"""``MapStarted.node.node`` of a map over a sub-workflow (each item is a child run)."""
BUILTIN: Final = "builtin"


class _Registered(Protocol):
    @property
    def version(self) -> int: ...
    @property
    def definition(self) -> WorkflowDefinition: ...


class _Context(Protocol):
    @property
    def now(self) -> datetime: ...
    @property
    def new_id(self) -> Callable[[], str]: ...
    @property
    def random(self) -> Callable[[], float]: ...
    @property
    def lookup_workflow(self) -> Callable[[str, int | None], _Registered | None]: ...
    @property
    def load_payload(self) -> Callable[[PayloadRef], Any] | None: ...
    @property
    def store_payload(self) -> Callable[[Any], PayloadRef | None] | None: ...


class Writer(Protocol):
    commands: list[RunCommand]

    @property
    def run(self) -> RunState: ...
    @property
    def ctx(self) -> _Context: ...
    def emit(self, cls: Any, **fields: Any) -> Any: ...


ContextOf = Callable[[], dict[str, Any]]


def child_batching(concurrency: int) -> tuple[int, int]:
    """``(max children per batch, free slots that start a batch)``: a quarter of the cap, so a
    map of n items writes about ``4n / concurrency`` start records, never one per item (unless
    the cap is below 4)."""
    threshold = max(1, min(MAX_CHILD_BATCH, math.ceil(concurrency / 4)))
    return MAX_CHILD_BATCH, threshold


# -- entry points for decide (either form of map) -------------------------------------------------


def start_any_map(w: Writer, step_id: str, attempt: int, context_of: ContextOf) -> None:
    """Start a map step's attempt: over a sub-workflow here, over a node in ``map``."""
    params = node_map.map_definition_params(w.run, step_id)
    if not params.over_workflow:
        # decide's writer is both kinds of Writer (invocations and the outbox)
        node_map.start_map(w, step_id, attempt, context_of)  # type: ignore[arg-type]
        return
    items = node_map.render_items(params, step_id, context_of)
    start_map_children(
        w, step_id, attempt=attempt, params=params, items=items, context_of=context_of
    )


def pump_map(w: Writer, step_id: str, context_of: ContextOf) -> None:
    """Send what a map holds back (resume, a re-drive): chunks, or children."""
    progress = w.run.maps.get(step_id)
    if progress is not None and progress.workflow_id is not None:
        pump_children(w, step_id, context_of)
    else:
        node_map.pump(w, step_id, context_of)  # type: ignore[arg-type]  # (see above)


def map_timer_due(w: Writer, step_id: str, timer_id: str, context_of: ContextOf) -> bool:
    """A map's retry timer fired: send what is due (if room). False: not a map timer."""
    progress = w.run.maps.get(step_id)
    if progress is None or timer_id not in progress.retries:
        return False
    pump_map(w, step_id, context_of)
    return True


def _lookup(w: Writer, workflow_id: str, version: int | None, step_id: str) -> _Registered:
    registered = w.ctx.lookup_workflow(workflow_id, version)
    if registered is None:
        which = "latest" if version is None else f"version {version}"
        raise NonRetryableError(
            f"Expected workflow {workflow_id!r} ({which}) to be registered for the items of "
            f"map step {step_id!r}, but it is not",
            error_class=CHILD_WORKFLOW_NOT_FOUND,
        )
    return registered


def start_map_children(
    w: Writer,
    step_id: str,
    *,
    attempt: int,
    params: MapParams,
    items: list[Any],
    context_of: ContextOf,
) -> None:
    """MapStarted (the child workflow pinned), then the first batches of children."""
    run = w.run
    assert params.workflow is not None
    registered = _lookup(w, params.workflow, params.version, step_id)
    depth = (run.parent.depth if run.parent is not None else 0) + 1
    if depth > MAX_CHILD_DEPTH:
        raise NonRetryableError(
            f"Expected child runs to nest at most {MAX_CHILD_DEPTH} deep, but map step "
            f"{step_id!r} would start them at depth {depth}",
            error_class=CHILD_DEPTH_EXCEEDED,
        )
    batch, threshold = child_batching(params.concurrency)
    ref = w.ctx.store_payload(items) if w.ctx.store_payload is not None else None
    if ref is not None:
        node_map.remember(ref, items)
    w.emit(
        MapStarted,
        step=run.step_ref(step_id),
        attempt=attempt,
        item_count=len(items),
        items=None if ref is not None else items,
        items_ref=ref,
        node=StepRef(step_id=step_id, node=WORKFLOW_NODE_REF, node_version=BUILTIN),
        invoke_topic="",
        chunk_size=batch,
        max_chunks_in_flight=params.concurrency,
        chunk_concurrency=threshold,
        on_failure=params.on_failure,
        workflow_id=params.workflow,
        workflow_version=registered.version,
    )
    if not node_map.finish_if_complete(w, step_id):
        pump_children(w, step_id, context_of)


def pump_children(w: Writer, step_id: str, context_of: ContextOf) -> None:
    """Start batches of children while slots are free (only while the run is running): due
    retries first (one item each), then fresh items in order.

    Raises ``NonRetryableError`` (an item's inputs that do not render or validate, the child
    workflow gone): ``decide`` fails the step with it; the children already in flight are
    cancelled first, so a failed map leaves none running."""
    try:
        _pump_children(w, step_id, context_of)
    except NonRetryableError as exc:
        cancel_map_children(w, step_id, reason=f"failed: {exc}")
        raise


def _pump_children(w: Writer, step_id: str, context_of: ContextOf) -> None:
    base: dict[str, Any] | None = None
    while w.run.status is RunStatus.RUNNING:
        progress = node_map.running_map(w.run, step_id)
        if progress is None or progress.workflow_id is None:
            return
        free = progress.max_chunks_in_flight - progress.children_running
        if free <= 0:
            return
        if base is None:
            base = context_of()
        due = sorted(
            (r for r in progress.retries.values() if r.due_at <= w.ctx.now),
            key=lambda r: (r.due_at, r.timer_id),
        )
        if due and len(due[0].items) <= free:
            retry = due[0]
            _start_batch(
                w,
                progress,
                base=base,
                indices=list(retry.items),
                item_attempt=retry.item_attempt,
                retry_timer_id=retry.timer_id,
            )
            continue
        left = progress.item_count - progress.next_item
        if left <= 0:
            return
        count = min(free, left, progress.chunk_size)
        if count < min(progress.chunk_concurrency, left):
            return  # wait for more free slots: one start record per batch, not per child
        indices = list(range(progress.next_item, progress.next_item + count))
        _start_batch(w, progress, base=base, indices=indices, item_attempt=1, retry_timer_id=None)


def _start_batch(
    w: Writer,
    progress: MapState,
    *,
    base: dict[str, Any],
    indices: list[int],
    item_attempt: int,
    retry_timer_id: str | None,
) -> None:
    run = w.run
    step_id = progress.step_id
    assert progress.workflow_id is not None
    registered = _lookup(w, progress.workflow_id, progress.workflow_version, step_id)
    template = node_map.map_definition_params(run, step_id).child_inputs
    items = node_map.items_of(w, progress)
    context = dict(base)
    path = f"steps.{step_id}.params.inputs"
    inputs: list[Any] = []
    for index in indices:
        context["item"] = items[index]
        context["index"] = index
        rendered = render_params(template, context, path=path)
        try:
            validate_inputs(registered.definition, rendered)
        except WorkflowValidationError as exc:
            raise NonRetryableError(
                f"Expected valid inputs for child workflow {progress.workflow_id!r} of map step "
                f"{step_id!r} (item {index}), but " + "; ".join(str(e) for e in exc.errors),
                error_class=CHILD_INPUTS_INVALID,
            ) from exc
        inputs.append(rendered)
    contiguous = indices == list(range(indices[0], indices[0] + len(indices)))
    number = progress.next_chunk
    w.emit(
        MapChunkDispatched,
        step=run.step_ref(step_id),
        attempt=progress.attempt,
        chunk=number,
        item_attempt=item_attempt,
        first_item=indices[0],
        item_count=len(indices),
        item_indices=[] if contiguous and retry_timer_id is None else indices,
        invocation_id=command_id(run.run_id, step_id, progress.attempt, "batch", number),
        retry_timer_id=retry_timer_id,
    )
    depth = (run.parent.depth if run.parent is not None else 0) + 1
    for index, child_inputs in zip(indices, inputs, strict=True):
        child = map_child_run_id(run.run_id, step_id, progress.attempt, index, item_attempt)
        w.commands.append(
            child_start(
                w,
                child,
                ParentRef(
                    run_id=run.run_id,
                    step_id=step_id,
                    attempt=progress.attempt,
                    iteration=index,
                    depth=depth,
                ),
                workflow_id=progress.workflow_id,
                workflow_version=progress.workflow_version,
                inputs=child_inputs,
                reason=f"item {index} of map step {step_id!r} of run {run.run_id}",
            )
        )


# -- a child's end --------------------------------------------------------------------------------


def _pending_chunk(progress: MapState, run_id: str, cmd: ChildRunFinished) -> MapChunkState | None:
    """The in-flight batch waiting for exactly this child (else the news is stale)."""
    index = cmd.iteration
    if index is None or cmd.attempt != progress.attempt:
        return None
    for number in progress.in_flight:
        chunk = progress.chunks[number]
        indices = chunk.indices
        if index not in indices:
            continue
        results = chunk.results if isinstance(chunk.results, list) else []
        position = indices.index(index)
        if position >= len(results) or results[position] is not None:
            continue
        expected = map_child_run_id(
            run_id, progress.step_id, progress.attempt, index, chunk.item_attempt
        )
        if expected == cmd.child_run_id:
            return chunk
    return None


def map_child_finished(w: Writer, cmd: ChildRunFinished, context_of: ContextOf) -> None:
    """A child of a map step ended: MapChildEnded, then fail fast, finish, or start more."""
    run = w.run
    if run.status not in (RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.FAILED):
        return
    progress = node_map.running_map(run, cmd.step_id)
    if progress is None or progress.workflow_id is None:
        return
    chunk = _pending_chunk(progress, run.run_id, cmd)
    if chunk is None:
        return  # stale: an abandoned attempt, a cancelled fail-fast sibling, a duplicate
    index = cmd.iteration
    assert index is not None
    error = None if cmd.status == RunStatus.SUCCEEDED.value else child_error(cmd)
    entry: dict[str, Any] = (
        {"output": cmd.outputs} if error is None else {"error": error.model_dump(mode="json")}
    )
    policy = run.step_definition(progress.step_id).retry
    outcome = "succeeded"
    retry_at, timer_id = None, None
    if error is not None:
        outcome = "failed"
        if should_retry(
            policy, chunk.item_attempt, error_class=error.error_class, retryable=error.retryable
        ):
            outcome = "retry"
            delay = backoff_ms(policy, chunk.item_attempt, w.ctx.random())
            retry_at = w.ctx.now + timedelta(milliseconds=delay)
            timer_id = (
                f"map:{run.run_id}:{progress.step_id}:{progress.attempt}:"
                f"i{index}:{chunk.item_attempt}"
            )
    ref = w.ctx.store_payload(entry) if w.ctx.store_payload is not None else None
    size = 0 if ref is not None else len(canonical_json(entry))
    spill = None
    completes = chunk.ended + 1 >= chunk.item_count
    if (
        completes
        and progress.inline_bytes + size > node_map.SPILL_BYTES
        and w.ctx.store_payload is not None
    ):
        position = chunk.indices.index(index)
        own = list(chunk.results)
        own[position] = entry if ref is None else {"entry_ref": ref.model_dump(mode="json")}
        held = {str(n): c.results for n, c in sorted(progress.chunks.items()) if node_map.inline(c)}
        spilled = {**held, str(chunk.chunk): own}
        spill = w.ctx.store_payload(spilled)
        if spill is not None:
            node_map.remember(spill, spilled)
    w.emit(
        MapChildEnded,
        step=run.step_ref(progress.step_id),
        attempt=progress.attempt,
        chunk=chunk.chunk,
        item=index,
        item_attempt=chunk.item_attempt,
        child_run_id=cmd.child_run_id,
        status=cmd.status,
        entry=entry if ref is None else None,
        entry_ref=ref,
        entry_bytes=size,
        outcome=outcome,
        retry_at=retry_at,
        retry_timer_id=timer_id,
        spill_ref=spill,
    )
    if outcome == "failed" and progress.on_failure == "fail_fast":
        assert error is not None
        cancel_map_children(
            w, progress.step_id, reason=f"failed fast: item {index} failed: {error.message}"
        )
        node_map.fail_map(w, progress.step_id, index, error)
        return
    if not node_map.finish_if_complete(w, progress.step_id):
        pump_children(w, progress.step_id, context_of)


# -- children in flight ---------------------------------------------------------------------------


def map_children_in_flight(run: RunState) -> dict[str, list[str]]:
    """Child runs each running map step (over a workflow) waits for, by step id."""
    found: dict[str, list[str]] = {}
    for step_id, progress in run.maps.items():
        if progress.workflow_id is None:
            continue
        step = run.steps.get(step_id)
        if step is None or step.status is not StepStatus.RUNNING:
            continue
        if step.attempt != progress.attempt:
            continue
        children: list[str] = []
        for number in progress.in_flight:
            chunk = progress.chunks[number]
            results = chunk.results if isinstance(chunk.results, list) else []
            for position, index in enumerate(chunk.indices):
                if position < len(results) and results[position] is None:
                    children.append(
                        map_child_run_id(
                            run.run_id, step_id, progress.attempt, index, chunk.item_attempt
                        )
                    )
        if children:
            found[step_id] = children
    return found


def cancel_map_children(w: Writer, step_id: str, *, reason: str) -> None:
    """CancelRun (outbox) for the children a map step still waits for (it fails: fail fast, or
    a batch that cannot start); ``reason`` follows "map step 'x' of parent run <id> "."""
    run = w.run
    for child in map_children_in_flight(run).get(step_id, []):
        w.commands.append(
            CancelRun(
                run_id=child,
                event_id=w.ctx.new_id(),
                occurred_at=w.ctx.now,
                command_id=command_id(run.run_id, step_id, "mapfailed", run.last_seq, child),
                reason=f"map step {step_id!r} of parent run {run.run_id} {reason}",
                requested_by=f"run:{run.run_id}",
            )
        )
