"""Apply a batch of consumed records to Postgres together with the consumed offsets.

This is the tracking-record pattern (eventsourcing): the rows a batch produces and the
``projection_offsets`` "next offset" of every partition it touched are committed in ONE
transaction, so after a crash the read models and the position agree, whatever Kafka's own
committed offsets say. Three defences make a redelivered record a no-op:

1. the transaction locks the batch's offset rows (``FOR UPDATE``) and skips records below the
   stored ``next_offset`` (a second projector instance, a stale rebalance);
2. each run event claims ``(run_id, seq)`` in ``run_events`` first; its updates run only if the
   claim inserted (duplicates produced under other offsets, lost offset rows);
3. offsets only move forward (``GREATEST``).

Statements are sent in two psycopg pipelines per batch (all guards, then the claimed updates),
so a batch costs a few round trips rather than one per statement. The run events of a batch are
claimed in ONE statement (``INSERT ... SELECT FROM unnest(...) ... RETURNING``), and the claimed
updates of one row are coalesced (:func:`projections.postgres.statements.coalesce`): a step's
four events cost one upsert of its row, not four.

Poison records: a record Postgres refuses (a ``DataError`` such as ``\\u0000`` in a JSON string,
or an ``IntegrityError``) would fail its batch forever. The batch is then re-applied with one
savepoint per record; the refused ones go to the dead-letter sink and the rest commit. Every other
database error (connection lost, missing table) propagates: retrying or fixing the deployment
helps, dead-lettering the whole log would not.

The offsets are committed by a :class:`streams.checkpoint.Checkpoint` whose target is
:class:`PostgresOffsets`, inside the batch's transaction: the commit order (dead letters flushed
before the positions) is the checkpoint's, and leaving the transaction commits the positions
with the rows.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from psycopg import pq
from psycopg.types.json import Jsonb

from foundation.errors import RefluxError, classify
from projections.postgres.appliers import Plan
from projections.postgres.audit_appliers import AUDIT_TABLES
from projections.postgres.identifiers import table
from projections.postgres.mutation_appliers import MUTATION_TABLES
from projections.postgres.statements import coalesce
from streams.checkpoint import Checkpoint
from streams.dlq import PoisonRecord

__all__ = [
    "READ_MODEL_TABLES",
    "BatchItem",
    "BatchOutcome",
    "DeadLetterSink",
    "PostgresOffsets",
    "apply_batch",
    "load_offsets",
    "reset_read_models",
]

log = logging.getLogger(__name__)

READ_MODEL_TABLES = (
    "workflows",
    "runs",
    "steps",
    "run_events",
    "run_mutations",
    "nodes",
    "node_versions",
    "node_catalog_events",
    *MUTATION_TABLES,
    *AUDIT_TABLES,
)
"""The tables this projector owns; a rebuild truncates exactly these."""

TopicPartition = tuple[str, int]


class DeadLetterSink(Protocol):
    """What :class:`streams.dlq.DeadLetterPublisher` offers; a protocol so tests can collect."""

    def publish(self, poison: PoisonRecord, error_class: str, reason: str) -> object: ...

    def flush(self, timeout: float = 30.0) -> None: ...


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One consumed record: its position, its raw form and what to do with it."""

    record: PoisonRecord
    """Coordinates and original bytes (what the DLQ keeps if Postgres refuses the record)."""
    plan: Plan | None
    """``None``: nothing to apply (a tombstone, or already dead-lettered while decoding)."""

    @property
    def partition(self) -> TopicPartition:
        return (self.record.topic, self.record.partition)

    @property
    def offset(self) -> int:
        return self.record.offset


@dataclass(slots=True)
class BatchOutcome:
    applied: int = 0
    """Records whose guard claimed them (their updates ran)."""
    duplicates: int = 0
    """Records already in the read models (guard claimed nothing)."""
    stale: int = 0
    """Records below the stored offset, skipped without touching the read models."""
    dead_lettered: int = 0
    """Records Postgres refused, sent to the dead-letter sink."""
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    """The committed ``next_offset`` of every partition of the batch."""


