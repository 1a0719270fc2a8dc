"""Time travel: a run's state at any ``seq``, rebuilt by folding its events with the scheduler's
own ``fold`` -- the same code that built it live, so the view cannot drift from the engine.

Events come from the projection's ``run_events`` table (``payload`` is the event model's JSON
dump, ``event_type`` its class name) and are turned back into the event models before folding.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from foundation.errors import NonRetryableError
from processors.scheduler.evolve import RUN_EVENT_TYPES, RunEvent, fold
from processors.scheduler.state import RunState
from projections.postgres.queries import RunEventRow

__all__ = [
    "EVENT_MODELS",
    "UnknownEventTypeError",
    "event_model",
    "state_at",
    "state_view",
]

EVENT_MODELS: Final[dict[str, type[RunEvent]]] = {
    model.__name__: model for model in RUN_EVENT_TYPES
}


class UnknownEventTypeError(NonRetryableError):
    error_class = "UnknownEventTypeError"


def event_model(row: RunEventRow) -> RunEvent:
    model = EVENT_MODELS.get(row.event_type)
    if model is None:
        raise UnknownEventTypeError(
            f"Expected a run event type ({sorted(EVENT_MODELS)}), but event seq {row.seq} of run "
            f"{row.run_id!r} is {row.event_type!r}"
        )
    return model.model_validate(row.payload)


def state_at(rows: Iterable[RunEventRow]) -> RunState | None:
    """The scheduler's RunState after the given events (already cut at the wanted seq)."""
    return fold([event_model(row) for row in rows])


def state_view(state: RunState | None) -> dict[str, Any]:
    """RunState as JSON (pydantic's own JSON mode: enums as values, datetimes as ISO text)."""
    if state is None:
        return {}
    view: dict[str, Any] = state.model_dump(mode="json")
    return view
