"""Registered workflow versions, read from the compacted ``workflows`` topic as a table.

Every partition from the start (:class:`streams.table.TopicTableReader`): a registered version is
needed wherever a run, a trigger or a proposal names it. A version asked for and not seen yet
triggers one catch-up to the topic's current end before the answer is "not registered", so a
request right after a registration is not refused by a race.
"""

from __future__ import annotations

import logging

from foundation.errors import ServiceUnavailableError
from foundation.settings import Settings
from schemas import decode
from schemas.errors import SchemaError
from schemas.models import WorkflowRegistered
from streams.table import TopicTableReader

__all__ = ["WorkflowVersions"]

log = logging.getLogger(__name__)


class WorkflowVersions:
    """``workflow id -> {version: WorkflowRegistered}`` as far as the topic has been read."""

    def __init__(self, settings: Settings, topic: str, *, name: str) -> None:
        self._versions: dict[str, dict[int, WorkflowRegistered]] = {}
        self._reader = TopicTableReader(settings, topic, self._apply, name=name)

    def _apply(self, data: bytes | None) -> None:
        if data is None:
            return
        try:
            record = decode(data, WorkflowRegistered)
        except SchemaError as exc:
            # The projector dead-letters these; a reader of the table just cannot use them.
            log.warning("ignoring an unreadable workflows record: %s", exc)
            return
        self._versions.setdefault(record.workflow_id, {})[record.version] = record

    def drain(self) -> None:
        self._reader.drain()

    def versions(self, workflow_id: str) -> dict[int, WorkflowRegistered]:
        return dict(self._versions.get(workflow_id, {}))

    def _get(self, workflow_id: str, version: int | None) -> WorkflowRegistered | None:
        versions = self._versions.get(workflow_id)
        if not versions:
            return None
        return versions[max(versions)] if version is None else versions.get(version)

    def resolve(
        self, workflow_id: str, version: int | None = None, *, strict: bool = False
    ) -> WorkflowRegistered | None:
        """The version (``None``: the latest) after draining what has arrived, with one catch-up
        when it is missing. ``strict``: a catch-up that could not reach the end raises
        :class:`ServiceUnavailableError` instead of answering ``None`` (a caller that refuses
        for good on ``None`` must not do it on a partial read)."""
        self._reader.drain()
        found = self._get(workflow_id, version)
        if found is None:
            behind = self._reader.catch_up()
            if behind and strict:
                raise ServiceUnavailableError(
                    f"Expected to read the workflows topic to its end before refusing workflow "
                    f"{workflow_id!r}, but partitions {behind} are still behind"
                )
            found = self._get(workflow_id, version)
        return found

    def close(self) -> None:
        self._reader.close()
