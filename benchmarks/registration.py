"""Registering a benchmark's workflow the way ``POST /v1/workflows`` does: a ``WorkflowRegistered``
record for version 1 on the workflows topic (the engine's projector and scheduler read it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.models import WorkflowRegistered
from streams.producer import Producer
from streams.topics import TopicCatalog
from workflows import parse_workflow

__all__ = ["publish_version_one"]


def publish_version_one(
    producer: Producer, catalog: TopicCatalog, definition: dict[str, Any]
) -> str:
    """Sends ``definition`` (validated) as version 1; returns its workflow id. Not flushed."""
    parsed = parse_workflow(definition)
    record = WorkflowRegistered(
        workflow_id=parsed.id,
        version=1,
        definition=parsed.to_json_dict(),
        registered_at=datetime.now(UTC),
    )
    producer.send(catalog.workflows.topic, f"{parsed.id}@1", record)
    return parsed.id
