"""Run-state snapshots on the compacted ``scheduler-state`` topic, written in the batch transaction.

Recovery (:mod:`processors.scheduler.runtime.recovery`) reads a partition's snapshots and folds
only the tail of ``runs`` that they do not cover. What makes that correct:

- **Atomic with the events.** A snapshot cycle produces its records inside the scheduler's open
  Kafka transaction, at the start of a batch, before the batch writes any run event. The records
  hold the *committed* states (as of the previous transaction), and they commit or abort together
  with the batch: read_committed readers never see a snapshot of a state that was rolled back.
- **One record per run** (key = run id, same partition number as the run's events): the run's
  full state while it is active, a :class:`~processors.scheduler.runtime.run_table.FinishedRun`
  marker once it finished. Compaction keeps the newest record of each run.
- **A checkpoint per partition** (key :data:`CHECKPOINT_KEY`, written to that partition): the
  ``runs`` offset from which the tail must be folded, written only in a cycle that wrote every
  run of the partition that changed since its last record. Its value is the partition's last
  stable offset (ListOffsets, read_committed) as the broker computed it while this transaction
  had not committed yet: then it is at most the first offset of this transaction's events (open
  transactions hold the LSO back; events not produced yet come later). So every event before it
  is in a committed state the cycle wrote or an earlier record holds, and every event at or
  after it is in a snapshot (recovery skips it: ``seq <= last_seq``) or in the tail. The request
  is sent when the cycle starts and answered before the commit, so its round trip overlaps the
  batch; an end offset that is stale (smaller) only makes the tail longer.
- **Fenced like the events.** A cycle without consumed input still commits the consumer group's
  current positions with it, so a scheduler that lost its partitions cannot commit snapshots
  (``send_offsets_to_transaction`` checks the group generation).

A run whose record would exceed the largest record the producer may send
(``max_record_bytes``: a run of a thousand steps can) is left out, and its partition gets no
checkpoint in that cycle, so recovery folds that partition from its previous checkpoint: longer,
still exact. Before this, the oversized record failed the whole transaction and the batch was
retried in the loop's isolation mode (no snapshots), batch after batch. Once the run finishes,
its small marker is written and checkpoints move on.

A cycle runs when the interval has passed and some run changed, and writes at most ``chunk``
records (the first cycle after folding a long history writes a marker for every finished run:
spread over several batches); a partial cycle leaves its partitions' checkpoints where they were
and the next batch continues it.

Format (version :data:`SNAPSHOT_VERSION`): JSON objects ``{"v": 1, "kind": ...}`` with kind
``"run"`` (``state``: :meth:`RunState.to_snapshot` form), ``"finished"`` (``status``,
``last_seq``, ``idempotency_key``) or ``"checkpoint"`` (``runs_offset``). JSON, not Avro: the
records are the scheduler's private state (nobody else reads them), the state model changes with
the scheduler, and the version says when a reader must not trust them. A reader that meets
another version raises :class:`SnapshotFormatError`; recovery then folds the partition's whole
run log instead, and says so loudly.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from foundation.errors import NonRetryableError
from processors.scheduler.runtime.run_table import FinishedRun, RunTable, TableEntry
from processors.scheduler.state import RunState, RunStatus
from streams.producer import Producer

__all__ = [
    "CHECKPOINT_KEY",
    "RECORD_OVERHEAD",
    "SNAPSHOT_VERSION",
    "EndsRequest",
    "SnapshotCheckpoint",
    "SnapshotCycle",
    "SnapshotFormatError",
    "SnapshotRecord",
    "SnapshotWriter",
    "decode_snapshot",
    "encode_checkpoint",
    "encode_entry",
    "fast_marker",
]

log = logging.getLogger(__name__)

RECORD_OVERHEAD: Final = 512
"""Bytes a record costs beyond its key and value (headers, batch framing), counted against the
producer's ``message.max.bytes`` like the scheduler's other records."""

SNAPSHOT_VERSION: Final = 1
CHECKPOINT_KEY: Final = b"\x00checkpoint"
"""Not a run id (run ids are UUIDs or derived from idempotency keys): one per partition."""
DEFAULT_CHUNK: Final = 10_000


class SnapshotFormatError(NonRetryableError):
    """A snapshot record this scheduler cannot read (another version, or damaged)."""

    error_class = "SnapshotFormat"


@dataclass(frozen=True, slots=True)
class SnapshotCheckpoint:
    runs_offset: int
    """Fold ``runs`` from here; everything before is in the partition's snapshot records."""


