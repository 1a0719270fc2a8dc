"""The historian's runtime: a Postgres projector of ``diagnoses`` and ``reflux.mutations``.

It is the project's projector (:class:`projections.projector.Projector`) with its own topics,
plans and tables, not a faust agent (ADR 0034): what the historian keeps is rows in Postgres, and
the projector commits each batch's rows together with its offsets in ONE Postgres transaction
(exactly-once, rebuildable from the topics), dead-letters poison records and rewinds on lost
connections. faust would commit offsets to Kafka apart from the rows (at-least-once), add a
RocksDB/changelog state the historian does not need, and has no codec for the Avro single-object
records. The only work beyond SQL is one embedding per record (~0.1 ms on one core).

Consumer group ``{prefix}.projector.historian``; offsets in ``projection_offsets`` under the
projector name ``historian``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from foundation.settings import Settings
from processors.historian.context import diagnosis_context, proposal_context
from processors.historian.embedder import Embedder, default_embedder
from processors.historian.plans import (
    HISTORIAN_TABLES,
    decision_plan,
    diagnosis_plan,
    mutation_plan,
)
from projections.postgres.appliers import Plan
from projections.postgres.identifiers import DEFAULT_SCHEMA, table
from projections.postgres.mutation_appliers import MUTATION_EVENT_TYPES
from projections.projector import Assignment, Projector
from schemas import serde
from schemas.base import RefluxRecord
from schemas.models import Diagnosis, Mutation, MutationRequest
from streams.dlq import PoisonRecord
from streams.topics import TopicCatalog

__all__ = ["HISTORIAN_NAME", "HistorianProjector", "rebuild_history"]

log = logging.getLogger(__name__)

HISTORIAN_NAME: Final = "historian"


class HistorianProjector(Projector):
    """Stores diagnoses and proposal outcomes with their embeddings; see the module docstring."""

    def __init__(
        self,
        settings: Settings | None = None,
        schema: str = DEFAULT_SCHEMA,
        name: str = HISTORIAN_NAME,
        *,
        embedder: Embedder | None = None,
        assignment: Assignment = "group",
        batch_size: int = 500,
        poll_timeout: float = 1.0,
        exclusive: bool = False,
        migrate: bool = True,
        consumer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            settings,
            schema,
            name,
            assignment=assignment,
            batch_size=batch_size,
            poll_timeout=poll_timeout,
            exclusive=exclusive,
            migrate=migrate,
            consumer_overrides=consumer_overrides,
        )
        # Loaded before the first record, so a missing model fails the start, not a batch.
        self.embedder = embedder or default_embedder()
        catalog = TopicCatalog.from_settings(self.settings)
        self.diagnoses_topic = catalog.diagnoses.topic
        self._expected = {
            self.diagnoses_topic: (Diagnosis,),
            self.mutations_topic: MUTATION_EVENT_TYPES,
        }

    @property
    def topics(self) -> tuple[str, ...]:
        return (self.diagnoses_topic, self.mutations_topic)

    @property
    def application_name(self) -> str:
        return f"reflux-historian {self.schema}/{self.name}"[:63]

    def _plan(self, record: PoisonRecord) -> Plan | None:
        if record.value is None:
            return None
        event = serde.decode(record.value, self._expected[record.topic])
        return self.plan_for(event)

    def plan_for(self, event: RefluxRecord) -> Plan | None:
        """The plan of one record (``None``: nothing the historian keeps)."""
        model = self.embedder.model
        if isinstance(event, Diagnosis):
            context = diagnosis_context(event)
            [vector] = self.embedder.embed([context])
            return diagnosis_plan(
                event, self.schema, context=context, embedding=vector, model=model
            )
        if isinstance(event, Mutation):
            context = proposal_context(
                event.workflow_id,
                event.proposed_by,
                event.rationale,
                [c.model_dump(mode="json") for c in event.changes],
                event.evidence,
            )
            [vector] = self.embedder.embed([context])
            return mutation_plan(event, self.schema, context=context, embedding=vector, model=model)
        if isinstance(event, MutationRequest):
            return decision_plan(event, self.schema)
        return None

    def reset(self) -> None:
        """Empty the historian's tables and forget its offsets (one transaction)."""
        if not self.exclusive or self._consumer is not None:
            return super().reset()  # refuses, with the reason
        conn = self._connect()
        tables = ", ".join(table(self.schema, name) for name in HISTORIAN_TABLES)
        with conn.transaction():
            conn.execute(f"TRUNCATE {tables}")
            conn.execute(
                f"DELETE FROM {table(self.schema, 'projection_offsets')} WHERE projector = %s",
                (self.name,),
            )
        return None


def rebuild_history(
    settings: Settings | None = None,
    schema: str = DEFAULT_SCHEMA,
    *,
    timeout: float | None = None,
    embedder: Embedder | None = None,
) -> int:
    """Re-read both topics from the beginning into emptied tables; returns the records read.
    Stop the running historians first (the advisory lock refuses otherwise)."""
    with HistorianProjector(
        settings, schema, assignment="manual", exclusive=True, embedder=embedder
    ) as historian:
        historian.reset()
        return historian.run_until_caught_up(timeout).records
