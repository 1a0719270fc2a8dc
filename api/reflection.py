"""The API's access to the reflection layer: the traces store (ClickHouse) and the alerts view.

Who owns the store (docs/traces.md, "Which process owns the store"):

- **Embedded chdb** (``chdb:///path``, the default): the Kafka engine consumes traces only inside
  the process holding the chdb session, and chdb allows one session per process (opening a
  second *closes* the first). An API with ``clickhouse_enabled`` therefore becomes the owner: it
  runs :class:`~projections.traces.owner.TracesOwner` (traces topic, migrations, consumption) and
  serves queries from it, and it runs the alert evaluator (one owner, one evaluator).
- **A ClickHouse server** (``http://...``): the server consumes by itself; the API only connects.
  Migrations are ``reflux traces migrate``'s job and alerts are ``reflux alerts serve``'s.
- **Injected** (``create_app(..., clickhouse=ch)``): the caller owns ``ch``; the API only queries.

A store that cannot be opened does not stop the API: metrics answer 503 with the reason.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from api.config import ApiSettings
from api.errors import UnavailableError
from foundation.redact import redact_credentials
from foundation.settings import Settings
from processors.alerts.evaluator import AlertEvaluator
from processors.alerts.view import AlertsView
from projections.clickhouse import ClickHouse, connect
from projections.traces.owner import TracesOwner
from streams.admin import ensure_topics
from streams.topics import TopicCatalog

__all__ = ["ClickHouseAccess", "LazyAlertsView", "close_clickhouse", "open_clickhouse"]

log = logging.getLogger(__name__)


@dataclass
class ClickHouseAccess:
    """A client to query, or the reason there is none."""

    client: ClickHouse | None
    reason: str | None
    database: str
    owner: TracesOwner | None = None
    """Set when this process owns an embedded store (it closes it at shutdown)."""
    evaluator: AlertEvaluator | None = None
    connected_here: bool = False
    """A server client this API opened (closed at shutdown; an injected one is not)."""
    lock: IO[str] | None = None
    """The owner lock of an embedded store this process owns."""

    def require(self) -> ClickHouse:
        if self.client is None:
            raise UnavailableError(f"ClickHouse is not available: {self.reason}")
        return self.client


def _chdb_session_path() -> str | None:
    """The data folder of a chdb session already open in this process, if any."""
    try:
        from chdb.session import state
    except ImportError:  # pragma: no cover - chdb is a dependency
        return None
    if state.g_session is None:
        return None
    return str(state.g_session_path)


def _owner_lock(folder: Path) -> tuple[IO[str] | None, str]:
    """An exclusive lock next to the chdb folder, so a second API on the same folder answers 503
    instead of opening it too (chdb itself does not stop two processes). Returns (lock, "") or
    (None, what the holder wrote)."""
    path = folder.parent / f"{folder.name}.owner.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        return None, holder
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle, ""


def _release(lock: IO[str] | None) -> None:
    if lock is not None:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _open_client(settings: Settings, api: ApiSettings) -> ClickHouseAccess:
    database = api.clickhouse_database
    dsn = settings.resolved_clickhouse_dsn()
    safe = redact_credentials(dsn)  # what logs and messages may say about where it is
    if not api.clickhouse_enabled:
        return ClickHouseAccess(
            None,
            "it is disabled for this API (REFLUX_API_CLICKHOUSE_ENABLED=false); with embedded "
            "chdb only the process that owns the store can serve metrics",
            database,
        )
    if dsn.startswith("chdb://"):
        other = _chdb_session_path()
        if other is not None:
            # Opening ours would silently close that session (chdb keeps one per process).
            return ClickHouseAccess(
                None,
                f"this process already holds a chdb session on {other}, and chdb allows one per "
                "process; pass that store to create_app(clickhouse=...) instead",
                database,
            )
        lock, holder = _owner_lock(Path(dsn.removeprefix("chdb://")))
        if lock is None:
            return ClickHouseAccess(
                None,
                f"the embedded store {dsn} is owned by {holder} (one process per data folder: "
                "query that process's API, or use a ClickHouse server)",
                database,
            )
        owner = TracesOwner(settings, database=database)
        try:
            owner.open()
        except Exception as exc:
            _release(lock)
            log.warning(
                "traces store %s could not be opened: %s", safe, redact_credentials(str(exc))
            )
            return ClickHouseAccess(
                None,
                redact_credentials(f"the embedded store {dsn} could not be opened: {exc}"),
                database,
            )
        log.info("this API owns the embedded traces store %s (database %s)", safe, database)
        return ClickHouseAccess(owner.ch, None, database, owner=owner, lock=lock)
    try:
        ch = connect(settings)
    except Exception as exc:
        log.warning("ClickHouse %s unreachable: %s", safe, redact_credentials(str(exc)))
        return ClickHouseAccess(
            None, redact_credentials(f"{dsn} could not be reached: {exc}"), database
        )
    return ClickHouseAccess(ch, None, database, connected_here=True)


def open_clickhouse(
    settings: Settings,
    api: ApiSettings,
    injected: ClickHouse | None = None,
    catalog: TopicCatalog | None = None,
) -> ClickHouseAccess:
    """Open (or adopt) the store and start the alert evaluator where this process should run
    it. Blocking: the lifespan calls it in a worker thread."""
    if injected is not None:
        access = ClickHouseAccess(injected, None, api.clickhouse_database)
    else:
        access = _open_client(settings, api)
    run_evaluator = api.alert_evaluator
    if run_evaluator is None:
        run_evaluator = access.owner is not None
    if run_evaluator and access.client is not None:
        access.evaluator = AlertEvaluator(
            settings, access.client, database=access.database, catalog=catalog
        ).start()
    return access


def close_clickhouse(access: ClickHouseAccess) -> None:
    """Stop the evaluator, then close what this process opened (never an injected client)."""
    if access.evaluator is not None:
        access.evaluator.stop()
    if access.owner is not None:
        access.owner.close()
    elif access.connected_here and access.client is not None:
        access.client.close()
    _release(access.lock)


class LazyAlertsView:
    """The alerts view, created by the first ``GET /v1/alerts``: an app that is never asked for
    alerts never opens a consumer."""

    def __init__(self, settings: Settings, catalog: TopicCatalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self._lock = threading.Lock()
        self._view: AlertsView | None = None

    def get(self) -> AlertsView:
        with self._lock:
            if self._view is None:
                # No alert published yet means no topic yet: create it (idempotent) rather than
                # answer 503 to a question whose answer is "nothing is firing".
                ensure_topics(self.catalog, [self.catalog.alerts], settings=self.settings)
                self._view = AlertsView(self.settings, self.catalog)
            return self._view

    def close(self) -> None:
        with self._lock:
            view, self._view = self._view, None
        if view is not None:
            view.close()
