"""One autocommit Postgres connection, opened on first use and reopened once it is lost.

The processors that read the read models between their own Kafka work (the mutation processor's
version allocation, the replay runner, the canary judge, the bandit experiments, the historian's
lookup) hold one such connection: a restarted Postgres costs them one failed call, not a
restart of the component.
"""

from __future__ import annotations

from typing import Any

import psycopg

__all__ = ["ReconnectingConnection"]


class ReconnectingConnection:
    def __init__(self, dsn: str, *, application_name: str | None = None) -> None:
        self.dsn = dsn
        self.application_name = application_name
        self._conn: psycopg.Connection[Any] | None = None

    def get(self) -> psycopg.Connection[Any]:
        """The open connection; a new one when there was none, or it was closed or broken."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self.application_name:
                self._conn = psycopg.connect(
                    self.dsn, autocommit=True, application_name=self.application_name
                )
            else:
                self._conn = psycopg.connect(self.dsn, autocommit=True)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
