"""The shared reconnecting Postgres connection, against the real Postgres."""

from __future__ import annotations

from foundation.settings import get_settings
from projections.postgres.connection import ReconnectingConnection


def test_one_connection_is_reused_and_a_lost_one_is_replaced() -> None:
    conn = ReconnectingConnection(get_settings().postgres_dsn, application_name="reflux-test")
    try:
        first = conn.get()
        assert conn.get() is first
        name = first.execute("SHOW application_name").fetchone()
        assert name == ("reflux-test",)
        first.close()  # lost, as after a Postgres restart
        second = conn.get()
        assert second is not first and not second.closed
        assert second.execute("SELECT 1").fetchone() == (1,)
    finally:
        conn.close()
    assert conn.get() is not second  # reopened after close
    conn.close()
