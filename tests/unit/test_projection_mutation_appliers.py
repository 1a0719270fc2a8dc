"""The appliers of reflux.mutations (migration 005): every record type has a plan whose
statements bind exactly their parameters; the guard is what makes a redelivery a no-op."""

from __future__ import annotations

import pytest

from projections.postgres.appliers import plan
from projections.postgres.mutation_appliers import MUTATION_EVENT_TYPES
from projections.postgres.writer import READ_MODEL_TABLES
from schemas.base import RefluxRecord
from schemas.models import (
    GraphMutation,
    GraphMutationType,
    ImprovementPolicy,
    ImprovementPolicySet,
    Mutation,
    MutationAction,
    MutationRequest,
    MutationRequestRefused,
    MutationStatus,
)

CHANGE = GraphMutation(type=GraphMutationType.REMOVE_STEP, step_id="b", data={})
RECORDS: list[RefluxRecord] = [
    Mutation(
        mutation_id="m",
        workflow_id="wf",
        base_version=1,
        status=MutationStatus.APPLIED,
        changes=[CHANGE],
        rationale="r",
        proposed_by="optimizer",
        applied_version=2,
        previous_version=1,
        canary_weight=0.2,
        report={"passed": True, "checks": []},
        evidence={"n": 1},
        request_id="q",
    ),
    MutationRequest(workflow_id="wf", mutation_id="m", action=MutationAction.KEEP, actor="u"),
    MutationRequestRefused(
        workflow_id="wf",
        mutation_id="m",
        request_id="q",
        action=MutationAction.KEEP,
        actor="user:a",
        reason="Cannot keep mutation 'm': it is validated",
        current_status="validated",
    ),
    ImprovementPolicySet(workflow_id="wf", policy=ImprovementPolicy.AUTO, actor="user:a"),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_each_record_has_a_plan_binding_its_parameters(record: RefluxRecord) -> None:
    assert isinstance(record, MUTATION_EVENT_TYPES)
    planned = plan(record, "s")
    for statement in (planned.guard, *planned.updates):
        sql = getattr(statement, "sql", "")
        assert sql.count("%s") == len(statement.params), sql
    assert not planned.run_event


def test_a_transition_records_its_history_row_and_overwrites_the_proposal() -> None:
    planned = plan(RECORDS[0], "s")
    assert "mutation_events" in planned.guard.sql and "DO NOTHING" in planned.guard.sql
    [proposal] = planned.updates
    assert "mutation_proposals" in getattr(proposal, "sql", "")
    assert "previous_version = EXCLUDED.previous_version" in getattr(proposal, "sql", "")


def test_a_rebuild_empties_the_proposal_tables() -> None:
    assert {
        "mutation_proposals",
        "mutation_events",
        "mutation_requests",
        "workflow_improvement",
    } <= set(READ_MODEL_TABLES)
