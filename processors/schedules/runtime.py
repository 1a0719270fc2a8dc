"""The schedule processor: fires the due slots of the schedules it owns, exactly once.

Ownership: the instances share one consumer group on the schedules topic, so each partition
(and so each schedule) has one owner. The group consumer never reads data (its partitions are
paused); it only says who owns what. For each owned partition ``p`` the processor holds:

- a transactional producer with the id ``<prefix>.schedule-processor.p<p>``: initialising it
  fences whichever instance held ``p`` before (a crashed one, or a zombie that has not noticed
  the rebalance) and aborts its open transaction;
- the progress of its schedules (``schedule-state`` partition ``p``, read after the fencing,
  read_committed, so it is the last committed word);
- the schedules themselves (``schedules`` partition ``p``, read to its end before any fire).

Each tick plans every schedule (:mod:`processors.schedules.plan`) and commits, in one Kafka
transaction per partition, the ``StartRun`` (and ``CancelRun``) commands of the due slots with
the schedules' new progress. So a slot is fired and recorded together or not at all: no double
fire and no missed fire across restarts. The slot-derived run id is the backstop: the scheduler
starts a run id once, whoever published it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from confluent_kafka import Consumer, TopicPartition

from foundation.liveness import Heartbeat
from foundation.settings import Settings
from processors.schedules.firing import cancel_command, progress_after, rule_of, start_command
from processors.schedules.plan import Overlap, Plan, ScheduleRule, plan
from projections.postgres.identifiers import table
from schemas import serde
from schemas.models import Schedule, ScheduleProgress
from streams.producer import TransactionalProducer
from streams.security import kafka_client_config
from streams.table import KeyedTableReader
from streams.topics import TopicCatalog

__all__ = ["ScheduleProcessor"]

log = logging.getLogger(__name__)

UNKNOWN_RUN_GRACE: Final = timedelta(seconds=60)
"""A fired run the read model does not show yet counts as running for this long (the projector
lags behind the start), then as finished (its start was rejected, or no projector runs)."""
_ACTIVE: Final = frozenset({"running", "paused", "pending"})


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Owned:
    """One owned partition: its fencing producer, its schedules and their progress."""

    partition: int
    producer: TransactionalProducer
    reader: KeyedTableReader
    schedules: dict[str, Schedule] = field(default_factory=dict)
    progress: dict[str, ScheduleProgress] = field(default_factory=dict)
    rules: dict[str, tuple[str, ScheduleRule | None]] = field(default_factory=dict)

    def close(self) -> None:
        self.reader.close()
        self.producer.close(5.0)


class ScheduleProcessor:
    def __init__(
        self,
        settings: Settings,
        *,
        schema: str = "reflux",
        instance_id: str | None = None,
        tick_s: float = 0.1,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.settings = settings
        self.catalog = TopicCatalog.from_settings(settings)
        self.schema = schema
        self.group = f"{settings.topic_prefix}.schedule-processor"
        self.instance_id = instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.tick_s = tick_s
        self.clock = clock
        self.fired = 0
        self._owned: dict[int, _Owned] = {}
        self._assigned: set[int] = set()
        self._conn: psycopg.Connection[Any] | None = None
        config = {
            **kafka_client_config(settings),
            "group.id": self.group,
            # Static membership: a restarted instance takes its partitions back at once instead
            # of waiting for the session of its dead predecessor to time out.
            "group.instance.id": self.instance_id,
            "session.timeout.ms": 10_000,
            "enable.auto.commit": False,
            "allow.auto.create.topics": False,
        }
        self._group = Consumer(config)
        self._group.subscribe(
            [self.catalog.schedules.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    # -- ownership -------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Ownership only: the data is read by each partition's own reader (from the beginning).
        consumer.assign(partitions)
        consumer.pause(partitions)
        self._assigned = {tp.partition for tp in partitions}
        log.info("schedule processor %s owns partitions %s", self.instance_id, self._assigned)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._assigned.discard(tp.partition)
            self._drop(tp.partition)

    def _drop(self, partition: int) -> None:
        owned = self._owned.pop(partition, None)
        if owned is not None:
            try:
                owned.close()
            except Exception as exc:  # a fenced producer: nothing left to flush
                log.debug("closing partition %d: %s", partition, exc)

    def _load(self, partition: int) -> _Owned:
        """Takes a partition over: fence its previous owner, then read what it committed."""
        producer = TransactionalProducer(
            self.settings,
            transactional_id=f"{self.group}.p{partition}",
            client_id=f"reflux-schedules-{self.instance_id}",
        )
        progress: dict[str, ScheduleProgress] = {}

        def keep_progress(key: str, value: bytes | None, _p: int) -> None:
            if value is None:
                progress.pop(key, None)
            else:
                progress[key] = serde.decode(value, ScheduleProgress)

        state = KeyedTableReader(
            self.settings,
            self.catalog.schedule_state.topic,
            keep_progress,
            name="schedule-progress",
            partitions=[partition],
        )
        try:
            if state.catch_up(timeout=30.0):
                raise RuntimeError(f"schedule-state partition {partition} not read to its end")
        finally:
            state.close()
        owned_schedules: dict[str, Schedule] = {}

        def keep_schedule(key: str, value: bytes | None, _p: int) -> None:
            if value is None:
                owned_schedules.pop(key, None)
                return
            try:
                owned_schedules[key] = serde.decode(value, Schedule)
            except Exception as exc:
                log.warning("schedule %r: undecodable record skipped: %s", key, exc)

        reader = KeyedTableReader(
            self.settings,
            self.catalog.schedules.topic,
            keep_schedule,
            name="schedule-processor",
            partitions=[partition],
        )
        if reader.catch_up(timeout=30.0):
            reader.close()
            producer.close(5.0)
            raise RuntimeError(f"schedules partition {partition} not read to its end")
        owned = _Owned(partition, producer, reader, owned_schedules, progress)
        log.info(
            "partition %d: %d schedule(s), %d with progress",
            partition,
            len(owned_schedules),
            len(progress),
        )
        return owned

    # -- firing ----------------------------------------------------------------------------------

    def _rule(self, owned: _Owned, schedule: Schedule) -> ScheduleRule | None:
        cached = owned.rules.get(schedule.schedule_id)
        if cached is not None and cached[0] == schedule.event_id:
            return cached[1]
        try:
            rule: ScheduleRule | None = rule_of(schedule)
        except ValueError as exc:  # the API validates; a record from elsewhere may not be
            log.error("schedule %s is invalid and never fires: %s", schedule.schedule_id, exc)
            rule = None
        owned.rules[schedule.schedule_id] = (schedule.event_id, rule)
        return rule

    def _previous_active(self, progress: ScheduleProgress | None, now: datetime) -> bool:
        if progress is None or progress.last_run_id is None or progress.last_fired_slot is None:
            return False
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.settings.postgres_dsn, autocommit=True)
            row = self._conn.execute(
                f"SELECT status FROM {table(self.schema, 'runs')} WHERE run_id = %s",
                (progress.last_run_id,),
            ).fetchone()
        except psycopg.Error as exc:
            log.warning(
                "overlap check: read model unavailable (%s); previous run counts as running", exc
            )
            self._conn = None
            return True
        if row is None:
            return now - progress.last_fired_slot < UNKNOWN_RUN_GRACE
        return str(row[0]) in _ACTIVE

    def _plan_partition(self, owned: _Owned, now: datetime) -> list[tuple[Schedule, Plan]]:
        plans: list[tuple[Schedule, Plan]] = []
        for schedule in owned.schedules.values():
            rule = self._rule(owned, schedule)
            if rule is None:
                continue
            progress = owned.progress.get(schedule.schedule_id)
            last = progress.last_slot if progress is not None else None
            previous_active = rule.overlap is not Overlap.ALLOW and self._previous_active(
                progress, now
            )
            try:
                result = plan(rule, last, now, previous_active=previous_active)
            except Exception as exc:  # one schedule's failure must not stop the others
                log.error("schedule %s: cannot plan: %s", schedule.schedule_id, exc)
                continue
            if result.last_slot is not None:
                plans.append((schedule, result))
        return plans

    def _commit(self, owned: _Owned, plans: list[tuple[Schedule, Plan]]) -> None:
        commands = self.catalog.commands
        producer = owned.producer
        updated: dict[str, ScheduleProgress] = {}
        producer.begin()
        try:
            for schedule, result in plans:
                sid = schedule.schedule_id
                previous = owned.progress.get(sid)
                if result.cancel_previous and previous and previous.last_run_id:
                    assert previous.last_fired_slot is not None
                    cancel = cancel_command(schedule, previous.last_run_id, result.fire[0])
                    producer.send(commands, cancel.run_id, cancel)
                for slot in result.fire:
                    start = start_command(schedule, slot)
                    producer.send(commands, start.run_id, start)
                assert result.last_slot is not None
                progress = progress_after(
                    previous, sid, result.last_slot, result.fire, result.skipped
                )
                producer.send(self.catalog.schedule_state, sid, progress, partition=owned.partition)
                updated[sid] = progress
            producer.commit([], None)
        except Exception:
            try:
                producer.abort()
            except Exception as exc:
                log.warning("abort after a failed fire: %s", exc)
            raise
        owned.progress.update(updated)
        for schedule, result in plans:
            self.fired += len(result.fire)
            if result.fire or result.skipped:
                log.info(
                    "schedule %s: fired %d slot(s) up to %s, skipped %d",
                    schedule.schedule_id,
                    len(result.fire),
                    result.last_slot,
                    result.skipped,
                )

    def run_once(self, timeout: float | None = None) -> int:
        """One tick: serve the group, take over new partitions, fire what is due. Returns the
        number of slots fired."""
        self._group.poll(self.tick_s if timeout is None else timeout)
        for partition in sorted(self._assigned - set(self._owned)):
            self._owned[partition] = self._load(partition)
        fired_before = self.fired
        for partition, owned in list(self._owned.items()):
            if partition not in self._assigned:
                self._drop(partition)
                continue
            owned.reader.poll(0)
            plans = self._plan_partition(owned, self.clock())
            if not plans:
                continue
            try:
                self._commit(owned, plans)
            except Exception as exc:
                # Fenced (another instance took the partition) or the broker failed the
                # transaction: drop it; if still ours, the next tick reloads what was committed.
                log.warning("partition %d: fire not committed (%s); reloading", partition, exc)
                self._drop(partition)
        return self.fired - fired_before

    def run(self, stop: threading.Event) -> None:
        heartbeat = Heartbeat.from_settings(self.settings)
        try:
            while not stop.is_set():
                heartbeat.beat()
                self.run_once()
        finally:
            self.close()

    def close(self) -> None:
        for partition in list(self._owned):
            self._drop(partition)
        with contextlib.suppress(RuntimeError):  # already closed
            self._group.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
