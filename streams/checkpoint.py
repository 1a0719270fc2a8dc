"""The checkpoint: where every consume loop keeps its positions, and the one commit order.

Every loop that consumes Kafka -- the typed :class:`streams.consumer.Consumer`, the scheduler
runtime, the worker runtime, the projector -- keeps its positions in a :class:`Checkpoint` and
commits through it. This docstring is the one place the commit order is written down.

Positions
---------
A partition's position is the next offset to read, which is what Kafka commits. A record is
*started* when the loop takes it and *finished* once everything it causes is queued: its outputs
sent to a producer, its dead letter published, its rows written in the open transaction.
Sequential loops finish a record as they take it (:meth:`Checkpoint.advance`); the worker runs
the records of a partition concurrently and they finish in any order. Either way only the
contiguous finished prefix counts: the position is the lowest offset still in flight, or one past
the highest offset started when none is. Committing the highest finished offset instead would
skip a record still in flight, and a crash would then lose it.

The commit order
----------------
:meth:`Checkpoint.commit`, the rule that makes processing at-least-once:

1. snapshot the positions to commit (a record finished after the snapshot is not covered: its
   outputs may be queued after the flush below);
2. flush the outputs: every producer the records wrote to is flushed, so their outputs are on
   the broker;
3. flush the dead-letter publisher: every poison record of the snapshot is on the ``dlq`` topic;
4. commit the snapshot to the :class:`CommitTarget`.

A crash anywhere before step 4 re-delivers the records after the previous commit, and the loop
takes them again: duplicates are possible, losses are not (readers dedupe on ``(run_id, seq)`` /
``event_id``; the worker's attempt ledger answers a redelivered invocation without executing it
again). If a flush raises, nothing is committed.

The target decides what "commit" means:

- :class:`ConsumerCommit`: the consumer group's offsets, committed synchronously (the typed
  consumer, the worker): at-least-once.
- :class:`KafkaTransaction`: the outputs and dead letters are produced inside one Kafka
  transaction, and committing adds the positions to it (``send_offsets_to_transaction``) and
  commits it, which also flushes: outputs and positions commit together or not at all (the
  scheduler, one transaction per batch). After an abort the loop forgets the batch's positions
  (:meth:`Checkpoint.clear`) and rewinds to the committed offsets.
- ``projections.postgres.writer.PostgresOffsets``: the positions are written to
  ``projection_offsets`` in the database transaction that writes the rows, and that
  transaction's commit makes both durable together (the projector: exactly-once read models;
  Kafka's own group offsets are only a hint for lag tooling there).

Rebalances
----------
:meth:`Checkpoint.subscribe` handles confluent-kafka's callbacks, then calls the loop's hooks:

- assigned: positions left over for those partitions are forgotten (consumption resumes at the
  committed offset); the loop's hook then seeks or rebuilds its state;
- revoked: the loop's ``drain`` finishes or abandons the partitions' in-flight records and
  returns the positions safe to commit (by default: the finished prefix); they are committed in
  the order above -- a failure is only logged, the new owner re-processes from the previous
  commit -- and forgotten; the loop's hook then clears its state;
- lost (the session expired; another member may own the partitions already): forgotten without
  committing, since a commit now could move the new owner's offsets; then the loop's hook.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaException, TopicPartition

from foundation.errors import RefluxError
from streams.producer import TransactionalProducer

__all__ = [
    "Checkpoint",
    "CommitTarget",
    "ConsumerCommit",
    "Flushable",
    "KafkaTransaction",
    "OffsetTracker",
    "PartitionOffsets",
    "RebalanceHook",
    "TopicPartitionKey",
]

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]
RebalanceHook = Callable[[list[TopicPartition]], None]
Drain = Callable[[list[TopicPartition]], Mapping[TopicPartitionKey, int]]


# -- positions -------------------------------------------------------------------------------------


@dataclass(slots=True)
class PartitionOffsets:
    pending: set[int] = field(default_factory=set)
    highest: int = -1
    committed: int = -1
    """The last committed position (next offset to read); starts at the first offset seen."""

    def start(self, offset: int) -> None:
        if self.highest < 0:
            # Consumption resumed here, so this is (at least) the group's committed position:
            # committing it again would be a no-op round trip.
            self.committed = offset
        self.pending.add(offset)
        self.highest = max(self.highest, offset)

    def finish(self, offset: int) -> None:
        self.pending.discard(offset)

    def position(self) -> int | None:
        """The offset to commit (next to read), or ``None`` if nothing was started yet."""
        if self.highest < 0:
            return None
        # One call: another thread may finish the last pending offset meanwhile (the worker).
        return min(self.pending, default=self.highest + 1)


class OffsetTracker:
    """Per-partition bookkeeping of started/finished offsets for one consumer."""

    def __init__(self) -> None:
        self._partitions: dict[TopicPartitionKey, PartitionOffsets] = {}

    def start(self, tp: TopicPartitionKey, offset: int) -> None:
        self._partitions.setdefault(tp, PartitionOffsets()).start(offset)

    def finish(self, tp: TopicPartitionKey, offset: int) -> None:
        state = self._partitions.get(tp)
        if state is not None:  # a partition revoked meanwhile is no longer ours to track
            state.finish(offset)

    def advance(self, tp: TopicPartitionKey, offset: int) -> None:
        """Start and finish ``offset``: a sequential loop is done with a record once it took it."""
        self.start(tp, offset)
        self.finish(tp, offset)

    def restore(self, positions: Mapping[TopicPartitionKey, int]) -> None:
        """Track ``positions`` as committed ones (read back from the target on assignment)."""
        for key, position in positions.items():
            self._partitions[key] = PartitionOffsets(highest=position - 1, committed=position)

    def next_offset(self, tp: TopicPartitionKey) -> int | None:
        """One past the highest offset started, or ``None`` for an untracked partition."""
        state = self._partitions.get(tp)
        return state.highest + 1 if state is not None and state.highest >= 0 else None

    def seen(self, tp: TopicPartitionKey, offset: int) -> bool:
        """Whether ``offset`` was already started since the partition was (re)assigned."""
        following = self.next_offset(tp)
        return following is not None and offset < following

    def in_flight(self, tps: Iterable[TopicPartitionKey] | None = None) -> int:
        keys = self._partitions.keys() if tps is None else tps
        return sum(len(self._partitions[k].pending) for k in keys if k in self._partitions)

    def positions(
        self, tps: Iterable[TopicPartitionKey] | None = None
    ) -> dict[TopicPartitionKey, int]:
        """Positions that moved past the last commit (what a commit should send now)."""
        keys = list(self._partitions) if tps is None else list(tps)
        out: dict[TopicPartitionKey, int] = {}
        for key in keys:
            state = self._partitions.get(key)
            if state is None:
                continue
            position = state.position()
            if position is not None and position > state.committed:
                out[key] = position
        return out

    def mark_committed(self, positions: Mapping[TopicPartitionKey, int]) -> None:
        for key, position in positions.items():
            state = self._partitions.get(key)
            if state is not None:
                state.committed = max(state.committed, position)

    def drop(self, tps: Iterable[TopicPartitionKey]) -> None:
        """Forget partitions (revoked or lost): a new owner resumes from the committed offset."""
        for key in tps:
            self._partitions.pop(key, None)

    def clear(self) -> None:
        """Forget every partition (an aborted batch, a close that must not commit)."""
        self._partitions.clear()

    def partitions(self) -> list[TopicPartitionKey]:
        return sorted(self._partitions)


# -- where positions are committed -----------------------------------------------------------------


class Flushable(Protocol):
    """A producer, or anything queuing records that must be on the broker before a commit."""

    def flush(self, timeout: float = 30.0) -> None: ...


class CommitTarget(Protocol):
    """Where a checkpoint's positions become durable (see the module docstring)."""

    def commit(self, positions: Mapping[TopicPartitionKey, int]) -> None: ...


