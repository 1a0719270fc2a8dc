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
  ``runs`` offset from which the tail must be folded. It is the partition's end offset read
  *before* the transaction writes any event, and it is written only in a cycle that wrote every
  run of the partition that changed since its last record. So every event at or after it is
  either already in a snapshot (recovery skips it: ``seq <= last_seq``) or in the tail; every
  event before it is in a snapshot. Reading an end offset that is stale (smaller) only makes the
  tail longer.
- **Fenced like the events.** A cycle without consumed input still commits the consumer group's
  current positions with it, so a scheduler that lost its partitions cannot commit snapshots
  (``send_offsets_to_transaction`` checks the group generation).

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
    "SNAPSHOT_VERSION",
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
            return SnapshotCheckpoint(int(data["runs_offset"]))
    except (KeyError, TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise SnapshotFormatError(f"Expected a valid {kind!r} snapshot record, but: {exc}") from exc
    raise SnapshotFormatError(f"Expected a snapshot record kind, but got {kind!r}")


@dataclass
class SnapshotCycle:
    """What one cycle produced in the open transaction (applied once it commits)."""

    written: dict[int, list[str]] = field(default_factory=dict)
    checkpoints: dict[int, int] = field(default_factory=dict)
    """partition -> runs offset of the checkpoint written (complete partitions only)."""
    bytes: int = 0

    @property
    def records(self) -> int:
        return sum(len(ids) for ids in self.written.values()) + len(self.checkpoints)


class SnapshotWriter:
    """Decides when a cycle is due and produces it; see the module docstring."""

    def __init__(
        self,
        topic: str,
        interval_s: float,
        *,
        chunk: int = DEFAULT_CHUNK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topic = topic
        self.interval_s = interval_s
        self.chunk = max(1, chunk)
        self.clock = clock
        self._last = clock()
        self._unfinished = False

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def due(self, tables: Mapping[int, RunTable]) -> bool:
        if not self.enabled or not any(t.dirty for t in tables.values()):
            return False
        return self._unfinished or self.clock() - self._last >= self.interval_s

    def write(
        self,
        producer: Producer,
        tables: Mapping[int, RunTable],
        runs_ends: Callable[[list[int]], Mapping[int, int]],
    ) -> SnapshotCycle:
        """Produce the records of the runs that changed (call before the batch writes events).

        ``runs_ends(partitions)``: the end offsets of those ``runs`` partitions now (the
        checkpoints; one request for all).
        """
        cycle = SnapshotCycle()
        budget = self.chunk
        unfinished = False
        dirty = [p for p in sorted(tables) if tables[p].dirty]
        # Read before this transaction writes any event.
        ends = runs_ends(dirty) if dirty else {}
        for partition in dirty:
            table = tables[partition]
            if budget <= 0:
                unfinished = True
                break
            end = ends[partition]
            ids = list(table.dirty) if len(table.dirty) <= budget else list(table.dirty)[:budget]
            for run_id in ids:
                entry = table.entry(run_id)
                if entry is None:
                    continue  # cannot happen: a dirty run is in its table
                value = encode_entry(entry)
                producer.send(self.topic, run_id, value, partition=partition)
                cycle.bytes += len(value)
            cycle.written[partition] = ids
            budget -= len(ids)
            if len(ids) == len(table.dirty):
                producer.send(
                    self.topic, CHECKPOINT_KEY, encode_checkpoint(end), partition=partition
                )
                cycle.checkpoints[partition] = end
            else:
                unfinished = True
        self._unfinished = unfinished
        self._last = self.clock()
        return cycle

    @staticmethod
    def committed(cycle: SnapshotCycle, tables: Mapping[int, RunTable]) -> None:
        """The cycle's transaction committed: its runs are clean (until they change again, which
        the batch of the same transaction marks after this)."""
        for partition, ids in cycle.written.items():
            table = tables.get(partition)
            if table is not None:
                table.dirty.difference_update(ids)
