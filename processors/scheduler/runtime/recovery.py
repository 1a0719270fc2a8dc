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

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

# The admin package re-exports it without __all__ (as streams.admin notes for its imports).
from confluent_kafka.admin._listoffsets import OffsetSpec

from foundation.errors import ServiceUnavailableError
from foundation.settings import Settings
from processors.scheduler.evolve import RUN_EVENT_TYPES, EvolveError, RunEvent, evolve
from processors.scheduler.runtime.run_table import RunTable
from processors.scheduler.runtime.snapshots import (
    CHECKPOINT_KEY,
    SnapshotCheckpoint,
    SnapshotFormatError,
    decode_snapshot,
    fast_marker,
)
from processors.scheduler.state import RunState
from schemas import decode
from schemas.errors import SchemaError
from streams.admin import admin_client
from streams.consumer import consume_available, kafka_transient
from streams.security import kafka_client_config
from streams.topics import TopicCatalog

__all__ = [
    "Recovery",
    "RecoveryReport",
    "end_offsets",
    "recover_partitions",
    "request_end_offsets",
]

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
    offsets_s: float = 0.0
    """Asking the broker where both topics end."""
    snapshot_s: float = 0.0
    fold_s: float = 0.0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"partitions {self.partitions} (end offsets {self.offsets_s:.2f}s): "
            f"{len(self.from_snapshot)} from a snapshot "
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
            **kafka_client_config(settings),
            "group.id": f"{settings.topic_prefix}.scheduler-recovery-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            # The end of a partition is a transaction marker: reaching it takes one more fetch,
            # which should not wait for data that will not come.
            "fetch.wait.max.ms": 10,
        }
    )


def _read(
    reader: Consumer, topic: str, starts: dict[int, int], ends: dict[int, int], deadline: float
) -> Iterator[list[Message]]:
    """Batches of the records of ``topic`` partitions from ``starts`` to ``ends``, in offset
    order per partition; error events are left out."""
    ends = {p: ends[p] for p, start in starts.items() if ends[p] > start}
    if not ends:
        return
    reader.assign([TopicPartition(topic, p, starts[p]) for p in sorted(ends)])
    todo = set(ends)
    try:
        while todo:
            if time.monotonic() > deadline:
                at = {
                    tp.partition: tp.offset
                    for tp in reader.position([TopicPartition(topic, p) for p in sorted(todo)])
                }
                raise ServiceUnavailableError(
                    f"Expected to read {topic} partitions {sorted(todo)} to their end in time, "
                    "but the recovery deadline passed (partition: position/end "
                    f"{ {p: f'{at.get(p)}/{ends[p]}' for p in sorted(todo)} })"
                )
            # Returns as soon as records are there (consume(n, t) would wait for all n).
            batch = [m for m in consume_available(reader, 10_000, 0.05) if m.error() is None]
            last: dict[int, int] = {}
            for message in batch:
                last[message.partition() or 0] = message.offset() or 0
            for p, offset in last.items():
                if offset + 1 >= ends[p]:
                    todo.discard(p)
            # A partition whose tail is transaction markers never yields its last offset.
            for tp in reader.position([TopicPartition(topic, p) for p in list(todo)]):
                if tp.offset >= ends[tp.partition]:
                    todo.discard(tp.partition)
            if batch:
                yield batch
    finally:
        reader.unassign()


# Errors of a topic whose metadata is still settling (created a moment ago): ask again.
_METADATA_SETTLING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
    }
)
# After a broker restart the partition leaders' epochs move on (seen in the chaos test).
_STALE_LEADER_EPOCH = frozenset({KafkaError.FENCED_LEADER_EPOCH, KafkaError.UNKNOWN_LEADER_EPOCH})


def _code(exc: KafkaException) -> int | None:
    error = exc.args[0] if exc.args else None
    return error.code() if isinstance(error, KafkaError) else None


