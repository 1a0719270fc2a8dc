"""The suite's one wait (tests/support/waiting.py): returns what it saw, fails naming what it
waited for and the last value, and never swallows a hard failure."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from tests.support.waiting import eventually, eventually_async


def test_returns_the_first_value_that_holds() -> None:
    counter = itertools.count()
    assert eventually(lambda: next(counter), 5, "a count of 3", until=lambda n: n >= 3) == 3


def test_truthiness_is_the_default_condition() -> None:
    values = iter([None, [], ["row"]])
    assert eventually(lambda: next(values), 5, "a row") == ["row"]


def test_timeout_names_what_and_the_last_observed_value() -> None:
    counter = itertools.count()
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception) as failed:
        eventually(lambda: next(counter), 0.2, "a negative count", until=lambda n: n < 0)
    message = str(failed.value)
    assert message.startswith("Expected a negative count within 0.2s, but it did not happen")
    last = int(message.rsplit("last observed: ", 1)[1])
    assert last >= 1  # polled more than once, and reported the value it saw last
    assert time.monotonic() - started >= 0.2


def test_a_failing_assertion_is_not_yet_and_its_message_is_reported() -> None:
    def check() -> int:
        assert 1 + 1 == 3, "arithmetic still works"
        return 1

    with pytest.raises(pytest.fail.Exception, match=r"last observed: AssertionError: arith"):
        eventually(check, 0.1, "broken arithmetic")


def test_an_assertion_that_passes_later_ends_the_wait() -> None:
    attempts = itertools.count()

    def check() -> str:
        n = next(attempts)
        assert n >= 2, f"attempt {n}"
        return "done"

    assert eventually(check, 5, "the third attempt") == "done"


def test_other_exceptions_and_hard_failures_end_the_wait_at_once() -> None:
    calls = itertools.count()

    def crashed() -> bool:
        next(calls)
        pytest.fail("component crashed")

    with pytest.raises(pytest.fail.Exception, match="component crashed"):
        eventually(crashed, 30, "anything")
    assert next(calls) == 1

    empty: dict[str, int] = {}
    with pytest.raises(KeyError):
        eventually(lambda: empty["missing"], 30, "a key")


def test_the_check_runs_once_even_when_the_budget_is_spent() -> None:
    assert eventually(lambda: "ready", -1.0, "an already true condition") == "ready"
    with pytest.raises(pytest.fail.Exception, match="within -1s"):
        eventually(lambda: False, -1.0, "a false condition")


def test_describe_adds_context_to_the_failure() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"(?s)last observed: 0\n--- worker log"):
        eventually(lambda: 0, 0.05, "work", describe=lambda: "--- worker log")


def test_the_async_wait_lets_other_tasks_run() -> None:
    async def scenario() -> int:
        box = {"n": 0}

        async def producer() -> None:
            for _ in range(3):
                await asyncio.sleep(0)  # yield to the loop: the wait must let this run
                box["n"] += 1

        task = asyncio.create_task(producer())
        got = await eventually_async(
            lambda: box["n"], 5, "three increments", until=lambda n: n == 3
        )
        await task
        return got

    assert asyncio.run(scenario()) == 3


def test_the_async_wait_fails_like_the_sync_one() -> None:
    expected = r"Expected nothing within 0.05s.*last observed: 0"
    with pytest.raises(pytest.fail.Exception, match=expected):
        asyncio.run(eventually_async(lambda: 0, 0.05, "nothing"))
