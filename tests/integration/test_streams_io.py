"""Producer and consumer against the real broker: round trips, dead letters, delivery errors."""

# Fixtures are imported from kafka_fixtures (conftest.py belongs to the lead); pytest injects
# them by parameter name, which ruff reads as redefinition.
# ruff: noqa: F401, F811

from __future__ import annotations

import contextlib
import os
import threading
import uuid

import pytest
from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from foundation.errors import NonRetryableError, RetryableError, ServiceUnavailableError
from foundation.settings import Settings
from schemas.models import DeadLetter, NodeResult, RunStarted, StartRun, StepSucceeded
from schemas.samples import sample_record
from schemas.serde import MAGIC
from streams.admin import ensure_topics
from streams.consumer import ConsumedRecord, Consumer
from streams.dlq import DeadLetterPublisher
from streams.producer import (
    TYPE_HEADER,
    DeliveryError,
    Producer,
    TransactionalProducer,
    TransactionStuckError,
)
from streams.security import kafka_client_config
from streams.topics import TopicCatalog, TopicSpec
from tests.integration.kafka_fixtures import admin, catalog, drain, kafka_settings, topics
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def _group() -> str:
    return f"test-group-{uuid.uuid4().hex[:8]}"


def _end_offsets(settings: Settings, topic: str, partitions: int) -> dict[int, int]:
    probe = RawConsumer({**kafka_client_config(settings), "group.id": "probe"})
    try:
        return {
            p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
            for p in range(partitions)
        }
    finally:
        probe.close()


def test_round_trip_of_typed_records(topics: TopicCatalog, kafka_settings: Settings) -> None:
    models: list[type[RunStarted | StepSucceeded]] = [RunStarted, StepSucceeded] * 10
    sent = [
        sample_record(model).model_copy(update={"run_id": f"run-{i}"})
        for i, model in enumerate(models)
    ]
    with Producer(kafka_settings) as producer:
        for record in sent:
            producer.send(topics.runs, record.run_id, record, {"trace-id": "t-1"})
        producer.flush(10)

    group = _group()
    with Consumer([topics.runs], group, kafka_settings, catalog=topics) as consumer:
        received = drain(consumer, lambda rs: len(rs) >= len(sent))
        consumer.commit()
        assert sum(o for o in consumer.committed().values() if o >= 0) == len(sent)

    assert len(received) == len(sent)
    by_run = {r.key: r for r in received}
    for record in sent:
        got = by_run[record.run_id.encode()]
        assert got.value == record
        assert got.topic == topics.runs.topic
        assert got.record_type == record.AVRO_NAME
        assert got.header("trace-id") == b"t-1"
        assert got.timestamp_ms is not None and got.raw is not None
    # Same key, same partition: every record of a run lands where the scheduler expects it.
    assert len({(r.key, r.partition) for r in received}) == len(sent)

    # Committed: the group resumes after the last record, nothing is delivered twice.
    with Consumer([topics.runs], group, kafka_settings, catalog=topics) as again:
        assert again.poll_batch(timeout=2.0) == []


