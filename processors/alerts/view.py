"""The latest state of every alert, read from the ``alerts`` topic.

The topic holds transitions keyed by rule id (see :mod:`streams.topics`), so the view reads every
partition from the beginning and keeps the last record per (rule_id, subject). It never commits:
each process builds its own view (the API for ``GET /v1/alerts``, the evaluator at start-up to
know what is firing). :meth:`AlertsView.catch_up` reads up to the high watermarks seen when it is
called, so a caller sees everything published before it asked.
"""

from __future__ import annotations

import logging
import threading

from foundation.closing import Closing
from foundation.errors import ServiceUnavailableError
from foundation.settings import Settings
from processors.alerts.records import from_record
from processors.alerts.rules import AlertEvent, AlertKey
from schemas import decode
from schemas.errors import SchemaError
from schemas.models import Alert, AlertState
from streams.table import TopicTableReader
from streams.topics import TopicCatalog

__all__ = ["AlertsView", "AlertsViewError"]

log = logging.getLogger(__name__)


class AlertsViewError(ServiceUnavailableError):
    error_class = "AlertsView"


class AlertsView(Closing):
    """Thread-safe: API requests call :meth:`catch_up` and read concurrently."""

    def __init__(
        self,
        settings: Settings,
        catalog: TopicCatalog | None = None,
        *,
        metadata_timeout_s: float = 10.0,
    ) -> None:
        self.catalog = catalog or TopicCatalog.from_settings(settings)
        self.topic = self.catalog.alerts.topic
        self._lock = threading.Lock()
        self._latest: dict[AlertKey, AlertEvent] = {}
        try:
            self._reader = TopicTableReader(
                settings,
                self.topic,
                self._apply,
                name="alerts-view",
                metadata_timeout=metadata_timeout_s,
            )
        except ServiceUnavailableError as exc:
            raise AlertsViewError(str(exc)) from exc

    def _apply(self, data: bytes | None) -> None:
        if data is None:
            return
        try:
            event = from_record(decode(data, Alert))
        except SchemaError as exc:
            log.warning("ignoring an unreadable alerts record: %s", exc)
            return
        self._latest[event.key] = event

    def catch_up(self, timeout: float = 10.0) -> None:
        """Read until every partition reached the high watermark it had when this was called;
        raises :class:`AlertsViewError` if that takes longer than ``timeout``."""
        with self._lock:
            try:
                behind = self._reader.catch_up(timeout)
            except ServiceUnavailableError as exc:
                raise AlertsViewError(str(exc)) from exc
        if behind:
            raise AlertsViewError(
                f"Expected to read {self.topic!r} up to its end within {timeout}s, but "
                f"partitions {behind} are still behind"
            )

    def latest(self) -> list[AlertEvent]:
        """The last transition of every alert ever seen, by rule then subject."""
        with self._lock:
            return [self._latest[k] for k in sorted(self._latest)]

    def active(self) -> dict[AlertKey, AlertEvent]:
        """The firing event of every alert whose latest transition is ``firing``."""
        with self._lock:
            return {k: e for k, e in self._latest.items() if e.state is AlertState.FIRING}

    def close(self) -> None:
        with self._lock:
            self._reader.close()
