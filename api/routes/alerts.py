"""``/v1/alerts``: SLO alerts as the ``alerts`` topic says they stand.

The view reads the topic from the beginning (created on the first request) and, on every
request, up to the end it has at that moment, so an alert published before the request is in the
answer. The evaluator that publishes them runs elsewhere (see :mod:`api.reflection`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from api.auth.guard import PrincipalDep
from api.auth.tenancy import workflow_scope
from api.deps import AlertsViewDep, ApiSettingsDep, ConnDep
from api.models.alerts import AlertsPublic, alert_public
from api.models.common import ErrorMessage
from foundation.tenancy import PLATFORM_TENANT
from processors.alerts.rules import AlertEvent
from projections.traces.queries import WorkflowScope
from schemas.models import AlertKind, AlertState

__all__ = ["router"]

router = APIRouter(prefix="/alerts", tags=["alerts"])


@router.get(
    "",
    response_model=AlertsPublic,
    summary="SLO alerts: the firing ones (default), or the latest state of every alert",
    responses={
        503: {
            "model": ErrorMessage,
            "description": "Kafka or the alerts topic is unavailable; the detail says which",
        }
    },
)
def list_alerts(
    api: ApiSettingsDep,
    view: AlertsViewDep,
    conn: ConnDep,
    principal: PrincipalDep,
    state: Annotated[
        Literal["firing", "all"],
        Query(description="firing: active alerts only; all: last transition of every alert."),
    ] = "firing",
) -> AlertsPublic:
    """Ordered by rule, then subject. A tenant sees the alerts of its workflows (cost budgets);
    a node's alerts aggregate every tenant's runs and are the platform tenant's (ADR 0051)."""
    view.catch_up(timeout=api.alerts_catch_up_timeout_s)
    scope = workflow_scope(conn, api.read_schema, principal.tenant)
    events = [e for e in view.latest() if _visible(e, scope, principal.tenant)]
    if state == "firing":
        events = [e for e in events if e.state is AlertState.FIRING]
    return AlertsPublic(data=[alert_public(e) for e in events], count=len(events))


def _visible(alert: AlertEvent, scope: WorkflowScope, tenant: str) -> bool:
    if alert.kind is not AlertKind.COST_BUDGET:  # subject: a node
        return tenant == PLATFORM_TENANT
    if scope.only is not None:
        return alert.subject in scope.only
    return alert.subject not in scope.besides
