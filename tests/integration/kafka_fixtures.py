"""Kafka fixtures shared by integration tests, and the bookkeeping that keeps the broker clean.

Every test gets its own topic prefix (``isolated_settings`` in conftest.py), so runs never see
each other's records. A prefix is ``test-<session>-<8 hex>``: ``<session>`` is unique to this
process (one per xdist worker), so this process can find every topic it created on a broker that
other processes, worktrees and developers share, and delete or report only its own.

Cleanup is owned by the prefix, not by the fixtures that create topics: whatever created topics
under a prefix (a catalog, a DevEngine, a worker CLI, faust), they are deleted when the prefix's
fixture ends, and the deletion is checked. At the end of the session ``check_session_leftovers``
fails the run if any topic of this session, or any Postgres schema a harness registered, is
still there (see ``no_leftovers`` in conftest.py).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from foundation.settings import Settings
from streams.admin import admin_client, ensure_topics
from streams.consumer import ConsumedRecord, Consumer
from streams.topics import TopicCatalog
from tests.support.waiting import eventually

__all__ = [
    "SESSION_PREFIX",
    "admin",
    "catalog",
    "check_session_leftovers",
    "delete_prefix_topics",
    "drain",
    "isolated_kafka",
    "kafka_settings",
    "register_schema",
    "session_topics",
    "topics",
]

SESSION_PREFIX = f"test-{uuid.uuid4().hex[:6]}-"
"""Every topic prefix this process hands out starts with this."""

DELETE_TIMEOUT_S = 30.0


@dataclass
class _Ledger:
    """What this process created on shared services, and which test created it."""

    prefixes: dict[str, str] = field(default_factory=dict)
    schemas: dict[str, str] = field(default_factory=dict)


LEDGER = _Ledger()


def new_prefix(owner: str) -> str:
    prefix = f"{SESSION_PREFIX}{uuid.uuid4().hex[:8]}"
    LEDGER.prefixes[prefix] = owner
    return prefix


def register_schema(schema: str, owner: str) -> None:
    """A Postgres schema the session check requires to be gone at the end."""
    LEDGER.schemas[schema] = owner


def _topics_starting(client: AdminClient, prefix: str) -> list[str]:
    return sorted(t for t in client.list_topics(timeout=10).topics if t.startswith(prefix))


def delete_prefix_topics(settings: Settings, prefix: str | None = None) -> None:
    """Delete every topic of ``prefix`` (default: the settings' own) and wait until the broker
    no longer lists any. Only that prefix's topics, never anyone else's."""
    prefix = prefix or settings.topic_prefix
    assert prefix.startswith(SESSION_PREFIX), f"refusing to delete topics of {prefix!r}"
    client = admin_client(settings)
    mine = _topics_starting(client, prefix)
    if mine:
        for future in client.delete_topics(mine, operation_timeout=10).values():
            try:
                future.result(timeout=15)
            except KafkaException as exc:
                # Deleted by someone else in the meantime (a test that deletes its own topics).
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise
    eventually(
        lambda: _topics_starting(client, prefix),
        DELETE_TIMEOUT_S,
        f"the broker to list no topic of {prefix} after deleting them",
        until=lambda left: not left,
    )


@contextlib.contextmanager
def isolated_kafka(settings: Settings, owner: str, **update: object) -> Iterator[Settings]:
    """``settings`` with a fresh topic prefix of this session (and ``update``); every topic of
    the prefix is deleted on exit, whatever created it and however the block ended."""
    prefix = new_prefix(owner)
    isolated = settings.model_copy(update={"topic_prefix": prefix, **update})
    try:
        yield isolated
    finally:
        delete_prefix_topics(isolated)


def session_topics(settings: Settings) -> list[str]:
    """Topics on the broker created under this session's prefix (by this process)."""
    return _topics_starting(admin_client(settings), SESSION_PREFIX)


SESSION_CHECK_TIMEOUT_S = 3.0
"""Every prefix's own teardown already waited until its topics were gone: at the end of the
session a topic is a leak, not a deletion under way (and the check runs inside the last test's
pytest-timeout)."""


def check_session_leftovers(settings: Settings, timeout: float = SESSION_CHECK_TIMEOUT_S) -> None:
    """Fail unless this session left no topic and no registered Postgres schema behind."""

    def owners(names: list[str]) -> str:
        lines = []
        for name in names:
            prefix = next((p for p in LEDGER.prefixes if name.startswith(p)), None)
            owner = LEDGER.prefixes.get(prefix or "", "no fixture of this session: who made it?")
            lines.append(f"  {name}  <- {owner}")
        return "\n".join(lines)

    eventually(
        lambda: session_topics(settings),
        timeout,
        f"no topic left on the broker under this session's prefix {SESSION_PREFIX}*",
        until=lambda left: not left,
        describe=lambda: "LEFTOVER TEST TOPICS (created by):\n" + owners(session_topics(settings)),
    )
    if LEDGER.schemas:
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s) ORDER BY nspname",
                (list(LEDGER.schemas),),
            ).fetchall()
        left = [str(r[0]) for r in rows]
        if left:
            pytest.fail(
                "LEFTOVER TEST SCHEMAS in Postgres (created by):\n"
                + "\n".join(f"  {s}  <- {LEDGER.schemas[s]}" for s in left)
            )


@pytest.fixture
def kafka_settings(isolated_settings: Settings) -> Settings:
    # Fewer partitions than production: faster to create, same semantics.
    return isolated_settings.model_copy(update={"default_partitions": 3})


@pytest.fixture
def admin(kafka_settings: Settings) -> AdminClient:
    """An admin client; the prefix's topics are deleted by ``isolated_settings``, not here."""
    return admin_client(kafka_settings)


@pytest.fixture
def catalog(kafka_settings: Settings) -> TopicCatalog:
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
    records = _Records()

    def poll() -> _Records:
        records.extend(consumer.poll_batch(timeout=0.2))
        return records

    # No pause between checks: poll_batch itself waits up to 0.2 s for records.
    return eventually(poll, timeout, "the consumed records to be complete", until=until, interval=0)


class _Records(list[ConsumedRecord]):
    def __repr__(self) -> str:  # the failure message: how many, not every record
        return f"{len(self)} record(s)"
