"""The mutation processor: consumes ``MutationRequest`` records on ``reflux.mutations`` and
appends the lifecycle records that answer them (docs/mutations.md).

State: :class:`~processors.mutations.lifecycle.MutationsState`, folded from the whole topic
(every partition, from the beginning) by a table reader, caught up to the end before the first
request after a partition assignment, so an instance that just got a partition judges on what
its predecessor wrote (a full catch-up costs ~1.5 s of fetch waits, so it is not done for every
request: between assignments only this instance writes its workflows' lifecycle records). Records
this instance wrote are applied in memory when decided and skipped when the reader meets them
again (by event id), so a half-read batch of its own output never rolls a proposal back.

Delivery: at-least-once, like the trigger router. Registrations are flushed before the
lifecycle records, and those before the request's offset is committed; every record carries the
request's id, so a redelivered request is recognised (``handled``) and ignored. A crash between
a registration and its ``applied`` record leaves an unused workflow version (a gap, harmless:
versions are unique and increasing, not contiguous).

Versions are allocated in the API's allocation table (``<api schema>.api_workflow_versions``,
the same upsert as :func:`api.store.allocate_workflow_version`), so a version registered by a
person and one registered by a proposal never share a number.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import psycopg

from foundation.errors import ServiceUnavailableError
from foundation.liveness import Heartbeat
from foundation.settings import Settings
from foundation.tenancy import DEFAULT_TENANT
from processors.mutations.lifecycle import (
    MutationContext,
    MutationDecision,
    MutationsState,
    decide,
    evolve,
)
from processors.mutations.validation import ReplayValidation
from processors.node_catalog.runtime_view import NodeCatalogKafkaView
from projections.postgres.connection import ReconnectingConnection
from projections.postgres.identifiers import quote_schema
from schemas import decode
from schemas.base import RefluxRecord
from schemas.errors import SchemaError
from schemas.models import (
    ImprovementPolicySet,
    Mutation,
    MutationRequest,
    MutationRequestRefused,
)
from streams.consumer import LOOP_POLL_S, ConsumedRecord, Consumer
from streams.producer import Producer
from streams.table import TopicTableReader
from streams.topics import TopicCatalog
from streams.workflow_versions import WorkflowVersions
from workflows.model import WorkflowDefinition

__all__ = [
    "MUTATION_TOPIC_TYPES",
    "MergedCatalog",
    "MutationProcessor",
    "allocate_version",
]

log = logging.getLogger(__name__)

MUTATION_TOPIC_TYPES: Final[tuple[type[RefluxRecord], ...]] = (
    Mutation,
    MutationRequest,
    ImprovementPolicySet,
    MutationRequestRefused,
)
"""What ``reflux.mutations`` carries."""


def allocate_version(
    conn: psycopg.Connection[Any], schema: str, workflow_id: str, at_least: int
) -> int:
    """The next version of ``workflow_id``: the API's allocation table and upsert
    (:func:`api.store.allocate_workflow_version`; the processor layer cannot import the API)."""
    quoted = quote_schema(schema)
    with conn.transaction():
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.api_workflow_versions ("
            " workflow_id text PRIMARY KEY,"
            " version integer NOT NULL,"
            " updated_at timestamptz NOT NULL DEFAULT now())"
        )
        row = conn.execute(
            f"INSERT INTO {quoted}.api_workflow_versions AS v (workflow_id, version) "
            "VALUES (%(id)s, %(min)s) "
            "ON CONFLICT (workflow_id) DO UPDATE "
            "SET version = GREATEST(v.version + 1, %(min)s), updated_at = now() "
            "RETURNING version",
            {"id": workflow_id, "min": at_least},
        ).fetchone()
    assert row is not None
    return int(row[0])


class MergedCatalog:
    """The node catalog read from ``nodes``, with ``fallback`` versions (the built-in nodes) for
    every node it does not know: the same rule as the API's registration check."""

    def __init__(self, view: NodeCatalogKafkaView, fallback: Mapping[str, Sequence[str]]) -> None:
        self.view = view
        self.fallback = {name: list(versions) for name, versions in fallback.items()}

    def versions(self, name: str) -> Sequence[str]:
        known = self.view.state.versions(name)
        return known if known else self.fallback.get(name, [])

    def names(self) -> Sequence[str]:
        return sorted(set(self.view.state.names()) | set(self.fallback))


