"""Applier of ``reflux.audit`` (the ``audit_log`` table of migration 010; ADR 0046).

Registered on :func:`projections.postgres.appliers.plan` when imported (the projector imports
this module). The guard is the row itself: an audit record is inserted once (``event_id``) and
never changed, so a redelivery changes nothing.
"""

from __future__ import annotations

from typing import Final

from projections.postgres.appliers import Plan, jsonb, plan
from projections.postgres.identifiers import table
from projections.postgres.statements import Statement
from schemas.base import RefluxRecord
from schemas.models import AuditRecorded

__all__ = ["AUDIT_EVENT_TYPES", "AUDIT_TABLES"]

AUDIT_EVENT_TYPES: Final[tuple[type[RefluxRecord], ...]] = (AuditRecorded,)
"""What the ``audit`` topic carries."""

AUDIT_TABLES: Final = ("audit_log",)


@plan.register
def _(event: AuditRecorded, schema: str) -> Plan:
    return Plan(
        guard=Statement(
            f"INSERT INTO {table(schema, 'audit_log')} "
            "(event_id, occurred_at, actor, principal_kind, principal_id, role, tenant, method, "
            "route, path, resource_ids, status_code, client, reason) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (event_id) DO NOTHING",
            (
                event.event_id,
                event.occurred_at,
                event.actor,
                event.principal_kind,
                event.principal_id,
                event.role,
                event.tenant,
                event.method,
                event.route,
                event.path,
                jsonb(dict(event.resource_ids)),
                event.status_code,
                event.client,
                event.reason,
            ),
            scope=AUDIT_TABLES,
        )
    )
