"""Run outcomes for systems outside REFLUX: run events -> CloudEvents 1.0 (structured JSON).

The scheduler appends these records to ``<prefix>.run-outcomes`` in the same Kafka transaction
as the run events they are made from (ADR 0054), so a ``read_committed`` consumer sees an
outcome exactly when the run log has its event, and never one the log does not have. This
module is the whole mapping and is pure: the runtime hands it a decision's events and the run's
state after them, and sends what comes back.

Which events become outcomes (``type``):

========================  ==================================================================
``reflux.run.started``    ``RunStarted``
``reflux.run.succeeded``  ``RunSucceeded``: ``data.outputs`` (or ``data.outputs_ref``)
``reflux.run.failed``     ``RunFailed``: ``data.error`` (and ``step_id`` of the failed step)
``reflux.run.cancelled``  ``RunCancelled``: ``data.error`` (class ``RunCancelled``), ``reason``
``reflux.step.failed``    ``StepFailed`` and ``StepTimedOut``: ``data.error``, ``step_id``,
                          ``attempt``, ``retrying`` (another attempt was scheduled)
========================  ==================================================================

Every other run event produces nothing. The CloudEvent ``id`` is the run event's ``event_id``
(consumers dedupe on it), ``subject`` and the Kafka key are the run id, ``time`` is the event's
``occurred_at``. The JSON Schemas of these records are in ``schemas/json/`` (``outcome*``).

Claim check: run outputs whose canonical JSON is larger than the runtime's threshold are not
copied into the outcome; ``store_outputs`` puts them in the object store and the outcome carries
``outputs_ref`` (URI, size, SHA-256, content type) instead of ``outputs``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from processors.scheduler.state import RunState
from schemas.models import (
    ErrorInfo,
    PayloadRef,
    RunCancelled,
    RunFailed,
    RunStarted,
    RunSucceeded,
    StepFailed,
    StepRetryScheduled,
    StepTimedOut,
)
from schemas.run_log import RunEvent

__all__ = [
    "CONTENT_TYPE",
    "SPECVERSION",
    "Outcome",
    "OutcomeType",
    "StoreOutputs",
    "outcome_source",
    "outcomes_for",
]

SPECVERSION: Final = "1.0"
CONTENT_TYPE: Final = "application/cloudevents+json"
"""The record's ``content-type`` header: CloudEvents' structured mode (Kafka protocol binding)."""
DATA_CONTENT_TYPE: Final = "application/json"


class OutcomeType(StrEnum):
    RUN_STARTED = "reflux.run.started"
    RUN_SUCCEEDED = "reflux.run.succeeded"
    RUN_FAILED = "reflux.run.failed"
    RUN_CANCELLED = "reflux.run.cancelled"
    STEP_FAILED = "reflux.step.failed"


StoreOutputs = Callable[[Any], PayloadRef | None]
"""Claim check for run outputs: a reference when they are too large to inline, else ``None``."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """One record for the outcomes topic: the run id (key) and the CloudEvent (value)."""

    key: str
    event: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.event["type"])

    def to_json(self) -> bytes:
        # Compact, keys in a stable order, UTF-8 kept as is (no \\u escapes): what kcat shows.
        return json.dumps(
            self.event, separators=(",", ":"), sort_keys=True, ensure_ascii=False
        ).encode()


def outcome_source(topic_prefix: str) -> str:
    """The CloudEvent ``source`` of one REFLUX deployment (its topic prefix)."""
    return f"reflux://{topic_prefix}"


def outcomes_for(
    events: Sequence[RunEvent],
    state: RunState,
    *,
    source: str,
    store_outputs: StoreOutputs | None = None,
) -> list[Outcome]:
    """The outcomes of one decision's ``events`` (in their order); ``state`` is the run's state
    after them (workflow and tenant of the events that do not carry them)."""
    out: list[Outcome] = []
    for index, event in enumerate(events):
        found = _outcome(event, events[index + 1 :], state, store_outputs)
        if found is None:
            continue
        kind, data = found
        out.append(
            Outcome(
                key=event.run_id,
                event={
                    "specversion": SPECVERSION,
                    "id": event.event_id,
                    "source": source,
                    "type": kind.value,
                    "subject": event.run_id,
                    "time": _rfc3339(event.occurred_at),
                    "datacontenttype": DATA_CONTENT_TYPE,
                    "data": data,
                },
            )
        )
    return out


def _outcome(
    event: RunEvent,
    later: Sequence[RunEvent],
    state: RunState,
    store_outputs: StoreOutputs | None,
) -> tuple[OutcomeType, dict[str, Any]] | None:
    if isinstance(event, RunStarted):
        data = _base(event, state, "running")
        data.update(
            workflow_id=event.workflow_id,
            workflow_version=event.workflow_version,
            tenant=event.tenant,
            started_by={
                "source": event.source,
                "source_key": event.source_key,
                "idempotency_key": event.idempotency_key,
            },
            parent_run_id=event.parent.run_id if event.parent is not None else None,
        )
        return OutcomeType.RUN_STARTED, data
    if isinstance(event, RunSucceeded):
        data = _base(event, state, "succeeded")
        data["duration_ms"] = event.duration_ms
        ref = store_outputs(event.outputs) if store_outputs is not None else None
        if ref is None:
            data["outputs"] = event.outputs
        else:
            data["outputs_ref"] = ref.model_dump(mode="json")
        return OutcomeType.RUN_SUCCEEDED, data
    if isinstance(event, RunFailed):
        data = _base(event, state, "failed")
        data["error"] = _error(event.error)
        data["step_id"] = event.failed_step.step_id if event.failed_step is not None else None
        return OutcomeType.RUN_FAILED, data
    if isinstance(event, RunCancelled):
        data = _base(event, state, "cancelled")
        message = f"the run was cancelled: {event.reason}" if event.reason else "cancelled"
        data["error"] = {"error_class": "RunCancelled", "message": message, "retryable": False}
        data["reason"] = event.reason
        data["requested_by"] = event.requested_by
        return OutcomeType.RUN_CANCELLED, data
    if isinstance(event, StepFailed | StepTimedOut):
        status = "failed" if isinstance(event, StepFailed) else "timed_out"
        data = _base(event, state, status)
        if isinstance(event, StepFailed):
            data["error"] = _error(event.error)
        else:
            # The same error the run state records for a timed-out attempt (evolve).
            data["error"] = {
                "error_class": "StepTimeout",
                "message": f"attempt {event.attempt} exceeded its {event.timeout_ms} ms timeout",
                "retryable": True,
            }
        data["step_id"] = event.step.step_id
        data["node"] = event.step.node
        data["attempt"] = event.attempt
        # decide schedules the retry in the same decision as the failure, or fails the run.
        data["retrying"] = any(
            isinstance(e, StepRetryScheduled) and e.step.step_id == event.step.step_id
            for e in later
        )
        return OutcomeType.STEP_FAILED, data
    return None


def _base(event: RunEvent, state: RunState, status: str) -> dict[str, Any]:
    return {
        "run_id": event.run_id,
        "seq": event.seq,
        "workflow_id": state.workflow_id,
        "workflow_version": state.workflow_version,
        "tenant": state.tenant,
        "status": status,
    }


def _error(error: ErrorInfo) -> dict[str, Any]:
    return {
        "error_class": error.error_class,
        "message": error.message,
        "retryable": error.retryable,
    }


def _rfc3339(moment: datetime) -> str:
    """UTC with milliseconds and ``Z`` (the run log's precision), e.g. 2026-12-06T17:48:49.123Z."""
    utc = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