class MutationProcessor:
    def __init__(
        self,
        settings: Settings,
        *,
        version_schema: str = "reflux_api",
        builtin_nodes: Mapping[str, Sequence[str]] | None = None,
        replay: ReplayValidation | None = None,
    ) -> None:
        self.settings = settings
        self.replay = replay
        self.version_schema = version_schema
        self.catalog = TopicCatalog.from_settings(settings)
        self.group = f"{settings.topic_prefix}.mutation-processor"
        self.state = MutationsState()
        self._own: set[str] = set()
        self._workflows = WorkflowVersions(
            settings, self.catalog.workflows.topic, name="mutation-workflows"
        )
        self._nodes = NodeCatalogKafkaView(settings, self.catalog)
        self.node_catalog = MergedCatalog(self._nodes, builtin_nodes or {})
        self._definitions: dict[tuple[str, int], WorkflowDefinition] = {}
        self._table = TopicTableReader(
            settings, self.catalog.mutations.topic, self._fold, name="mutation-processor"
        )
        self._table.catch_up()
        # Set when partitions are assigned: their previous owner may have written records this
        # instance has not read yet, so the next request waits for a full catch-up. Otherwise
        # nobody but this instance writes lifecycle records for its workflows, and what has
        # arrived (plus what it decided itself) is the whole state.
        self._stale = False
        self.producer = Producer(settings, client_id="reflux-mutation-processor")
        self.consumer = Consumer(
            [self.catalog.mutations],
            self.group,
            settings,
            catalog=self.catalog,
            expected=MUTATION_TOPIC_TYPES,
            on_assign=self._assigned,
        )
        self._conn = ReconnectingConnection(settings.postgres_dsn)
        self.handled = 0

    # -- state -----------------------------------------------------------------------------------

    def _assigned(self, partitions: list[Any]) -> None:
        if partitions:
            self._stale = True

    def _fold(self, data: bytes | None) -> None:
        if data is None:
            return
        try:
            record = decode(data, MUTATION_TOPIC_TYPES)
        except SchemaError as exc:
            log.warning("ignoring an unreadable mutations record: %s", exc)
            return
        if isinstance(record, MutationRequest):
            return
        event_id = getattr(record, "event_id", None)
        if event_id in self._own:
            self._own.discard(event_id)  # decided here and applied then
            return
        evolve(self.state, record)

    def _rebuild(self) -> None:
        # What earlier requests of this batch decided is sent but maybe not delivered yet: it
        # must be on the topic before the fold that replaces the state reads it.
        self.producer.flush()
        self._table.close()
        self.state = MutationsState()
        self._own.clear()
        self._table = TopicTableReader(
            self.settings, self.catalog.mutations.topic, self._fold, name="mutation-processor"
        )
        self._table.catch_up()

    def _base_definition(self, workflow_id: str, version: int) -> WorkflowDefinition | None:
        key = (workflow_id, version)
        if key not in self._definitions:
            record = self._workflows.resolve(workflow_id, version)
            if record is None:
                return None
            self._definitions[key] = WorkflowDefinition.from_json_dict(record.definition)
        return self._definitions[key]

    def _tenant_of(self, workflow_id: str, version: int) -> str:
        record = self._workflows.resolve(workflow_id, version)
        return DEFAULT_TENANT if record is None else record.tenant

    def _registered(self, workflow_id: str) -> dict[int, str | None]:
        self._workflows.drain()
        return {v: r.registered_by for v, r in self._workflows.versions(workflow_id).items()}

    def _allocate(self, workflow_id: str) -> int:
        self._workflows.drain()
        known = self._workflows.versions(workflow_id)
        at_least = max(known) + 1 if known else 1
        return allocate_version(self._conn.get(), self.version_schema, workflow_id, at_least)

    # -- requests --------------------------------------------------------------------------------

    def decide(self, request: MutationRequest) -> MutationDecision:
        """Judges one request on the caught-up state and publishes the outcome."""
        if self._stale:
            self._table.catch_up()
            self._stale = False
        else:
            self._table.drain()
        self._nodes.refresh()
        now = datetime.now(UTC)
        ctx = MutationContext(
            # The records carry milliseconds (timestamp-millis): the state kept in memory must
            # equal the state a fresh instance folds from the topic.
            now=now.replace(microsecond=now.microsecond // 1000 * 1000),
            base_definition=self._base_definition,
            allocate_version=self._allocate,
            registered=self._registered,
            tenant_of=self._tenant_of,
            node_catalog=self.node_catalog,
            replay=self.replay,
        )
        try:
            decision = decide(self.state, request, ctx)
        except Exception as exc:
            # decide changed the in-memory state as it went: start again from the topic, where
            # nothing of this request was written (nothing is sent before decide returns).
            self._rebuild()
            if isinstance(exc, psycopg.OperationalError):
                raise ServiceUnavailableError(
                    f"Expected Postgres to allocate a workflow version, but: {exc}"
                ) from exc
            raise
        for registration in decision.registrations:
            key = f"{registration.workflow_id}@{registration.version}"
            self.producer.send(self.catalog.workflows, key, registration)
        if decision.registrations:
            # The version exists before any route names it.
            self.producer.flush()
        for record in decision.records:
            self._own.add(record.event_id)
            self.producer.send(self.catalog.mutations, record.workflow_id, record)
        for replay in decision.replays:
            # After the proposal's validating record: the runner's verdict comes back on
            # reflux.mutations (a replay_verdict request), keyed by the workflow like the rest.
            self.producer.send(self.catalog.replays, replay.replay_id, replay)
        for record in decision.records:
            if isinstance(record, Mutation):
                log.info(
                    "mutation %s of %s: %s (%s)",
                    record.mutation_id,
                    record.workflow_id,
                    record.status.value,
                    record.actor,
                )
            elif isinstance(record, MutationRequestRefused):
                log.info("mutation request %s refused: %s", record.request_id, record.reason)
        self.handled += 1
        return decision

    def _handle(self, record: ConsumedRecord) -> None:
        if isinstance(record.value, MutationRequest):
            self.decide(record.value)

    def run_once(self, timeout: float = LOOP_POLL_S) -> int:
        result = self.consumer.process(self._handle, timeout=timeout, flush=[self.producer])
        return result.processed

    def run(self, stop: threading.Event) -> None:
        heartbeat = Heartbeat.from_settings(self.settings)
        log.info("mutation processor running (group %s)", self.group)
        while not stop.is_set():
            heartbeat.beat()
            self.run_once()

    def close(self) -> None:
        try:
            self.consumer.close()
            self.producer.close()
        finally:
            self._table.close()
            self._workflows.close()
            self._nodes.close()
            self._conn.close()
