"""Reload one finished run's full state from the run log (a re-drive from a step reopens it).

The run table keeps a succeeded run only as a marker (status, last seq, idempotency key) once
it has left the recently finished ones (:mod:`processors.scheduler.runtime.run_table`). A
re-drive from a step needs the whole state -- graph, step outputs, attempts -- so the scheduler
folds the run's events again from its ``runs`` partition. That reads the partition from its
start (keyed records: only the run's own are decoded), once per such re-drive; a deliberate,
rare operator action, so its cost (bounded by the partition's size, the loop waits meanwhile)
is accepted rather than holding every finished run in full (docs/decisions/0026).
"""

from __future__ import annotations

import logging
import time

from confluent_kafka.admin import AdminClient

from foundation.settings import Settings
from processors.scheduler.evolve import RUN_EVENT_TYPES, EvolveError, evolve
from processors.scheduler.runtime.recovery import _read, _reader, end_offsets
from processors.scheduler.state import RunState
from schemas import decode
from schemas.errors import SchemaError

__all__ = ["reload_run"]

log = logging.getLogger(__name__)


def reload_run(
    settings: Settings,
    admin: AdminClient,
    topic: str,
    partition: int,
    run_id: str,
    *,
    timeout: float = 30.0,
) -> RunState | None:
    """The run's state folded from ``topic`` partition ``partition`` (None when the log no
    longer holds the run from its first event: retention deleted the beginning)."""
    started = time.monotonic()
    ends = end_offsets(admin, [topic], [partition], timeout=timeout).get(topic, {})
    key = run_id.encode()
    state: RunState | None = None
    reader = _reader(settings)
    try:
        for batch in _read(reader, topic, {partition: 0}, ends, started + timeout):
            for message in batch:
                value = message.value()
                if message.key() != key or value is None:
                    continue
                try:
                    event = decode(value)
                except SchemaError:
                    continue  # recovery logs these; the fold below fails if one mattered
                if isinstance(event, RUN_EVENT_TYPES):
                    state = evolve(state, event)
    except EvolveError as exc:
        log.warning("cannot reload run %s from %s/%d: %s", run_id, topic, partition, exc)
        return None
    finally:
        reader.close()
    log.info(
        "reloaded run %s from %s/%d in %.0f ms (last seq %s)",
        run_id,
        topic,
        partition,
        (time.monotonic() - started) * 1000,
        None if state is None else state.last_seq,
    )
    return state
