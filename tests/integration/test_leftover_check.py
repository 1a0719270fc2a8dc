"""The session's leftover check (``no_leftovers`` in conftest.py) can fail: a topic or a
registered Postgres schema left behind makes it fail, naming what is left and which test made it.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from foundation.settings import Settings
from streams.admin import admin_client
from tests.integration.kafka_fixtures import (
    LEDGER,
    SESSION_PREFIX,
    check_session_leftovers,
    isolated_kafka,
    register_schema,
    session_topics,
)
from tests.support.waiting import eventually


def test_a_topic_left_under_the_session_prefix_fails_the_check(
    local_services: Settings, request: pytest.FixtureRequest
) -> None:
    owner = request.node.nodeid
    with isolated_kafka(local_services, owner) as settings:
        assert settings.topic_prefix.startswith(SESSION_PREFIX)
        topic = f"{settings.topic_prefix}.leaked"
        admin = admin_client(settings)
        for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
            future.result(timeout=30)
        # A created topic reaches the metadata every client reads a moment later.
        eventually(
            lambda: session_topics(settings),
            timeout=10,
            what=f"the broker's metadata to list {topic}",
            until=lambda topics: topic in topics,
        )
        with pytest.raises(pytest.fail.Exception) as failed:
            check_session_leftovers(settings, timeout=0.5)
        message = str(failed.value)
        assert f"no topic left on the broker under this session's prefix {SESSION_PREFIX}*" in (
            message
        )
        assert f"LEFTOVER TEST TOPICS (created by):\n  {topic}  <- {owner}" in message
    # isolated_kafka deleted the prefix's topics on the way out: nothing of them is left.
    assert not [t for t in session_topics(local_services) if t.startswith(settings.topic_prefix)]


def test_a_registered_schema_left_in_postgres_fails_the_check(
    local_services: Settings, request: pytest.FixtureRequest
) -> None:
    schema = f"t_leak_{uuid.uuid4().hex[:10]}"
    register_schema(schema, request.node.nodeid)
    with psycopg.connect(local_services.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            with pytest.raises(pytest.fail.Exception) as failed:
                check_session_leftovers(local_services, timeout=0.5)
            assert f"LEFTOVER TEST SCHEMAS in Postgres (created by):\n  {schema}  <- " in str(
                failed.value
            )
        finally:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    assert schema in LEDGER.schemas  # still registered: the session end checks it again
