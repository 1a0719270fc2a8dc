"""The pure proposal core: lifecycle (decide/evolve), validation stages, version routing."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from processors.mutations.lifecycle import (
    TRANSITIONS,
    MutationContext,
    MutationsState,
    decide,
    evolve,
)
from processors.mutations.routing import (
    WorkflowRoute,
    choose_workflow_version,
    route_after,
)
from schemas.models import (
    GraphMutation,
    GraphMutationType,
    ImprovementPolicy,
    Mutation,
    MutationAction,
    MutationRequest,
    MutationRequestRefused,
    MutationStatus,
)
from workflows import parse_workflow
from workflows.node_catalog import StaticNodeCatalog

BASE = parse_workflow(
    {
        "id": "wf",
        "steps": [
            {"id": "a", "node": "transform@^1", "params": {"expression": "x", "data": {"x": 1}}}
        ],
    }
)
CATALOG = StaticNodeCatalog({"transform": ["1.0.0"]})
CHANGE = GraphMutation(
    type=GraphMutationType.UPDATE_PARAMS,
    step_id="a",
    data={"expression": "x", "data": {"x": 2}},
)


def ctx(registered: dict[int, str | None] | None = None) -> MutationContext:
    known = registered or {1: None}
    versions = itertools.count(max(known) + 1)
    return MutationContext(
        now=datetime(2026, 1, 1, tzinfo=UTC),
        base_definition=lambda wf, v: BASE if wf == "wf" and v in known else None,
        allocate_version=lambda wf: next(versions),
        registered=lambda wf: known,
        node_catalog=CATALOG,
    )


def request(
    action: MutationAction, mutation_id: str | None = "m1", **extra: Any
) -> MutationRequest:
    return MutationRequest(
        workflow_id="wf", mutation_id=mutation_id, action=action, actor="user:ada", **extra
    )


def propose(
    state: MutationsState, *changes: GraphMutation, actor: str = "user:ada", mid: str = "m1"
) -> list[object]:
    req = MutationRequest(
        workflow_id="wf",
        mutation_id=mid,
        action=MutationAction.PROPOSE,
        actor=actor,
        base_version=1,
        changes=list(changes or (CHANGE,)),
        rationale="r",
    )
    return list(decide(state, req, ctx()).records)


def statuses(records: list[object]) -> list[str]:
    return [r.status.value for r in records if isinstance(r, Mutation)]


def test_every_lifecycle_state_to_kept_and_the_fold_equals_the_decisions() -> None:
    state = MutationsState()
    log = propose(state)
    assert statuses(log) == ["proposed", "validating", "validated"]
    approval = decide(state, request(MutationAction.APPROVE, canary_weight=0.3), ctx())
    assert statuses(list(approval.records)) == ["approved", "applied"]
    [registered] = approval.registrations
    assert registered.version == 2 and registered.registered_by == "mutation:m1"
    assert registered.definition["steps"][0]["params"]["data"] == {"x": 2}
    log += approval.records
    log += decide(state, request(MutationAction.KEEP), ctx()).records
    assert state.of("wf").proposals["m1"].status is MutationStatus.KEPT
    folded = MutationsState()
    for record in log:
        evolve(folded, record)
    assert folded.of("wf").proposals == state.of("wf").proposals
    assert folded.of("wf").handled == state.of("wf").handled


def test_a_redelivered_request_is_answered_once() -> None:
    state = MutationsState()
    propose(state)
    approve = request(MutationAction.APPROVE)
    assert decide(state, approve, ctx()).records
    again = decide(state, approve, ctx())
    assert not again.records and not again.registrations


def test_illegal_transitions_are_refused_naming_the_status() -> None:
    state = MutationsState()
    propose(state)
    refused = decide(state, request(MutationAction.KEEP), ctx()).refused
    assert isinstance(refused, MutationRequestRefused)
    assert refused.reason == "Cannot keep mutation 'm1': it is validated"
    assert refused.current_status == "validated"
    unknown = decide(state, request(MutationAction.APPROVE, "zz"), ctx()).refused
    assert unknown is not None and "there is none" in unknown.reason
    assert MutationStatus.KEPT not in TRANSITIONS[MutationStatus.VALIDATED]


def test_an_invalid_diff_is_rejected_with_the_report() -> None:
    state = MutationsState()
    bad = GraphMutation(type=GraphMutationType.REMOVE_STEP, step_id="nope", data={})
    log = propose(state, bad)
    assert statuses(log) == ["proposed", "validating", "rejected"]
    report = log[-1].report  # type: ignore[attr-defined]
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["applies"]["errors"][0]["path"].startswith("changes[0]")
    assert checks["definition"]["skipped"] == "the diff did not apply"
    assert report["not_run"][0]["name"] == "replay" and report["passed"] is False
    unknown_node = GraphMutation(
        type=GraphMutationType.REPLACE_NODE, step_id="a", data={"node": "ghost@^1"}
    )
    log = propose(state, unknown_node, mid="m2")
    assert statuses(log)[-1] == "rejected"


def test_policies_off_and_auto() -> None:
    state = MutationsState()
    decide(state, request(MutationAction.SET_POLICY, None, policy=ImprovementPolicy.OFF), ctx())
    [refused] = propose(state, actor="optimizer")
    assert isinstance(refused, MutationRequestRefused) and "'off'" in refused.reason
    assert statuses(propose(state, mid="by-person")) == ["proposed", "validating", "validated"]
    decide(state, request(MutationAction.SET_POLICY, None, policy=ImprovementPolicy.AUTO), ctx())
    auto = propose(state, actor="optimizer", mid="m3")
    assert statuses(auto)[-2:] == ["approved", "applied"]
    assert auto[-2].actor == "policy:auto"  # type: ignore[attr-defined]
    # A second one waits, validated, while the canary runs.
    waiting = propose(state, actor="optimizer", mid="m4")
    assert statuses(waiting)[-1] == "validated"
    assert "one canary at a time" in (waiting[-1].reason or "")  # type: ignore[attr-defined]


@pytest.mark.parametrize("weight", [0.0, 1.5, -1.0])
def test_a_canary_weight_outside_0_1_is_refused(weight: float) -> None:
    state = MutationsState()
    propose(state)
    refused = decide(state, request(MutationAction.APPROVE, canary_weight=weight), ctx()).refused
    assert refused is not None and "canary_weight" in refused.reason


def _mutation(status: MutationStatus, **extra: Any) -> Mutation:
    return Mutation(
        mutation_id="m",
        workflow_id="wf",
        base_version=1,
        status=status,
        changes=[],
        rationale="",
        proposed_by="optimizer",
        **extra,
    )


def test_routes_set_by_applied_kept_and_rolled_back() -> None:
    applied = route_after(_mutation(MutationStatus.APPLIED, applied_version=3, canary_weight=0.25))
    assert applied == WorkflowRoute(((3, 0.25), (1, 0.75)), "m")
    kept = route_after(_mutation(MutationStatus.KEPT, applied_version=3))
    assert kept == WorkflowRoute(((3, 1.0),), "m")
    assert route_after(_mutation(MutationStatus.ROLLED_BACK, applied_version=3)) == WorkflowRoute(
        ((1, 1.0),), "m"
    )
    assert route_after(_mutation(MutationStatus.VALIDATED)) is None


def test_the_split_is_deterministic_and_near_its_weight() -> None:
    route = WorkflowRoute(((2, 0.3), (1, 0.7)), "m")
    registered = {1: None, 2: "mutation:m"}
    runs = [f"run-{i}" for i in range(5000)]
    first = [choose_workflow_version("wf", r, route, registered) for r in runs]
    assert first == [choose_workflow_version("wf", r, route, registered) for r in runs]
    share = Counter(first)[2] / len(runs)
    assert abs(share - 0.3) < 0.03


def test_versions_registered_by_hand_win_and_mutation_versions_never_become_latest() -> None:
    # Before the route is read, a version registered by a proposal does not take all runs.
    assert choose_workflow_version("wf", "r", None, {1: None, 2: "mutation:m"}) == 1
    # A person registering a newer version than the route names makes the route stale.
    kept = WorkflowRoute(((2, 1.0),), "m")
    assert choose_workflow_version("wf", "r", kept, {1: None, 2: "mutation:m"}) == 2
    assert choose_workflow_version("wf", "r", kept, {1: None, 2: "mutation:m", 3: "ada"}) == 3
    assert choose_workflow_version("wf", "r", None, {}) is None


def test_the_canary_splits_with_and_a_rollback_restores_what_new_runs_got_before() -> None:
    # Version 2 was registered by hand after version 1; a proposal on version 1 is tried
    # against version 2 (what new runs get today), and rolling it back restores version 2.
    registered: dict[int, str | None] = {1: None, 2: "user:ada"}
    state = MutationsState()
    req = request(MutationAction.PROPOSE, base_version=1, changes=[CHANGE], rationale="r")
    decide(state, req, ctx(registered))
    applied = decide(state, request(MutationAction.APPROVE, canary_weight=0.5), ctx(registered))
    record = applied.records[-1]
    assert isinstance(record, Mutation)
    assert (record.applied_version, record.previous_version) == (3, 2)
    assert state.of("wf").route == WorkflowRoute(((3, 0.5), (2, 0.5)), "m1")
    decide(state, request(MutationAction.ROLLBACK), ctx(registered))
    assert state.of("wf").route == WorkflowRoute(((2, 1.0),), "m1")


def test_policy_auto_applies_the_newest_waiting_proposal_when_the_canary_slot_frees() -> None:
    """ADR 0040: a proposal validated while another one was the canary waits; when that one is
    rolled back (new runs get the waiting ones' base again), the newest waiting one is applied.
    After a keep, the waiting ones were made on the old version: they stay for a person."""
    state = MutationsState()
    decide(state, request(MutationAction.SET_POLICY, None, policy=ImprovementPolicy.AUTO), ctx())
    assert statuses(propose(state, actor="optimizer", mid="c1"))[-1] == "applied"
    assert statuses(propose(state, actor="optimizer", mid="w1"))[-1] == "validated"
    assert statuses(propose(state, actor="optimizer", mid="w2"))[-1] == "validated"
    ended = [
        r
        for r in decide(state, request(MutationAction.ROLLBACK, "c1"), ctx()).records
        if isinstance(r, Mutation)
    ]
    assert [(r.mutation_id, r.status.value) for r in ended] == [
        ("c1", "rolled_back"),
        ("w2", "approved"),
        ("w2", "applied"),
    ]
    assert ended[1].actor == "policy:auto"
    kept = [
        r
        for r in decide(state, request(MutationAction.KEEP, "w2"), ctx()).records
        if isinstance(r, Mutation)
    ]
    assert [(r.mutation_id, r.status.value) for r in kept] == [("w2", "kept")]
    assert state.of("wf").proposals["w1"].status.value == "validated"
