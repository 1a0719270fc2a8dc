"""When may a retry go: a retry budget and a circuit breaker per dependency (ADR 0020).

``decide`` asks a :class:`RetryGating` (``DecisionContext.retry_gate``) twice per retry:

1. ``admit`` when an attempt failed and the policy allows another: the gate returns the moment
   the retry may go (never before the backoff's ``earliest``), the reason it is later
   (``budget``: over the dependency's retry budget; ``circuit_open``: the dependency's circuit is
   open) and the circuit's state. ``decide`` writes all of it in ``StepRetryScheduled``
   (``next_attempt_at``, ``reason``, ``circuit``, ``held_ms``, ``dependency``), so a replay never
   asks the gate again: the gate's state is soft, the decision it led to is in the log.
2. ``recheck`` when the backoff timer fires: a circuit that opened meanwhile holds the retry
   again (a new ``StepRetryScheduled`` for the same attempt), a half-open one lets a few through
   as probes.

First attempts are never held or failed by the gate: the circuit bounds the *amplification*
(retries), not the offered load, which the workers' concurrency already bounds; and a false
"open" (a burst of bad luck at a 30 % failure rate) then costs delay, never a failed run.

The runtime owns one :class:`RetryGate` per scheduler process and feeds it what it decides
(:func:`retry_signals`: first attempts dispatched, attempts that succeeded or failed). Its
state is lost on restart (it starts closed, with an empty window) and is per process: N
schedulers allow N floors of retries per dependency.

A *dependency* is the node name, except for ``http.request``, where it is the node and the
URL's host (``http.request api.example.com:8443``): one sick host must not hold the retries to
every other host. Claim-checked params (not in state) fall back to the node name.

Pure: no clock, no randomness of its own (``now`` and ``random`` come in), no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

from foundation.errors import ConfigurationError
from processors.scheduler.circuit import Circuit, CircuitPolicy, CircuitState, Transition
from processors.scheduler.retry_budget import RetryBudget
from processors.scheduler.state import RunState
from schemas.models import StepDispatched, StepFailed, StepSucceeded, StepTimedOut

__all__ = [
    "UNGATED",
    "Admission",
    "CircuitPolicy",
    "CircuitState",
    "DependencyStatus",
    "GatePolicy",
    "RetryGate",
    "RetryGating",
    "RetryReason",
    "Signal",
    "SignalKind",
    "Transition",
    "dependency_of",
    "retry_signals",
]

Random = Callable[[], float]


class RetryReason(StrEnum):
    """Why a retry goes when it goes (``StepRetryScheduled.reason``)."""

    BACKOFF = "backoff"
    """The retry policy's backoff only."""
    BUDGET = "budget"
    """Later than the backoff: the dependency's retry budget was used up."""
    CIRCUIT_OPEN = "circuit_open"
    """Held: the dependency's circuit is open."""
    HALF_OPEN = "half_open"
    """Held: the circuit is half-open and its probes are out."""


class Admission(NamedTuple):
    due: datetime
    reason: RetryReason
    circuit: CircuitState
    dependency: str


class RetryGating(Protocol):
    def admit(
        self, dependency: str, earliest: datetime, now: datetime, random: Random
    ) -> Admission:
        """A retry wants to go at ``earliest`` (now + backoff): when may it?"""
        ...

    def recheck(self, dependency: str, now: datetime, random: Random) -> Admission:
        """A retry's timer fired: go now (``due == now``) or hold until ``due``."""
        ...


class _Ungated:
    """Every retry goes when its backoff says (the default of ``DecisionContext``)."""

    def admit(
        self, dependency: str, earliest: datetime, now: datetime, random: Random
    ) -> Admission:
        return Admission(earliest, RetryReason.BACKOFF, CircuitState.CLOSED, dependency)

    def recheck(self, dependency: str, now: datetime, random: Random) -> Admission:
        return Admission(now, RetryReason.BACKOFF, CircuitState.CLOSED, dependency)


UNGATED: RetryGating = _Ungated()