def test_poison_records_are_dead_lettered_and_nothing_is_lost(
    topics: TopicCatalog, kafka_settings: Settings
) -> None:
    key = b"run-poison"  # one key: one partition, a strict order to check against
    unknown_fingerprint = MAGIC + bytes.fromhex("deadbeefdeadbeef") + b"\x02\x04"
    good = [
        sample_record(StartRun).model_copy(update={"run_id": "run-poison", "seq": i})
        for i in range(6)
    ]
    with Producer(kafka_settings) as producer:
        producer.send(topics.commands, key, good[0])
        producer.send(topics.commands, key, os.urandom(64), {"origin": "fuzz"})
        producer.send(topics.commands, key, good[1])
        producer.send(topics.commands, key, unknown_fingerprint)
        producer.send(topics.commands, key, good[2])  # handler: non-retryable error
        producer.send(topics.commands, key, good[3])  # handler: retryable error, once
        producer.send(topics.commands, key, good[4])
        producer.send(topics.commands, key, sample_record(NodeResult))  # not expected here
        producer.send(topics.commands, key, good[5])

    handled: list[int] = []
    failed_once: set[int] = set()

    def handler(record: ConsumedRecord) -> None:
        assert isinstance(record.value, StartRun)
        seq = record.value.seq
        if seq == 2:
            raise NonRetryableError("Expected a known workflow, but got 'wf-x'", error_class="Wf")
        if seq == 3 and seq not in failed_once:
            failed_once.add(seq)
            raise RetryableError("database busy")
        handled.append(seq)

    group = _group()
    totals = {"processed": 0, "dead": 0, "retried": 0}
    with Consumer(
        [topics.commands], group, kafka_settings, catalog=topics, expected=StartRun
    ) as consumer:

        def process() -> dict[str, int]:
            result = consumer.process(handler, timeout=0.3, retry_backoff=0.05)
            totals["processed"] += result.processed
            totals["dead"] += result.dead_lettered
            totals["retried"] += result.retried
            return dict(totals)

        eventually(
            process,
            20,
            "5 records processed",
            until=lambda counted: counted["processed"] >= 5,
            interval=0,  # process() waits
        )
        committed = consumer.committed()

    # Every good record was handled exactly once, in order, despite the poison in between.
    assert handled == [0, 1, 3, 4, 5]
    assert totals == {"processed": 5, "dead": 4, "retried": 1}
    # Nothing lost: the commit covers all 9 records.
    partition = next(p for (t, p), o in committed.items() if o == 9)
    assert _end_offsets(kafka_settings, topics.commands.topic, 3)[partition] == 9

    with Consumer([topics.dlq], _group(), kafka_settings, catalog=topics) as dlq_reader:
        letters = drain(dlq_reader, lambda rs: len(rs) >= 4)
    assert len(letters) == 4
    dead = [r.value for r in sorted(letters, key=lambda r: r.offset)]
    assert all(isinstance(d, DeadLetter) for d in dead)
    assert [(d.offset, d.error_class) for d in dead] == [  # type: ignore[union-attr]
        (1, "MalformedRecord"),
        (3, "UnknownSchema"),
        (4, "Wf"),
        (7, "UnexpectedRecordType"),
    ]
    for letter in dead:
        assert isinstance(letter, DeadLetter)
        assert letter.original_topic == topics.commands.topic
        assert letter.partition == partition
        assert letter.key == key
        assert letter.consumer_group == group
    assert "deadbeefdeadbeef" in dead[1].reason  # type: ignore[union-attr]
    assert dead[2].reason == "Expected a known workflow, but got 'wf-x'"  # type: ignore[union-attr]
    assert dead[3].value is not None  # type: ignore[union-attr]
    assert dead[1].value == unknown_fingerprint  # type: ignore[union-attr]
    first = sorted(letters, key=lambda r: r.offset)[0]
    assert first.key == key
    assert first.header("reflux-error-class") == b"MalformedRecord"
    assert first.header("reflux-original-origin") == b"fuzz"
    assert first.record_type == "reflux.dlq.DeadLetter"


def test_offsets_are_not_committed_when_the_dead_letter_cannot_be_delivered(
    catalog: TopicCatalog, admin: AdminClient, kafka_settings: Settings
) -> None:
    # Only the input topic exists: the DLQ produce must fail, and the commit must not happen.
    ensure_topics(catalog, [catalog.commands], admin=admin)
    with Producer(kafka_settings) as producer:
        producer.send(catalog.commands, b"k", b"junk")
        producer.send(catalog.commands, b"k", sample_record(StartRun))
    group = _group()
    dlq_producer = Producer(
        kafka_settings,
        config={"topic.metadata.propagation.max.ms": 500, "delivery.timeout.ms": 2000},
    )
    consumer = Consumer(
        [catalog.commands],
        group,
        kafka_settings,
        dead_letters=DeadLetterPublisher(dlq_producer, catalog.dlq, group),
    )
    handled: list[ConsumedRecord] = []
    try:
        with pytest.raises(DeliveryError, match="dlq"):
            for _ in range(50):
                consumer.process(handled.append, timeout=0.3)
        assert len(handled) == 1  # the good record was processed ...
        assert all(o < 0 for o in consumer.committed().values())  # ... but nothing committed
    finally:
        consumer.close(commit=False)
        with contextlib.suppress(DeliveryError):
            dlq_producer.close(1)
    # Not even on the way out of the group (the revoke callback).
    probe = RawConsumer({**kafka_client_config(kafka_settings), "group.id": group})
    try:
        partitions = [TopicPartition(catalog.commands.topic, p) for p in range(3)]
        assert all(tp.offset < 0 for tp in probe.committed(partitions, timeout=5))
    finally:
        probe.close()


def test_message_over_the_topic_limit_raises_delivery_error(
    catalog: TopicCatalog, admin: AdminClient, kafka_settings: Settings
) -> None:
    small = TopicSpec(
        logical="small",
        topic=f"{catalog.prefix}.small",
        partitions=1,
        replication=1,
        key="test",
        description="a topic with a tiny max.message.bytes",
        configs={"max.message.bytes": "1024"},
    )
    ensure_topics(catalog, [small], admin=admin)
    producer = Producer(kafka_settings, config={"compression.type": "none"})
    producer.send(small, b"k", b"ok")
    producer.flush(10)  # alone: the broker rejects a whole batch that holds a big message
    producer.send(small, b"k", os.urandom(8192))
    with pytest.raises(DeliveryError) as info:
        producer.flush(10)
    assert [f.code for f in info.value.failures] == ["MSG_SIZE_TOO_LARGE"]
    assert info.value.retryable is False
    # The failure was reported once; the producer is usable afterwards.
    producer.send(small, b"k", b"ok again")
    producer.close(10)


