"""The floor benchmark's pure parts: records of the real sizes, and the offsets it commits."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.floor_bench import DISCIPLINES, SIZES, _decide, _next_offsets, parse, record


@pytest.mark.parametrize("kind", sorted(SIZES))
def test_records_have_the_engine_records_size_and_name_their_run(kind: bytes) -> None:
    run_id = b"0123456789abcdef0123456789abcdef"
    value = record(kind, run_id)
    assert len(value) == SIZES[kind]
    assert parse(value) == (kind, run_id)


class _Message:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._where = (topic, partition, offset)

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]


def test_a_transaction_commits_the_position_after_each_partitions_last_message() -> None:
    messages: list[Any] = [_Message("c", 0, 4), _Message("r", 1, 9), _Message("c", 0, 7)]
    committed = {(tp.topic, tp.partition): tp.offset for tp in _next_offsets(messages)}
    assert committed == {("c", 0): 8, ("r", 1): 10}


def test_a_run_is_a_start_and_ten_results_with_a_remote_steps_records() -> None:
    done: dict[bytes, int] = {}
    first = _decide(done, b"start", b"r")
    assert first == [b"RunStarted", b"StepDispatched"]  # scheduling the step too (ADR 0075)
    middles = [_decide(done, b"result", b"r") for _ in range(9)]
    assert all(m == [b"StepSucceeded", b"StepDispatched"] for m in middles)
    assert _decide(done, b"result", b"r") == [b"StepSucceeded", b"RunSucceeded"]


def test_the_engines_discipline_commits_per_batch_and_hides_uncommitted_invocations() -> None:
    engine, interval = DISCIPLINES["per_batch"], DISCIPLINES["interval"]
    assert engine.commit_interval_ms is None and engine.worker_isolation == "read_committed"
    assert interval.commit_interval_ms and interval.worker_isolation == "read_uncommitted"
    assert interval.producer_linger_ms == 0
