"""Start signal and heartbeats: the worker tells the scheduler it is executing an attempt.

Once the attempt ledger has claimed an invocation (so the attempt really runs here, once), the
worker may publish a :class:`~schemas.models.NodeHeartbeat` with ``beat`` 0 on the results topic,
keyed by run id like the result that follows it (same partition, so the scheduler sees the start
before the result). The scheduler turns it into ``StepStarted``: the step timeout counts from
the worker's ``started_at`` it carries, and the time the invocation spent in the invoke topic or
waiting for a concurrency slot is not execution time. While the attempt runs, a heartbeat follows
every ``interval_s`` (beats 1, 2, ...): a long attempt (a webhook wait, a code.run job) keeps the
scheduler's step-timeout timer ahead of it, and a heartbeat also starts the step if the start
signal itself was lost.

The start signal is lazy: it is sent only if the attempt still runs ``start_delay_s`` after its
start (:func:`start_signal_delay`). Most attempts are sub-millisecond transforms; for them the
signal cost two Kafka records, a scheduler decision and a run event each, and told the scheduler
nothing the result (which carries ``started_at`` too) does not. The scheduler accepts a result for
a step that is still ``dispatched``. Two exceptions keep the timers sound: an invocation with a
queue timeout (``start_by``) signals at once, or the scheduler's queue timer could fail an
attempt that started in time; and the delay is at most half the attempt's timeout, so the
scheduler's backstop timer is armed long before the worker itself gives up. A worker that dies
within the delay leaves no start: the redelivered invocation finds the ledger's claim and is
answered ``AttemptInterrupted`` (docs/decisions/0013, addendum).

Heartbeats are fire-and-forget: they go through the runtime's shared producer with the results,
and a lost one costs nothing but a later start or extension.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from node_workers.node import AnyNode
from schemas.models import NodeHeartbeat, NodeInvocation, StepRef

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL_S",
    "DEFAULT_START_SIGNAL_DELAY_S",
    "heartbeat",
    "heartbeating",
    "start_signal_delay",
]

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_INTERVAL_S = 10.0
"""Between two heartbeats of one running attempt; shorter attempts send at most the start."""

DEFAULT_START_SIGNAL_DELAY_S = 0.25
"""How long an attempt runs before its start is signalled; shorter ones send only their result.
Long enough for the engine's sub-millisecond steps and for a fast HTTP call, short against any
timeout worth setting."""


def start_signal_delay(
    invocation: NodeInvocation,
    *,
    started_at: datetime,
    deadline: datetime | None,
    configured_s: float,
) -> float:
    """Seconds after ``started_at`` to signal the start of ``invocation``'s attempt: 0 (at once)
    for one with a queue timeout, else ``configured_s`` but at most half the time to the
    attempt's ``deadline`` (the scheduler's backstop timer must be armed well before it)."""
    if invocation.start_by is not None or configured_s <= 0:
        return 0.0
    if deadline is None:
        return configured_s
    return max(0.0, min(configured_s, (deadline - started_at).total_seconds() / 2))


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
    start_delay_s: float = 0.0,
    worker: str | None = None,
) -> AsyncIterator[None]:
    """Send the start signal after ``start_delay_s`` (0: now, before the block runs) if the block
    still runs, then a heartbeat every ``interval_s`` until the block ends (``interval_s <= 0``:
    the start only)."""

    def record(beat: int) -> NodeHeartbeat:
        return heartbeat(node, invocation, started_at=started_at, beat=beat, worker=worker)

    async def beats() -> None:
        if start_delay_s > 0:
            await asyncio.sleep(start_delay_s)  # the delay of the start signal
            try:
                send(record(0))
            except Exception:  # like a heartbeat: a later beat starts the step
                log.warning("start of %s not sent", invocation.invocation_id, exc_info=True)
        if interval_s <= 0:
            return
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

    if start_delay_s <= 0:
        send(record(0))
    task = asyncio.create_task(beats()) if interval_s > 0 or start_delay_s > 0 else None
    try:
        yield
    finally:
        if task is not None:
            # It waits in a sleep (sending is synchronous), so nothing is sent after this: a
            # start signal, if any, precedes the attempt's result on the partition.
            task.cancel()
