"""The worker's start signal and heartbeats, without Kafka (the send function is a list)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from node_workers.heartbeats import heartbeat, heartbeating, start_signal_delay
from node_workers.nodes.transform import TransformNode
from schemas import decode, encode
from schemas.models import NodeHeartbeat, NodeInvocation, StepRef
from tests.support.waiting import eventually_async

STARTED = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def _invocation() -> NodeInvocation:
    return NodeInvocation(
        run_id="run-1",
        seq=9,
        invocation_id="inv-1",
        attempt=2,
        workflow_id="wf",
        workflow_version=1,
        step=StepRef(step_id="shape", node="transform", node_version="^1"),
        idempotency_key="k",
    )


def test_a_heartbeat_answers_the_invocation_and_names_the_version_that_runs() -> None:
    node = TransformNode()
    record = heartbeat(node, _invocation(), started_at=STARTED, beat=0, worker="w@host:1")
    assert (record.run_id, record.seq, record.invocation_id, record.attempt) == (
        "run-1",
        9,
        "inv-1",
        2,
    )
    assert record.step == StepRef(step_id="shape", node="transform", node_version=node.version)
    assert (record.started_at, record.beat, record.worker) == (STARTED, 0, "w@host:1")
    assert decode(encode(record)) == record


def test_the_start_is_sent_before_the_attempt_and_beats_follow_while_it_runs() -> None:
    sent: list[NodeHeartbeat] = []

    async def attempt() -> None:
        async with heartbeating(
            sent.append, TransformNode(), _invocation(), started_at=STARTED, interval_s=0.01
        ):
            assert [r.beat for r in sent] == [0]  # before the attempt's first line
            await eventually_async(
                lambda: [r.beat for r in sent], 5, "two heartbeats", until=lambda b: len(b) >= 3
            )

    asyncio.run(attempt())
    beats = [r.beat for r in sent]
    assert beats == list(range(len(beats))) and len(beats) >= 3
    assert {r.started_at for r in sent} == {STARTED}


def test_without_an_interval_only_the_start_is_sent() -> None:
    sent: list[NodeHeartbeat] = []

    async def attempt() -> None:
        async with heartbeating(
            sent.append, TransformNode(), _invocation(), started_at=STARTED, interval_s=0
        ):
            await asyncio.sleep(0.05)  # the attempt's own work: under test, not a wait

    asyncio.run(attempt())
    assert [r.beat for r in sent] == [0]


def test_a_heartbeat_that_cannot_be_sent_does_not_fail_the_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent: list[int] = []

    def send(record: NodeHeartbeat) -> None:
        sent.append(record.beat)
        if record.beat > 0:
            raise RuntimeError("queue full")

    async def attempt() -> str:
        async with heartbeating(
            send, TransformNode(), _invocation(), started_at=STARTED, interval_s=0.01
        ):
            await eventually_async(
                lambda: sent, 5, "failed heartbeats", until=lambda s: len(s) >= 3
            )
        return "done"

    assert asyncio.run(attempt()) == "done"
    assert "heartbeat 1 of inv-1 not sent" in caplog.text


def test_an_attempt_that_ends_within_the_delay_sends_no_start() -> None:
    sent: list[NodeHeartbeat] = []

    async def attempt() -> None:
        async with heartbeating(
            sent.append,
            TransformNode(),
            _invocation(),
            started_at=STARTED,
            interval_s=0.01,
            start_delay_s=60,
        ):
            await asyncio.sleep(0.05)  # the attempt's own work: under test, not a wait

    asyncio.run(attempt())
    assert sent == []


def test_an_attempt_still_running_after_the_delay_sends_its_start_then_heartbeats() -> None:
    sent: list[NodeHeartbeat] = []

    async def attempt() -> None:
        async with heartbeating(
            sent.append,
            TransformNode(),
            _invocation(),
            started_at=STARTED,
            interval_s=0.01,
            start_delay_s=0.05,
        ):
            assert sent == []  # nothing before the attempt runs
            await eventually_async(
                lambda: [r.beat for r in sent], 5, "start and beats", until=lambda b: len(b) >= 3
            )

    asyncio.run(attempt())
    beats = [r.beat for r in sent]
    assert beats == list(range(len(beats))) and len(beats) >= 3
    assert {r.started_at for r in sent} == {STARTED}  # the true start, not the signal's time


def test_a_delayed_start_is_sent_even_without_heartbeats() -> None:
    sent: list[NodeHeartbeat] = []

    async def attempt() -> None:
        async with heartbeating(
            sent.append,
            TransformNode(),
            _invocation(),
            started_at=STARTED,
            interval_s=0,
            start_delay_s=0.01,
        ):
            await eventually_async(lambda: sent, 5, "the start", until=bool)
            await asyncio.sleep(0.05)  # the attempt's own work: under test, not a wait

    asyncio.run(attempt())
    assert [r.beat for r in sent] == [0]


def test_the_start_signal_delay_is_capped_by_half_the_timeout_and_zero_with_a_queue_timeout() -> (
    None
):
    plain = _invocation()
    in_1s = STARTED + timedelta(seconds=1)
    in_1h = STARTED + timedelta(hours=1)

    def delay(invocation: NodeInvocation, deadline: datetime | None, configured: float) -> float:
        return start_signal_delay(
            invocation, started_at=STARTED, deadline=deadline, configured_s=configured
        )

    assert delay(plain, in_1h, 0.25) == 0.25
    assert delay(plain, None, 0.25) == 0.25
    assert delay(plain, in_1s, 0.75) == 0.5  # half the timeout
    assert delay(plain, STARTED - timedelta(seconds=1), 0.25) == 0.0  # already due: at once
    assert delay(plain, in_1h, 0) == 0.0  # configured eager
    queued = plain.model_copy(update={"start_by": STARTED + timedelta(minutes=5)})
    assert delay(queued, in_1h, 0.25) == 0.0  # a queue timer waits for the start: at once
