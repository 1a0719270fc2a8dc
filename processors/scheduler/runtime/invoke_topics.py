"""The scheduler's ``DecisionContext.invoke_topic``: names a node major's invoke topic and makes
sure it exists before an invocation is sent to it.

Invoke topics are created when a node version is registered (``register_nodes``, the API's
``POST /v1/nodes``, ``reflux topics create``), but a run must not depend on which process
started first: the scheduler checks a topic the first time it dispatches to it (one metadata
request), creates it if it is missing, and remembers it. A node whose topic cannot exist (its
name is not a legal topic name, or the broker refuses it for good, e.g. it collides with another
topic) fails the step with ``NodeUnavailable``; a broker that cannot answer raises
``ServiceUnavailableError``, and the runtime retries the batch later.
"""

from __future__ import annotations

import logging

from confluent_kafka.admin import AdminClient

from foundation.settings import Settings
from processors.scheduler.runtime.failures import NodeUnavailableError
from streams.admin import TopicRefusedError, admin_client, create_missing_topics
from streams.topics import TopicCatalog, TopicCatalogError

__all__ = ["InvokeTopics"]

log = logging.getLogger(__name__)


class InvokeTopics:
    """``(node, major) -> topic name``, the topic created on first use (see the module doc)."""

    def __init__(self, settings: Settings, catalog: TopicCatalog, timeout: float = 10.0) -> None:
        self.settings = settings
        self.catalog = catalog
        self.timeout = timeout
        self._known: set[str] = set()
        self._admin: AdminClient | None = None
        self.created: list[str] = []
        """Topics this scheduler created (an observable for operators and tests)."""

    def __call__(self, node: str, major: int) -> str:
        try:
            spec = self.catalog.invoke_topic(node, major)
        except TopicCatalogError as exc:
            raise NodeUnavailableError(
                f"Expected node {node!r} v{major} to have an invoke topic, but {exc}"
            ) from exc
        if spec.topic in self._known:
            return spec.topic
        if self._admin is None:
            self._admin = admin_client(self.settings)
        try:
            created = create_missing_topics([spec], admin=self._admin, timeout=self.timeout)
        except TopicRefusedError as exc:
            raise NodeUnavailableError(
                f"Expected invoke topic {spec.topic!r} for node {node!r} v{major}, but it cannot "
                f"be created: {exc}"
            ) from exc
        if created:
            self.created.extend(created)
            log.info("created invoke topic %s on first use (node %s v%d)", spec.topic, node, major)
        self._known.add(spec.topic)
        return spec.topic

    def forget(self) -> None:
        """Check every topic again on its next use (one may have been deleted meanwhile)."""
        self._known.clear()
