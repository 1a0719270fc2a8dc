"""Rebuilding a partition's run states from the run log, the source of truth.

The scheduler keeps no separate changelog: the ``runs`` topic already is one (every state change
is an event on it), so a partition's state is ``fold`` over that partition. Reading stops at the
last stable offset (the consumer is read_committed, so the high watermark it reports is the LSO):
events of transactions that were aborted, or are still open, are not state.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from foundation.errors import ServiceUnavailableError
from foundation.settings import Settings
from processors.scheduler.evolve import RUN_EVENT_TYPES, RunEvent, evolve
from processors.scheduler.state import RunState
from schemas import decode
from schemas.errors import SchemaError

log = logging.getLogger(__name__)


def rebuild_partitions(
    settings: Settings, runs_topic: str, partitions: Iterable[int], timeout: float = 120.0
) -> dict[int, dict[str, RunState]]:
    """Folds every run of the given ``runs`` partitions into ``{partition: {run_id: state}}``."""
    wanted = sorted(set(partitions))
    states: dict[int, dict[str, RunState]] = {p: {} for p in wanted}
    if not wanted:
        return states
    reader = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"{settings.topic_prefix}.scheduler-recovery-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.max.bytes": 64 * 1024 * 1024,
        }
    )
    started = time.monotonic()
    events = 0
    try:
        ends: dict[int, int] = {}
        for p in wanted:
            _, high = reader.get_watermark_offsets(TopicPartition(runs_topic, p), timeout=10)
            ends[p] = high
        todo = {p for p in wanted if ends[p] > 0}
        reader.assign([TopicPartition(runs_topic, p, OFFSET_BEGINNING) for p in todo])
        while todo:
            if time.monotonic() - started > timeout:
                raise ServiceUnavailableError(
                    f"Rebuilding {runs_topic} partitions {sorted(todo)} took over {timeout:.0f}s"
                )
            for message in reader.consume(num_messages=1000, timeout=0.2):
                if message.error() is not None:
                    continue
                p = message.partition() or 0
                offset = message.offset() or 0
                events += _apply(states[p], message.value(), offset)
                if offset + 1 >= ends[p]:
                    todo.discard(p)
            # A partition whose tail is transaction markers never yields its last offset.
            for tp in reader.position([TopicPartition(runs_topic, p) for p in list(todo)]):
                if tp.offset >= ends[tp.partition]:
                    todo.discard(tp.partition)
    finally:
        reader.close()
    runs = sum(len(s) for s in states.values())
    log.info(
        "rebuilt %d run(s) from %d event(s) of %s%s in %.2fs",
        runs,
        events,
        runs_topic,
        wanted,
        time.monotonic() - started,
    )
    return states


def _apply(states: dict[str, RunState], data: bytes | None, offset: int) -> int:
    if data is None:
        return 0
    try:
        event = decode(data)
    except SchemaError as exc:
        # Only the scheduler writes this topic; an unreadable record is a bug to surface, but
        # refusing to start would stop every run of the partition.
        log.error("skipping unreadable run-log record at offset %d: %s", offset, exc)
        return 0
    if not isinstance(event, RUN_EVENT_TYPES):
        log.error("skipping a %s at offset %d: not a run event", type(event).__name__, offset)
        return 0
    run_event: RunEvent = event
    current = states.get(run_event.run_id)
    if current is not None and run_event.seq <= current.last_seq:
        return 0  # already applied (cannot happen with transactions; cheap to guard)
    states[run_event.run_id] = evolve(current, run_event)
    return 1