def request_end_offsets(
    admin: AdminClient, topics: Iterable[str], partitions: Iterable[int], *, timeout: float
) -> Callable[[], dict[str, dict[int, int]]]:
    """Asks now (one request) where each partition ends, as a read_committed reader sees it (the
    last stable offset); the returned function waits for the answer, retrying while a topic
    created a moment ago has no known leader yet."""
    deadline = time.monotonic() + timeout
    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # untyped in the library
    wanted = {TopicPartition(t, p): latest for t in topics for p in partitions}

    def ask() -> dict[TopicPartition, Future[Any]]:
        futures: dict[TopicPartition, Future[Any]] = admin.list_offsets(
            wanted, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=10
        )
        return futures

    asked = ask()

    def refresh_metadata() -> None:
        # The admin client keeps the leaders and leader epochs it cached before a broker
        # failed, and list_offsets alone never refreshes them (measured: failing for minutes
        # after a restart, and asking a killed leader until the request times out); a metadata
        # request does. Refreshed before giving up too: the caller's next request then asks
        # the current leaders.
        for topic in {tp.topic for tp in wanted}:
            with contextlib.suppress(KafkaException):
                admin.list_topics(topic, timeout=5)

    def answer() -> dict[str, dict[int, int]]:
        futures = asked
        while True:
            try:
                ends: dict[str, dict[int, int]] = {}
                for tp, future in futures.items():
                    ends.setdefault(tp.topic, {})[tp.partition] = int(future.result().offset)
            except KafkaException as exc:
                if _code(exc) in _STALE_LEADER_EPOCH:
                    refresh_metadata()
                _retry_or_raise(exc, wanted, deadline)
                futures = ask()
                continue
            unknown = sorted(
                f"{t}/{p}" for t, by in ends.items() for p, end in by.items() if end < 0
            )
            if not unknown:
                return ends
            # A partition whose cached leader was killed is answered with no error and offset
            # -1001 once the request times out: not an end. Taken as one, the partition would
            # be recovered as empty (found by the cluster fault test, ADR 0065).
            refresh_metadata()
            if time.monotonic() > deadline:
                raise ServiceUnavailableError(
                    f"Expected the end offsets of {unknown}, but their leaders did not answer"
                )
            log.info("end offsets not available yet: no answer for %s", unknown)
            futures = ask()

    return answer


def end_offsets(
    admin: AdminClient, topics: Iterable[str], partitions: Iterable[int], *, timeout: float
) -> dict[str, dict[int, int]]:
    """:func:`request_end_offsets`, answered."""
    return request_end_offsets(admin, topics, partitions, timeout=timeout)()


def _retry_or_raise(
    exc: KafkaException, wanted: dict[TopicPartition, Any], deadline: float
) -> None:
    settling = _code(exc) in _METADATA_SETTLING
    if not (settling or kafka_transient(exc)) or time.monotonic() > deadline:
        raise ServiceUnavailableError(
            f"Expected the end offsets of {sorted({tp.topic for tp in wanted})}, but: {exc}"
        ) from exc
    log.info("end offsets not available yet: %s", exc)
    time.sleep(0.1)  # the broker's metadata catches up


def _load_snapshots(
    reader: Consumer, topic: str, ends: dict[int, int], deadline: float
) -> tuple[dict[int, dict[bytes, bytes]], int]:
    """The newest value per key of each partition (a tombstone removes the key)."""
    latest: dict[int, dict[bytes, bytes]] = {p: {} for p in ends}
    count = 0
    for batch in _read(reader, topic, dict.fromkeys(ends, 0), ends, deadline):
        count += len(batch)
        for message in batch:
            key, value = message.key(), message.value()
            if key is None:
                continue
            if value is None:
                latest[message.partition() or 0].pop(key, None)
            else:
                latest[message.partition() or 0][key] = value
    return latest, count


def _restore(table: RunTable, records: dict[bytes, bytes]) -> int | None:
    """Fills ``table`` from a partition's records; returns the checkpoint's runs offset
    (``None``: no checkpoint, the records alone do not say where the tail starts)."""
    checkpoint: int | None = None
    finished = table.finished
    for key, value in records.items():
        marker = fast_marker(value)  # most records: one per finished run ever
        if marker is not None and key != CHECKPOINT_KEY:
            finished[key.decode()] = marker
            continue
        record = decode_snapshot(value)
        if key == CHECKPOINT_KEY:
            if not isinstance(record, SnapshotCheckpoint):
                raise SnapshotFormatError(
                    f"Expected a checkpoint under the checkpoint key, but got {record!r}"
                )
            checkpoint = record.runs_offset
            continue
        if isinstance(record, SnapshotCheckpoint):
            raise SnapshotFormatError(
                f"Expected a run snapshot under key {key!r}, but got a checkpoint"
            )
        run_id = key.decode()
        if isinstance(record, RunState) and record.run_id != run_id:
            raise SnapshotFormatError(
                f"Expected the snapshot of run {run_id!r}, but it holds run {record.run_id!r}"
            )
        table.put_entry(run_id, record)
    return checkpoint


