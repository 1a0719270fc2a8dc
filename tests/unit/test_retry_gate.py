"""The retry budget, the circuit breaker and the gate that combines them (pure logic).

Times are explicit datetimes; randomness is a fixed value or a seeded generator, so every
answer is reproducible (the gate's answers end up in run events; replay never asks it again).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from foundation.errors import ConfigurationError
from processors.scheduler.backoff import backoff_ms
from processors.scheduler.circuit import Circuit, CircuitPolicy, CircuitState, Transition
from processors.scheduler.retry_budget import MAX_SCAN_S, RetryBudget, epoch_second
from processors.scheduler.retry_gate import (
    UNGATED,
    Admission,
    GatePolicy,
    RetryGate,
    RetryReason,
    Signal,
    SignalKind,
    dependency_of,
    retry_signals,
)
from reflux.client import describe_event
from schemas.models import StepRetryScheduled
from tests.support.scheduler_golden import SCENARIOS
from tests.support.scheduler_simulation import Simulation
from workflows import RetrySpec

T = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
"""A whole second: second boundaries below are T + n s."""


def at(seconds: float) -> datetime:
    return T + timedelta(seconds=seconds)


def half() -> float:
    return 0.5


def fixed(value: float) -> Callable[[], float]:
    return lambda: value


def state(c: Circuit) -> CircuitState:
    """Read afresh (mypy would keep the state narrowed by an earlier assert)."""
    return c.state


# -- the budget ----------------------------------------------------------------------------------


def test_the_floor_lets_that_many_retries_a_second_and_delays_the_rest_to_later_seconds() -> None:
    budget = RetryBudget(ratio=0.2, floor_per_s=10, window_s=10)
    earliest = at(0.2)
    placed = [budget.reserve(earliest, T, 0.25) for _ in range(25)]
    assert placed[:10] == [earliest] * 10  # room in its own second: exactly when asked
    # The rest go to the next seconds with room, spread inside the second (rand), never before.
    assert placed[10:20] == [at(1.25)] * 10 and placed[20:] == [at(2.25)] * 5
    assert Counter(epoch_second(p) - epoch_second(T) for p in placed) == {0: 10, 1: 10, 2: 5}


def test_first_attempts_over_the_window_raise_the_rate_by_the_ratio() -> None:
    budget = RetryBudget(ratio=0.2, floor_per_s=2, window_s=10)
    assert budget.rate(T) == 2
    for n in range(100):
        budget.first_attempt(at(n / 100))  # 100 first attempts in the first second
    assert budget.rate(at(0.5)) == pytest.approx(2 + 0.2 * 100 / 10)
    assert budget.rate(at(9.9)) == pytest.approx(4)  # still inside the 10 s window
    assert budget.rate(at(10.0)) == 2  # out of it: back to the floor


def test_a_fractional_rate_adds_up_over_seconds() -> None:
    budget = RetryBudget(ratio=0.0, floor_per_s=2.5, window_s=10)
    placed = [budget.reserve(T, T, 0.0) for _ in range(25)]
    per_second = Counter(epoch_second(p) - epoch_second(T) for p in placed)
    assert sorted(per_second) == list(range(10))
    assert set(per_second.values()) == {2, 3} and sum(per_second.values()) == 25


def test_a_retry_far_ahead_does_not_hold_up_a_retry_due_sooner() -> None:
    # A rate limiter keeping one "next free slot" would put the second retry after the first.
    budget = RetryBudget(ratio=0.0, floor_per_s=1, window_s=10)
    assert budget.reserve(at(30), T, 0.0) == at(30)
    assert budget.reserve(at(0.1), T, 0.0) == at(0.1)
    assert budget.reserve(at(0.3), T, 0.7) == at(1.7)  # its own second is taken: the next one


def test_a_retry_is_never_refused_even_by_a_budget_far_too_small() -> None:
    budget = RetryBudget(ratio=0.0, floor_per_s=0.0001, window_s=10)
    placed = [budget.reserve(T, T, 0.0) for _ in range(3)]
    assert all(T <= p <= at(MAX_SCAN_S) for p in placed)  # later than "right", but placed


def test_an_idle_budget_can_be_forgotten() -> None:
    budget = RetryBudget(ratio=0.2, floor_per_s=1, window_s=10)
    budget.first_attempt(T)
    budget.reserve(at(3), T, 0.0)
    assert not budget.idle(at(5))
    assert budget.idle(at(10))


# -- the circuit ---------------------------------------------------------------------------------

POLICY = CircuitPolicy(failure_ratio=0.5, min_samples=10, window_s=10, cooldown_ms=5_000,
                       max_cooldown_ms=12_000, probes=4)  # fmt: skip


def circuit() -> tuple[Circuit, list[Transition]]:
    sink: list[Transition] = []
    return Circuit("svc", POLICY, sink), sink


def feed(c: Circuit, outcomes: str, start: float, step: float = 0.01) -> None:
    """``outcomes``: "." success, "x" failure; one every ``step`` s from ``start``."""
    for n, o in enumerate(outcomes):
        now = at(start + n * step)
        c.record(o == ".", now, now)


def test_it_stays_closed_below_min_samples_and_below_the_ratio() -> None:
    c, sink = circuit()
    feed(c, "x" * 9, 0)  # 100 % failures but only 9 outcomes
    assert state(c) is CircuitState.CLOSED
    c2, _ = circuit()
    feed(c2, ("..x" * 40), 0)  # 33 % failures, 120 outcomes
    assert state(c2) is CircuitState.CLOSED and not sink


def test_it_opens_when_the_failure_share_of_enough_recent_outcomes_reaches_the_ratio() -> None:
    c, sink = circuit()
    feed(c, ".x" * 4 + "x", 0)  # 5 of 9
    assert state(c) is CircuitState.CLOSED
    feed(c, "x", 1)  # 6 of 10
    assert state(c) is CircuitState.OPEN and c.open_until == at(1 + 5)
    (opened,) = sink
    assert (opened.before, opened.after, opened.failures, opened.samples) == (
        CircuitState.CLOSED,
        CircuitState.OPEN,
        6,
        10,
    )
    assert "6 of 10 recent outcomes failed" in opened.describe()


def test_outcomes_older_than_the_window_no_longer_count() -> None:
    c, _ = circuit()
    feed(c, "x" * 9, 0)
    feed(c, "x", 10.5)  # the nine are out of the 10 s window: 1 of 1
    assert state(c) is CircuitState.CLOSED


def test_open_ignores_outcomes_then_goes_half_open_after_the_cool_down() -> None:
    c, sink = circuit()
    feed(c, "x" * 10, 0)
    opened_at = at(0.09)
    assert state(c) is CircuitState.OPEN
    feed(c, "." * 20, 1)  # answers of attempts sent before it opened: the past
    assert state(c) is CircuitState.OPEN
    c.tick(opened_at + timedelta(milliseconds=4_999))
    assert state(c) is CircuitState.OPEN
    c.tick(opened_at + timedelta(seconds=5))
    assert state(c) is CircuitState.HALF_OPEN
    assert c.half_open_since == opened_at + timedelta(seconds=5)
    assert [t.after for t in sink] == [CircuitState.OPEN, CircuitState.HALF_OPEN]


def half_open() -> tuple[Circuit, list[Transition], datetime]:
    c, sink = circuit()
    feed(c, "x" * 10, 0)
    since = at(0.09) + timedelta(seconds=5)
    c.tick(since)
    assert state(c) is CircuitState.HALF_OPEN
    return c, sink, since


def test_half_open_admits_a_quota_of_probes_per_round() -> None:
    c, _, since = half_open()
    assert [c.admit_probe() for _ in range(5)] == [True, True, True, True, False]
    c.tick(since + timedelta(seconds=5))  # undecided for a cool-down: a fresh round
    assert state(c) is CircuitState.HALF_OPEN and c.half_open_since == since + timedelta(seconds=5)
    assert c.admit_probe()


def test_half_open_closes_once_failures_can_no_longer_reach_the_ratio() -> None:
    c, sink, since = half_open()
    before = since - timedelta(milliseconds=1)
    c.record(False, before, since)  # dispatched before the round: does not count
    for n in range(2):
        c.record(True, since, since + timedelta(milliseconds=n))
    assert state(c) is CircuitState.HALF_OPEN
    c.record(True, since, since + timedelta(milliseconds=5))  # 3 of 4 ok: 2 failures impossible
    assert state(c) is CircuitState.CLOSED and c.cooldown_ms == POLICY.cooldown_ms
    assert (
        sink[-1].after is CircuitState.CLOSED and "3 of 3 probes succeeded" in sink[-1].describe()
    )
    feed(c, "x" * 9, 7)  # a fresh window: the failures from before it opened are gone
    assert state(c) is CircuitState.CLOSED


def test_half_open_reopens_with_a_longer_cool_down_capped() -> None:
    c, sink, since = half_open()
    for _ in range(2):  # ceil(0.5 * 4) = 2 failed probes
        c.record(False, since, since)
    assert state(c) is CircuitState.OPEN and c.cooldown_ms == 10_000
    assert c.open_until == since + timedelta(seconds=10)
    c.tick(since + timedelta(seconds=10))
    for _ in range(2):
        c.record(False, since + timedelta(seconds=10), since + timedelta(seconds=10))
    assert c.cooldown_ms == 12_000  # max_cooldown_ms
    assert [t.after.value for t in sink] == ["open", "half_open", "open", "half_open", "open"]


# -- the gate ------------------------------------------------------------------------------------


def gate(**circuit_fields: int) -> RetryGate:
    fields = {"min_samples": 4, "cooldown_ms": 2_000, "probes": 2, **circuit_fields}
    return RetryGate(
        GatePolicy(budget_ratio=0.2, budget_floor_per_s=3, circuit=CircuitPolicy(**fields))
    )


def fail(g: RetryGate, n: int, now: datetime, dependency: str = "svc") -> None:
    g.observe([Signal(dependency, SignalKind.FAILURE, now)] * n, now)


def test_within_the_budget_a_retry_goes_at_its_backoff_and_over_it_later() -> None:
    g = gate()
    answers = [g.admit("svc", at(0.2), T, half) for _ in range(4)]
    assert answers[:3] == [Admission(at(0.2), RetryReason.BACKOFF, CircuitState.CLOSED, "svc")] * 3
    assert answers[3] == Admission(at(1.5), RetryReason.BUDGET, CircuitState.CLOSED, "svc")
    assert g.admit("other", at(0.2), T, half).reason is RetryReason.BACKOFF  # its own budget


def test_an_open_circuit_holds_retries_past_its_cool_down_spread_over_the_next() -> None:
    g = gate()
    fail(g, 4, T)
    assert g.status("svc", T).circuit is CircuitState.OPEN
    opened_until = at(2)
    dues = [g.admit("svc", at(0.1), at(0.1), fixed(r)).due for r in (0.0, 0.3, 0.9)]
    assert dues == [opened_until, at(2.6), at(3.8)]
    answer = g.admit("svc", at(0.1), at(0.1), half)
    assert (answer.reason, answer.circuit) == (RetryReason.CIRCUIT_OPEN, CircuitState.OPEN)
    # A retry whose backoff already ends after that keeps its own time.
    assert g.admit("svc", at(9), at(0.1), half).due == at(9)


def test_a_fired_retry_is_held_again_while_open_and_becomes_a_probe_when_half_open() -> None:
    g = gate()
    assert g.recheck("svc", T, half) == Admission(
        T, RetryReason.BACKOFF, CircuitState.CLOSED, "svc"
    )
    fail(g, 4, T)
    held = g.recheck("svc", at(0.5), half)
    assert (held.reason, held.circuit, held.due) == (
        RetryReason.CIRCUIT_OPEN,
        CircuitState.OPEN,
        at(3),
    )
    now = at(2)  # the cool-down is over: two probes go, the third waits for them
    first, second, third = (g.recheck("svc", now, half) for _ in range(3))
    assert first.due == second.due == now and first.circuit is CircuitState.HALF_OPEN
    assert third.reason is RetryReason.HALF_OPEN and now + timedelta(seconds=1) <= third.due
    # The probes succeed: closed, and retries go at once again.
    g.observe([Signal("svc", SignalKind.SUCCESS, now)] * 2, at(2.1))
    assert g.recheck("svc", at(2.2), half).due == at(2.2)
    transitions = g.take_transitions()
    assert [t.after.value for t in transitions] == ["open", "half_open", "closed"]
    assert g.take_transitions() == []


def test_transitions_keep_coming_after_they_were_taken() -> None:
    g = gate()
    fail(g, 4, T)
    assert [t.after for t in g.take_transitions()] == [CircuitState.OPEN]
    g.recheck("svc", at(2), half)  # the cool-down is over
    assert [t.after for t in g.take_transitions()] == [CircuitState.HALF_OPEN]


def test_a_probe_dispatched_in_the_same_millisecond_as_half_open_began_counts() -> None:
    g = gate(probes=1)
    fail(g, 4, T)
    now = at(2.0004567)  # microseconds, as the scheduler's clock has them
    assert g.recheck("svc", now, half).due == now  # the probe goes
    dispatched = now.replace(microsecond=now.microsecond // 1000 * 1000)  # as the event keeps it
    g.observe([Signal("svc", SignalKind.SUCCESS, dispatched)], at(2.1))
    assert g.status("svc", at(2.1)).circuit is CircuitState.CLOSED


def test_the_gate_answers_the_same_to_the_same_story() -> None:
    def story(seed: int) -> list[Admission]:
        rng = random.Random(seed)
        g = gate()
        answers = []
        for n in range(400):
            now = at(n * 0.05)
            kind = SignalKind.FAILURE if rng.random() < 0.6 else SignalKind.SUCCESS
            g.observe([Signal("svc", SignalKind.FIRST, now), Signal("svc", kind, now)], now)
            answers.append(g.admit("svc", now + timedelta(milliseconds=200), now, rng.random))
            answers.append(g.recheck("svc", now, rng.random))
        return answers

    assert story(3) == story(3)
    reasons = Counter(a.reason for a in story(3))
    assert reasons[RetryReason.CIRCUIT_OPEN] and reasons[RetryReason.BUDGET]


def test_the_default_gate_lets_every_retry_go_at_its_backoff() -> None:
    assert UNGATED.admit("x", at(1), T, half) == Admission(
        at(1), RetryReason.BACKOFF, CircuitState.CLOSED, "x"
    )
    assert UNGATED.recheck("x", T, half).due == T


def test_idle_dependencies_are_forgotten() -> None:
    g = gate()
    fail(g, 1, T, "a")
    fail(g, 4, T, "b")  # open: remembered
    g.observe([], at(120))
    assert g.dependencies() == ["b"]


def test_a_policy_that_cannot_work_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="budget_floor_per_s > 0"):
        GatePolicy(budget_floor_per_s=0)
    with pytest.raises(ConfigurationError, match="failure_ratio in"):
        GatePolicy(circuit=CircuitPolicy(failure_ratio=0))


# -- dependencies and signals --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node", "params", "expected"),
    [
        (
            "http.request",
            {"url": "https://API.example.com/v1/x?q=1"},
            "http.request api.example.com",
        ),
        ("http.request", {"url": "http://u:secret@h.local:8443/x"}, "http.request h.local:8443"),
        ("http.request", {"url": "not a url"}, "http.request"),
        ("http.request", {"url": "http://h:99999/"}, "http.request"),  # a bad port
        ("http.request", None, "http.request"),  # claim-checked params
        ("openai.chat", {"url": "https://a.example"}, "openai.chat"),
    ],
)
def test_the_dependency_of_a_step(node: str, params: object, expected: str) -> None:
    assert dependency_of(node, params) == expected


def test_signals_are_first_attempts_and_the_outcomes_of_dispatched_attempts() -> None:
    sim = SCENARIOS["retry_then_success"]()  # flaky fails twice, then flaky and after succeed
    kinds = [
        (s.dependency, s.kind.value)
        for d in sim.decisions
        if d.state is not None
        for s in retry_signals(d.events, d.state)
    ]
    flaky = "http.request flaky.example"
    assert kinds == [
        (flaky, "first"),
        (flaky, "failure"),
        (flaky, "failure"),
        (flaky, "success"),
        ("transform", "first"),
        ("transform", "success"),
    ]
    # A failure the worker calls non-retryable (a 4xx) says nothing about the dependency.
    four_xx = Simulation(ONE_CALL)
    four_xx.start()
    last = four_xx.fail("call", "HttpStatus404", retryable=False)
    assert last.state is not None and retry_signals(last.events, last.state) == []


# -- decide with a gate ----------------------------------------------------------------------------

ONE_CALL = """
id: one-call
steps:
  - id: call
    node: http.request@^1
    params: {url: "https://sick.example/x"}
    retry: {max_attempts: 3, initial_backoff: 100ms, jitter: 0}
