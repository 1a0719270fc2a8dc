"""Pure mapping from a trigger record to the command that starts its run.

The run id is derived from the trigger's source and idempotency key, so a trigger delivered twice
(at-least-once everywhere) names the same run and the scheduler starts it once.
"""

from __future__ import annotations

import uuid
from typing import Any

from schemas.models import StartRun, Trigger

# Fixed forever: changing it would give redelivered triggers new run ids.
TRIGGER_NAMESPACE = uuid.UUID("6f1d3c1e-2b7a-5f5e-9a43-8f0f2f6d9c11")


def run_id_for_trigger(source: str, idempotency_key: str) -> str:
    return str(uuid.uuid5(TRIGGER_NAMESPACE, f"{source}:{idempotency_key}"))


def inputs_from_payload(payload: Any) -> dict[str, Any]:
    """A JSON object payload is the run's inputs; any other JSON value arrives as ``payload``."""
    if isinstance(payload, dict):
        return payload
    return {"payload": payload}


def start_command(trigger: Trigger, trace_context: dict[str, str] | None = None) -> StartRun:
    """``trace_context``: the trigger's W3C context (ADR 0062), recorded on the run."""
    return StartRun(
        run_id=run_id_for_trigger(trigger.source, trigger.idempotency_key),
        workflow_id=trigger.workflow_id,
        workflow_version=trigger.workflow_version,
        inputs=inputs_from_payload(trigger.payload),
        idempotency_key=f"{trigger.source}:{trigger.idempotency_key}",
        source=trigger.source,
        source_key=trigger.source_key,
        requested_by=f"trigger:{trigger.event_id}",
        trace_context=trace_context or {},
    )
