"""``meta.map`` in ``decide``: start, dispatch chunks, record chunk results, finish (ADR 0024).

Chunked both ways: the scheduler sends ``chunk_size`` items in ONE ``NodeInvocation`` (params =
the per-item params, rendered here with ``item`` and ``index`` in the context; ``chunk`` says
which items and how many may run at once) and the worker answers with ONE ``NodeResult`` whose
output lists the per-item outcomes in order. The run log gets ``MapStarted``, then per chunk a
``MapChunkDispatched`` and a ``MapChunkFinished``, then the step's usual ``StepSucceeded`` /
``StepFailed``: a map of 10,000 items writes a few dozen events, each bounded by a chunk.

Concurrency: ``max_chunks_in_flight * chunk_concurrency <= concurrency`` (the step's cap), since
a worker runs at most ``chunk_concurrency`` items of a chunk at once and at most
``max_chunks_in_flight`` chunks are out. Retries are per item, with the step's retry spec: the
items of a chunk that failed retryably come back, after the backoff of their attempt (a timer
in run state), in a new chunk. ``fail_fast``: the first item that fails for good fails the step
(non-retryable: the map is not re-run as a whole); chunks still out are abandoned (their results
are ignored). ``collect``: the step succeeds once every item has an outcome.

Everything here is pure (I/O only through the context's payload hooks) and every decision is
written in an event first, so a replay folds to the same state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Final, Protocol, TypeVar

from processors.scheduler.backoff import backoff_ms, should_retry
from processors.scheduler.map_state import MapChunkState, MapState
from processors.scheduler.state import RunState, RunStatus, StepStatus
from schemas.base import RefluxRecord, canonical_json
from schemas.models import (
    ErrorInfo,
    MapChunk,
    MapChunkDispatched,
    MapChunkFinished,
    MapStarted,
    NodeInvocation,
    NodeResult,
    PayloadRef,
    RunFailed,
    StepFailed,
    StepRef,
    StepSucceeded,
    TraceStatus,
)
from workflows.expressions import TemplateError, render_params
from workflows.meta import MAP_NODE, MapParams, map_params
from workflows.semver import invoke_major, parse_node_ref

__all__ = [
    "MAX_CHUNKS_IN_FLIGHT",
    "MAX_CHUNK_SIZE",
    "Writer",
    "assemble",
    "chunking",
    "finish_if_complete",
    "map_result",
    "pump",
    "start_map",
]

MAX_CHUNKS_IN_FLIGHT: Final = 4
"""Chunks out at once: enough to keep workers busy while a result makes its round trip."""
MAX_CHUNK_SIZE: Final = 500
"""Items per chunk at most: bounds a chunk's records (params, results, events)."""
_ROUNDS: Final = 4
"""Aim for at least this many chunks per in-flight slot, so results stream back in pieces."""
SPILL_BYTES: Final = 64 * 1024
"""Inline chunk results a map keeps in run state at most; beyond, they move to object storage
together (one object per spill): the state, snapshotted as one Kafka record, stays small."""


class _Context(Protocol):
    @property
    def now(self) -> datetime: ...
    @property
    def new_id(self) -> Callable[[], str]: ...
    @property
    def random(self) -> Callable[[], float]: ...
    @property
    def resolve_node_version(self) -> Callable[[str, str, str], str]: ...
    @property
    def invoke_topic(self) -> Callable[[str, int], str]: ...
    @property
    def load_payload(self) -> Callable[[PayloadRef], Any] | None: ...
    @property
    def store_payload(self) -> Callable[[Any], PayloadRef | None] | None: ...


E = TypeVar("E", bound=RefluxRecord)


class Writer(Protocol):
    """What ``decide``'s writer offers (append = apply)."""

    @property
    def run(self) -> RunState: ...
    @property
    def ctx(self) -> _Context: ...
    @property
    def invocations(self) -> list[NodeInvocation]: ...
    def emit(self, cls: type[E], **fields: Any) -> E: ...


class _PayloadContext(Protocol):
    @property
    def now(self) -> datetime: ...
    @property
    def load_payload(self) -> Callable[[PayloadRef], Any] | None: ...
    @property
    def store_payload(self) -> Callable[[Any], PayloadRef | None] | None: ...