class PostgresOffsets:
    """A :class:`streams.checkpoint.CommitTarget`: positions in ``projection_offsets``.

    They are written in the open transaction of the connection, the one holding the batch's rows,
    so the transaction commits both or neither; outside a transaction it refuses (the positions
    would be durable without their rows). Positions only move forward (``GREATEST``).
    """

    def __init__(
        self, connection: Callable[[], psycopg.Connection], schema: str, projector: str
    ) -> None:
        self._connection = connection
        self.schema = schema
        self.projector = projector

    def commit(self, positions: Mapping[TopicPartition, int]) -> None:
        if not positions:
            return
        conn = self._connection()
        if conn.info.transaction_status != pq.TransactionStatus.INTRANS:
            raise RefluxError(
                f"Expected the batch's open transaction to write the offsets of {self.projector} "
                f"into, but the connection is {conn.info.transaction_status.name}",
                error_class="State",
            )
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {table(self.schema, 'projection_offsets')} AS o "
                "(projector, topic, partition, next_offset, updated_at) "
                "VALUES (%s, %s, %s, %s, now()) "
                "ON CONFLICT (projector, topic, partition) DO UPDATE "
                "SET next_offset = GREATEST(o.next_offset, EXCLUDED.next_offset), "
                "updated_at = now()",
                [
                    (self.projector, topic, partition, offset)
                    for (topic, partition), offset in positions.items()
                ],
            )


class _PoisonedBatchError(RefluxError):
    """Internal: the fast path hit a data error; re-apply record by record."""

    error_class = "PoisonedBatch"

    def __init__(self) -> None:
        super().__init__("a record of the batch was refused; re-apply record by record")


_POISON_ERRORS = (psycopg.errors.DataError, psycopg.errors.IntegrityError)


def load_offsets(
    conn: psycopg.Connection, schema: str, projector: str, topics: Iterable[str] | None = None
) -> dict[TopicPartition, int]:
    """The stored next offsets of ``projector`` (optionally only for ``topics``)."""
    sql = f"SELECT topic, partition, next_offset FROM {table(schema, 'projection_offsets')} "
    sql += "WHERE projector = %s"
    params: list[object] = [projector]
    if topics is not None:
        sql += " AND topic = ANY(%s)"
        params.append(list(topics))
    rows = conn.execute(sql, params).fetchall()
    return {(topic, partition): offset for topic, partition, offset in rows}


def reset_read_models(conn: psycopg.Connection, schema: str, projector: str) -> None:
    """Empty the read models and forget the projector's offsets, atomically (a rebuild's start)."""
    tables = ", ".join(table(schema, name) for name in READ_MODEL_TABLES)
    with conn.transaction():
        conn.execute(f"TRUNCATE {tables}")
        conn.execute(
            f"DELETE FROM {table(schema, 'projection_offsets')} WHERE projector = %s",
            (projector,),
        )


def apply_batch(
    conn: psycopg.Connection,
    items: Sequence[BatchItem],
    *,
    schema: str,
    projector: str,
    dead_letters: DeadLetterSink | None = None,
    checkpoint: Checkpoint | None = None,
) -> BatchOutcome:
    """Apply ``items`` and record their offsets in one transaction; see the module docstring.

    ``checkpoint`` commits the offsets (the projector's, with a :class:`PostgresOffsets` target
    on ``conn`` for the same schema and projector); by default one that flushes
    ``dead_letters``. Called inside an open transaction, it becomes a savepoint of it: the
    caller's rollback then undoes rows and offsets together (how the crash tests simulate a
    crash mid-batch).
    """
    if not items:
        return BatchOutcome()
    if checkpoint is None:
        offsets = PostgresOffsets(lambda: conn, schema, projector)
        checkpoint = Checkpoint(offsets, dead_letters=dead_letters, name=f"projector {projector}")
    apply = functools.partial(
        _apply, conn, items, schema, projector, dead_letters=dead_letters, checkpoint=checkpoint
    )
    try:
        return apply(careful=False)
    except _PoisonedBatchError:
        log.warning("projector %s: a record was refused; re-applying record by record", projector)
        return apply(careful=True)


def _apply(
    conn: psycopg.Connection,
    items: Sequence[BatchItem],
    schema: str,
    projector: str,
    *,
    dead_letters: DeadLetterSink | None,
    checkpoint: Checkpoint,
    careful: bool,
) -> BatchOutcome:
    outcome = BatchOutcome()
    with conn.transaction():
        stored = _lock_offsets(conn, schema, projector, {item.partition for item in items})
        todo: list[Plan] = []
        for item in items:
            if item.offset < stored.get(item.partition, -1):
                outcome.stale += 1
            elif item.plan is not None:
                todo.append(item.plan)
        if not careful:
            try:
                _run_plans_pipelined(conn, todo, schema, outcome)
            except _POISON_ERRORS as exc:
                raise _PoisonedBatchError from exc
        else:
            for item in items:
                if item.plan is None or item.offset < stored.get(item.partition, -1):
                    continue
                try:
                    with conn.transaction():
                        _run_plan(conn, item.plan, outcome)
                except _POISON_ERRORS as exc:
                    if dead_letters is None:
                        raise
                    reason = f"Expected Postgres to accept the record, but: {exc}".strip()
                    error_class = f"Postgres{classify(exc).error_class}"
                    dead_letters.publish(item.record, error_class, reason)
                    outcome.dead_lettered += 1
        # The checkpoint's commit order, inside this transaction: dead letters flushed, then the
        # positions written next to the rows; leaving the block commits both.
        outcome.offsets = checkpoint.commit(positions=_next_offsets(items, stored))
    return outcome


