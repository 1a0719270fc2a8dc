"""Every top-level Avro record survives a round trip through the real broker, byte for byte."""

from __future__ import annotations

import uuid

from foundation.settings import Settings
from schemas import encode
from schemas.models import MODELS
from schemas.registry import default_registry
from schemas.samples import sample_record
from streams.consumer import Consumer
from streams.producer import TYPE_HEADER, Producer
from streams.topics import TopicCatalog
from tests.integration.kafka_fixtures import drain


def test_every_record_round_trips_through_kafka(
    kafka_settings: Settings, topics: TopicCatalog
) -> None:
    names = sorted(default_registry().current)
    assert len(names) >= 25, names
    samples = {name: sample_record(MODELS[name]) for name in names}
    with Producer(kafka_settings) as producer:
        for name, record in samples.items():
            producer.send(topics.commands, key=name, value=record)
        producer.flush(30)

    consumer = Consumer(
        [topics.commands.topic], f"contract-{uuid.uuid4().hex[:6]}", kafka_settings, catalog=topics
    )
    try:
        received = drain(consumer, lambda got: len(got) >= len(names), timeout=30)
    finally:
        consumer.close()
    by_type = {str(r.record_type): r for r in received}
    assert sorted(by_type) == names
    for name, record in samples.items():
        got = by_type[name]
        assert got.value == record, name
        assert got.raw == encode(record), name
        assert got.header(TYPE_HEADER) == name.encode()
