"""Which workflow versions are registered: the trigger router's view of the ``workflows`` topic
(:class:`streams.workflow_versions.WorkflowVersions`). A miss is believed only after a catch-up
to the topic's current end, so a trigger sent right after its workflow was registered is not
refused by a race; a catch-up that cannot finish is retryable (the record is retried, never
dead-lettered for it).
"""

from __future__ import annotations

from foundation.settings import Settings
from streams.workflow_versions import WorkflowVersions


class RegisteredWorkflows:
    def __init__(self, settings: Settings, topic: str) -> None:
        self._versions = WorkflowVersions(settings, topic, name="trigger-workflows")

    def registered(self, workflow_id: str, version: int | None = None) -> bool:
        """Whether ``workflow_id`` (any version, or ``version``) is registered."""
        return self._versions.resolve(workflow_id, version, strict=True) is not None

    def close(self) -> None:
        self._versions.close()
