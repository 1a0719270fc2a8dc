"""The scheduler's view of registered workflow versions, read from the compacted topic.

Every scheduler instance reads all partitions of ``workflows`` (a registered version is needed
wherever its runs land). A ``StartRun`` naming a version this view has not seen yet triggers a
catch-up to the topic's high watermarks before the command is judged, so a run started right
after its workflow was registered is not rejected by a race.
"""

from __future__ import annotations

import logging

from foundation.settings import Settings
from schemas import decode
from schemas.errors import SchemaError
from schemas.models import WorkflowRegistered
from streams.table import TopicTableReader
from streams.topics import TopicCatalog

log = logging.getLogger(__name__)


class WorkflowsView:
    def __init__(self, settings: Settings, catalog: TopicCatalog | None = None) -> None:
        self.catalog = catalog or TopicCatalog.from_settings(settings)
        self.topic = self.catalog.workflows.topic
        self._versions: dict[str, dict[int, WorkflowRegistered]] = {}
        self._reader = TopicTableReader(
            settings, self.topic, self._apply, name="scheduler-workflows"
        )

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
        return self._reader.poll(timeout)

    def catch_up(self, timeout: float = 10.0) -> None:
        self._reader.catch_up(timeout)

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
        self._reader.drain()
        found = self.get(workflow_id, version)
        if found is None:
            self.catch_up()
            found = self.get(workflow_id, version)
        return found

    def close(self) -> None:
        self._reader.close()