SnapshotRecord = RunState | FinishedRun | SnapshotCheckpoint


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def encode_entry(entry: TableEntry) -> bytes:
    if isinstance(entry, FinishedRun):
        return _dumps(
            {
                "v": SNAPSHOT_VERSION,
                "kind": "finished",
                "status": entry.status.value,
                "last_seq": entry.last_seq,
                "idempotency_key": entry.idempotency_key,
            }
        )
    # model_dump_json is to_snapshot() (JSON mode) serialised by pydantic-core: same data, faster.
    prefix = b'{"v":%d,"kind":"run","state":' % SNAPSHOT_VERSION
    return prefix + entry.model_dump_json().encode() + b"}"


def encode_checkpoint(runs_offset: int) -> bytes:
    if runs_offset < 0:
        raise ValueError(f"Expected a runs offset for a checkpoint, but got {runs_offset}")
    return _dumps({"v": SNAPSHOT_VERSION, "kind": "checkpoint", "runs_offset": runs_offset})


# Recovery decodes one marker per finished run ever: the exact bytes encode_entry writes for a
# marker without idempotency key are parsed without the JSON module (~5x faster); anything else
# takes the general path below.
_MARKER = re.compile(
    rb'\{"v":%d,"kind":"finished","status":"([a-z_]+)","last_seq":(\d+),"idempotency_key":null\}\Z'
    % SNAPSHOT_VERSION
)
_STATUSES: Final = {status.value.encode(): status for status in RunStatus}


def fast_marker(value: bytes) -> FinishedRun | None:
    """The marker, if ``value`` is exactly what :func:`encode_entry` writes for one without an
    idempotency key; ``None``: use :func:`decode_snapshot`."""
    match = _MARKER.match(value)
    if match is None:
        return None
    status = _STATUSES.get(match.group(1))
    return None if status is None else FinishedRun(status, int(match.group(2)), None)