"""


def test_a_retry_decided_while_the_circuit_is_open_is_written_held_and_replays() -> None:
    g = gate()
    fail(g, 4, at(0), "http.request sick.example")
    sim = Simulation(ONE_CALL, retry_gate=g)  # check_replay: live state == fold(log)
    sim.now = T
    sim.start()
    sim.fail("call", "HttpStatus503")
    (retry,) = [e for e in sim.log if isinstance(e, StepRetryScheduled)]
    assert (retry.reason, retry.circuit, retry.dependency) == (
        "circuit_open",
        "open",
        "http.request sick.example",
    )
    assert retry.backoff_ms == 100
    assert retry.next_attempt_at >= at(2)  # the cool-down ends 2 s after it opened
    assert retry.held_ms == (retry.next_attempt_at - retry.occurred_at).total_seconds() * 1000 - 100
    state = sim.run
    assert state.timers[retry.timer_id].due_at == retry.next_attempt_at


def test_a_resumed_run_asks_the_gate_before_retrying_a_step_whose_backoff_passed() -> None:
    g = gate()
    sim = Simulation(ONE_CALL, retry_gate=g)
    sim.now = T
    sim.start()
    sim.fail("call", "HttpStatus503")
    sim.pause()
    fail(g, 4, sim.now, "http.request sick.example")
    sim.advance(500)
    sim.resume()
    retries = [e for e in sim.log if isinstance(e, StepRetryScheduled)]
    assert [(r.attempt, r.reason) for r in retries] == [(2, "backoff"), (2, "circuit_open")]
    assert not [i for i in sim.sent if i.attempt == 2]


# -- jitter: a burst of steps failing together -----------------------------------------------------


def test_equal_jitter_spreads_a_burst_of_retries_wider_than_the_old_additive_jitter() -> None:
    rng = random.Random(11)
    draws = [rng.random() for _ in range(1_000)]
    policy = RetrySpec(initial_backoff=200, max_backoff=30_000)  # the default jitter: 0.5

    def old(r: float, failed_attempt: int = 1) -> int:  # before ADR 0020: base * (1 + 0.2 r)
        base = min(30_000.0, 200 * 2.0 ** (failed_attempt - 1))
        return int(min(base * (1 + 0.2 * r), 30_000.0))

    def peak(delays: list[int]) -> int:
        """The most retries that land in one 10 ms slot."""
        return max(Counter(d // 10 for d in delays).values())

    new = [backoff_ms(policy, 1, r) for r in draws]
    before = [old(r) for r in draws]
    assert (min(before), max(before)) == (200, 239)  # 40 ms wide
    assert min(new) >= 100 and max(new) == 200  # 100 ms wide
    assert peak(new) * 2 <= peak(before)
    # At the cap the old jitter vanished (every retry at exactly 30 s); it now keeps its width.
    assert {old(r, 9) for r in draws} == {30_000}
    capped = [backoff_ms(policy, 9, r) for r in draws]
    assert min(capped) >= 15_000 and max(capped) - min(capped) > 14_000


# -- what `reflux runs show` prints ----------------------------------------------------------------


def test_the_timeline_says_why_a_retry_waits() -> None:
    sim = SCENARIOS["circuit_held"]()
    lines = [
        describe_event(
            {
                "event_type": type(e).__name__,
                "seq": e.seq,
                "occurred_at": e.occurred_at.isoformat(),
                "payload": e.model_dump(mode="json"),
            }
        )
        for e in sim.log
        if isinstance(e, StepRetryScheduled)
    ]
    assert lines[0].endswith("attempt 2 at 12:00:00.105")
    assert lines[1].endswith(
        "attempt 2 at 12:00:03.306 held 3201 ms: circuit_open "
        "(circuit open, http.request sick.example)"
    )