def _fold(
    batches: Iterable[list[Message]],
    tables: dict[int, RunTable],
    report: RecoveryReport,
    strict: set[int],
    broken: dict[int, str],
) -> None:
    """Applies run events to their tables; a partition whose snapshot the tail does not continue
    goes to ``broken`` (unless ``strict``: a fold from offset 0 raises, as it always did)."""
    for batch in batches:
        for message in batch:
            p, value = message.partition() or 0, message.value()
            if p in broken or value is None:
                continue
            report.events_read += 1
            try:
                event = decode(value)
            except SchemaError as exc:
                # Only the scheduler writes this topic; an unreadable record is a bug to
                # surface, but refusing to start would stop every run of the partition.
                log.error(
                    "skipping unreadable run-log record at %d/%s: %s", p, message.offset(), exc
                )
                continue
            if not isinstance(event, RUN_EVENT_TYPES):
                log.error(
                    "skipping a %s at %d/%s: not a run event",
                    type(event).__name__,
                    p,
                    message.offset(),
                )
                continue
            run_event: RunEvent = event
            table = tables[p]
            last = table.last_seq(run_event.run_id)
            if last is not None and run_event.seq <= last:
                continue  # already in the snapshot (or applied: a redelivered record)
            try:
                state = evolve(table.get(run_event.run_id), run_event)
            except EvolveError as exc:
                if p in strict:
                    raise
                broken[p] = (
                    f"the tail does not continue the snapshot at offset {message.offset()}: {exc}"
                )
                continue
            table.put(state, recent=False)
            report.events_applied += 1


def recover_partitions(
    settings: Settings,
    catalog: TopicCatalog,
    partitions: Iterable[int],
    *,
    kept: int = 128,
    use_snapshots: bool = True,
    timeout: float = 120.0,
    admin: AdminClient | None = None,
) -> Recovery:
    """Rebuilds the run tables of ``partitions`` (see the module docstring)."""
    wanted = sorted(set(partitions))
    started = time.monotonic()
    deadline = started + timeout
    report = RecoveryReport(partitions=wanted)
    tables = {p: RunTable(kept) for p in wanted}
    if not wanted:
        return Recovery(tables, report)
    runs_topic, state_topic = catalog.runs.topic, catalog.scheduler_state.topic
    # Both ends at once: snapshots and events as of one moment (any later record of either
    # is consistent too: a snapshot never holds less than its checkpoint says).
    admin = admin or admin_client(settings, warm=True)
    ends = end_offsets(admin, (runs_topic, state_topic), wanted, timeout=timeout)
    report.offsets_s = time.monotonic() - started
    # One reader per topic: re-assigning a reader to another topic costs ~1 s before its first
    # fetch; a second one, with the topic's metadata asked for now, starts at once.
    reader, state_reader = _reader(settings), _reader(settings)
    try:
        reader.list_topics(runs_topic, timeout=10)
        starts = dict.fromkeys(wanted, 0)
        if use_snapshots:
            latest, report.snapshot_records = _load_snapshots(
                state_reader, state_topic, ends[state_topic], deadline
            )
            starts |= _restore_all(latest, tables, report, kept)
            report.snapshot_s = time.monotonic() - started - report.offsets_s
        folding = time.monotonic()
        broken: dict[int, str] = {}
        strict = {p for p in wanted if p not in report.from_snapshot}
        tail = _read(reader, runs_topic, starts, ends[runs_topic], deadline)
        _fold(tail, tables, report, strict, broken)
        if broken:
            _refold(
                settings,
                runs_topic=runs_topic,
                ends=ends[runs_topic],
                broken=broken,
                tables=tables,
                report=report,
                kept=kept,
                deadline=deadline,
            )
        report.fold_s = time.monotonic() - folding
    finally:
        state_reader.close()
        reader.close()
    report.full_fold = [p for p in wanted if p not in report.from_snapshot]
    report.active_runs = sum(len(t.active) for t in tables.values())
    report.finished_runs = sum(len(t.finished) for t in tables.values())
    report.seconds = time.monotonic() - started
    log.info("recovered %s %s", runs_topic, report.summary())
    return Recovery(tables, report)


def _restore_all(
    latest: dict[int, dict[bytes, bytes]],
    tables: dict[int, RunTable],
    report: RecoveryReport,
    kept: int,
) -> dict[int, int]:
    """Fills the tables from their snapshot records; returns where each restored partition's
    tail starts (partitions left out are folded from offset 0)."""
    starts: dict[int, int] = {}
    for p, records in latest.items():
        if not records:
            continue
        try:
            offset = _restore(tables[p], records)
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
    return starts


def _refold(
    settings: Settings,
    *,
    runs_topic: str,
    ends: dict[int, int],
    broken: dict[int, str],
    tables: dict[int, RunTable],
    report: RecoveryReport,
    kept: int,
    deadline: float,
) -> None:
    """Partitions whose tail did not continue their snapshot: folded again from offset 0."""
    for p, why in broken.items():
        report.from_snapshot.remove(p)
        _fallback(report, tables, p, kept, why)
    reader = _reader(settings)  # a fresh one (see recover_partitions)
    try:
        again = _read(reader, runs_topic, dict.fromkeys(broken, 0), ends, deadline)
        _fold(again, tables, report, set(broken), {})
    finally:
        reader.close()


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
