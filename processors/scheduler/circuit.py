"""The circuit breaker of one dependency: closed, open, half-open, fed by attempt outcomes.

- **closed**: outcomes go into a sliding window of ``window_s`` seconds; when it holds at least
  ``min_samples`` outcomes and the share of failures reaches ``failure_ratio``, the circuit
  **opens** for a cool-down (``cooldown_ms``, doubled on each re-open up to
  ``max_cooldown_ms``, back to ``cooldown_ms`` once it closes).
- **open**: retries are held until the cool-down ends (the gate spreads them over the next
  cool-down); outcomes of attempts dispatched before are ignored (they describe the past).
- **half-open** (the cool-down ended): up to ``probes`` held retries are let through; the
  outcomes of attempts *dispatched since half-open began* (probes, and first attempts, which are
  never held) decide: as soon as ``ceil(failure_ratio * probes)`` of them failed the circuit
  opens again, as soon as the rest can no longer reach that it closes. A half-open round that
  stays undecided for a cool-down (probes lost or hung) starts over with a fresh quota.

What counts: a success is a step attempt that succeeded on a worker; a failure is a retryable
failure or a timeout of an attempt that was dispatched. Non-retryable errors (a 4xx, a template
error) say nothing about the dependency's health and are not counted.

Pure: no clock (``now`` comes in), no randomness, soft state only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from processors.scheduler.retry_budget import SecondCounts, epoch_second

__all__ = ["Circuit", "CircuitPolicy", "CircuitState", "Transition"]


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    failure_ratio: float = 0.5
    min_samples: int = 20
    window_s: int = 10
    cooldown_ms: int = 5_000
    max_cooldown_ms: int = 60_000
    probes: int = 5


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of state, for the scheduler's log line and counters."""

    dependency: str
    before: CircuitState
    after: CircuitState
    at: datetime
    failures: int
    samples: int
    """The outcomes that decided it (the window when it opened from closed, the probes
    otherwise; 0 and 0 for the time-driven open -> half-open)."""
    cooldown_ms: int
    """The cool-down that starts (open), or that ended (half-open, closed)."""

    def describe(self) -> str:
        if self.after is CircuitState.OPEN:
            share = f"{self.failures} of {self.samples} recent outcomes failed"
            return f"open: {share}; retries held for {self.cooldown_ms / 1000:.1f}s"
        if self.after is CircuitState.HALF_OPEN:
            return "half-open: cool-down over, letting probes through"
        return f"closed: {self.samples - self.failures} of {self.samples} probes succeeded"


class Circuit:
    def __init__(self, dependency: str, policy: CircuitPolicy, sink: list[Transition]) -> None:
        self.dependency = dependency
        self.policy = policy
        self._sink = sink
        """Every transition is appended here (the gate's list, drained by the runtime)."""
        self.state = CircuitState.CLOSED
        self.cooldown_ms = policy.cooldown_ms
        self.open_until: datetime | None = None
        self.half_open_since: datetime | None = None
        self.probes_admitted = 0
        self._ok = SecondCounts()
        self._failed = SecondCounts()
        self._probe_ok = 0
        self._probe_failed = 0

    # -- time ------------------------------------------------------------------------------------

    def tick(self, now: datetime) -> None:
        """Time-driven changes: the cool-down ends (open -> half-open), or a half-open round that
        stayed undecided for a cool-down starts over."""
        if self.state is CircuitState.OPEN:
            if self.open_until is not None and now >= self.open_until:
                self._half_open(now)
        elif self.state is CircuitState.HALF_OPEN and self.half_open_since is not None:
            round_over = self.half_open_since + timedelta(milliseconds=self.cooldown_ms)
            if now >= round_over:
                self._start_round(now)

    # -- outcomes --------------------------------------------------------------------------------

    def record(self, success: bool, dispatched_at: datetime | None, now: datetime) -> None:
        self.tick(now)
        if self.state is CircuitState.CLOSED:
            self._record_closed(success, now)
        elif self.state is CircuitState.HALF_OPEN:
            since = self.half_open_since
            if dispatched_at is None or since is None or dispatched_at < since:
                return  # an attempt from before the round: it describes the past
            if success:
                self._probe_ok += 1
            else:
                self._probe_failed += 1
            self._judge(now)
        # open: outcomes of attempts dispatched before it opened, ignored

    def _record_closed(self, success: bool, now: datetime) -> None:
        second = epoch_second(now)
        (self._ok if success else self._failed).add(second)
        if success:
            return
        first = second - self.policy.window_s + 1
        self._ok.prune_below(first)
        self._failed.prune_below(first)
        failures = self._failed.total(first, second)
        samples = failures + self._ok.total(first, second)
        if samples >= self.policy.min_samples and failures >= self.policy.failure_ratio * samples:
            self._open(now, failures, samples)

    def _judge(self, now: datetime) -> None:
        probes = self.policy.probes
        to_open = max(1, math.ceil(self.policy.failure_ratio * probes))
        if self._probe_failed >= to_open:
            self.cooldown_ms = min(self.cooldown_ms * 2, self.policy.max_cooldown_ms)
            self._open(now, self._probe_failed, self._probe_ok + self._probe_failed)
        elif self._probe_ok > probes - to_open:
            self._close(now)

    # -- probes ----------------------------------------------------------------------------------

    def admit_probe(self) -> bool:
        """Half-open: one more held retry may go (it is a probe)."""
        if self.probes_admitted >= self.policy.probes:
            return False
        self.probes_admitted += 1
        return True

    # -- transitions -----------------------------------------------------------------------------

    def _open(self, now: datetime, failures: int, samples: int) -> None:
        before = self.state
        self.state = CircuitState.OPEN
        self.open_until = now + timedelta(milliseconds=self.cooldown_ms)
        self.half_open_since = None
        self._ok.clear()
        self._failed.clear()
        self._sink.append(
            Transition(
                self.dependency, before, self.state, now, failures, samples, self.cooldown_ms
            )
        )

    def _half_open(self, now: datetime) -> None:
        self.state = CircuitState.HALF_OPEN
        self._start_round(now)
        self._sink.append(
            Transition(self.dependency, CircuitState.OPEN, self.state, now, 0, 0, self.cooldown_ms)
        )

    def _start_round(self, now: datetime) -> None:
        # Whole milliseconds: run events keep milliseconds, so a probe dispatched at this very
        # ``now`` reports a dispatch time truncated to them, and must still count.
        self.half_open_since = now.replace(microsecond=now.microsecond // 1000 * 1000)
        self.probes_admitted = 0
        self._probe_ok = self._probe_failed = 0

    def _close(self, now: datetime) -> None:
        failures, samples = self._probe_failed, self._probe_ok + self._probe_failed
        ended = self.cooldown_ms
        self.state = CircuitState.CLOSED
        self.cooldown_ms = self.policy.cooldown_ms
        self.open_until = self.half_open_since = None
        self._ok.clear()
        self._failed.clear()
        self._sink.append(
            Transition(
                self.dependency, CircuitState.HALF_OPEN, self.state, now, failures, samples, ended
            )
        )

    def idle(self, now: datetime) -> bool:
        """Closed with an empty window: the state can be dropped (it would be rebuilt equal)."""
        if self.state is not CircuitState.CLOSED:
            return False
        first = epoch_second(now) - self.policy.window_s + 1
        self._ok.prune_below(first)
        self._failed.prune_below(first)
        return not self._ok and not self._failed
