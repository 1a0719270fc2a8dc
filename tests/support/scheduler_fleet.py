"""Many runs against one simulated dependency, on one clock, sharing one retry gate.

A :class:`Fleet` drives one :class:`Simulation` per run the way one scheduler process would: a
single clock, one :class:`RetryGate` fed by every run's decisions, and a service model that
answers each invocation after a latency (success, error, or a hang that the worker ends at the
step timeout). Events are played in time order from a heap, so the gate sees outcomes, first
attempts and timers interleaved as they happen. Deterministic for a given seed.

Used by the retry-storm tests (tests/unit/test_retry_gate.py) and the simulation report
(benchmarks/retry_storm_sim.py).
"""

from __future__ import annotations

import functools
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import count
from typing import Literal

from processors.scheduler.retry_gate import RetryGate
from processors.scheduler.state import RunStatus
from processors.scheduler.timers import next_due
from schemas.models import ErrorInfo, NodeInvocation, StepRetryScheduled, TraceStatus
from tests.support.scheduler_simulation import T0, Simulation

__all__ = ["FIVE_STEPS", "ONE_STEP", "Call", "Fleet", "Outcome", "Service", "flaky_service"]

# The workloads of the retry-storm scenarios (tests/unit/test_retry_storms.py and
# benchmarks/retry_storm_sim.py): the chaos workload's five calls in a row, and one call.
ONE_STEP = """
id: one-step
steps:
  - id: call
    node: http.request@^1
    timeout: 1s
    params: {url: "http://svc.local/x"}
    retry: {max_attempts: 8, initial_backoff: 200ms, max_backoff: 2s}
"""

FIVE_STEPS = "id: five-steps\nsteps:\n" + "".join(
    f"  - id: s{n}\n"
    "    node: http.request@^1\n"
    "    timeout: 1s\n"
    "    retry: {max_attempts: 4}\n"
    '    params: {url: "http://svc.local/x"}\n' + (f"    needs: [s{n - 1}]\n" if n > 1 else "")
    for n in range(1, 6)
)

OutcomeKind = Literal["ok", "error", "hang"]


class Outcome:
    """What the service does with one call: answer ``kind`` after ``latency_ms``."""

    __slots__ = ("kind", "latency_ms")

    def __init__(self, kind: OutcomeKind, latency_ms: int) -> None:
        self.kind = kind
        self.latency_ms = latency_ms


Service = Callable[[NodeInvocation, datetime, random.Random], Outcome]
"""``(invocation, now, rng) -> outcome``."""


def flaky_service(
    *, error: float, hang: float, latency_ms: int = 20, down: tuple[float, float] | None = None
) -> Service:
    """Answers 500 with probability ``error``, hangs with ``hang``, else succeeds after
    ``latency_ms``; during ``down`` (seconds after T0, [start, end)) every call fails."""

    def answer(invocation: NodeInvocation, now: datetime, rng: random.Random) -> Outcome:
        elapsed = (now - T0).total_seconds()
        if down is not None and down[0] <= elapsed < down[1]:
            return Outcome("error", latency_ms)
        draw = rng.random()
        if draw < error:
            return Outcome("error", latency_ms)
        if draw < error + hang:
            return Outcome("hang", 0)
        return Outcome("ok", latency_ms)

    return answer


@dataclass(frozen=True, slots=True)
class Call:
    """One call the service received."""

    at: datetime
    run: int
    step_id: str
    attempt: int


@dataclass
class Fleet:
    definition: str
    runs: int
    service: Service
    gate: RetryGate | None
    seed: int = 1
    start_spread_ms: int = 0
    """Runs start uniformly over this many ms after T0 (0: all at once)."""
    calls: list[Call] = field(default_factory=list)
    sims: list[Simulation] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._heap: list[tuple[datetime, int, Callable[[], None]]] = []
        self._order = count()
        self.now = T0

    # -- driving ---------------------------------------------------------------------------------

    def play(self, *, until_s: float = 3_600) -> None:
        """Start every run, then play events in time order until nothing is left (or
        ``until_s`` of simulated time)."""
        for n in range(self.runs):
            sim = Simulation(
                self.definition,
                run_id=f"run-{n:04d}",
                seed=self.seed * 100_003 + n,
                retry_gate=self.gate,
                check_replay=False,
            )
            self.sims.append(sim)
            at = T0 + timedelta(milliseconds=self._rng.random() * self.start_spread_ms)
            self._at(at, functools.partial(self._start, sim))
        end = T0 + timedelta(seconds=until_s)
        while self._heap:
            at, _, action = heapq.heappop(self._heap)
            if at > end:
                break
            self.now = max(self.now, at)
            action()

    def _start(self, sim: Simulation) -> None:
        self._after(sim, self._sync(sim).start())

    def _at(self, at: datetime, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (at, next(self._order), action))

    def _sync(self, sim: Simulation) -> Simulation:
        sim.now = self.now
        return sim

    def _after(self, sim: Simulation, _decision: object) -> None:
        """After any decision of ``sim``: call the service for new invocations, arm timers."""
        for invocation in list(sim.outstanding.values()):
            sim.outstanding.pop(invocation.invocation_id)
            self._call(sim, invocation)
        due = next_due(sim.state) if sim.state is not None else None
        if due is not None:
            self._at(max(due, self.now), lambda: self._fire(sim))

    def _fire(self, sim: Simulation) -> None:
        for decision in self._sync(sim).fire_due():
            self._after(sim, decision)

    def _call(self, sim: Simulation, invocation: NodeInvocation) -> None:
        run = int(sim.run_id.removeprefix("run-"))
        self.calls.append(Call(self.now, run, invocation.step.step_id, invocation.attempt))
        outcome = self.service(invocation, self.now, self._rng)
        self._after(sim, self._sync(sim).start_attempt(invocation))
        if outcome.kind == "hang":
            timeout = invocation.timeout_ms or 1_000
            finish = self.now + timedelta(milliseconds=timeout)
            self._at(finish, lambda: self._answer(sim, invocation, TraceStatus.TIMEOUT, None))
            return
        finish = self.now + timedelta(milliseconds=outcome.latency_ms)
        if outcome.kind == "ok":
            self._at(finish, lambda: self._answer(sim, invocation, TraceStatus.OK, None))
            return
        error = ErrorInfo(
            error_class="HttpStatus500", message="500 from the service", retryable=True
        )
        self._at(finish, lambda: self._answer(sim, invocation, TraceStatus.ERROR, error))

    def _answer(
        self,
        sim: Simulation,
        invocation: NodeInvocation,
        status: TraceStatus,
        error: ErrorInfo | None,
    ) -> None:
        output = {"ok": True} if status is TraceStatus.OK else None
        decision = self._sync(sim).result(
            invocation, status, output=output, error=error, duration_ms=0
        )
        self._after(sim, decision)

    # -- what happened -------------------------------------------------------------------------

    def statuses(self) -> dict[RunStatus, int]:
        out: dict[RunStatus, int] = {}
        for sim in self.sims:
            status = sim.run.status
            out[status] = out.get(status, 0) + 1
        return out

    def retries(self) -> list[StepRetryScheduled]:
        return [e for sim in self.sims for e in sim.log if isinstance(e, StepRetryScheduled)]

    def calls_per_second(self, *, retries_only: bool = False) -> dict[int, int]:
        out: dict[int, int] = {}
        for call in self.calls:
            if retries_only and call.attempt == 1:
                continue
            second = int((call.at - T0).total_seconds())
            out[second] = out.get(second, 0) + 1
        return out