class CoreWriter(Protocol):
    """The part of a writer that starting, finishing and failing a map need (shared with the
    map over a sub-workflow, :mod:`processors.scheduler.meta.map_children`)."""

    @property
    def run(self) -> RunState: ...
    @property
    def ctx(self) -> _PayloadContext: ...
    def emit(self, cls: Any, **fields: Any) -> Any: ...


ContextOf = Callable[[], dict[str, Any]]
"""The step's expression context (inputs, steps, run), built by ``decide`` when needed."""


def chunking(item_count: int, concurrency: int, chunk_size: int | None) -> tuple[int, int, int]:
    """``(chunk_size, max_chunks_in_flight, chunk_concurrency)`` for a map.

    In-flight chunks times per-chunk concurrency never exceeds ``concurrency``; chunks are as
    large as ``_ROUNDS`` rounds per slot need (few round trips), bounded by ``MAX_CHUNK_SIZE``
    and at least one item per slot of the chunk's concurrency.
    """
    in_flight = max(1, min(MAX_CHUNKS_IN_FLIGHT, concurrency))
    per_chunk = max(1, concurrency // in_flight)
    if chunk_size is None:
        wanted = math.ceil(max(item_count, 1) / (in_flight * _ROUNDS))
        chunk_size = min(MAX_CHUNK_SIZE, max(per_chunk, wanted))
    return chunk_size, in_flight, per_chunk


# -- payloads (content-addressed, so caching by digest cannot serve a wrong value) ---------------

_LOADED: dict[str, Any] = {}
_LOADED_MAX: Final = 16


def remember(ref: PayloadRef, value: Any) -> None:
    """Keep a payload just stored (content-addressed), so reading it back costs no I/O."""
    if len(_LOADED) >= _LOADED_MAX:
        _LOADED.pop(next(iter(_LOADED)))
    _LOADED[ref.sha256] = value


def _load(w: CoreWriter, ref: PayloadRef) -> Any:
    cached = _LOADED.get(ref.sha256)
    if cached is not None:
        return cached
    if w.ctx.load_payload is None:
        raise TemplateError(
            "map", f"the payload is in object storage ({ref.uri}) and there is no loader"
        )
    value = w.ctx.load_payload(ref)
    if len(_LOADED) >= _LOADED_MAX:
        _LOADED.pop(next(iter(_LOADED)))
    _LOADED[ref.sha256] = value
    return value


def items_of(w: CoreWriter, progress: MapState) -> list[Any]:
    """The map's collection, as written in MapStarted."""
    if progress.items_ref is not None:
        loaded: list[Any] = _load(w, progress.items_ref)
        return loaded
    return list(progress.items or [])


# -- start ----------------------------------------------------------------------------------------


def render_items(params: MapParams, step_id: str, context_of: ContextOf) -> list[Any]:
    """The map's collection, evaluated once at its start (an array, or a TemplateError)."""
    path = f"steps.{step_id}.params.items"
    items = render_params(params.items, context_of(), path=path)
    if not isinstance(items, list):
        kind = type(items).__name__ if items is not None else "null"
        raise TemplateError(path, f"expected an array of items, got {kind}")
    return items


def start_map(w: Writer, step_id: str, attempt: int, context_of: ContextOf) -> None:
    """MapStarted for ``attempt``, then the first chunks (or success, for no items).

    Raises ``NonRetryableError`` (a template error, no such node, no topic): ``decide`` fails
    the step with it, as for an ordinary step that cannot be dispatched."""
    run = w.run
    params = map_definition_params(run, step_id)
    items = render_items(params, step_id, context_of)
    assert params.node is not None  # the node form (map_children starts the workflow form)
    inner = parse_node_ref(params.node)
    version = w.ctx.resolve_node_version(inner.name, inner.constraint.raw, run.run_id)
    topic = w.ctx.invoke_topic(inner.name, invoke_major(version))
    size, in_flight, per_chunk = chunking(len(items), params.concurrency, params.chunk_size)
    ref = w.ctx.store_payload(items) if w.ctx.store_payload is not None else None
    if ref is not None:
        remember(ref, items)
    w.emit(
        MapStarted,
        step=run.step_ref(step_id),
        attempt=attempt,
        item_count=len(items),
        items=None if ref is not None else items,
        items_ref=ref,
        node=StepRef(step_id=step_id, node=inner.name, node_version=version),
        invoke_topic=topic,
        chunk_size=size,
        max_chunks_in_flight=in_flight,
        chunk_concurrency=per_chunk,
        on_failure=params.on_failure,
    )
    if not finish_if_complete(w, step_id):
        pump(w, step_id, context_of)


# -- dispatch -------------------------------------------------------------------------------------


def _is_map(run: RunState, step_id: str) -> bool:
    """Still a map step (a graph mutation may have replaced its node since it ran as one)."""
    graph = run.graph
    return graph.has_step(step_id) and graph.step(step_id).node_name == MAP_NODE


def map_definition_params(run: RunState, step_id: str) -> MapParams:
    return map_params(run.step_definition(step_id).params)


def running_map(run: RunState, step_id: str) -> MapState | None:
    """The map's progress if its step is running the attempt the progress is for."""
    return _running(run, step_id)


def _running(run: RunState, step_id: str) -> MapState | None:
    progress = run.maps.get(step_id)
    step = run.steps.get(step_id)
    if progress is None or step is None or step.status is not StepStatus.RUNNING:
        return None
    if not _is_map(run, step_id):
        return None
    if step.attempt != progress.attempt:
        return None
    return progress


def pump(w: Writer, step_id: str, context_of: ContextOf) -> None:
    """Dispatch chunks while fewer than ``max_chunks_in_flight`` are out: due retries first,
    then fresh items in order. Only while the run is running (a pause holds new chunks)."""
    current = _running(w.run, step_id)
    if current is not None and current.workflow_id is not None:
        return  # a map over a sub-workflow: map_children.pump_children starts its children
    base: dict[str, Any] | None = None
    while w.run.status is RunStatus.RUNNING:
        progress = _running(w.run, step_id)
        if progress is None or len(progress.in_flight) >= progress.max_chunks_in_flight:
            return
        due = sorted(
            (r for r in progress.retries.values() if r.due_at <= w.ctx.now),
            key=lambda r: (r.due_at, r.timer_id),
        )
        if base is None:
            base = context_of()
        if due:
            retry = due[0]
            _dispatch(
                w,
                progress,
                base=base,
                indices=list(retry.items),
                item_attempt=retry.item_attempt,
                retry_timer_id=retry.timer_id,
            )
        elif progress.next_item < progress.item_count:
            end = min(progress.item_count, progress.next_item + progress.chunk_size)
            indices = list(range(progress.next_item, end))
            _dispatch(w, progress, base=base, indices=indices, item_attempt=1, retry_timer_id=None)
        else:
            return


def _dispatch(
    w: Writer,
    progress: MapState,
    *,
    base: Mapping[str, Any],
    indices: list[int],
    item_attempt: int,
    retry_timer_id: str | None,
) -> None:
    run = w.run
    step_id = progress.step_id
    definition = run.step_definition(step_id)
    template = map_params(definition.params).node_params
    items = items_of(w, progress)
    path = f"steps.{step_id}.params.params"
    context = dict(base)
    rendered: list[Any] = []
    for index in indices:
        context["item"] = items[index]
        context["index"] = index
        rendered.append(render_params(template, context, path=path))
    contiguous = indices == list(range(indices[0], indices[0] + len(indices)))
    number = progress.next_chunk
    invocation_id = w.ctx.new_id()
    event = w.emit(
        MapChunkDispatched,
        step=run.step_ref(step_id),
        attempt=progress.attempt,
        chunk=number,
        item_attempt=item_attempt,
        first_item=indices[0],
        item_count=len(indices),
        item_indices=[] if contiguous and retry_timer_id is None else indices,
        invocation_id=invocation_id,
        retry_timer_id=retry_timer_id,
    )
    ref = w.ctx.store_payload(rendered) if w.ctx.store_payload is not None else None
    w.invocations.append(
        NodeInvocation(
            event_id=w.ctx.new_id(),
            occurred_at=w.ctx.now,
            run_id=run.run_id,
            seq=event.seq,
            invocation_id=invocation_id,
            attempt=item_attempt,
            workflow_id=run.workflow_id,
            workflow_version=run.workflow_version,
            tenant=run.tenant,
            step=StepRef(step_id=step_id, node=progress.node, node_version=progress.node_version),
            params=None if ref is not None else rendered,
            params_ref=ref,
            deadline=None,
            timeout_ms=definition.timeout,
            start_by=None,
            # Per item the worker appends ":<index>": stable across retries of the item.
            idempotency_key=f"{run.run_id}:{step_id}:map{progress.attempt}",
            chunk=MapChunk(
                index=number,
                first_item=indices[0],
                item_indices=list(event.item_indices),
                concurrency=progress.chunk_concurrency,
            ),
        )
    )


# -- results --------------------------------------------------------------------------------------

_CHUNK_ERRORS: Final = {
    TraceStatus.ERROR: ("WorkerError", "the worker reported an error without details"),
    TraceStatus.TIMEOUT: ("WorkerTimeout", "the worker gave up on the chunk"),
    TraceStatus.CANCELLED: ("WorkerCancelled", "the worker cancelled the chunk"),
    TraceStatus.SKIPPED: ("WorkerSkipped", "the worker skipped the chunk"),
}


def map_result(w: Writer, result: NodeResult, context_of: ContextOf) -> bool:
    """A chunk's result: MapChunkFinished, then retries, a fail-fast failure, success or more
    chunks. False when ``result`` is not for a map step (``decide`` handles it as usual)."""
    run = w.run
    if result.step.step_id not in run.maps or not _is_map(run, result.step.step_id):
        return False
    if run.status not in (RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.FAILED):
        return True
    progress = _running(run, result.step.step_id)
    chunk = progress.chunk_of(result.invocation_id) if progress is not None else None
    if progress is None or chunk is None:
        return True  # late or duplicate: an abandoned chunk, an old map attempt
    entries = _entries(w, result, chunk)
    policy = run.step_definition(progress.step_id).retry
    succeeded, failed, retry = 0, [], []
    for index, entry in zip(chunk.indices, entries, strict=True):
        error = _entry_error(entry)
        if error is None:
            succeeded += 1
        elif should_retry(
            policy,
            chunk.item_attempt,
            error_class=error.error_class,
            retryable=error.retryable,
        ):
            retry.append(index)
        else:
            failed.append(index)
    retry_at, timer_id = None, None
    if retry:
        delay = backoff_ms(policy, chunk.item_attempt, w.ctx.random())
        retry_at = w.ctx.now + timedelta(milliseconds=delay)
        timer_id = f"map:{run.run_id}:{progress.step_id}:{progress.attempt}:{chunk.chunk}"
    inline = result.output_ref is None
    size = len(canonical_json(entries)) if inline else 0
    spill = None
    if inline and progress.inline_bytes + size > SPILL_BYTES and w.ctx.store_payload is not None:
        held = {str(n): c.results for n, c in sorted(progress.chunks.items()) if _inline(c)}
        spill = w.ctx.store_payload({**held, str(chunk.chunk): entries})
        if spill is not None:
            remember(spill, {**held, str(chunk.chunk): entries})
    w.emit(
        MapChunkFinished,
        step=run.step_ref(progress.step_id),
        attempt=progress.attempt,
        chunk=chunk.chunk,
        invocation_id=result.invocation_id,
        results=entries if inline and spill is None else None,
        results_ref=None if inline else result.output_ref,
        results_bytes=size if spill is None else 0,
        spill_ref=spill,
        succeeded=succeeded,
        failed_items=failed,
        retry_items=retry,
        retry_at=retry_at,
        retry_timer_id=timer_id,
    )
    if failed and progress.on_failure == "fail_fast":
        first = min(failed)
        error = _entry_error(entries[chunk.indices.index(first)])
        assert error is not None
        _fail(w, progress.step_id, first, error)
        return True
    if not finish_if_complete(w, progress.step_id):
        pump(w, progress.step_id, context_of)
    return True


def inline(chunk: MapChunkState) -> bool:
    """A finished chunk whose results are held in the run state (not a reference, not spilled)."""
    return _inline(chunk)


def _inline(chunk: MapChunkState) -> bool:
    return chunk.finished and chunk.results_ref is None and chunk.spill is None


def _entries(w: Writer, result: NodeResult, chunk: MapChunkState) -> list[Any]:
    """The per-item outcomes; a chunk that failed as a whole fails each of its items."""
    if result.status is TraceStatus.OK:
        entries = result.output if result.output_ref is None else _load(w, result.output_ref)
        if isinstance(entries, list) and len(entries) == chunk.item_count:
            return entries
        error = ErrorInfo(
            error_class="MapChunkInvalid",
            message=(
                f"Expected {chunk.item_count} per-item entries from chunk {chunk.chunk}, but "
                f"got {type(entries).__name__}"
            ),
            retryable=False,
        )
    else:
        error_class, message = _CHUNK_ERRORS[result.status]
        error = result.error or ErrorInfo(error_class=error_class, message=message, retryable=True)
    return [{"error": error.model_dump(mode="json")}] * chunk.item_count


def _entry_error(entry: Any) -> ErrorInfo | None:
    if isinstance(entry, Mapping) and "output" in entry:
        return None
    raw = entry.get("error") if isinstance(entry, Mapping) else None
    if isinstance(raw, Mapping):
        try:
            return ErrorInfo.model_validate(raw)
        except ValueError:
            pass
    return ErrorInfo(
        error_class="MapChunkInvalid",
        message=f"not a per-item entry: {entry!r}"[:500],
        retryable=False,
    )


def fail_map(w: CoreWriter, step_id: str, index: int, error: ErrorInfo) -> None:
    """fail_fast: the step fails for good with ``item <index>: ...`` (and so does the run)."""
    _fail(w, step_id, index, error)


def _fail(w: CoreWriter, step_id: str, index: int, error: ErrorInfo) -> None:
    """fail_fast: the step fails for good (retries were per item) and so does the run."""
    run = w.run
    failure = ErrorInfo(
        error_class=error.error_class,
        message=f"item {index}: {error.message}",
        retryable=False,
    )
    ref = run.step_ref(step_id)
    w.emit(StepFailed, step=ref, attempt=run.maps[step_id].attempt, error=failure)
    if w.run.status in (RunStatus.RUNNING, RunStatus.PAUSED):
        w.emit(RunFailed, error=failure, failed_step=ref)


def finish_if_complete(w: CoreWriter, step_id: str) -> bool:
    """StepSucceeded with the assembled output once every item has its outcome."""
    progress = _running(w.run, step_id)
    if progress is None or not progress.complete:
        return False
    output = assemble(progress, lambda ref: _load(w, ref))
    ref = w.ctx.store_payload(output) if w.ctx.store_payload is not None else None
    started = w.run.steps[step_id].started_at or w.ctx.now
    w.emit(
        StepSucceeded,
        step=w.run.step_ref(step_id),
        attempt=progress.attempt,
        invocation_id=None,
        output=None if ref is not None else output,
        output_ref=ref,
        cache_hit=False,
        duration_ms=max(0, int((w.ctx.now - started).total_seconds() * 1000)),
    )
    return True


def assemble(progress: MapState, load: Callable[[PayloadRef], Any]) -> dict[str, Any]:
    """The map's output, in item order: a later chunk (a retry) overrides an earlier outcome."""
    outcome: list[Any] = [None] * progress.item_count
    spills: dict[int, Any] = {}
    for number in sorted(progress.chunks):
        chunk = progress.chunks[number]
        if not chunk.finished:
            continue
        if chunk.spill is not None:
            if chunk.spill not in spills:
                spills[chunk.spill] = load(progress.spills[chunk.spill])
            entries = spills[chunk.spill][str(number)]
        elif chunk.results_ref is not None:
            entries = load(chunk.results_ref)
        else:
            entries = chunk.results
        for index, entry in zip(chunk.indices, entries, strict=True):
            if isinstance(entry, Mapping) and "entry_ref" in entry:
                # A child's outcome too large to inline (map over a sub-workflow).
                outcome[index] = load(PayloadRef.model_validate(entry["entry_ref"]))
            else:
                outcome[index] = entry
    results: list[Any] = []
    errors: list[dict[str, Any]] = []
    for index, entry in enumerate(outcome):
        if isinstance(entry, Mapping) and "output" in entry:
            results.append(entry["output"])
        else:
            results.append(None)
            error = _entry_error(entry)
            assert error is not None
            errors.append({"index": index, "error": error.model_dump(mode="json")})
    return {
        "results": results,
        "errors": errors,
        "succeeded": progress.item_count - len(errors),
        "failed": len(errors),
    }
