"""The scheduler's view of registered workflow versions, read from the compacted topic.

Every scheduler instance reads all partitions of ``workflows`` (a registered version is needed
wherever its runs land). A ``StartRun`` naming a version this view has not seen yet triggers a
catch-up to the topic's high watermarks before the command is judged, so a run started right
after its workflow was registered is not rejected by a race.
"""

from __future__ import annotations

import logging

from foundation.settings import Settings
from processors.mutations.routing import WorkflowRoute, choose_workflow_version, route_after
from schemas import decode, record_type_of
from schemas.errors import SchemaError
from schemas.models import Mutation, WorkflowRegistered
from streams.table import TopicTableReader
from streams.topics import TopicCatalog
from streams.workflow_versions import WorkflowVersions

log = logging.getLogger(__name__)


class WorkflowsView(WorkflowVersions):
    def __init__(self, settings: Settings, catalog: TopicCatalog | None = None) -> None:
        self.catalog = catalog or TopicCatalog.from_settings(settings)
        self.topic = self.catalog.workflows.topic
        super().__init__(settings, self.topic, name="scheduler-workflows")

    def poll(self, timeout: float = 0.0) -> int:
        return self._reader.poll(timeout)

    def catch_up(self, timeout: float = 10.0) -> None:
        self._reader.catch_up(timeout)

    def get(self, workflow_id: str, version: int | None = None) -> WorkflowRegistered | None:
        return self._get(workflow_id, version)


class WorkflowRoutesView:
    """Each workflow's current route between versions, folded from ``reflux.mutations``.

    Reads every partition (a workflow's runs land anywhere) and keeps only the lifecycle records
    that move traffic (:func:`processors.mutations.routing.route_after`); requests, policies and
    refusals on the same topic are skipped by their header, without decoding the body.
    """

    def __init__(self, settings: Settings, catalog: TopicCatalog | None = None) -> None:
        self.catalog = catalog or TopicCatalog.from_settings(settings)
        self.routes: dict[str, WorkflowRoute] = {}
        self._reader = TopicTableReader(
            settings, self.catalog.mutations.topic, self._apply, name="scheduler-routes"
        )

    def _apply(self, data: bytes | None) -> None:
        if data is None:
            return
        try:
            if record_type_of(data) != Mutation.AVRO_NAME:
                return
            record = decode(data, Mutation)
        except SchemaError as exc:
            log.warning("ignoring an unreadable mutations record: %s", exc)
            return
        route = route_after(record)
        if route is not None:
            self.routes[record.workflow_id] = route

    def drain(self) -> None:
        self._reader.drain()

    def catch_up(self, timeout: float = 10.0) -> None:
        self._reader.catch_up(timeout)

    def close(self) -> None:
        self._reader.close()


def route_workflow(
    workflows: WorkflowsView, routes: WorkflowRoutesView, workflow_id: str, run_id: str
) -> int | None:
    """``DecisionContext.route_workflow``: the version a run without one gets (see
    :func:`processors.mutations.routing.choose_workflow_version`)."""
    workflows.drain()
    routes.drain()
    registered = {
        version: record.registered_by for version, record in workflows.versions(workflow_id).items()
    }
    return choose_workflow_version(workflow_id, run_id, routes.routes.get(workflow_id), registered)