def test_nonexistent_topic_raises_delivery_error(
    catalog: TopicCatalog, kafka_settings: Settings
) -> None:
    # The broker runs with auto.create.topics.enable=false: a typo must not vanish.
    producer = Producer(
        kafka_settings,
        config={"topic.metadata.propagation.max.ms": 500, "delivery.timeout.ms": 2000},
    )
    producer.send(f"{catalog.prefix}.no-such-topic", b"k", b"v")
    with pytest.raises(DeliveryError) as info:
        producer.close(10)
    assert info.value.failures[0].code in {"UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC"}
    assert f"{catalog.prefix}.no-such-topic" in str(info.value)


def test_type_header_is_set_for_records(topics: TopicCatalog, kafka_settings: Settings) -> None:
    record = sample_record(StartRun)
    with Producer(kafka_settings) as producer:
        producer.send(topics.commands, "k", record, {TYPE_HEADER: "spoofed"})
    with Consumer([topics.commands], _group(), kafka_settings, catalog=topics) as consumer:
        (got,) = drain(consumer, lambda rs: len(rs) >= 1)
    assert [v for n, v in got.headers if n == TYPE_HEADER] == [b"reflux.commands.StartRun"]


def test_failing_caller_commits_nothing(topics: TopicCatalog, kafka_settings: Settings) -> None:
    with Producer(kafka_settings) as producer:
        producer.send(topics.results, "run-1", sample_record(NodeResult))
    group = _group()
    with (
        pytest.raises(RuntimeError, match="handler crashed"),
        Consumer([topics.results], group, kafka_settings, catalog=topics) as consumer,
    ):
        drain(consumer, lambda rs: len(rs) >= 1)
        raise RuntimeError("handler crashed")
    # Leaving the group (revoke callback) must not commit the unprocessed record either.
    with Consumer([topics.results], group, kafka_settings, catalog=topics) as again:
        assert len(drain(again, lambda rs: len(rs) >= 1)) == 1


def test_a_transactional_call_stuck_past_its_timeout_abandons_the_producer(
    kafka_settings: Settings,
) -> None:
    """librdkafka's send_offsets_to_transaction can block for minutes past its timeout
    (confluentinc/librdkafka#5456): the producer gives up on it, raises a fatal error and never
    touches the handle again, so its owner can replace it (the scheduler does)."""
    producer = TransactionalProducer(
        kafka_settings, transactional_id=f"{kafka_settings.topic_prefix}.stuck", stuck_grace_s=0.2
    )
    release = threading.Event()

    def stuck() -> None:
        release.wait(30)

    try:
        with pytest.raises(TransactionStuckError, match="still blocked"):
            producer._bounded(stuck, 0.1, "a stuck call")
        assert producer.stuck
        with pytest.raises(TransactionStuckError):
            producer.commit([], None)
        with pytest.raises(TransactionStuckError):
            producer.abort()
    finally:
        release.set()
        producer.close()  # returns at once: a stuck producer is abandoned, not flushed
    # A new producer with the same transactional id takes over (fencing the abandoned one).
    with TransactionalProducer(
        kafka_settings, transactional_id=f"{kafka_settings.topic_prefix}.stuck"
    ) as successor:
        successor.begin()
        successor.commit([], None)


def test_watermark_reader_gives_the_committed_ends_while_a_consumer_is_fetching(
    kafka_settings: Settings, topics: TopicCatalog
) -> None:
    """The ends from the side client match what was written, leave an open transaction's
    records out (read_committed: the last stable offset), and name a partition Kafka lacks."""
    from confluent_kafka import Producer as RawProducer

    from streams.watermarks import WatermarkReader

    topic = topics.traces.topic
    plain = RawProducer(kafka_client_config(kafka_settings))
    for i in range(5):
        plain.produce(topic, value=f"v{i}".encode(), partition=1)
    assert plain.flush(10) == 0
    open_txn = RawProducer(
        {**kafka_client_config(kafka_settings), "transactional.id": f"wm-{uuid.uuid4().hex[:6]}"}
    )
    open_txn.init_transactions(10)
    open_txn.begin_transaction()
    open_txn.produce(topic, value=b"uncommitted", partition=2)
    assert open_txn.flush(10) == 0
    config = {**kafka_client_config(kafka_settings), "group.id": _group()}
    fetching = RawConsumer({**config, "isolation.level": "read_committed"})
    fetching.assign([TopicPartition(topic, p, 0) for p in range(3)])
    fetching.poll(0.5)
    reader = WatermarkReader({**config, "isolation.level": "read_committed"})
    try:
        ends = reader.ends([(topic, 0), (topic, 1), (topic, 2)], timeout=10)
        assert ends == {(topic, 0): (0, 0), (topic, 1): (0, 5), (topic, 2): (0, 0)}
        open_txn.commit_transaction(10)
        # The commit marker is a record too: the stable end moves past it (markers are
        # written after the commit returns, hence the wait).
        eventually(
            lambda: reader.ends([(topic, 2)], timeout=10),
            10,
            "the stable end past the committed transaction",
            until=lambda ends: ends == {(topic, 2): (0, 2)},
        )
        with pytest.raises(ServiceUnavailableError, match=rf"{topic}/7"):
            reader.ends([(topic, 7)], timeout=2)
    finally:
        reader.close()
        fetching.close()
