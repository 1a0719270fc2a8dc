"""Which workflow versions are registered: the trigger router's view of the ``workflows`` topic.

Only ids and version numbers are kept (the scheduler holds the definitions). The whole topic is
read, every partition from the start (:class:`streams.table.TopicTableReader`). A miss is believed
only after a catch-up to the topic's current end, so a trigger sent right after its workflow was
registered is not refused by a race; a catch-up that cannot finish is retryable (the record is
retried, never dead-lettered for it).
"""

from __future__ import annotations

import logging

from foundation.errors import ServiceUnavailableError
from foundation.settings import Settings
from schemas import decode
from schemas.errors import SchemaError
from schemas.models import WorkflowRegistered
from streams.table import TopicTableReader

log = logging.getLogger(__name__)


class RegisteredWorkflows:
    def __init__(self, settings: Settings, topic: str) -> None:
        self._versions: dict[str, set[int]] = {}
        self._reader = TopicTableReader(settings, topic, self._apply, name="trigger-workflows")

    def _apply(self, data: bytes | None) -> None:
        if data is None:
            return
        try:
            record = decode(data, WorkflowRegistered)
        except SchemaError as exc:
            log.warning("ignoring an unreadable workflows record: %s", exc)
            return
        self._versions.setdefault(record.workflow_id, set()).add(record.version)

    def _known(self, workflow_id: str, version: int | None) -> bool:
        versions = self._versions.get(workflow_id, set())
        return bool(versions) if version is None else version in versions

    def registered(self, workflow_id: str, version: int | None = None) -> bool:
        """Whether ``workflow_id`` (any version, or ``version``) is registered."""
        self._reader.drain()
        if self._known(workflow_id, version):
            return True
        behind = self._reader.catch_up()
        if behind:
            raise ServiceUnavailableError(
                f"Expected to read the workflows topic to its end before refusing workflow "
                f"{workflow_id!r}, but partitions {behind} are still behind"
            )
        return self._known(workflow_id, version)

    def close(self) -> None:
        self._reader.close()