def decode_snapshot(value: bytes) -> SnapshotRecord:
    """One record's value; raises :class:`SnapshotFormatError` for anything but version 1."""
    marker = fast_marker(value)
    if marker is not None:
        return marker
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise SnapshotFormatError(f"Expected a JSON snapshot record, but: {exc}") from exc
    if not isinstance(data, dict):
        raise SnapshotFormatError(f"Expected a JSON object, but got {type(data).__name__}")
    version = data.get("v")
    if version != SNAPSHOT_VERSION:
        raise SnapshotFormatError(
            f"Expected snapshot format version {SNAPSHOT_VERSION}, but got {version!r} "
            "(written by another scheduler version)"
        )
    kind = data.get("kind")
    try:
        if kind == "finished":
            return FinishedRun(
                RunStatus(data["status"]), int(data["last_seq"]), data.get("idempotency_key")
            )
        if kind == "run":
            return RunState.from_snapshot(data["state"])
        if kind == "checkpoint":
            runs_offset = int(data["runs_offset"])
            if runs_offset < 0:
                # Written from a -1001 end-offset answer (a killed leader, before the fix of
                # ADR 0018's 2026-12-07 addendum): not a position; the partition is folded
                # from offset 0 instead of read from "offset -1001" (never reaching its end).
                raise ValueError(f"runs_offset {runs_offset} is not an offset")
            return SnapshotCheckpoint(runs_offset)
    except (KeyError, TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise SnapshotFormatError(f"Expected a valid {kind!r} snapshot record, but: {exc}") from exc
    raise SnapshotFormatError(f"Expected a snapshot record kind, but got {kind!r}")


@dataclass
class SnapshotCycle:
    """What one cycle produced in the open transaction (applied once it commits)."""

    written: dict[int, list[str]] = field(default_factory=dict)
    complete: list[int] = field(default_factory=list)
    """Partitions whose every changed run is in this cycle: they get a checkpoint."""
    ends: Callable[[], Mapping[int, int]] | None = None
    """Where those ``runs`` partitions end (asked for when the cycle started)."""
    checkpoints: dict[int, int] = field(default_factory=dict)
    """partition -> runs offset of the checkpoint written (by :meth:`SnapshotWriter.finish`)."""
    oversized: list[str] = field(default_factory=list)
    """Runs left out: their record is over ``max_record_bytes`` (they stay dirty)."""
    bytes: int = 0

    @property
    def records(self) -> int:
        return sum(len(ids) for ids in self.written.values()) + len(self.checkpoints)


EndsRequest = Callable[[list[int]], Callable[[], Mapping[int, int]]]
"""``request(partitions)`` asks where those ``runs`` partitions end (the last stable offset) and
returns how to get the answer: any answer the broker computed before this transaction commits
is a valid checkpoint (see the module docstring), so the round trip overlaps the batch."""


class SnapshotWriter:
    """Decides when a cycle is due and produces it; see the module docstring."""

    def __init__(
        self,
        topic: str,
        interval_s: float,
        *,
        chunk: int = DEFAULT_CHUNK,
        clock: Callable[[], float] = time.monotonic,
        max_record_bytes: int | None = None,
    ) -> None:
        self.topic = topic
        self.interval_s = interval_s
        self.chunk = max(1, chunk)
        self.clock = clock
        self.max_record_bytes = max_record_bytes
        """Records larger than this (value + key + overhead) are not sent (module docstring)."""
        self._last = clock()
        self._unfinished = False
        self._warned: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def due(self, tables: Mapping[int, RunTable]) -> bool:
        if not self.enabled or not any(t.dirty for t in tables.values()):
            return False
        return self._unfinished or self.clock() - self._last >= self.interval_s

    def write(
        self, producer: Producer, tables: Mapping[int, RunTable], request_ends: EndsRequest
    ) -> SnapshotCycle:
        """Produce the records of the runs that changed, from the committed states (call in the
        open transaction, before the batch changes the tables); :meth:`finish` adds the
        checkpoints before the transaction commits."""
        cycle = SnapshotCycle()
        budget = self.chunk
        unfinished = False
        dirty = [p for p in sorted(tables) if tables[p].dirty]
        for partition in dirty:
            table = tables[partition]
            if budget <= 0:
                unfinished = True
                break
            ids = list(table.dirty) if len(table.dirty) <= budget else list(table.dirty)[:budget]
            written: list[str] = []
            for run_id in ids:
                entry = table.entry(run_id)
                if entry is None:
                    continue  # cannot happen: a dirty run is in its table
                value = encode_entry(entry)
                if self._too_large(run_id, value):
                    cycle.oversized.append(run_id)
                    continue
                producer.send(self.topic, run_id, value, partition=partition)
                cycle.bytes += len(value)
                written.append(run_id)
            cycle.written[partition] = written
            budget -= len(ids)
            if len(written) == len(table.dirty):
                cycle.complete.append(partition)
            elif len(ids) < len(table.dirty):
                unfinished = True  # the budget ran out; an oversized run alone does not hurry
        if cycle.complete:
            cycle.ends = request_ends(cycle.complete)
        self._unfinished = unfinished
        self._last = self.clock()
        return cycle

    def _too_large(self, run_id: str, value: bytes) -> bool:
        if self.max_record_bytes is None:
            return False
        size = len(value) + len(run_id) + RECORD_OVERHEAD
        if size <= self.max_record_bytes:
            self._warned.discard(run_id)
            return False
        if run_id not in self._warned:  # once per run, not every cycle
            self._warned.add(run_id)
            log.warning(
                "run %s: its %d-byte snapshot is over the %d-byte record limit; not "
                "snapshotted while it runs (its partition recovers from the previous checkpoint)",
                run_id,
                size,
                self.max_record_bytes,
            )
        return True

    def finish(self, producer: Producer, cycle: SnapshotCycle) -> None:
        """The checkpoints of the cycle's complete partitions (call before the commit)."""
        if cycle.ends is None:
            return
        ends = cycle.ends()
        for partition in cycle.complete:
            end = ends[partition]
            producer.send(self.topic, CHECKPOINT_KEY, encode_checkpoint(end), partition=partition)
            cycle.checkpoints[partition] = end

    @staticmethod
    def committed(cycle: SnapshotCycle, tables: Mapping[int, RunTable]) -> None:
        """The cycle's transaction committed: its runs are clean (until they change again, which
        the batch of the same transaction marks after this)."""
        for partition, ids in cycle.written.items():
            table = tables.get(partition)
            if table is not None:
                table.dirty.difference_update(ids)
