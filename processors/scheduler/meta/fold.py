"""Appliers of the map events (registered in :mod:`processors.scheduler.evolve`).

Like every applier: no I/O, everything comes from the event, so a replay rebuilds the state
the scheduler had. Each event touches one map step and at most one chunk: folding a map of
10,000 items costs a few hundred small updates, not 10,000.
"""

from __future__ import annotations

from processors.scheduler.map_state import MapChunkState, MapRetry, MapState
from processors.scheduler.state import RunState, StepState, StepStatus, Timer
from schemas.models import (
    MapChildEnded,
    MapChunkDispatched,
    MapChunkFinished,
    MapStarted,
    PayloadRef,
    TimerKind,
)

__all__ = [
    "apply_map_child_ended",
    "apply_map_chunk_dispatched",
    "apply_map_chunk_finished",
    "apply_map_started",
]


def _with_map(state: RunState, progress: MapState, **timers: Timer | None) -> RunState:
    update: dict[str, object] = {"maps": {**state.maps, progress.step_id: progress}}
    if timers:
        new = dict(state.timers)
        for timer_id, timer in timers.items():
            if timer is None:
                new.pop(timer_id, None)
            else:
                new[timer_id] = timer
        update["timers"] = new
    return state.model_copy(update=update)


def apply_map_started(state: RunState, event: MapStarted) -> RunState:
    step_id = event.step.step_id
    timers = {tid: t for tid, t in state.timers.items() if t.step_id != step_id}
    current = state.steps.get(step_id) or StepState(step_id=step_id)
    step = current.model_copy(
        update={
            "status": StepStatus.RUNNING,
            "attempt": event.attempt,
            "node_version": None,
            "params": None,
            "params_ref": None,
            "cache_key": None,
            "invocation_id": None,
            "invoke_topic": event.invoke_topic,
            "dispatch_seq": None,
            "dispatched_at": event.occurred_at,
            "queue_timeout_at": None,
            "started_at": event.occurred_at,
            "timeout_at": None,
            "output": None,
            "output_ref": None,
            "cache_hit": False,
            "error": None,
            "skip_reason": None,
            "finished_at": None,
        }
    )
    progress = MapState(
        step_id=step_id,
        attempt=event.attempt,
        item_count=event.item_count,
        items=event.items,
        items_ref=event.items_ref,
        node=event.node.node,
        node_version=event.node.node_version,
        invoke_topic=event.invoke_topic,
        chunk_size=event.chunk_size,
        max_chunks_in_flight=event.max_chunks_in_flight,
        chunk_concurrency=event.chunk_concurrency,
        on_failure=event.on_failure,
        workflow_id=event.workflow_id,
        workflow_version=event.workflow_version,
    )
    state = state.model_copy(update={"steps": {**state.steps, step_id: step}, "timers": timers})
    return _with_map(state, progress)


def apply_map_chunk_dispatched(state: RunState, event: MapChunkDispatched) -> RunState:
    progress = state.maps[event.step.step_id]
    chunk = MapChunkState(
        chunk=event.chunk,
        item_attempt=event.item_attempt,
        first_item=event.first_item,
        item_count=event.item_count,
        item_indices=tuple(event.item_indices),
        invocation_id=event.invocation_id,
        dispatch_seq=event.seq,
        # A batch of child runs collects its items' entries as the children end.
        results=[None] * event.item_count if progress.workflow_id is not None else None,
    )
    update: dict[str, object] = {
        "chunks": {**progress.chunks, event.chunk: chunk},
        "in_flight": (*progress.in_flight, event.chunk),
        "next_chunk": max(progress.next_chunk, event.chunk + 1),
    }
    if progress.workflow_id is not None:
        update["children_running"] = progress.children_running + event.item_count
    if not event.item_indices:
        update["next_item"] = max(progress.next_item, event.first_item + event.item_count)
    timers: dict[str, Timer | None] = {}
    if event.retry_timer_id is not None:
        update["retries"] = {
            tid: r for tid, r in progress.retries.items() if tid != event.retry_timer_id
        }
        timers[event.retry_timer_id] = None
    return _with_map(state, progress.model_copy(update=update), **timers)