@dataclass(frozen=True, slots=True)
class GatePolicy:
    """Defaults: Finagle's budget (20 % of requests, 10 retries/s floor, 10 s window) and
    Hystrix's breaker (50 % failures over 10 s with at least 20 calls, 5 s cool-down)."""

    budget_ratio: float = 0.2
    """Retries allowed per first attempt, over the window."""
    budget_floor_per_s: float = 10.0
    """Retries per second allowed whatever the traffic (must be > 0: with no traffic, retries
    would otherwise never go)."""
    window_s: int = 10
    circuit: CircuitPolicy = field(default_factory=CircuitPolicy)

    def __post_init__(self) -> None:
        c = self.circuit
        problems = [
            text
            for bad, text in (
                (self.budget_ratio < 0, f"budget_ratio >= 0 (got {self.budget_ratio})"),
                (
                    self.budget_floor_per_s <= 0,
                    f"budget_floor_per_s > 0 (got {self.budget_floor_per_s})",
                ),
                (self.window_s < 1, f"window_s >= 1 (got {self.window_s})"),
                (
                    not 0 < c.failure_ratio <= 1,
                    f"circuit failure_ratio in (0, 1] (got {c.failure_ratio})",
                ),
                (c.min_samples < 1, f"circuit min_samples >= 1 (got {c.min_samples})"),
                (c.window_s < 1, f"circuit window_s >= 1 (got {c.window_s})"),
                (c.cooldown_ms < 1, f"circuit cooldown_ms >= 1 (got {c.cooldown_ms})"),
                (
                    c.max_cooldown_ms < c.cooldown_ms,
                    f"circuit max_cooldown_ms >= cooldown_ms (got {c.max_cooldown_ms})",
                ),
                (c.probes < 1, f"circuit probes >= 1 (got {c.probes})"),
            )
            if bad
        ]
        if problems:
            raise ConfigurationError("Expected a retry gate policy with " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class DependencyStatus:
    """What the gate knows of one dependency now (tests, logs, the runtime's stats)."""

    dependency: str
    circuit: CircuitState
    open_until: datetime | None
    retry_rate_per_s: float


class RetryGate:
    """The soft state of every dependency this scheduler process has seen."""

    SWEEP_EVERY = timedelta(seconds=60)

    def __init__(self, policy: GatePolicy | None = None) -> None:
        self.policy = policy or GatePolicy()
        self._budgets: dict[str, RetryBudget] = {}
        self._circuits: dict[str, Circuit] = {}
        self._transitions: list[Transition] = []
        self._swept: datetime | None = None

    # -- asked by decide -------------------------------------------------------------------------

    def admit(
        self, dependency: str, earliest: datetime, now: datetime, random: Random
    ) -> Admission:
        circuit = self._circuit(dependency)
        circuit.tick(now)
        rand = random()
        if circuit.state is CircuitState.OPEN and circuit.open_until is not None:
            # Spread over the cool-down after it ends: the first become the probes, the rest
            # go once they closed it (a ramp, not a herd) or are held again.
            hold = max(earliest, circuit.open_until + self._spread(circuit, rand))
            due = self._budget(dependency).reserve(hold, now, rand)
            return Admission(due, RetryReason.CIRCUIT_OPEN, circuit.state, dependency)
        due = self._budget(dependency).reserve(earliest, now, rand)
        reason = RetryReason.BUDGET if due > earliest else RetryReason.BACKOFF
        return Admission(due, reason, circuit.state, dependency)

    def recheck(self, dependency: str, now: datetime, random: Random) -> Admission:
        circuit = self._circuits.get(dependency)
        if circuit is None:
            return Admission(now, RetryReason.BACKOFF, CircuitState.CLOSED, dependency)
        circuit.tick(now)
        if circuit.state is CircuitState.CLOSED or (
            circuit.state is CircuitState.HALF_OPEN and circuit.admit_probe()
        ):
            return Admission(now, RetryReason.BACKOFF, circuit.state, dependency)
        rand = random()
        if circuit.state is CircuitState.OPEN and circuit.open_until is not None:
            hold = circuit.open_until + self._spread(circuit, rand)
            reason = RetryReason.CIRCUIT_OPEN
        else:
            # Half-open, probes out: look again within a cool-down (the probes decide sooner).
            hold = now + timedelta(milliseconds=circuit.cooldown_ms * (1 + rand) / 2)
            reason = RetryReason.HALF_OPEN
        # The budget applies to held retries too: a circuit that closes does not release every
        # held retry at once.
        due = self._budget(dependency).reserve(hold, now, rand)
        return Admission(due, reason, circuit.state, dependency)

    # -- fed by the runtime ----------------------------------------------------------------------

    def observe(self, signals: Iterable[Signal], now: datetime) -> None:
        for signal in signals:
            if signal.kind is SignalKind.FIRST:
                self._budget(signal.dependency).first_attempt(now)
            else:
                self._circuit(signal.dependency).record(
                    signal.kind is SignalKind.SUCCESS, signal.dispatched_at, now
                )
        if self._swept is None or now - self._swept >= self.SWEEP_EVERY:
            self._sweep(now)

    def take_transitions(self) -> list[Transition]:
        """Transitions since the last call, oldest first (the runtime logs and counts them)."""
        if not self._transitions:
            return []
        # Emptied in place: every circuit appends to this very list.
        taken = list(self._transitions)
        self._transitions.clear()
        return taken

    def status(self, dependency: str, now: datetime) -> DependencyStatus:
        circuit = self._circuits.get(dependency)
        if circuit is not None:
            circuit.tick(now)
        budget = self._budgets.get(dependency)
        return DependencyStatus(
            dependency,
            circuit.state if circuit is not None else CircuitState.CLOSED,
            circuit.open_until if circuit is not None else None,
            budget.rate(now) if budget is not None else self.policy.budget_floor_per_s,
        )

    def dependencies(self) -> list[str]:
        return sorted(set(self._circuits) | set(self._budgets))

    # -- internals -------------------------------------------------------------------------------

    def _circuit(self, dependency: str) -> Circuit:
        circuit = self._circuits.get(dependency)
        if circuit is None:
            circuit = Circuit(dependency, self.policy.circuit, self._transitions)
            self._circuits[dependency] = circuit
        return circuit

    def _budget(self, dependency: str) -> RetryBudget:
        budget = self._budgets.get(dependency)
        if budget is None:
            p = self.policy
            budget = RetryBudget(
                ratio=p.budget_ratio, floor_per_s=p.budget_floor_per_s, window_s=p.window_s
            )
            self._budgets[dependency] = budget
        return budget

    @staticmethod
    def _spread(circuit: Circuit, rand: float) -> timedelta:
        return timedelta(milliseconds=circuit.cooldown_ms * rand)

    def _sweep(self, now: datetime) -> None:
        """Forget dependencies with nothing to remember (per-host keys are unbounded)."""
        self._swept = now
        for dependency in [d for d, c in self._circuits.items() if c.idle(now)]:
            budget = self._budgets.get(dependency)
            if budget is None or budget.idle(now):
                self._circuits.pop(dependency)
                self._budgets.pop(dependency, None)
        for dependency in [d for d, b in self._budgets.items() if d not in self._circuits]:
            if self._budgets[dependency].idle(now):
                self._budgets.pop(dependency)


# -- what the runtime feeds the gate ---------------------------------------------------------------


class SignalKind(StrEnum):
    FIRST = "first"
    """A first attempt was dispatched (the budget grows with it)."""
    SUCCESS = "success"
    FAILURE = "failure"


class Signal(NamedTuple):
    dependency: str
    kind: SignalKind
    dispatched_at: datetime | None
    """When the attempt the outcome is about was dispatched (half-open counts only attempts
    dispatched since it began); None when unknown."""


_TARGETED = {"http.request": "url"}
"""Nodes whose dependency is one of many targets: node name -> the param naming the target."""


def dependency_of(node: str, params: Any) -> str:
    """The gate's key for a step of ``node`` called with ``params`` (see the module doc)."""
    field_name = _TARGETED.get(node)
    if field_name is None or not isinstance(params, dict):
        return node
    url = params.get(field_name)
    if not isinstance(url, str):
        return node
    target = _target(url)
    return f"{node} {target}" if target is not None else node


@functools.lru_cache(maxsize=4096)
def _target(url: str) -> str | None:
    """``host`` or ``host:port`` of ``url`` (cached: every step outcome asks, urlsplit is slow)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    # Host and port only: never the user-info part of a URL (credentials).
    return f"{host}:{port}" if port is not None else host


def step_dependency(state: RunState, step_id: str) -> str:
    step = state.steps[step_id]
    return dependency_of(state.step_definition(step_id).node_name, step.params)


def retry_signals(events: Iterable[object], state: RunState) -> list[Signal]:
    """What the gate learns from a decision's events (``state``: the state after them)."""
    signals: list[Signal] = []
    for event in events:
        if isinstance(event, StepDispatched):
            if event.attempt == 1:
                step_id = event.step.step_id
                signals.append(
                    Signal(step_dependency(state, step_id), SignalKind.FIRST, event.occurred_at)
                )
            continue
        if isinstance(event, StepSucceeded):
            if event.cache_hit:
                continue
            kind = SignalKind.SUCCESS
        elif isinstance(event, StepTimedOut):
            kind = SignalKind.FAILURE
        elif isinstance(event, StepFailed):
            # Only attempts that reached a worker, and only failures worth retrying: a 4xx or a
            # template error says nothing about the dependency's health.
            if event.invocation_id is None or not event.error.retryable:
                continue
            kind = SignalKind.FAILURE
        else:
            continue
        step_id = event.step.step_id
        step = state.steps.get(step_id)
        if step is None:
            continue
        dispatched = step.dispatched_at if step.attempt == event.attempt else None
        signals.append(Signal(step_dependency(state, step_id), kind, dispatched))
    return signals
