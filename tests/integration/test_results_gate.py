"""The scheduler's results gate on a real results topic: queue and step timers of a partition
fire only once the results they race with are read (processors/scheduler/runtime/results_gate)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from foundation.settings import Settings
from processors.scheduler.runtime.results_gate import ResultsGate, read_past
from schemas.models import FireTimer, NodeResult, TimerKind
from schemas.samples import sample_record
from streams.producer import Producer
from streams.security import kafka_client_config
from streams.topics import TopicCatalog
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _timer(kind: TimerKind, due_at: datetime) -> FireTimer:
    return FireTimer(
        run_id="r", timer_id=f"{kind}:x", step_id="s", attempt=1, kind=kind, due_at=due_at
    )


@pytest.fixture
def consumer(kafka_settings: Settings) -> Iterator[Consumer]:
    client = Consumer(
        {
            **kafka_client_config(kafka_settings),
            "group.id": f"{kafka_settings.topic_prefix}.gate-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    yield client
    client.close()


def _produce(settings: Settings, topic: str, count: int) -> None:
    with Producer(settings) as producer:
        for _ in range(count):
            producer.send(topic, "run", sample_record(NodeResult), partition=0)
        producer.flush(10)


def _next(consumer: Consumer) -> Message:
    message = eventually(
        lambda: consumer.poll(0.2), 15, "a record from results", until=lambda m: m is not None
    )
    assert message is not None and message.error() is None, message
    return message


def test_attempt_timers_wait_for_the_assignment_backlog_then_for_their_due_time(
    topics: TopicCatalog, kafka_settings: Settings, consumer: Consumer
) -> None:
    topic = topics.results.topic
    _produce(kafka_settings, topic, 5)  # results that arrived while no scheduler read them
    assignment = [TopicPartition(topic, 0)]
    consumer.assign(assignment)
    gate = ResultsGate(topic)
    gate.assigned(consumer, assignment)

    overdue = _timer(TimerKind.STEP_TIMEOUT, datetime.now(UTC) - timedelta(seconds=1))
    assert not gate.allows(consumer, 0, overdue)
    assert not gate.allows(consumer, 0, _timer(TimerKind.QUEUE_TIMEOUT, overdue.due_at))
    assert gate.allows(consumer, 0, _timer(TimerKind.BACKOFF, overdue.due_at))  # not held
    assert gate.allows(consumer, 0, _timer(TimerKind.RUN_DEADLINE, overdue.due_at))
    for _ in range(4):
        gate.consumed(_next(consumer))
        assert not gate.allows(consumer, 0, overdue)  # the backlog is not read yet
    gate.consumed(_next(consumer))
    assert gate.allows(consumer, 0, overdue)  # read to the end, and past the due time

    # Later: a record fetched but not handed to the scheduler yet holds a timer it may answer.
    later = _timer(TimerKind.STEP_TIMEOUT, datetime.now(UTC) + timedelta(hours=1))
    assert gate.allows(consumer, 0, later)  # nothing left to read
    _produce(kafka_settings, topic, 1)
    unread = _next(consumer)
    assert not gate.allows(consumer, 0, later)
    gate.consumed(unread)
    assert gate.allows(consumer, 0, later)


def test_a_partition_read_before_the_assignment_holds_nothing(
    topics: TopicCatalog, kafka_settings: Settings, consumer: Consumer
) -> None:
    topic = topics.results.topic
    _produce(kafka_settings, topic, 2)
    assignment = [TopicPartition(topic, 0)]
    consumer.assign(assignment)
    for _ in range(2):
        _next(consumer)
    consumer.commit(asynchronous=False)  # an earlier owner read and committed everything
    gate = ResultsGate(topic)
    gate.assigned(consumer, assignment)
    assert gate.allows(consumer, 0, _timer(TimerKind.STEP_TIMEOUT, datetime.now(UTC)))


def test_read_past() -> None:
    assert read_past(100, read_until_ms=100, position=0, high=9)  # a later record was read
    assert not read_past(100, read_until_ms=99, position=3, high=9)  # 6 records still unread
    assert read_past(100, read_until_ms=None, position=9, high=9)  # nothing left
    assert read_past(100, read_until_ms=None, position=0, high=None)  # nothing fetched
