"""The projector's commit target (PostgresOffsets) against the real Postgres.

The positions go into the open transaction that holds the batch's rows, so they commit or roll
back with it; outside a transaction the target refuses, since the positions would then be durable
without their rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from foundation.errors import RefluxError
from foundation.settings import Settings
from projections.postgres.migrations import apply_migrations
from projections.postgres.writer import PostgresOffsets, load_offsets
from streams.checkpoint import Checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture
def pg(local_services: Settings) -> Iterator[tuple[psycopg.Connection, str]]:
    schema = f"test_ckpt_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(local_services.postgres_dsn, autocommit=True) as conn:
        apply_migrations(conn, schema)
        try:
            yield conn, schema
        finally:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class Crash(Exception):
    pass


def test_positions_commit_and_roll_back_with_the_transaction(
    pg: tuple[psycopg.Connection, str],
) -> None:
    conn, schema = pg
    checkpoint = Checkpoint(PostgresOffsets(lambda: conn, schema, "p"))
    checkpoint.advance(("runs", 0), 4)

    with pytest.raises(Crash), conn.transaction():
        checkpoint.commit()
        assert load_offsets(conn, schema, "p") == {("runs", 0): 5}
        raise Crash  # the rows' transaction fails: the positions go with it
    assert load_offsets(conn, schema, "p") == {}

    with conn.transaction():
        checkpoint.commit(positions={("runs", 0): 5, ("runs", 1): 2})
    assert load_offsets(conn, schema, "p") == {("runs", 0): 5, ("runs", 1): 2}

    with conn.transaction():  # positions only move forward
        checkpoint.commit(positions={("runs", 0): 3})
    assert load_offsets(conn, schema, "p") == {("runs", 0): 5, ("runs", 1): 2}


def test_positions_are_refused_outside_a_transaction(pg: tuple[psycopg.Connection, str]) -> None:
    conn, schema = pg
    checkpoint = Checkpoint(PostgresOffsets(lambda: conn, schema, "p"))
    checkpoint.advance(("runs", 0), 0)
    with pytest.raises(RefluxError, match="open transaction") as raised:
        checkpoint.commit()
    assert raised.value.error_class == "State"
    assert load_offsets(conn, schema, "p") == {}
    assert checkpoint.positions() == {("runs", 0): 1}  # still to commit
