"""Kafka fixtures shared by integration tests: ``from tests.integration.kafka_fixtures import *``.

Every test gets its own topic prefix (``isolated_settings`` in conftest.py), so runs never see
each other's records; the topics are deleted afterwards (only that prefix's, never others).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka.admin import AdminClient

from foundation.settings import Settings
from streams.admin import admin_client, ensure_topics
from streams.consumer import ConsumedRecord, Consumer
from streams.topics import TopicCatalog

__all__ = ["admin", "catalog", "drain", "kafka_settings", "topics"]


@pytest.fixture
def kafka_settings(isolated_settings: Settings) -> Settings:
    # Fewer partitions than production: faster to create, same semantics.
    return isolated_settings.model_copy(update={"default_partitions": 3})


@pytest.fixture
def admin(kafka_settings: Settings) -> Iterator[AdminClient]:
    client = admin_client(kafka_settings)
    yield client
    prefix = kafka_settings.topic_prefix + "."
    mine = [t for t in client.list_topics(timeout=10).topics if t.startswith(prefix)]
    if mine:
        for future in client.delete_topics(mine, operation_timeout=10).values():
            future.result(timeout=15)


@pytest.fixture
def catalog(kafka_settings: Settings, admin: AdminClient) -> TopicCatalog:
    """A catalog for this test's prefix; its topics do not exist yet."""
    return TopicCatalog.from_settings(kafka_settings)


@pytest.fixture
def topics(catalog: TopicCatalog, admin: AdminClient) -> TopicCatalog:
    """The same catalog with every fixed topic created."""
    ensure_topics(catalog, admin=admin)
    return catalog


def drain(
    consumer: Consumer,
    until: Callable[[list[ConsumedRecord]], bool],
    timeout: float = 15.0,
) -> list[ConsumedRecord]:
    """Poll until ``until(records)`` holds; fail the test after ``timeout`` seconds."""
    records: list[ConsumedRecord] = []
    deadline = time.monotonic() + timeout
    while not until(records):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s with {len(records)} record(s)")
        records.extend(consumer.poll_batch(timeout=0.2))
    return records
