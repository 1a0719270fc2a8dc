"""One ClickHouse interface for both modes, chosen by configuration alone.

``REFLUX_CLICKHOUSE_DSN`` = ``chdb:///abs/path`` (the default, under ``var/chdb``) opens the
embedded chdb engine inside this process; ``http://host:8123`` talks to a ClickHouse server
through clickhouse-connect. Callers see only :class:`ClickHouse` and write the same SQL either
way; parameters use clickhouse-connect's client-side ``%(name)s`` binding in both modes.

Why not clickhouse-connect's own chdb backend: it passes ``params=`` to chdb, which chdb 3.7.2
does not accept, and chdb 4.x fails with Kafka engine tables here ("Shutdown was called");
see docs/decisions/0001-local-infrastructure.md.

chdb allows one owning process per data folder: open the embedded store in the process that
serves ClickHouse queries and nowhere else.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from clickhouse_connect.driver.binding import finalize_query

from foundation.errors import NonRetryableError
from foundation.redact import redact_credentials
from foundation.settings import Settings
from streams.security import clickhouse_kafka_config_xml


class ClickHouseError(NonRetryableError):
    error_class = "ClickHouse"


class ClickHouse(Protocol):
    mode: str

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Runs a statement that returns nothing (DDL, INSERT ... SELECT)."""

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Runs a SELECT and returns its rows as dicts."""

    def close(self) -> None: ...


def _bind(sql: str, parameters: Mapping[str, Any] | None) -> str:
    return finalize_query(sql, dict(parameters)) if parameters else sql


class EmbeddedClickHouse:
    """chdb in this process; a lock serialises queries because a chdb session is not reentrant."""

    mode = "embedded"

    def __init__(self, path: Path, config_xml: str | None = None) -> None:
        from chdb import session

        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        target = str(path)
        if config_xml is not None:
            # The Kafka engine's CA has no table setting; chdb passes connection-string
            # parameters to its clickhouse-local as options (--config-file).
            config = path / "reflux-kafka-config.xml"
            config.write_text(config_xml)
            target += f"?config-file={config}"
        self._session = session.Session(target)
        self._session.query("SET output_format_json_quote_64bit_integers = 0")

    def _run(self, sql: str, fmt: str) -> Any:
        try:
            with self._lock:
                return self._session.query(sql, fmt)
        except Exception as exc:
            raise ClickHouseError(str(exc).strip()) from exc

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        self._run(_bind(sql, parameters), "CSV")

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        result = self._run(_bind(sql, parameters), "JSONEachRow")
        return [json.loads(line) for line in result.bytes().splitlines() if line]

    def close(self) -> None:
        with self._lock:
            self._session.close()


class HttpClickHouse:
    mode = "server"

    def __init__(self, dsn: str) -> None:
        import clickhouse_connect

        self._client = clickhouse_connect.get_client(
            dsn=dsn, settings={"output_format_json_quote_64bit_integers": 0}
        )

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        try:
            self._client.command(_bind(sql, parameters))
        except Exception as exc:
            raise ClickHouseError(str(exc).strip()) from exc

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            return list(self._client.query(_bind(sql, parameters)).named_results())
        except Exception as exc:
            raise ClickHouseError(str(exc).strip()) from exc

    def close(self) -> None:
        self._client.close()


def connect(settings: Settings) -> ClickHouse:
    dsn = settings.resolved_clickhouse_dsn()
    if dsn.startswith("chdb://"):
        return EmbeddedClickHouse(
            Path(dsn.removeprefix("chdb://")), clickhouse_kafka_config_xml(settings)
        )
    if dsn.startswith(("http://", "https://", "clickhouse://")):
        return HttpClickHouse(dsn)
    raise ClickHouseError(
        f"REFLUX_CLICKHOUSE_DSN={redact_credentials(dsn)!r} is neither chdb:///path nor "
        "http(s)://host:port"
    )
