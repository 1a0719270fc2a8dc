"""The Hatchet peer's pure parts: task names and reading a run's result (stdlib only).

Imported by the driver in the peer's own virtualenv and by the unit tests in the project's, so
it imports neither the SDK nor anything of the project beyond ``benchmarks.peers``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

PREFIX = "peer_hatchet"
# The key under which step 0 returns the wall-clock time (time.time()) it began executing.
FIRST_STEP_KEY = "began_at"
# What the other steps return (the SDK leaves a task with an empty output out of the result).
DONE_KEY = "done"
# One worker, as many slots as the throughput phase has runs in flight: each run has one
# task ready at a time, so no run waits for a slot (the SDK's default is 100 too).
WORKER_SLOTS = 100


def task_name(index: int) -> str:
    return f"step_{index}"


def workflow_name() -> str:
    """A workflow name per invocation: an earlier, aborted benchmark's runs cannot interfere."""
    return f"reflux-peer-chain-{uuid.uuid4().hex[:8]}"


def first_step_began(result: Mapping[str, Any], steps: int) -> float:
    """Step 0's start time from a finished run's result, checking that every step ran.

    The SDK returns a run's result as the task outputs keyed by task name (the "readable id").
    """
    missing = [task_name(i) for i in range(steps) if task_name(i) not in result]
    if missing:
        raise RuntimeError(
            f"Expected the outputs of {steps} steps in the run's result, but "
            f"{', '.join(missing)} are missing (got {sorted(result)})"
        )
    first = result[task_name(0)]
    began = first.get(FIRST_STEP_KEY) if isinstance(first, Mapping) else None
    if not isinstance(began, int | float) or isinstance(began, bool):
        raise RuntimeError(
            f"Expected step 0 to return {{{FIRST_STEP_KEY!r}: <time>}}, but it returned {first!r}"
        )
    return float(began)


def worker_ready(workers: Sequence[Mapping[str, Any]], name: str) -> bool:
    """True once the engine lists the worker ``name`` as ACTIVE (registered and listening)."""
    return any(w.get("name") == name and w.get("status") == "ACTIVE" for w in workers)
