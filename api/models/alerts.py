"""``/v1/alerts`` answers: the latest state of SLO alerts, read from the ``alerts`` topic."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from processors.alerts.rules import AlertEvent, format_window

__all__ = ["AlertPublic", "AlertsPublic", "alert_public"]


class AlertPublic(BaseModel):
    alert_id: str = Field(description="One incident: '<rule_id>/<subject>/<started_at ms>'.")
    rule_id: str = Field(examples=["node-error-rate"])
    kind: Literal["latency_p99", "error_rate", "cost_budget"]
    subject: str = Field(description="Node name, or workflow id for cost_budget.")
    state: Literal["firing", "resolved"]
    value: float = Field(description="ms, a 0..1 rate, or tokens, at the last transition.")
    threshold: float
    samples: int = Field(description="Attempts in the window behind the value.")
    window: str = Field(examples=["5m"])
    started_at: datetime
    at: datetime = Field(description="When the last transition was evaluated.")
    message: str


class AlertsPublic(BaseModel):
    data: list[AlertPublic]
    count: int


def alert_public(event: AlertEvent) -> AlertPublic:
    return AlertPublic(
        alert_id=event.alert_id,
        rule_id=event.rule_id,
        kind=event.kind.value,
        subject=event.subject,
        state=event.state.value,
        value=event.value,
        threshold=event.threshold,
        samples=event.samples,
        window=format_window(event.window),
        started_at=event.started_at,
        at=event.at,
        message=event.message,
    )
