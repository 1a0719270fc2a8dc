"""The Postgres implementation of :class:`~processors.historian.lookup.Historian`.

It embeds the diagnosis asked about with the same model and context text as the historian's
projector, so a diagnosis that is stored already finds its stored twin at similarity 1 (and
leaves it out: an incident is not its own precedent).
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from foundation.errors import ServiceUnavailableError
from foundation.settings import Settings
from processors.historian.context import diagnosis_context
from processors.historian.embedder import Embedder, default_embedder, to_pgvector
from processors.historian.lookup import PastIncident
from processors.historian.queries import similar_incidents
from projections.postgres.connection import ReconnectingConnection
from projections.postgres.identifiers import DEFAULT_SCHEMA, validate_schema
from schemas.models import Diagnosis

__all__ = ["PostgresHistorian"]


class PostgresHistorian:
    """``similar()`` over the historian's tables in ``schema``; one connection, reopened when
    lost, used by one call at a time."""

    def __init__(
        self,
        settings: Settings,
        schema: str = DEFAULT_SCHEMA,
        *,
        embedder: Embedder | None = None,
        min_similarity: float = 0.0,
    ) -> None:
        self.settings = settings
        self.schema = validate_schema(schema)
        self.embedder = embedder or default_embedder()
        self.min_similarity = min_similarity
        self._conn = ReconnectingConnection(
            settings.postgres_dsn, application_name="reflux-historian"
        )
        self._lock = threading.Lock()

    def _connection(self) -> psycopg.Connection[Any]:
        return self._conn.get()

    def similar(self, diagnosis: Diagnosis, k: int = 5) -> list[PastIncident]:
        if k <= 0:
            return []
        [vector] = self.embedder.embed([diagnosis_context(diagnosis)])
        with self._lock:
            try:
                found = similar_incidents(
                    self._connection(),
                    to_pgvector(vector),
                    self.embedder.model,
                    k,
                    exclude=diagnosis.diagnosis_id,
                    min_similarity=self.min_similarity,
                    schema=self.schema,
                )
            except psycopg.OperationalError as exc:
                raise ServiceUnavailableError(
                    f"Expected Postgres for the historian's lookup, but: {exc}"
                ) from exc
        return [incident for _, incident in found]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
