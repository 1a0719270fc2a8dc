"""The mapping between :class:`~processors.alerts.rules.AlertEvent` and the ``Alert`` record."""

from __future__ import annotations

from datetime import timedelta

from processors.alerts.rules import AlertEvent
from schemas.models import Alert

__all__ = ["from_record", "to_record"]


def to_record(event: AlertEvent) -> Alert:
    return Alert(
        alert_id=event.alert_id,
        rule_id=event.rule_id,
        kind=event.kind,
        subject=event.subject,
        state=event.state,
        value=event.value,
        threshold=event.threshold,
        samples=event.samples,
        window_ms=int(event.window / timedelta(milliseconds=1)),
        started_at=event.started_at,
        at=event.at,
        message=event.message,
    )


def from_record(record: Alert) -> AlertEvent:
    return AlertEvent(
        rule_id=record.rule_id,
        kind=record.kind,
        subject=record.subject,
        state=record.state,
        value=record.value,
        threshold=record.threshold,
        samples=record.samples,
        window=timedelta(milliseconds=record.window_ms),
        started_at=record.started_at,
        at=record.at,
        message=record.message,
    )
