"""The scheduler's edge of the public outcomes topic (ADR 0054).

:func:`processors.scheduler.outcomes.outcomes_for` maps a decision's run events to CloudEvents;
this encodes them as records of ``<prefix>.run-outcomes`` (key = run id, ``content-type:
application/cloudevents+json``), which the loop queues in the batch's transaction with the run
events themselves. Each record names the index of the run event it comes from, so a record
refused (over the message limit, or by the broker) fails the run at that event like any other
record of the decision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from processors.scheduler.decide import Decision
from processors.scheduler.outcomes import CONTENT_TYPE, outcome_source, outcomes_for
from schemas.models import PayloadRef

__all__ = ["OutcomeRecord", "OutcomeWriter"]

CONTENT_TYPE_HEADER = "content-type"


class OutcomeRecord(NamedTuple):
    event_index: int
    """Position in the decision's events of the run event this outcome is made from."""
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


class OutcomeWriter:
    def __init__(
        self,
        topic_prefix: str,
        topic: str,
        store_outputs: Callable[[Any], PayloadRef | None],
    ) -> None:
        self.topic = topic
        self.source = outcome_source(topic_prefix)
        self._store_outputs = store_outputs
        self._headers = [(CONTENT_TYPE_HEADER, CONTENT_TYPE.encode())]

    def records(self, decision: Decision) -> list[OutcomeRecord]:
        if decision.state is None or not decision.events:
            return []
        found = outcomes_for(
            decision.events,
            decision.state,
            source=self.source,
            store_outputs=self._store_outputs,
        )
        if not found:
            return []
        index_of = {event.event_id: i for i, event in enumerate(decision.events)}
        return [
            OutcomeRecord(
                index_of[str(outcome.event["id"])],
                outcome.key.encode(),
                outcome.to_json(),
                list(self._headers),
            )
            for outcome in found
        ]
