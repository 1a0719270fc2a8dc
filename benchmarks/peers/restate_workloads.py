"""The Restate peer's two workloads, its ingress paths and what its answers must hold.

Pure and standard-library only: the driver imports it in the peer's own venv, the service
endpoint (``restate_services``) takes its names from it, and the unit tests check it in the
project's venv without the SDK.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.peers.timings import STEPS_PER_RUN

RUN_SERVICE = "RefluxPeerRun"
STEP_SERVICE = "RefluxPeerStep"
JOURNALED_HANDLER = "journaled"
CALLED_HANDLER = "called"


@dataclass(frozen=True)
class Workload:
    """One kind of step: the handler a run invokes and the prefix of its metric keys."""

    prefix: str
    handler: str
    step: str

    @property
    def call_path(self) -> str:
        """Request/response: the ingress answers with the run's output when it has ended."""
        return f"/{RUN_SERVICE}/{self.handler}"

    @property
    def send_path(self) -> str:
        """``/send``: the ingress answers once the invocation is accepted, with its id."""
        return f"/{RUN_SERVICE}/{self.handler}/send"


WORKLOADS = (
    Workload("peer_restate", JOURNALED_HANDLER, "a journaled ctx.run (inline no-op closure)"),
    Workload("peer_restate_call", CALLED_HANDLER, "a durable call to another service's handler"),
)


def attach_path(invocation_id: str) -> str:
    """Blocks until the invocation ends, then answers with its output."""
    return f"/restate/invocation/{invocation_id}/attach"


def invocation_id_of(body: object) -> str:
    """The id in a ``/send`` answer, ``{"invocationId": "inv_...", "status": "Accepted"}``."""
    if not isinstance(body, dict) or body.get("status") != "Accepted":
        raise ValueError(f"Expected a /send answer with status Accepted, but got {body!r}")
    invocation_id = body.get("invocationId")
    if not isinstance(invocation_id, str) or not invocation_id.startswith("inv_"):
        raise ValueError(f"Expected an invocation id 'inv_...', but got {invocation_id!r}")
    return invocation_id


def run_output(stamps: list[float]) -> dict[str, float]:
    """What a run's handler returns: how many steps ran and when the first one began."""
    return {"steps": float(len(stamps)), "first_step_at": stamps[0]}


def first_step_of(body: object) -> float:
    """The first step's start (``time.time()`` in the endpoint) from a run's output, after
    checking that the run did all its steps."""
    if not isinstance(body, dict):
        raise ValueError(f"Expected a run's output object, but got {body!r}")
    steps, first = body.get("steps"), body.get("first_step_at")
    if steps != STEPS_PER_RUN:
        raise ValueError(f"Expected {STEPS_PER_RUN} steps to run, but the run reports {steps!r}")
    if not isinstance(first, float):
        raise ValueError(f"Expected the first step's start time, but got {first!r}")
    return first


def cpu_seconds_from_stat(stat: str, ticks_per_second: int) -> float:
    """User plus system CPU seconds of a process from its ``/proc/<pid>/stat`` line.

    The command name (field 2) may hold spaces and parentheses, so fields are counted from
    the last ``)``: utime and stime are fields 14 and 15 of the line.
    """
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / ticks_per_second


def process_cpu_seconds(pid: int, ticks_per_second: int) -> float:
    return cpu_seconds_from_stat(Path(f"/proc/{pid}/stat").read_text(), ticks_per_second)


def cpu_share(cpu_seconds: float, wall_seconds: float) -> float:
    """CPU time as a share of one core over a wall-clock interval (1.0 = one core busy)."""
    if wall_seconds <= 0:
        raise ValueError(f"Expected a positive duration, but got {wall_seconds}s")
    return cpu_seconds / wall_seconds
