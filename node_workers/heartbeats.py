"""Start signal and heartbeats: the worker tells the scheduler it is executing an attempt.

Right after the attempt ledger claims an invocation (so the attempt really runs here, once), the
worker publishes a :class:`~schemas.models.NodeHeartbeat` with ``beat`` 0 on the results topic,
keyed by run id like the result that follows it (same partition, so the scheduler sees the start
before the result). The scheduler turns it into ``StepStarted``: the step timeout counts from
there, and the time the invocation spent in the invoke topic or waiting for a concurrency slot is
not execution time. While the attempt runs, a heartbeat follows every ``interval_s`` (beats 1, 2,
...): a long attempt (a webhook wait, a code.run job) keeps the scheduler's step-timeout timer
ahead of it, and a heartbeat also starts the step if the start signal itself was lost.

Heartbeats are fire-and-forget: they go through the runtime's shared producer with the results,
and a lost one costs nothing but a later start or extension (docs/decisions/0013).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from node_workers.node import AnyNode
from schemas.models import NodeHeartbeat, NodeInvocation, StepRef

__all__ = ["DEFAULT_HEARTBEAT_INTERVAL_S", "heartbeat", "heartbeating"]

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_INTERVAL_S = 10.0
"""Between two heartbeats of one running attempt; attempts shorter than this send only the start."""


def heartbeat(
    node: AnyNode,
    invocation: NodeInvocation,
    *,
    started_at: datetime,
    beat: int,
    worker: str | None,
) -> NodeHeartbeat:
    """The record for beat ``beat`` (0 = the start) of the attempt ``invocation``."""
    return NodeHeartbeat(
        run_id=invocation.run_id,
        seq=invocation.seq,
        invocation_id=invocation.invocation_id,
        attempt=invocation.attempt,
        step=StepRef(step_id=invocation.step.step_id, node=node.name, node_version=node.version),
        started_at=started_at,
        beat=beat,
        worker=worker,
    )


@contextlib.asynccontextmanager
async def heartbeating(
    send: Callable[[NodeHeartbeat], None],
    node: AnyNode,
    invocation: NodeInvocation,
    *,
    started_at: datetime,
    interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S,
    worker: str | None = None,
) -> AsyncIterator[None]:
    """Send the start signal now, then a heartbeat every ``interval_s`` until the block ends
    (``interval_s <= 0``: the start only)."""

    def record(beat: int) -> NodeHeartbeat:
        return heartbeat(node, invocation, started_at=started_at, beat=beat, worker=worker)

    send(record(0))

    async def beats() -> None:
        beat = 0
        while True:
            await asyncio.sleep(interval_s)  # the period of the heartbeats
            beat += 1
            try:
                send(record(beat))
            except Exception:  # a heartbeat is advisory: never let it fail the attempt
                log.warning(
                    "heartbeat %d of %s not sent", beat, invocation.invocation_id, exc_info=True
                )

    task = asyncio.create_task(beats()) if interval_s > 0 else None
    try:
        yield
    finally:
        if task is not None:
            # It waits in its sleep (sending is synchronous), so nothing is sent after this.
            task.cancel()
