"""The benchmark workload as Restate services (Python SDK), served by Hypercorn.

Runs only in the Restate service endpoint's process (``infra.peers.restate.RestateEndpoint``:
the peer's own venv, ``PYTHONPATH`` = the project root), which is why it may import the SDK.

Restate has two kinds of step, so there are two workloads; in both a run is one invocation of a
handler of ``RefluxPeerRun``, started through the ingress, doing ``STEPS_PER_RUN`` steps in
sequence:

- ``journaled``: a step is one ``ctx.run_typed`` (the typed form of ``ctx.run``; the SDK
  deprecates the untyped one) with an ``async`` no-op closure. The closure runs inline in the
  handler; the step is durable once the server has appended its result to the invocation's
  journal and acknowledged it to the endpoint. Comparable with REFLUX's inline path.
- ``called``: a step is one awaited ``ctx.service_call`` to ``RefluxPeerStep/step``, a no-op
  handler: a durable request/response call to another handler, which Restate runs as an
  invocation of its own (journaled call, the callee's invocation, its result journaled back).
  Comparable with REFLUX's remote path, a worker round trip.

The closure and the callee return ``time.time()``: the run's result carries when its first
step began executing. The endpoint is another process than the measuring client, so that time
and the client's readings are both wall-clock time on the same machine.
"""

from __future__ import annotations

import time

import restate

from benchmarks.peers.restate_workloads import (
    CALLED_HANDLER,
    JOURNALED_HANDLER,
    RUN_SERVICE,
    STEP_SERVICE,
    run_output,
)
from benchmarks.peers.timings import STEPS_PER_RUN

runs = restate.Service(RUN_SERVICE)
steps = restate.Service(STEP_SERVICE)


async def noop_step() -> float:
    """The no-op a step runs; it only reports when it ran."""
    return time.time()


@steps.handler("step")
async def step(ctx: restate.Context, index: int) -> float:
    # The callee is the step: it does nothing but report when it ran.
    return time.time()


@runs.handler(JOURNALED_HANDLER)
async def journaled(ctx: restate.Context) -> dict[str, float]:
    stamps = [await ctx.run_typed(f"step-{index}", noop_step) for index in range(STEPS_PER_RUN)]
    return run_output(stamps)


@runs.handler(CALLED_HANDLER)
async def called(ctx: restate.Context) -> dict[str, float]:
    stamps = [await ctx.service_call(step, arg=index) for index in range(STEPS_PER_RUN)]
    return run_output(stamps)


app = restate.app(services=[runs, steps])
