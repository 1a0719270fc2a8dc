"""The critic's confluent-kafka runtime: the default engine (ADR 0031 has the measurements).

faust costs ~180-200 us of CPU per trace end to end on this machine (aiokafka's fetcher,
faust's event and acking machinery); this loop costs ~3 us per trace around the critic (the
client's threads included), and the whole processor ~20 us (goal 25), so the hot path is this
loop and faust stays selectable (``engine="faust"``).

Per batch (up to 5,000 traces or 200 ms): decode and criticise every trace, produce its
diagnoses (``diagnoses``, keyed by subject) and the episode entries that changed (a compacted
``<prefix>.critic-episodes`` topic, the same changelog faust's table would keep), flush, then
commit the consumed offsets (librdkafka's offset store: the positions of every message
``consume`` returned, all judged by then): at-least-once, and a re-delivered trace gives the
same ``diagnosis_id``/``event_id``. On start the episode entries are read back from their
topic, so a restart does not announce an ongoing episode again.

After each batch the loop tells the critic's :class:`~.event_clock.PartitionClock` which
partitions are still behind their high watermark (librdkafka's cached one, no request), so a
backlog read one partition at a time does not close runs whose other traces are unread.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from foundation.settings import Settings
from processors.critic.critic import Critic
from processors.critic.event_clock import PartitionClock
from processors.critic.view import TraceViewError, view_from_json
from schemas.models import Diagnosis
from schemas.serde import encode
from streams.consumer import consumer_config
from streams.producer import Producer
from streams.topics import TopicCatalog, TopicSpec

__all__ = ["TrackedStore", "episodes_topic", "restore_episodes", "run_kafka_loop"]

log = logging.getLogger(__name__)

BATCH = 5000
POLL_S = 0.2
COMMITTED_TIMEOUT_S = 10.0


def episodes_topic(catalog: TopicCatalog) -> TopicSpec:
    return TopicSpec(
        logical="critic-episodes",
        topic=f"{catalog.prefix}.critic-episodes",
        partitions=1,
        replication=catalog.replication,
        key="episode key (kind|subject|direction or class)",
        description="the critic's open drift episodes (flood guard state), compacted",
        configs={"cleanup.policy": "compact"},
    )


class TrackedStore(MutableMapping[str, Any]):
    """A dict that remembers which keys were set since :meth:`take_dirty`."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = data or {}
        self.dirty: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        # The episode guard reads on every firing of a window condition: the mixin's get
        # (try self[key] through __getitem__) costs three times the dict's.
        return self.data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.dirty.add(key)

    def __delitem__(self, key: str) -> None:
        del self.data[key]
        self.dirty.add(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def take_dirty(self) -> list[tuple[str, Any]]:
        out = [(k, self.data.get(k)) for k in sorted(self.dirty)]
        self.dirty.clear()
        return out


def restore_episodes(settings: Settings, spec: TopicSpec, group: str) -> dict[str, Any]:
    """Every episode entry of the compacted topic, read to its end."""
    reader = Consumer(consumer_config(f"{group}.restore", settings))
    try:
        parts = [TopicPartition(spec.topic, p) for p in range(spec.partitions)]
        ends = {tp.partition: reader.get_watermark_offsets(tp, 10)[1] for tp in parts}
        entries: dict[str, Any] = {}
        if not any(ends.values()):
            return entries
        reader.assign([TopicPartition(spec.topic, p, OFFSET_BEGINNING) for p in ends])
        left = {p for p, end in ends.items() if end > 0}
        while left:
            for message in reader.consume(1000, 1.0):
                if message.error() is not None:
                    continue
                key = (message.key() or b"").decode()
                value = message.value()
                if value is None:
                    entries.pop(key, None)
                else:
                    entries[key] = json.loads(value)
                partition, offset = message.partition() or 0, message.offset() or 0
                if offset + 1 >= ends[partition]:
                    left.discard(partition)
        return entries
    finally:
        reader.close()


class _Backlog:
    """Which assigned partitions have records left to read: the position (or, before the
    first record of a partition, where reading starts: the committed offset, else the
    beginning, as ``auto.offset.reset`` is earliest) against the cached high watermark. A
    partition whose high watermark or start is not known yet counts as behind."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.starts: dict[int, int] = {}

    def settle(self, clock: PartitionClock) -> bool:
        """Tell ``clock`` which partitions are behind; True when its limit rose."""
        consumer = self.consumer
        assigned = consumer.assignment()
        if not assigned:
            return False  # nothing to judge, nothing known: the clock keeps holding
        owned = {tp.partition for tp in assigned}
        for partition in [p for p in self.starts if p not in owned]:
            del self.starts[partition]
        unknown = [tp for tp in assigned if tp.partition not in self.starts]
        if unknown:
            self._learn_starts(unknown)
        behind = []
        for tp in consumer.position(assigned):
            low, high = consumer.get_watermark_offsets(tp, cached=True)
            at = tp.offset
            if at < 0:  # nothing read from it yet: where reading starts
                at = self.starts.get(tp.partition, -1)
                if at == OFFSET_BEGINNING:
                    at = low
            if high < 0 or at < 0 or at < high:
                behind.append(tp.partition)
        return clock.settle(behind, owned)

    def _learn_starts(self, partitions: Sequence[TopicPartition]) -> None:
        try:
            committed = self.consumer.committed(list(partitions), timeout=COMMITTED_TIMEOUT_S)
        except KafkaException as exc:
            # Behind until known: runs close a little later, never half-read.
            log.warning("critic: reading the committed offsets failed (%s); will retry", exc)
            return
        for tp in committed:
            self.starts[tp.partition] = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING


def _judge(
    messages: list[Message],
    critic: Critic,
    producer: Producer,
    catalog: TopicCatalog,
    stats: Any,
) -> int:
    """Criticise one batch and queue its diagnoses; returns the records consumed."""
    observe, clock = critic.observe, critic.clock
    consumed = 0
    for message in messages:
        if message.error() is not None:
            continue
        consumed += 1
        try:
            view = view_from_json(message.value() or b"")
        except TraceViewError as exc:
            stats.malformed += 1
            log.warning("critic: skipping a malformed trace: %s", exc)
            continue
        clock.read(message.partition() or 0, view.end_ms)
        try:
            diagnoses = observe(view)
        except Exception:
            # A bug for this one trace must not stop the stream (ADR 0011): the same
            # batch would fail again after every restart.
            stats.failed += 1
            log.exception("critic: a trace of run %s could not be judged", view.run_id)
            continue
        if diagnoses:
            _publish(diagnoses, producer, catalog, stats)
    return consumed


def _advance(critic: Critic, producer: Producer, catalog: TopicCatalog, stats: Any) -> None:
    try:
        diagnoses = critic.advance()
    except Exception:
        stats.failed += 1  # as for one trace (ADR 0011): the stream goes on
        log.exception("critic: analysing the runs that became quiet failed")
        return
    _publish(diagnoses, producer, catalog, stats)


def _publish(
    diagnoses: list[Diagnosis], producer: Producer, catalog: TopicCatalog, stats: Any
) -> None:
    for diagnosis in diagnoses:
        producer.send(catalog.diagnoses.topic, diagnosis.subject, encode(diagnosis))
        stats.published += 1
        log.info("critic: %s %s: %s", diagnosis.kind, diagnosis.subject, diagnosis.explanation)


def run_kafka_loop(
    settings: Settings,
    catalog: TopicCatalog,
    critic_factory: Any,
    group: str,
    *,
    stats: Any,
    stop_event: threading.Event,
) -> Critic:
    """Consume ``traces`` until ``stop_event``; ``critic_factory(store)`` builds the critic over
    the restored episode store. Returns the critic (tests and benchmarks read its stats)."""
    spec = episodes_topic(catalog)
    store = TrackedStore(restore_episodes(settings, spec, group))
    critic: Critic = critic_factory(store)
    # librdkafka stores each returned message's offset (auto offset store) and ``commit()``
    # commits those positions: the same offsets the loop would collect, without five calls into
    # the client per message. Everything consume() returned is judged before the commit.
    consumer = Consumer(
        consumer_config(group, settings, {"fetch.min.bytes": 1, "enable.auto.offset.store": True})
    )
    producer = Producer(settings, client_id=f"{group}-producer")
    try:
        clock = critic.clock
        clock.hold()
        # Partitions just given to this consumer: where they stand is known after the next
        # batch; until then nothing closes by time (the library assigns after the callback).
        consumer.subscribe([catalog.traces.topic], on_assign=lambda _c, _p: clock.hold())
        stats.started = True
        backlog = _Backlog(consumer)
        while not stop_event.is_set():
            messages = consumer.consume(BATCH, POLL_S)
            consumed = _judge(messages, critic, producer, catalog, stats)
            stats.consumed += consumed
            if backlog.settle(clock):
                # A partition behind caught up: runs quiet by now close with no new trace.
                _advance(critic, producer, catalog, stats)
            elif not consumed:
                continue
            for key, entry in store.take_dirty():
                value = None if entry is None else json.dumps(entry, sort_keys=True).encode()
                producer.send(spec.topic, key, value)
            # Diagnoses and episode state acknowledged before the offsets move on.
            producer.flush()
            if consumed:
                try:
                    consumer.commit(asynchronous=False)
                except KafkaException as exc:
                    # Nothing new stored (the partitions moved away meanwhile): nothing to do.
                    if exc.args[0].code() != KafkaError._NO_OFFSET:
                        raise
        return critic
    finally:
        consumer.close()
        producer.close()