def _offsets(positions: Mapping[TopicPartitionKey, int]) -> list[TopicPartition]:
    return [TopicPartition(t, p, o) for (t, p), o in sorted(positions.items())]


class ConsumerCommit:
    """The consumer group's offsets, committed synchronously; failures raise ``CommitFailed``."""

    def __init__(self, consumer: KafkaConsumer, group: str) -> None:
        self.consumer = consumer
        self.group = group

    def commit(self, positions: Mapping[TopicPartitionKey, int]) -> None:
        if not positions:
            return
        try:
            result = self.consumer.commit(offsets=_offsets(positions), asynchronous=False)
        except KafkaException as exc:
            raise RefluxError(
                f"Expected to commit {dict(positions)} for group {self.group}, but: {exc}",
                error_class="CommitFailed",
            ) from exc
        failed = [tp for tp in result or [] if tp.error is not None]
        if failed:
            raise RefluxError(
                f"Expected to commit offsets for group {self.group}, but these failed: "
                + ", ".join(f"{tp.topic}/{tp.partition}: {tp.error}" for tp in failed),
                error_class="CommitFailed",
            )


class KafkaTransaction:
    """Positions join the producer's open transaction, which then commits (exactly-once).

    The loop calls :meth:`begin` before producing a batch's outputs and :meth:`abort` when the
    batch fails; committing without an open transaction (a revoke between batches) runs one of
    its own.
    """

    def __init__(
        self, producer: TransactionalProducer, consumer: KafkaConsumer, timeout: float = 30.0
    ) -> None:
        self.producer = producer
        self.consumer = consumer
        self.timeout = timeout
        self._open = False

    def begin(self) -> None:
        self.producer.begin()
        self._open = True

    def commit(self, positions: Mapping[TopicPartitionKey, int]) -> None:
        own = not self._open
        if own:
            if not positions:
                return
            self.begin()
        try:
            self.producer.commit(
                _offsets(positions), self.consumer.consumer_group_metadata(), self.timeout
            )
        except BaseException:
            if own:
                # Nobody else would end a transaction opened here (a revoke's commit): left
                # open, it would hold the group's offsets and end in the coordinator's timeout,
                # which fences the producer.
                with contextlib.suppress(Exception):
                    self.abort()
            raise
        self._open = False

    def abort(self) -> None:
        self._open = False
        self.producer.abort(self.timeout)