def _spill(
    chunks: dict[int, MapChunkState], spills: tuple[PayloadRef, ...], ref: PayloadRef
) -> tuple[PayloadRef, ...]:
    """Every finished chunk's inline results (the deciding one's included) now live in the
    spill object ``ref``: drop them from ``chunks`` (in place) and return the new spills."""
    spill = len(spills)
    for number, held in chunks.items():
        if held.finished and held.results_ref is None and held.spill is None:
            chunks[number] = held.model_copy(update={"results": None, "spill": spill})
    return (*spills, ref)


def apply_map_child_ended(state: RunState, event: MapChildEnded) -> RunState:
    """One child of a map over a sub-workflow ended: its entry goes into its batch (which is
    finished once every child ended), and a retry arms the item's backoff timer."""
    progress = state.maps[event.step.step_id]
    chunk = progress.chunks[event.chunk]
    results = list(chunk.results) if isinstance(chunk.results, list) else [None] * chunk.item_count
    entry = event.entry
    if event.entry_ref is not None:
        entry = {"entry_ref": event.entry_ref.model_dump(mode="json")}
    results[chunk.indices.index(event.item)] = entry
    ended = chunk.ended + 1
    finished = ended >= chunk.item_count
    chunks = {
        **progress.chunks,
        event.chunk: chunk.model_copy(
            update={"results": results, "ended": ended, "finished": finished}
        ),
    }
    inline_bytes = progress.inline_bytes + event.entry_bytes
    spills = progress.spills
    if event.spill_ref is not None:
        spills, inline_bytes = _spill(chunks, spills, event.spill_ref), 0
    update: dict[str, object] = {
        "chunks": chunks,
        "inline_bytes": inline_bytes,
        "spills": spills,
        "children_running": max(0, progress.children_running - 1),
        "done": progress.done + (0 if event.outcome == "retry" else 1),
        "failed": progress.failed + (1 if event.outcome == "failed" else 0),
    }
    if finished:
        update["in_flight"] = tuple(n for n in progress.in_flight if n != event.chunk)
    timers: dict[str, Timer | None] = {}
    if event.outcome == "retry" and event.retry_timer_id is not None and event.retry_at:
        retry = MapRetry(
            timer_id=event.retry_timer_id,
            items=(event.item,),
            item_attempt=event.item_attempt + 1,
            due_at=event.retry_at,
        )
        update["retries"] = {**progress.retries, retry.timer_id: retry}
        timers[retry.timer_id] = Timer(
            timer_id=retry.timer_id,
            kind=TimerKind.BACKOFF,
            due_at=retry.due_at,
            step_id=progress.step_id,
            attempt=retry.item_attempt,
        )
    return _with_map(state, progress.model_copy(update=update), **timers)


def apply_map_chunk_finished(state: RunState, event: MapChunkFinished) -> RunState:
    progress = state.maps[event.step.step_id]
    chunk = progress.chunks[event.chunk].model_copy(
        update={"finished": True, "results": event.results, "results_ref": event.results_ref}
    )
    chunks = {**progress.chunks, event.chunk: chunk}
    inline_bytes = progress.inline_bytes + event.results_bytes
    spills = progress.spills
    if event.spill_ref is not None:
        spills, inline_bytes = _spill(chunks, spills, event.spill_ref), 0
    update: dict[str, object] = {
        "chunks": chunks,
        "inline_bytes": inline_bytes,
        "spills": spills,
        "in_flight": tuple(n for n in progress.in_flight if n != event.chunk),
        "done": progress.done + event.succeeded + len(event.failed_items),
        "failed": progress.failed + len(event.failed_items),
    }
    timers: dict[str, Timer | None] = {}
    if event.retry_items and event.retry_timer_id is not None and event.retry_at is not None:
        retry = MapRetry(
            timer_id=event.retry_timer_id,
            items=tuple(event.retry_items),
            item_attempt=chunk.item_attempt + 1,
            due_at=event.retry_at,
        )
        update["retries"] = {**progress.retries, retry.timer_id: retry}
        timers[retry.timer_id] = Timer(
            timer_id=retry.timer_id,
            kind=TimerKind.BACKOFF,
            due_at=retry.due_at,
            step_id=progress.step_id,
            attempt=retry.item_attempt,
        )
    return _with_map(state, progress.model_copy(update=update), **timers)
