"""A ``meta.map`` step's progress in run state (folded from MapStarted / MapChunk* events).

Bounded by chunks, never by items: one entry per chunk (a few hundred at most for 10,000
items), each holding its results as the worker returned them (inline, or a claim-check
reference); inline results over a budget are moved to object storage together ("spills"), so
a map's results never make the state (and its snapshot record) large. The collection itself
is kept as written in ``MapStarted`` (inline, or a reference when large). Items are addressed
by index; the final output is assembled from the chunks in chunk order, a later chunk (a
retry) overriding an earlier outcome of the same item.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.models import PayloadRef

__all__ = ["MapChunkState", "MapRetry", "MapState"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MapChunkState(_Frozen):
    chunk: int
    item_attempt: int
    first_item: int
    item_count: int
    item_indices: tuple[int, ...] = ()
    """Explicit indices (a retry chunk); empty = ``first_item .. first_item + item_count``."""
    invocation_id: str
    dispatch_seq: int
    finished: bool = False
    results: Any = None
    results_ref: PayloadRef | None = None
    spill: int | None = None
    """Index into ``MapState.spills`` once its inline results were moved there."""
    ended: int = 0
    """A batch of child runs (map over a sub-workflow): children that ended so far; its
    ``results`` hold one entry per item, null until the item's child ends."""

    @property
    def indices(self) -> list[int]:
        if self.item_indices:
            return list(self.item_indices)
        return list(range(self.first_item, self.first_item + self.item_count))


class MapRetry(_Frozen):
    """Items waiting for their next attempt (a backoff timer with the same id)."""

    timer_id: str
    items: tuple[int, ...]
    item_attempt: int
    due_at: datetime


class MapState(_Frozen):
    step_id: str
    attempt: int
    item_count: int
    items: Any = None
    items_ref: PayloadRef | None = None
    node: str
    node_version: str
    invoke_topic: str
    chunk_size: int
    max_chunks_in_flight: int
    chunk_concurrency: int
    on_failure: str
    next_item: int = 0
    """First item never dispatched yet (fresh chunks go in item order)."""
    next_chunk: int = 0
    chunks: dict[int, MapChunkState] = Field(default_factory=dict)
    in_flight: tuple[int, ...] = ()
    """Chunk numbers dispatched and not finished."""
    retries: dict[str, MapRetry] = Field(default_factory=dict)
    inline_bytes: int = 0
    """Bytes of chunk results held inline in this state (bounded: see ``spills``)."""
    spills: tuple[PayloadRef, ...] = ()
    """Objects ``{"<chunk>": [entries]}`` holding results moved out of the state when the
    inline ones grew over the map's budget."""
    workflow_id: str | None = None
    """A map over a sub-workflow (one child run per item): the workflow, pinned version below.
    Then ``max_chunks_in_flight`` is the cap of children in flight, ``chunk_size`` the largest
    batch of children started at once and ``chunk_concurrency`` the free slots a batch waits
    for."""
    workflow_version: int | None = None
    children_running: int = 0
    """Child runs started and not ended (map over a sub-workflow)."""
    done: int = 0
    """Items with a final outcome (succeeded, or failed with no attempt left)."""
    failed: int = 0

    @property
    def complete(self) -> bool:
        return self.done >= self.item_count and not self.in_flight and not self.retries

    def chunk_of(self, invocation_id: str) -> MapChunkState | None:
        for number in self.in_flight:
            chunk = self.chunks[number]
            if chunk.invocation_id == invocation_id:
                return chunk
        return None