# -- the checkpoint --------------------------------------------------------------------------------


def _keys(partitions: Iterable[TopicPartition]) -> list[TopicPartitionKey]:
    return [(tp.topic, tp.partition) for tp in partitions]


class Checkpoint(OffsetTracker):
    """Positions plus how to commit them: the commit order and rebalance handling of every loop.

    ``outputs`` are flushed before every commit (producers the records write to); ``flush`` of
    :meth:`commit` adds more for one commit. ``dead_letters`` is flushed after them. A
    :class:`KafkaTransaction` target needs neither: its commit flushes the transaction.

    The loop's rebalance hooks (``on_assign``, ``on_revoke``, ``on_lost``) run after the
    checkpoint's part; ``drain`` runs before a revoke's commit and returns the positions that are
    safe to commit (see the module docstring).
    """

    def __init__(
        self,
        target: CommitTarget,
        *,
        outputs: Sequence[Flushable] = (),
        dead_letters: Flushable | None = None,
        name: str = "checkpoint",
        flush_timeout: float = 30.0,
        on_assign: RebalanceHook | None = None,
        on_revoke: RebalanceHook | None = None,
        on_lost: RebalanceHook | None = None,
        drain: Drain | None = None,
    ) -> None:
        super().__init__()
        self.target = target
        self.outputs = tuple(outputs)
        self.dead_letters = dead_letters
        self.name = name
        self.flush_timeout = flush_timeout
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lost = on_lost
        self._drain = drain

    def commit(
        self,
        tps: Iterable[TopicPartitionKey] | None = None,
        *,
        positions: Mapping[TopicPartitionKey, int] | None = None,
        flush: Sequence[Flushable] = (),
        timeout: float | None = None,
    ) -> dict[TopicPartitionKey, int]:
        """Flush the outputs, then the dead letters, then commit; returns what was committed.

        Commits the positions of ``tps`` (default: every partition) that moved since the last
        commit, or exactly ``positions`` (a snapshot the loop took, or explicit records).
        """
        snapshot = dict(self.positions(tps) if positions is None else positions)
        timeout = self.flush_timeout if timeout is None else timeout
        for output in (*self.outputs, *flush):
            output.flush(timeout)
        if self.dead_letters is not None:
            self.dead_letters.flush(timeout)
        self.target.commit(snapshot)
        self.mark_committed(snapshot)
        return snapshot

    # -- rebalancing -------------------------------------------------------------------------------

    def subscribe(self, consumer: KafkaConsumer, topics: Iterable[str]) -> None:
        """Subscribe ``consumer`` to ``topics`` with this checkpoint's rebalance handling."""
        consumer.subscribe(
            list(topics),
            on_assign=lambda _consumer, partitions: self.assigned(partitions),
            on_revoke=lambda _consumer, partitions: self.revoked(partitions),
            on_lost=lambda _consumer, partitions: self.lost(partitions),
        )

    def assigned(self, partitions: list[TopicPartition]) -> None:
        """Forget what is left of these partitions (consumption resumes at the committed
        offset), then the loop's hook."""
        self.drop(_keys(partitions))
        if self._on_assign is not None:
            self._on_assign(partitions)

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """Drain, commit what is done, forget the partitions, then the loop's hook.

        A failed drain or commit is logged, not raised: the new owner re-processes from the
        previous commit (duplicates, never losses).
        """
        tps = _keys(partitions)
        try:
            positions = self.positions(tps) if self._drain is None else self._drain(partitions)
            if positions:
                self.commit(positions=positions)
        except Exception as exc:
            log.warning("%s: commit on revoke of %s failed: %s", self.name, tps, exc)
        finally:
            self.drop(tps)
        if self._on_revoke is not None:
            self._on_revoke(partitions)

    def lost(self, partitions: list[TopicPartition]) -> None:
        """Forget the partitions without committing (another member may own them already: a
        commit now could move its offsets), then the loop's hook."""
        self.drop(_keys(partitions))
        if self._on_lost is not None:
            self._on_lost(partitions)
