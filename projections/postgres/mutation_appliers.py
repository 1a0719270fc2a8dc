"""Appliers of ``reflux.mutations`` (the proposal read models of migration 005).

Registered on :func:`projections.postgres.appliers.plan` when imported (the projector imports
this module). Guards:

- ``Mutation``: its ``mutation_events`` row; the update overwrites the proposal's row with the
  record's values (every record carries the whole proposal, and the partition keeps one
  workflow's records in order, so the last one wins);
- ``MutationRequest``: its ``mutation_requests`` row;
- ``MutationRequestRefused``: upserts the request's row with the refusal (a refusal is always
  behind its request in the partition; the insert path only makes a log without the request
  projectable);
- ``ImprovementPolicySet``: upserts the workflow's policy row unless it holds this event already.
"""

from __future__ import annotations

from typing import Final

from projections.postgres.appliers import Plan, jsonb, plan
from projections.postgres.identifiers import table
from projections.postgres.statements import Statement
from schemas.base import RefluxRecord
from schemas.models import (
    ImprovementPolicySet,
    Mutation,
    MutationRequest,
    MutationRequestRefused,
)

__all__ = ["MUTATION_EVENT_TYPES", "MUTATION_TABLES"]

MUTATION_EVENT_TYPES: Final[tuple[type[RefluxRecord], ...]] = (
    Mutation,
    MutationRequest,
    ImprovementPolicySet,
    MutationRequestRefused,
)
"""What the ``mutations`` topic carries."""

MUTATION_TABLES: Final = (
    "mutation_proposals",
    "mutation_events",
    "mutation_requests",
    "workflow_improvement",
)

_PROPOSALS: Final = ("mutation_proposals",)


@plan.register
def _(event: Mutation, schema: str) -> Plan:
    guard = Statement(
        f"INSERT INTO {table(schema, 'mutation_events')} "
        "(event_id, mutation_id, workflow_id, status, actor, reason, request_id, occurred_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
        (
            event.event_id,
            event.mutation_id,
            event.workflow_id,
            event.status.value,
            event.actor,
            event.reason,
            event.request_id,
            event.occurred_at,
        ),
    )
    changes = [change.model_dump(mode="json") for change in event.changes]
    proposal = Statement(
        f"INSERT INTO {table(schema, 'mutation_proposals')} "
        "(mutation_id, workflow_id, base_version, status, author, rationale, changes, evidence, "
        "report, score, canary_weight, applied_version, previous_version, reason, created_at, "
        "updated_at, last_event_id) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (mutation_id) DO UPDATE SET status = EXCLUDED.status, "
        "changes = EXCLUDED.changes, evidence = EXCLUDED.evidence, report = EXCLUDED.report, "
        "score = EXCLUDED.score, canary_weight = EXCLUDED.canary_weight, "
        "applied_version = EXCLUDED.applied_version, "
        "previous_version = EXCLUDED.previous_version, reason = EXCLUDED.reason, "
        "updated_at = EXCLUDED.updated_at, last_event_id = EXCLUDED.last_event_id",
        (
            event.mutation_id,
            event.workflow_id,
            event.base_version,
            event.status.value,
            event.proposed_by,
            event.rationale,
            jsonb(changes),
            jsonb(event.evidence),
            jsonb(event.report),
            event.score,
            event.canary_weight,
            event.applied_version,
            event.previous_version,
            event.reason,
            event.occurred_at,
            event.occurred_at,
            event.event_id,
        ),
        scope=_PROPOSALS,
    )
    return Plan(guard, (proposal,))


@plan.register
def _(event: MutationRequest, schema: str) -> Plan:
    guard = Statement(
        f"INSERT INTO {table(schema, 'mutation_requests')} "
        "(request_id, workflow_id, mutation_id, action, actor, requested_at) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (request_id) DO NOTHING",
        (
            event.event_id,
            event.workflow_id,
            event.mutation_id,
            event.action.value,
            event.actor,
            event.occurred_at,
        ),
    )
    return Plan(guard)


@plan.register
def _(event: MutationRequestRefused, schema: str) -> Plan:
    guard = Statement(
        f"INSERT INTO {table(schema, 'mutation_requests')} "
        "(request_id, workflow_id, mutation_id, action, actor, requested_at, refused_reason, "
        "current_status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (request_id) DO UPDATE SET refused_reason = EXCLUDED.refused_reason, "
        "current_status = EXCLUDED.current_status",
        (
            event.request_id,
            event.workflow_id,
            event.mutation_id,
            event.action.value,
            event.actor,
            event.occurred_at,
            event.reason,
            event.current_status,
        ),
    )
    return Plan(guard)


@plan.register
def _(event: ImprovementPolicySet, schema: str) -> Plan:
    improvement = table(schema, "workflow_improvement")
    guard = Statement(
        f"INSERT INTO {improvement} (workflow_id, policy, actor, updated_at, last_event_id) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (workflow_id) DO UPDATE SET "
        "policy = EXCLUDED.policy, actor = EXCLUDED.actor, updated_at = EXCLUDED.updated_at, "
        f"last_event_id = EXCLUDED.last_event_id WHERE {improvement}.last_event_id "
        "<> EXCLUDED.last_event_id",
        (event.workflow_id, event.policy.value, event.actor, event.occurred_at, event.event_id),
    )
    return Plan(guard)
