"""reflux.supervision: a component that dies is logged with its reason and started again, with a
growing backoff, until the supervisor is stopped. Pure threading: the components are plain
callables (the engine's real components are supervised in tests/integration)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from foundation.errors import RetryableError
from reflux.supervision import ComponentExitedError, Running, Supervisor
from tests.support.waiting import eventually


class Flaky:
    """Launches instances whose run fails ``failures`` times, then runs until stopped."""

    def __init__(self, failures: int, *, returns: bool = False) -> None:
        self.failures = failures
        self.returns = returns
        self.launched: list[float] = []
        self.closed = 0
        self.serving = threading.Event()

    def launch(self) -> Running:
        self.launched.append(time.monotonic())
        number = len(self.launched)

        def run(stop: threading.Event) -> None:
            if number <= self.failures:
                if self.returns:
                    return
                raise RetryableError(f"broker went away (instance {number})")
            self.serving.set()
            stop.wait()

        def close() -> None:
            self.closed += 1

        return Running(run, close)


def test_a_dying_component_is_restarted_with_backoff_and_the_reason_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = Flaky(failures=3)
    supervisor = Supervisor("scheduler-0", flaky.launch, first_backoff_s=0.1, max_backoff_s=1)
    with caplog.at_level(logging.ERROR, logger="reflux.supervision"):
        supervisor.start()
        try:
            eventually(flaky.serving.is_set, 10, "the fourth instance serving")
        finally:
            supervisor.stop()
            supervisor.join(5)
    assert not supervisor.is_alive()
    assert supervisor.restarts == 3
    assert [str(e) for e in supervisor.errors] == [
        f"broker went away (instance {n})" for n in (1, 2, 3)
    ]
    assert flaky.closed == 4  # every instance released, the failed ones and the stopped one
    died = [r.getMessage() for r in caplog.records if "died" in r.getMessage()]
    assert len(died) == 3
    assert died[0].startswith("scheduler-0 died after")
    assert (
        "RetryableError: broker went away (instance 1); restarting it in 0.1s (restart 1)"
        in (died[0])
    )
    assert all(r.exc_info for r in caplog.records if "died" in r.getMessage())
    # Exponential backoff: 0.1 s, 0.2 s, 0.4 s, as logged and (at least) as waited.
    assert [_delay(m) for m in died] == ["0.1", "0.2", "0.4"]
    gaps = [b - a for a, b in zip(flaky.launched, flaky.launched[1:], strict=False)]
    assert [g >= d for g, d in zip(gaps, (0.1, 0.2, 0.4), strict=True)] == [True] * 3


def test_a_loop_that_returns_unasked_counts_as_a_death() -> None:
    flaky = Flaky(failures=1, returns=True)
    supervisor = Supervisor("projector", flaky.launch, first_backoff_s=0.01).start()
    try:
        eventually(flaky.serving.is_set, 10, "the second instance serving")
    finally:
        supervisor.stop()
        supervisor.join(5)
    assert supervisor.restarts == 1
    assert isinstance(supervisor.errors[0], ComponentExitedError)
    assert "projector" in str(supervisor.errors[0])


def test_stop_ends_a_backoff_at_once() -> None:
    flaky = Flaky(failures=100)
    supervisor = Supervisor("workers", flaky.launch, first_backoff_s=60).start()
    eventually(lambda: supervisor.restarts == 1, 10, "the first death")
    began = time.monotonic()
    supervisor.stop()
    supervisor.join(5)
    assert not supervisor.is_alive()
    assert time.monotonic() - began < 5
    assert len(flaky.launched) == 1  # not launched again once stopped


def test_a_healthy_stretch_resets_the_backoff(caplog: pytest.LogCaptureFixture) -> None:
    flaky = Flaky(failures=3)
    # healthy_after_s=0: every run counts as healthy, so every restart waits the first backoff.
    supervisor = Supervisor("trigger-router", flaky.launch, first_backoff_s=0.1, healthy_after_s=0)
    with caplog.at_level(logging.ERROR, logger="reflux.supervision"):
        supervisor.start()
        try:
            eventually(flaky.serving.is_set, 10, "the fourth instance serving")
        finally:
            supervisor.stop()
            supervisor.join(5)
    died = [r.getMessage() for r in caplog.records if "died" in r.getMessage()]
    assert [_delay(m) for m in died] == ["0.1", "0.1", "0.1"]


def _delay(message: str) -> str:
    return message.split("restarting it in ")[1].split("s ", maxsplit=1)[0]
