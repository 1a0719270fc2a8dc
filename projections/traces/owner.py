"""The process that owns the traces store.

With embedded chdb the Kafka engine consumes inside the process that holds the chdb session, and
only one process may hold a data folder: :class:`TracesOwner` opens it, applies the migrations
(which start consumption) and keeps the session open until told to stop. Closing the session
stops the consumers; offsets are committed after each written block, so a restart resumes where
the last block ended (at-least-once: a crash between a block's insert and its commit re-reads that
block; rows carry ``event_id`` to find such duplicates).

The owner is also where queries run (:attr:`TracesOwner.ch`): an API that serves trace metrics
from the embedded store runs the owner in the same process. With a ClickHouse server the server
consumes by itself; the owner then only migrates, and :meth:`run` just reports.
"""

from __future__ import annotations

import logging
import threading
from typing import Self

from foundation.closing import Closing
from foundation.errors import RefluxError
from foundation.settings import Settings
from projections.clickhouse import ClickHouse, connect
from projections.traces.migrations import DEFAULT_DATABASE, IngestTuning, apply, validate_database
from projections.traces.queries import ingest_status
from streams.admin import ensure_topics
from streams.topics import TopicCatalog

__all__ = ["TracesOwner"]

log = logging.getLogger(__name__)


class TracesOwner(Closing):
    def __init__(
        self,
        settings: Settings,
        *,
        database: str = DEFAULT_DATABASE,
        tuning: IngestTuning | None = None,
        ensure_topic: bool = True,
    ) -> None:
        self.settings = settings
        self.database = validate_database(database)
        self.tuning = tuning
        self.ensure_topic = ensure_topic
        self._ch: ClickHouse | None = None

    @property
    def ch(self) -> ClickHouse:
        """The open store; raises if :meth:`open` has not run."""
        if self._ch is None:
            raise RefluxError(
                "Expected an open traces store, but TracesOwner.open() has not run "
                "(or close() already did)",
                error_class="State",
            )
        return self._ch

    @property
    def is_open(self) -> bool:
        return self._ch is not None

    def open(self) -> ClickHouse:
        """Create the traces topic if missing, open the store and migrate it; idempotent."""
        if self._ch is not None:
            return self._ch
        if self.ensure_topic:
            # The Kafka table subscribes by name; a missing topic would look like an idle one.
            catalog = TopicCatalog.from_settings(self.settings)
            ensure_topics(catalog, [catalog.traces], settings=self.settings)
        ch = connect(self.settings)
        try:
            applied = apply(ch, self.settings, database=self.database, tuning=self.tuning)
        except BaseException:
            ch.close()
            raise
        if applied:
            log.info("traces store %s: applied migrations %s", self.database, applied)
        self._ch = ch
        return ch

    def close(self) -> None:
        ch, self._ch = self._ch, None
        if ch is not None:
            ch.close()

    def run(self, stop_event: threading.Event, *, report_every_s: float = 60.0) -> None:
        """Open, keep consuming until ``stop_event`` is set, then close. Logs ingestion status
        every ``report_every_s`` seconds so a stalled consumer shows up in the logs."""
        ch = self.open()
        log.info(
            "traces store %s open (%s, %s); consuming until stopped",
            self.database,
            ch.mode,
            self.settings.resolved_clickhouse_dsn(),
        )
        try:
            while not stop_event.wait(report_every_s):
                status = ingest_status(ch, database=self.database)
                log.info(
                    "traces: %d rows, %d refused, lag p50=%s ms p99=%s ms",
                    status.rows,
                    status.error_rows,
                    status.lag_ms_p50,
                    status.lag_ms_p99,
                )
        finally:
            self.close()
            log.info("traces store %s closed", self.database)

    def __enter__(self) -> Self:
        self.open()
        return self
