"""Registering a benchmark's workflow on a live engine straight on its topics (no API)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.models import ImprovementPolicy, MutationAction, MutationRequest, WorkflowRegistered
from streams.producer import Producer
from streams.topics import TopicCatalog
from workflows import parse_workflow

__all__ = ["register_auto"]


def register_auto(producer: Producer, catalog: TopicCatalog, definition: dict[str, Any]) -> str:
    """Publishes ``definition`` as version 1 and sets its improvement policy to ``auto`` (the
    loop scenarios let the engine apply its own proposals); returns the workflow id once both
    records are flushed."""
    parsed = parse_workflow(definition)
    producer.send(
        catalog.workflows.topic,
        f"{parsed.id}@1",
        WorkflowRegistered(
            workflow_id=parsed.id,
            version=1,
            definition=parsed.to_json_dict(),
            registered_at=datetime.now(UTC),
        ),
    )
    policy = MutationRequest(
        workflow_id=parsed.id,
        action=MutationAction.SET_POLICY,
        actor="user:bench",
        policy=ImprovementPolicy.AUTO,
    )
    producer.send(catalog.mutations.topic, policy.workflow_id, policy)
    producer.flush(10)
    return parsed.id
