"""Rebuilding a partition's run states: its snapshot, then the tail of the run log.

The ``runs`` topic is the source of truth; the ``scheduler-state`` topic holds, per partition,
the newest snapshot record of every run and a checkpoint: the ``runs`` offset from which the
events are not all in those records (:mod:`processors.scheduler.runtime.snapshots` says why that
is enough). Recovery of partition *p*:

1. read ``scheduler-state`` partition *p* to its end, keeping the newest record per key;
2. decode them into a :class:`~processors.scheduler.runtime.run_table.RunTable` (active runs in
   full, finished runs as markers);
3. fold ``runs`` partition *p* from the checkpoint's offset to its end with ``evolve``, skipping
   events a snapshot already holds (``seq <= last_seq``). Runs the tail changed are dirty: the
   next snapshot cycle writes them.

A partition without a checkpoint (never snapshotted, e.g. the first start after an upgrade) is
folded from offset 0, as before snapshots existed; every run is then dirty. So is a partition
whose snapshot cannot be trusted -- a record of another format version, a damaged record, or a
tail that does not continue its snapshot (a gap in a run's seq) -- and that one is logged as an
error: it costs a full fold, never a wrong state. Reading stops at the last stable offset (the
readers are read_committed): records of aborted or still open transactions are not state.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from foundation.errors import ServiceUnavailableError
from foundation.settings import Settings
from processors.scheduler.evolve import RUN_EVENT_TYPES, EvolveError, RunEvent, evolve
from processors.scheduler.runtime.run_table import RunTable
from processors.scheduler.runtime.snapshots import (
    CHECKPOINT_KEY,
    SnapshotCheckpoint,
    SnapshotFormatError,
    decode_snapshot,
)
from processors.scheduler.state import RunState
from schemas import decode
from schemas.errors import SchemaError
from streams.consumer import consume_available, kafka_transient
from streams.topics import TopicCatalog

__all__ = ["Recovery", "RecoveryReport", "recover_partitions"]

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    partitions: list[int] = field(default_factory=list)
    from_snapshot: list[int] = field(default_factory=list)
    """Restored from a snapshot plus the tail of the run log."""
    full_fold: list[int] = field(default_factory=list)
    """Folded from offset 0 (no snapshot yet, or a fallback)."""
    fallbacks: dict[int, str] = field(default_factory=dict)
    """Partitions whose snapshot could not be used, and why (each also logged as an error)."""
    snapshot_records: int = 0
    """Records read from ``scheduler-state`` (superseded ones included)."""
    events_read: int = 0
    events_applied: int = 0
    active_runs: int = 0
    finished_runs: int = 0
    snapshot_s: float = 0.0
    fold_s: float = 0.0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"partitions {self.partitions}: {len(self.from_snapshot)} from a snapshot "
            f"({self.snapshot_records} records, {self.snapshot_s:.2f}s), "
            f"{len(self.full_fold)} folded from offset 0; {self.events_applied} of "
            f"{self.events_read} run events applied ({self.fold_s:.2f}s); "
            f"{self.active_runs} active and {self.finished_runs} finished runs; "
            f"{self.seconds:.2f}s"
        )


@dataclass
class Recovery:
    tables: dict[int, RunTable]
    report: RecoveryReport


def _reader(settings: Settings) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"{settings.topic_prefix}.scheduler-recovery-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
        }
    )


def _read(
    reader: Consumer,
    topic: str,
    starts: dict[int, int],
    handle: Callable[[int, bytes | None, bytes | None, int], None],
    deadline: float,
) -> int:
    """Feeds every record of ``topic`` partitions from ``starts`` to their end (the LSO now)
    to ``handle(partition, key, value, offset)``; returns how many."""
    ends: dict[int, int] = {}
    for p, start in starts.items():
        high = _end_offset(reader, TopicPartition(topic, p), deadline)
        if high > start:
            ends[p] = high
    if not ends:
        return 0
    reader.assign([TopicPartition(topic, p, starts[p]) for p in sorted(ends)])
    todo = set(ends)
    count = 0
    try:
        while todo:
            if time.monotonic() > deadline:
                raise ServiceUnavailableError(
                    f"Expected to read {topic} partitions {sorted(todo)} to their end in time, "
                    "but the recovery deadline passed"
                )
            # Returns as soon as records are there (consume(n, t) would wait for all n).
            for message in consume_available(reader, 10_000, 0.05):
                if message.error() is not None:
                    continue
                p = message.partition() or 0
                offset = message.offset() or 0
                if p not in todo:
                    continue
                handle(p, message.key(), message.value(), offset)
                count += 1
                if offset + 1 >= ends[p]:
                    todo.discard(p)
            # A partition whose tail is transaction markers never yields its last offset.
            for tp in reader.position([TopicPartition(topic, p) for p in list(todo)]):
                if tp.offset >= ends[tp.partition]:
                    todo.discard(tp.partition)
    finally:
        reader.unassign()
    return count


# Errors of a topic whose metadata is still settling (created a moment ago): ask again.
_METADATA_SETTLING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
    }
)


def _end_offset(reader: Consumer, tp: TopicPartition, deadline: float) -> int:
    """The partition's end (the LSO: the reader is read_committed); retries what Kafka calls
    retriable (a topic created a moment ago may not have a known leader yet)."""
    while True:
        try:
            _, high = reader.get_watermark_offsets(tp, timeout=10)
            return int(high)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            settling = isinstance(error, KafkaError) and error.code() in _METADATA_SETTLING
            if not (settling or kafka_transient(exc)) or time.monotonic() > deadline:
                raise ServiceUnavailableError(
                    f"Expected the end offset of {tp.topic}/{tp.partition}, but: {exc}"
                ) from exc
            log.info("end offset of %s/%d not available yet: %s", tp.topic, tp.partition, exc)
            time.sleep(0.1)  # the broker's metadata catches up


def _load_snapshots(
    reader: Consumer, topic: str, partitions: list[int], deadline: float
) -> tuple[dict[int, dict[bytes, bytes]], int]:
    """The newest value per key of each partition (a tombstone removes the key)."""
    latest: dict[int, dict[bytes, bytes]] = {p: {} for p in partitions}

    def keep(p: int, key: bytes | None, value: bytes | None, offset: int) -> None:
        if key is None:
            return
        if value is None:
            latest[p].pop(key, None)
        else:
            latest[p][key] = value

    count = _read(reader, topic, dict.fromkeys(partitions, 0), keep, deadline)
    return latest, count


def _restore(table: RunTable, records: dict[bytes, bytes]) -> int | None:
    """Fills ``table`` from a partition's records; returns the checkpoint's runs offset
    (``None``: no checkpoint, the records alone do not say where the tail starts)."""
    checkpoint: int | None = None
    for key, value in records.items():
        record = decode_snapshot(value)
        if key == CHECKPOINT_KEY:
            if not isinstance(record, SnapshotCheckpoint):
                raise SnapshotFormatError(
                    f"Expected a checkpoint under the checkpoint key: {key!r}"
                )
            checkpoint = record.runs_offset
            continue
        if isinstance(record, SnapshotCheckpoint):
            raise SnapshotFormatError(
                f"Expected a run snapshot under key {key!r}, but a checkpoint"
            )
        run_id = key.decode()
        if isinstance(record, RunState) and record.run_id != run_id:
            raise SnapshotFormatError(
                f"Expected the snapshot of run {run_id!r}, but it holds run {record.run_id!r}"
            )
        table.put_entry(run_id, record)
    return checkpoint


def _folder(
    tables: dict[int, RunTable], report: RecoveryReport, strict: set[int], broken: dict[int, str]
) -> Callable[[int, bytes | None, bytes | None, int], None]:
    def apply(p: int, key: bytes | None, value: bytes | None, offset: int) -> None:
        if p in broken or value is None:
            return
        report.events_read += 1
        try:
            event = decode(value)
        except SchemaError as exc:
            # Only the scheduler writes this topic; an unreadable record is a bug to surface, but
            # refusing to start would stop every run of the partition.
            log.error("skipping unreadable run-log record at %d/%d: %s", p, offset, exc)
            return
        if not isinstance(event, RUN_EVENT_TYPES):
            log.error("skipping a %s at %d/%d: not a run event", type(event).__name__, p, offset)
            return
        run_event: RunEvent = event
        table = tables[p]
        last = table.last_seq(run_event.run_id)
        if last is not None and run_event.seq <= last:
            return  # already in the snapshot (or applied: redelivered record)
        try:
            state = evolve(table.get(run_event.run_id), run_event)
        except EvolveError as exc:
            if p in strict:
                raise
            broken[p] = f"the tail does not continue the snapshot at offset {offset}: {exc}"
            return
        table.put(state, recent=False)
        report.events_applied += 1

    return apply


def recover_partitions(
    settings: Settings,
    catalog: TopicCatalog,
    partitions: Iterable[int],
    *,
    kept: int = 128,
    use_snapshots: bool = True,
    timeout: float = 120.0,
) -> Recovery:
    """Rebuilds the run tables of ``partitions`` (see the module docstring)."""
    wanted = sorted(set(partitions))
    started = time.monotonic()
    deadline = started + timeout
    report = RecoveryReport(partitions=wanted)
    tables = {p: RunTable(kept) for p in wanted}
    if not wanted:
        return Recovery(tables, report)
    runs_topic = catalog.runs.topic
    reader = _reader(settings)
    try:
        starts = dict.fromkeys(wanted, 0)
        if use_snapshots:
            latest, report.snapshot_records = _load_snapshots(
                reader, catalog.scheduler_state.topic, wanted, deadline
            )
            for p in wanted:
                if not latest[p]:
                    continue
                try:
                    offset = _restore(tables[p], latest[p])
                except (SnapshotFormatError, UnicodeDecodeError) as exc:
                    _fallback(report, tables, p, kept, f"unreadable snapshot: {exc}")
                    continue
                if offset is None:
                    # Records of a first cycle that never completed: start from the log.
                    log.warning("partition %d has snapshot records but no checkpoint", p)
                    tables[p] = RunTable(kept)
                    continue
                starts[p] = offset
                report.from_snapshot.append(p)
            report.snapshot_s = time.monotonic() - started
        folding = time.monotonic()
        broken: dict[int, str] = {}
        strict = {p for p in wanted if p not in report.from_snapshot}
        _read(reader, runs_topic, starts, _folder(tables, report, strict, broken), deadline)
        if broken:
            for p, why in broken.items():
                report.from_snapshot.remove(p)
                _fallback(report, tables, p, kept, why)
            _read(
                reader,
                runs_topic,
                dict.fromkeys(broken, 0),
                _folder(tables, report, set(broken), {}),
                deadline,
            )
        report.fold_s = time.monotonic() - folding
    finally:
        reader.close()
    report.full_fold = [p for p in wanted if p not in report.from_snapshot]
    report.active_runs = sum(len(t.active) for t in tables.values())
    report.finished_runs = sum(len(t.finished) for t in tables.values())
    report.seconds = time.monotonic() - started
    log.info("recovered %s %s", runs_topic, report.summary())
    return Recovery(tables, report)


def _fallback(
    report: RecoveryReport, tables: dict[int, RunTable], p: int, kept: int, why: str
) -> None:
    report.fallbacks[p] = why
    tables[p] = RunTable(kept)
    log.error(
        "NOT using the snapshot of scheduler-state partition %d (%s): folding the whole run log "
        "of the partition instead (slower, still correct)",
        p,
        why,
    )
