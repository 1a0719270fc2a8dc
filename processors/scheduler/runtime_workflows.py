"""The scheduler's view of registered workflow versions, read from the compacted topic.

Every scheduler instance reads all partitions of ``workflows`` (a registered version is needed
wherever its runs land). A ``StartRun`` naming a version this view has not seen yet triggers a
catch-up to the topic's high watermarks before the command is judged, so a run started right
after its workflow was registered is not rejected by a race.
"""

from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from reflux.settings import Settings
from schemas import decode
from schemas.errors import SchemaError
from schemas.models import WorkflowRegistered
from streams.catalog import TopicCatalog

log = logging.getLogger(__name__)


class WorkflowsView:
    def __init__(self, settings: Settings, catalog: TopicCatalog | None = None) -> None:
        self.catalog = catalog or TopicCatalog.from_settings(settings)
        self.topic = self.catalog.workflows.topic
        self._versions: dict[str, dict[int, WorkflowRegistered]] = {}
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                # Never used to commit: the view always reads the compacted topic from the start.
                "group.id": f"{settings.topic_prefix}.scheduler-workflows-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        metadata = self._consumer.list_topics(self.topic, timeout=10)
        partitions = sorted(metadata.topics[self.topic].partitions)
        self._partitions = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions]
        self._consumer.assign(self._partitions)

    def _apply(self, data: bytes | None) -> None:
        if data is None:
            return
        try:
            record = decode(data, WorkflowRegistered)
        except SchemaError as exc:
            # The projector dead-letters these; the scheduler just cannot use them.
            log.warning("ignoring an unreadable workflows record: %s", exc)
            return
        self._versions.setdefault(record.workflow_id, {})[record.version] = record

    def poll(self, timeout: float = 0.0) -> int:
        messages = self._consumer.consume(num_messages=500, timeout=timeout)
        for message in messages:
            if message.error() is None:
                self._apply(message.value())
        return len(messages)

    def catch_up(self, timeout: float = 10.0) -> None:
        """Reads until every partition reached the high watermark seen now."""
        targets = {}
        for tp in self._partitions:
            _, high = self._consumer.get_watermark_offsets(tp, timeout=5)
            targets[tp.partition] = high
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            positions = self._consumer.position([TopicPartition(self.topic, p) for p in targets])
            if all(
                tp.offset >= targets[tp.partition] or targets[tp.partition] == 0 for tp in positions
            ):
                return
            self.poll(timeout=0.1)

    def get(self, workflow_id: str, version: int | None = None) -> WorkflowRegistered | None:
        versions = self._versions.get(workflow_id)
        if not versions:
            return None
        if version is None:
            return versions[max(versions)]
        return versions.get(version)

    def resolve(self, workflow_id: str, version: int | None) -> WorkflowRegistered | None:
        """``get`` after draining what has arrived, with one blocking catch-up when the answer
        is missing (it may be missing only because registration raced the command)."""
        self.poll(timeout=0)
        found = self.get(workflow_id, version)
        if found is None:
            self.catch_up()
            found = self.get(workflow_id, version)
        return found

    def close(self) -> None:
        self._consumer.close()
