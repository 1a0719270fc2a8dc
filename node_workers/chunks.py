"""A chunk of a ``meta.map`` step: one invocation, the node run once per item (ADR 0024).

The scheduler sends a map's items in chunks (``NodeInvocation.chunk`` set, ``params`` = one
params object per item) so that 10,000 items cost a few dozen records, not 10,000 round trips.
Here each item is an ordinary attempt (:func:`node_workers.attempt.run_attempt`: params
validated, secrets resolved, the step timeout counted from the item's own start, output
redacted) with its own invocation id ``<chunk invocation>:<index>`` and idempotency key
``<key>:<index>`` (stable across retries of the item); at most ``chunk.concurrency`` items run
at once. The chunk's result is ``ok`` with one entry per item, in order: ``{"output": ...}``
or ``{"error": ErrorInfo}``; the chunk fails as a whole only if its params cannot be read
(then the scheduler fails each of its items with that error).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from node_workers.attempt import Attempt, error_info, inputs_hash, run_attempt
from node_workers.node import AnyNode
from node_workers.secrets import SecretResolver
from schemas.models import ErrorInfo, NodeInvocation, TraceStatus

__all__ = ["item_invocation", "run_chunk"]


def item_invocation(chunk: NodeInvocation, index: int, params: Any) -> NodeInvocation:
    """The invocation of one item of ``chunk`` (what the node sees, as for any attempt)."""
    return chunk.model_copy(
        update={
            "invocation_id": f"{chunk.invocation_id}:{index}",
            "idempotency_key": f"{chunk.idempotency_key}:{index}",
            "params": params,
            "params_ref": None,
            "chunk": None,
        }
    )


async def _inline(invocation: NodeInvocation) -> Any:
    return invocation.params


async def run_chunk(
    node: AnyNode,
    invocation: NodeInvocation,
    *,
    load_params: Callable[[NodeInvocation], Awaitable[Any]],
    default_timeout_s: float,
    secrets: SecretResolver | None,
    started_at: datetime,
    on_item: Callable[[int], None] | None = None,
) -> Attempt:
    """Run every item of a chunk invocation; see the module docstring for the result."""
    chunk = invocation.chunk
    assert chunk is not None
    try:
        raw = await load_params(invocation)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return _failed(invocation, started_at, error_info(exc))
    if not isinstance(raw, list):
        return _failed(
            invocation,
            started_at,
            ErrorInfo(
                error_class="MapChunkInvalid",
                message=f"Expected a chunk's params to be an array, got {type(raw).__name__}",
                retryable=False,
            ),
        )
    indices = list(chunk.item_indices) or list(range(chunk.first_item, chunk.first_item + len(raw)))
    if len(indices) != len(raw):
        return _failed(
            invocation,
            started_at,
            ErrorInfo(
                error_class="MapChunkInvalid",
                message=f"Expected {len(indices)} params in the chunk, got {len(raw)}",
                retryable=False,
            ),
        )
    slots = asyncio.Semaphore(max(1, chunk.concurrency))

    async def one(index: int, params: Any) -> dict[str, Any]:
        async with slots:
            attempt = await run_attempt(
                node,
                item_invocation(invocation, index, params),
                load_params=_inline,
                default_timeout_s=default_timeout_s,
                secrets=secrets,
            )
        if on_item is not None:
            on_item(index)
        if attempt.status is TraceStatus.OK:
            return {"output": attempt.output}
        error = attempt.error or ErrorInfo(
            error_class=f"Item{attempt.status.value.title()}",
            message=f"item {index} ended {attempt.status.value}",
            retryable=True,
        )
        return {"error": error.model_dump(mode="json")}

    entries = await asyncio.gather(*(one(i, p) for i, p in zip(indices, raw, strict=True)))
    failed = sum(1 for e in entries if "error" in e)
    return Attempt(
        status=TraceStatus.OK,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        inputs_hash=invocation.params_ref.sha256
        if invocation.params_ref is not None
        else inputs_hash(raw),
        output=list(entries),
        metrics={"map_items": float(len(entries)), "map_items_failed": float(failed)},
    )


def _failed(invocation: NodeInvocation, started_at: datetime, error: ErrorInfo) -> Attempt:
    return Attempt(
        status=TraceStatus.ERROR,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        inputs_hash="" if invocation.params_ref is None else invocation.params_ref.sha256,
        error=error,
    )
