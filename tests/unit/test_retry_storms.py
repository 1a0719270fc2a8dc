"""Retry storms in simulation: many runs, one simulated dependency, one scheduler's retry gate.

The fleet (tests/support/scheduler_fleet.py) plays every run's decisions in time order with the
pure core, a shared gate and a seeded service model, so these are exact, repeatable stories:
the budget caps the retries each second and never turns a needed retry into a failed run; the
circuit holds retries while it is open; every run still ends.
"""

from __future__ import annotations

from datetime import timedelta

from processors.scheduler.circuit import CircuitPolicy, CircuitState
from processors.scheduler.retry_gate import GatePolicy, RetryGate
from processors.scheduler.state import RunStatus
from tests.support.scheduler_fleet import FIVE_STEPS, ONE_STEP, Fleet, flaky_service
from tests.support.scheduler_simulation import T0

FLOOR = 10.0
RATIO = 0.2
WINDOW_S = 10


def policy(**circuit: int) -> GatePolicy:
    return GatePolicy(
        budget_ratio=RATIO,
        budget_floor_per_s=FLOOR,
        window_s=WINDOW_S,
        circuit=CircuitPolicy(**circuit) if circuit else CircuitPolicy(),
    )


def test_an_outage_opens_the_circuit_holds_retries_caps_their_rate_and_loses_no_run() -> None:
    """300 runs start within a second while the dependency is down for 4 s, then it is fine."""
    gate = RetryGate(policy())
    fleet = Fleet(
        ONE_STEP,
        300,
        flaky_service(error=0.0, hang=0.0, down=(0.0, 4.0)),
        gate,
        seed=5,
        start_spread_ms=1_000,
    )
    fleet.play()
    assert fleet.statuses() == {RunStatus.SUCCEEDED: 300}  # none lost, none failed
    transitions = gate.take_transitions()
    opened = [t for t in transitions if t.after is CircuitState.OPEN]
    assert opened and opened[0].at < T0 + timedelta(seconds=1)
    assert transitions[-1].after is CircuitState.CLOSED
    # While it was open, not a single retry reached the dependency.
    for t in opened:
        ends = t.at + timedelta(milliseconds=t.cooldown_ms)
        assert not [c for c in fleet.calls if c.attempt > 1 and t.at <= c.at < ends]
    # Never more retries in one second than the budget allows (floor + ratio x the 300 first
    # attempts over the window), however many were waiting.
    cap = FLOOR + RATIO * 300 / WINDOW_S
    per_second = fleet.calls_per_second(retries_only=True)
    assert max(per_second.values()) <= cap
    held = [r for r in fleet.retries() if r.reason != "backoff"]
    assert {r.reason for r in held} >= {"circuit_open", "budget"}
    assert all(r.next_attempt_at - r.occurred_at >= timedelta(milliseconds=r.held_ms) for r in held)


def test_without_the_gate_the_same_outage_is_a_retry_storm() -> None:
    """The control for the test above: same runs, same outage, no gate."""
    fleet = Fleet(
        ONE_STEP,
        300,
        flaky_service(error=0.0, hang=0.0, down=(0.0, 4.0)),
        None,
        seed=5,
        start_spread_ms=1_000,
    )
    fleet.play()
    assert max(fleet.calls_per_second(retries_only=True).values()) > 3 * (
        FLOOR + RATIO * 300 / WINDOW_S
    )


def test_the_budget_delays_but_does_not_fail_the_retries_a_flaky_dependency_needs() -> None:
    """The issue's scenario: 200 runs of five calls, 20 % answered 500 and 10 % hung past the
    1 s timeout, 4 attempts. A call fails with 0.3, a step with 0.3^4, a run succeeds with
    (1 - 0.3^4)^5 = 96 %; the retries needed (~43 % of first calls) exceed the 20 % budget."""
    gate = RetryGate(policy())
    fleet = Fleet(FIVE_STEPS, 200, flaky_service(error=0.2, hang=0.1), gate, seed=3)
    fleet.play()
    statuses = fleet.statuses()
    assert sum(statuses.values()) == 200 and set(statuses) <= {
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
    }
    expected = (1 - 0.3**4) ** 5
    assert abs(statuses.get(RunStatus.SUCCEEDED, 0) / 200 - expected) <= 0.03
    retries = fleet.retries()
    assert [r for r in retries if r.reason == "budget"]  # the budget did bind
    assert not [r for r in retries if r.reason in ("circuit_open", "half_open")]  # 30 % < 50 %
    firsts = sum(1 for c in fleet.calls if c.attempt == 1)
    cap = FLOOR + RATIO * firsts / WINDOW_S
    assert max(fleet.calls_per_second(retries_only=True).values()) <= cap
