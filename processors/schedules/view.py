"""The schedules topic as a table (schedule id -> latest record), for the API and the CLI."""

from __future__ import annotations

import logging
import threading

from foundation.settings import Settings
from schemas import serde
from schemas.models import Schedule
from streams.admin import ensure_topics
from streams.table import KeyedTableReader
from streams.topics import TopicCatalog

__all__ = ["LazySchedulesView", "SchedulesView"]

log = logging.getLogger(__name__)


class SchedulesView:
    def __init__(self, settings: Settings, catalog: TopicCatalog) -> None:
        self._lock = threading.Lock()
        self._schedules: dict[str, Schedule] = {}
        self._reader = KeyedTableReader(
            settings, catalog.schedules.topic, self._apply, name="schedules-view"
        )

    def _apply(self, key: str, value: bytes | None, _partition: int) -> None:
        if value is None:
            self._schedules.pop(key, None)
            return
        try:
            self._schedules[key] = serde.decode(value, Schedule)
        except Exception as exc:  # a foreign record on the topic: not a schedule
            log.warning("schedules view: skipping undecodable record %r: %s", key, exc)

    def catch_up(self, timeout: float = 5.0) -> None:
        """Everything published before this call is in the view afterwards."""
        with self._lock:
            self._reader.catch_up(timeout)

    def get(self, schedule_id: str) -> Schedule | None:
        with self._lock:
            return self._schedules.get(schedule_id)

    def all(self) -> list[Schedule]:
        with self._lock:
            return sorted(self._schedules.values(), key=lambda s: s.schedule_id)

    def close(self) -> None:
        self._reader.close()


class LazySchedulesView:
    """Opened by the first request that needs it (creating the topics if they are missing)."""

    def __init__(self, settings: Settings, catalog: TopicCatalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self._lock = threading.Lock()
        self._view: SchedulesView | None = None

    def get(self) -> SchedulesView:
        with self._lock:
            if self._view is None:
                ensure_topics(
                    self.catalog,
                    [self.catalog.schedules, self.catalog.schedule_state],
                    settings=self.settings,
                )
                self._view = SchedulesView(self.settings, self.catalog)
            return self._view

    def close(self) -> None:
        with self._lock:
            view, self._view = self._view, None
        if view is not None:
            view.close()