def _run_plans_pipelined(
    conn: psycopg.Connection, plans: Sequence[Plan], schema: str, outcome: BatchOutcome
) -> None:
    """All guards in one pipeline, then the claimed plans' updates in another, in order.

    Same result as running plan by plan, because no update reads or writes what a guard
    writes (``run_events``, the ``workflows`` insert), and a duplicate within the batch is still
    refused by the guard of its first copy: the run events are claimed in one statement, which
    inserts the first copy of a ``(run_id, seq)`` and returns it once. Two round trips instead
    of one per statement.
    """
    events = [plan for plan in plans if plan.run_event]
    with conn.pipeline():
        claim = _claim_run_events(conn, schema, events) if events else None
        guards = {
            id(plan): conn.execute(plan.guard.sql, plan.guard.params)
            for plan in plans
            if not plan.run_event
        }
    inserted = set(claim.fetchall()) if claim is not None else set()
    claimed = []
    for plan in plans:
        if plan.run_event:
            key = (plan.guard.params[0], plan.guard.params[1])
            if key in inserted:
                inserted.discard(key)  # a later copy in this batch is a duplicate
                claimed.append(plan)
        elif guards[id(plan)].rowcount == 1:
            claimed.append(plan)
    outcome.applied += len(claimed)
    outcome.duplicates += len(plans) - len(claimed)
    updates = coalesce(update for plan in claimed for update in plan.updates)
    # One cursor for every update: conn.execute makes a cursor (and its adapters map) per call,
    # which was the projector's largest CPU cost under load; only the guards need their own.
    with conn.pipeline(), conn.cursor() as cursor:
        for statement in updates:
            cursor.execute(statement.sql, statement.params)


def _claim_run_events(
    conn: psycopg.Connection, schema: str, plans: Sequence[Plan]
) -> psycopg.Cursor[Any]:
    """One ``INSERT`` of every run event's ``run_events`` row (its guard's parameters) that
    skips the ones already there and returns the ``(run_id, seq)`` it inserted.

    The rows travel as ONE JSON array (``json.dumps`` runs in C): as arrays of columns, psycopg
    escaped every payload in Python, which cost more than the statements it saved."""
    rows = []
    for plan in plans:
        run_id, seq, event_type, event_id, occurred_at, payload = plan.guard.params
        rows.append(
            {
                "run_id": run_id,
                "seq": seq,
                "event_type": event_type,
                "event_id": event_id,
                "occurred_at": occurred_at.isoformat(),
                "payload": payload.obj,
            }
        )
    return conn.execute(
        f"INSERT INTO {table(schema, 'run_events')} "
        "(run_id, seq, event_type, event_id, occurred_at, payload) "
        "SELECT run_id, seq, event_type, event_id, occurred_at, payload "
        "FROM jsonb_to_recordset(%s::jsonb) AS e(run_id text, seq bigint, event_type text, "
        "event_id text, occurred_at timestamptz, payload jsonb) "
        "ON CONFLICT (run_id, seq) DO NOTHING RETURNING run_id, seq",
        (Jsonb(rows),),
    )


def _run_plan(conn: psycopg.Connection, plan: Plan, outcome: BatchOutcome) -> None:
    cursor = conn.execute(plan.guard.sql, plan.guard.params)
    if cursor.rowcount != 1:
        outcome.duplicates += 1
        return
    for statement in plan.updates:
        conn.execute(statement.sql, statement.params)
    outcome.applied += 1


def _lock_offsets(
    conn: psycopg.Connection, schema: str, projector: str, partitions: set[TopicPartition]
) -> dict[TopicPartition, int]:
    topics = sorted({topic for topic, _ in partitions})
    rows = conn.execute(
        f"SELECT topic, partition, next_offset FROM {table(schema, 'projection_offsets')} "
        "WHERE projector = %s AND topic = ANY(%s) ORDER BY topic, partition FOR UPDATE",
        (projector, topics),
    ).fetchall()
    return {(t, p): o for t, p, o in rows if (t, p) in partitions}


def _next_offsets(
    items: Sequence[BatchItem], stored: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    offsets = dict(stored)
    for item in items:
        offsets[item.partition] = max(offsets.get(item.partition, 0), item.offset + 1)
    batch = {item.partition for item in items}
    return {tp: offset for tp, offset in offsets.items() if tp in batch}
