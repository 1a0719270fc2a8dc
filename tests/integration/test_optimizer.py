"""The optimizer end to end on the real services: a Diagnosis on the diagnoses topic -> the faust
agent -> a MutationRequest propose -> the mutation processor -> the proposal, with its evidence,
in the read model ``/v1/mutations`` answers from. Also: one open proposal per (workflow, step,
strategy), and nothing for a workflow whose improvement policy is ``off``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from processors.mutations.validation import candidate_definition
from projections.postgres.mutation_queries import get_policy, list_mutations
from projections.postgres.queries import get_workflow
from schemas.models import (
    Diagnosis,
    DiagnosisKind,
    DiagnosisSeverity,
    GraphMutation,
    ImprovementPolicy,
    MutationAction,
    MutationRequest,
)
from tests.integration.engine_fixtures import HarnessFactory
from tests.support.waiting import eventually
from workflows.model import WorkflowDefinition


def _four_calls_and_a_trap(workflow_id: str) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for i, name in enumerate("abcd"):
        step: dict[str, Any] = {
            "id": name,
            "node": "http.request",
            "params": {"url": f"http://127.0.0.1:9/{name}"},
        }
        if i:
            step["needs"] = ["abcd"[i - 1]]
        steps.append(step)
    steps += [
        {
            "id": "put",
            "node": "http.request",
            "needs": ["d"],
            "params": {"url": "http://127.0.0.1:9/kv/k", "method": "PUT", "body": {"v": 1}},
        },
        {
            "id": "get",
            "node": "http.request",
            "needs": ["put"],
            "params": {"url": "http://127.0.0.1:9/kv/k"},
        },
    ]
    return {"id": workflow_id, "steps": steps, "outputs": {"v": "{{ steps.get.output.body }}"}}


def _diagnosis(workflow_id: str, kind: DiagnosisKind, step: str | None, **extra: Any) -> Diagnosis:
    subject = f"workflow:{workflow_id}" + (f"/step:{step}" if step else "")
    now = datetime.now(UTC)
    return Diagnosis(
        diagnosis_id=f"{kind.value}/{subject}/{uuid.uuid4().hex[:8]}",
        subject=subject,
        kind=kind,
        severity=DiagnosisSeverity.WARNING,
        detector="test",
        workflow_id=workflow_id,
        workflow_version=1,
        step_id=step,
        detected_at=now,
        traces_seen=200,
        explanation=f"{kind.value} on {subject}",
        **extra,
    )


def test_a_diagnosis_becomes_a_proposal_with_its_evidence(engine_harness: HarnessFactory) -> None:
    harness = engine_harness(
        optimizer=True,
        scheduler=False,
        workers=False,
        trigger_router=False,
        replay_runner=False,
        proposal_replay=None,
    )
    workflow_id = f"opt-{uuid.uuid4().hex[:8]}"
    harness.register(_four_calls_and_a_trap(workflow_id))
    with harness.conn() as conn:
        eventually(
            lambda: get_workflow(conn, workflow_id, schema=harness.schema),
            20,
            "the workflow projected",
        )
    topic = harness.engine.catalog.diagnoses.topic
    first = _diagnosis(
        workflow_id,
        DiagnosisKind.SEQUENTIAL_INDEPENDENT,
        None,
        evidence='{"step_p50_ms": {"a": 150, "b": 150, "c": 150, "d": 150}}',
    )
    harness.send(topic, first.subject, first)

    def proposals() -> list[Any]:
        with harness.conn() as conn:
            return list_mutations(conn, workflow_id=workflow_id, schema=harness.schema)

    found = eventually(
        proposals,
        60,
        "the optimizer's proposal in the read model",
        until=lambda rows: any(r.status == "validated" for r in rows),
        describe=lambda: str([(r.status, r.reason) for r in proposals()]),
    )
    assert len(found) == 1
    row = found[0]
    assert row.author == "optimizer:parallelise"
    assert row.base_version == 1
    evidence = row.evidence
    assert evidence["diagnosis_id"] == first.diagnosis_id
    assert evidence["strategy"] == "parallelise"
    assert evidence["similar_incidents"] == []
    # put and get are timed like a typical step: 6 x 150 ms in sequence, then 3 on the path
    assert evidence["predicted_effect"]["critical_path"]["from"] == 900.0
    assert evidence["predicted_effect"]["critical_path"]["to"] == 450.0
    # the trap: the PUT/GET pair keeps its order, the four calls run side by side
    with harness.conn() as conn:
        base_row = get_workflow(conn, workflow_id, 1, schema=harness.schema)
    assert base_row is not None
    base = WorkflowDefinition.from_json_dict(base_row.definition)
    changes = [GraphMutation.model_validate(c) for c in row.changes]
    candidate = candidate_definition(base, changes)
    assert [candidate.step(s).needs for s in "abcd"] == [(), (), (), ()]
    assert candidate.step("get").needs == ("put",)
    assert set(candidate.step("put").needs) == set("abcd")

    # The same finding again: the proposal is still open, so nothing new.
    second = _diagnosis(workflow_id, DiagnosisKind.SEQUENTIAL_INDEPENDENT, None)
    harness.send(topic, second.subject, second)
    optimizer = harness.engine.optimizer
    assert optimizer is not None
    decision = eventually(
        lambda: next(
            (d for d in optimizer.decisions if d.diagnosis_id == second.diagnosis_id), None
        ),
        30,
        "the optimizer's decision on the second diagnosis",
    )
    assert decision is not None and decision.request is None
    assert "still open" in decision.reason
    assert len(proposals()) == 1

    # Policy off: a timeout finding proposes nothing.
    harness.send(
        harness.engine.catalog.mutations.topic,
        workflow_id,
        MutationRequest(
            workflow_id=workflow_id,
            action=MutationAction.SET_POLICY,
            actor="user:test",
            policy=ImprovementPolicy.OFF,
        ),
    )
    with harness.conn() as conn:
        eventually(
            lambda: get_policy(conn, workflow_id, schema=harness.schema),
            20,
            "policy off projected",
            until=lambda row: row is not None and row.policy == "off",
        )
    third = _diagnosis(workflow_id, DiagnosisKind.LATENCY_DRIFT, "a", metrics={"p99_ms": 400.0})
    harness.send(topic, third.subject, third)
    decision = eventually(
        lambda: next(
            (d for d in optimizer.decisions if d.diagnosis_id == third.diagnosis_id), None
        ),
        30,
        "the optimizer's decision under policy off",
    )
    assert decision is not None
    assert decision.request is None and decision.reason == "policy off"
    assert len(proposals()) == 1


def _one_call(workflow_id: str) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "steps": [
            {"id": "call", "node": "http.request", "params": {"url": "http://127.0.0.1:9/x"}},
            {
                "id": "after",
                "node": "transform",
                "needs": ["call"],
                "params": {"expression": "@", "data": "{{ steps.call.output.body }}"},
            },
        ],
    }


def test_the_historian_is_asked_first_and_what_was_kept_is_tried_first(
    engine_harness: HarnessFactory,
) -> None:
    """A timeout fix was kept for a past timeout drift of the step; on a new, similar drift the
    optimizer proposes a timeout again, where the library's own order would try a retry first."""
    from processors.historian.postgres import PostgresHistorian
    from processors.optimizer.planner import plan
    from processors.optimizer.strategies import StrategyInput, replace_step
    from schemas.models import GraphMutationType

    harness = engine_harness(
        optimizer=True,
        historian=True,
        scheduler=False,
        workers=False,
        trigger_router=False,
        replay_runner=False,
        proposal_replay=None,
    )
    workflow_id = f"opt-h-{uuid.uuid4().hex[:8]}"
    topic = harness.engine.catalog.diagnoses.topic
    mutations_topic = harness.engine.catalog.mutations.topic
    harness.register(_one_call(workflow_id))

    def request(**fields: Any) -> None:
        harness.send(
            mutations_topic,
            workflow_id,
            MutationRequest(workflow_id=workflow_id, actor="user:ops", **fields),
        )

    def proposal(mutation_id: str, status: str) -> Any:
        def row() -> Any:
            with harness.conn() as conn:
                rows = list_mutations(conn, workflow_id=workflow_id, schema=harness.schema)
            return next((r for r in rows if r.mutation_id == mutation_id), None)

        return eventually(
            row, 30, f"{mutation_id} {status}", until=lambda r: r is not None and r.status == status
        )

    # 1. The past incident, under policy off: the optimizer stays out of it.
    request(action=MutationAction.SET_POLICY, policy=ImprovementPolicy.OFF)
    with harness.conn() as conn:
        eventually(
            lambda: get_policy(conn, workflow_id, schema=harness.schema),
            20,
            "policy off projected",
            until=lambda row: row is not None and row.policy == "off",
        )
    drift = {"error_class": "StepTimedOut", "metrics": {"p99_ms": 1300.0, "timeout_rate": 0.2}}
    past = _diagnosis(workflow_id, DiagnosisKind.TIMEOUT_DRIFT, "call", **drift)
    harness.send(topic, past.subject, past)
    # Waited for: the rest of the story is faster than the optimizer's first group join, and a
    # past incident read after the policy went back to propose would get a proposal of its own.
    optimizer = harness.engine.optimizer
    assert optimizer is not None
    skipped = eventually(
        lambda: next((d for d in optimizer.decisions if d.diagnosis_id == past.diagnosis_id), None),
        60,
        "the optimizer's decision on the past incident",
    )
    assert skipped is not None and skipped.request is None and skipped.reason == "policy off"

    # 2. A person fixed it with a timeout, and it was kept.
    with harness.conn() as conn:
        base_row = eventually(
            lambda: get_workflow(conn, workflow_id, 1, schema=harness.schema), 20, "projected"
        )
    assert base_row is not None
    base = WorkflowDefinition.from_json_dict(base_row.definition)
    fixed = base.step("call").model_dump(mode="json") | {"timeout": 2000}
    fix_id = f"fix-{uuid.uuid4().hex[:8]}"
    request(
        action=MutationAction.PROPOSE,
        mutation_id=fix_id,
        base_version=1,
        changes=list(replace_step("call", fixed)),
        rationale="bound the supplier call",
        evidence={"diagnosis_id": past.diagnosis_id, "strategy": "timeout"},
    )
    proposal(fix_id, "validated")
    request(action=MutationAction.APPROVE, mutation_id=fix_id, canary_weight=1.0)
    proposal(fix_id, "applied")
    request(action=MutationAction.KEEP, mutation_id=fix_id, reason="p95 better")
    proposal(fix_id, "kept")

    # 3. The historian has linked the kept fix to the past incident.
    new = _diagnosis(
        workflow_id,
        DiagnosisKind.TIMEOUT_DRIFT,
        "call",
        error_class="StepTimedOut",
        metrics={"p99_ms": 3000.0, "timeout_rate": 0.25},
    )
    lookup = PostgresHistorian(harness.settings, schema=harness.schema)
    try:
        incidents = eventually(
            lambda: lookup.similar(new, k=5),
            60,
            "the historian linking the kept fix to the past incident",
            until=lambda found: any(i.diagnosis_id == past.diagnosis_id and i.kept for i in found),
        )
    finally:
        lookup.close()
    # Without history the library would try a retry first (StepTimedOut is transient).
    with harness.conn() as conn:
        v2 = get_workflow(conn, workflow_id, 2, schema=harness.schema)
    assert v2 is not None
    current = WorkflowDefinition.from_json_dict(v2.definition)
    blind = plan(
        StrategyInput(diagnosis=new, definition=current, base_version=2),
        policy="propose",
        open_keys=set(),
    )
    assert blind.proposal is not None and blind.proposal.strategy == "retry"
    assert incidents

    # 4. Policy back to propose; the new drift.
    request(action=MutationAction.SET_POLICY, policy=ImprovementPolicy.PROPOSE)
    with harness.conn() as conn:
        eventually(
            lambda: get_policy(conn, workflow_id, schema=harness.schema),
            20,
            "policy propose projected",
            until=lambda row: row is not None and row.policy == "propose",
        )
    harness.send(topic, new.subject, new)

    def optimizer_rows() -> list[Any]:
        with harness.conn() as conn:
            rows = list_mutations(conn, workflow_id=workflow_id, schema=harness.schema)
        return [r for r in rows if r.author.startswith("optimizer:")]

    rows = eventually(optimizer_rows, 60, "the optimizer's proposal", until=bool)
    assert len(rows) == 1
    row = rows[0]
    assert row.author == "optimizer:timeout"
    assert row.base_version == 2
    evidence = row.evidence
    assert evidence["diagnosis_id"] == new.diagnosis_id
    similar = {i["diagnosis_id"]: i for i in evidence["similar_incidents"]}
    assert past.diagnosis_id in similar
    assert similar[past.diagnosis_id]["proposals"][0] == {
        "mutation_id": fix_id,
        "strategy": "timeout",
        "status": "kept",
    }
    assert evidence["predicted_effect"]["timeout_ms"] == {"from": 2000, "to": 4500}
    changes = [GraphMutation.model_validate(c) for c in row.changes]
    assert [c.type for c in changes] == [
        GraphMutationType.REMOVE_STEP,
        GraphMutationType.ADD_STEP,
    ]


def test_a_proposal_its_validation_rejected_holds_its_key(engine_harness: HarnessFactory) -> None:
    """The optimizer's retry for the step was rejected by validation: on the next timeout drift
    of the step it proposes the next strategy (a timeout), not the same retry again."""
    from processors.optimizer.strategies import replace_step

    harness = engine_harness(
        optimizer=True,
        scheduler=False,
        workers=False,
        trigger_router=False,
        replay_runner=False,
        proposal_replay=None,
    )
    workflow_id = f"opt-r-{uuid.uuid4().hex[:8]}"
    harness.register(_one_call(workflow_id))
    with harness.conn() as conn:
        base_row = eventually(
            lambda: get_workflow(conn, workflow_id, 1, schema=harness.schema), 20, "projected"
        )
    assert base_row is not None
    base = WorkflowDefinition.from_json_dict(base_row.definition)
    # A retry on a node no catalog has: the static checks reject it, with a report that failed.
    broken = base.step("call").model_dump(mode="json") | {"node": "no.such.node@1"}
    rejected_id = f"opt-{uuid.uuid4().hex[:24]}"
    harness.send(
        harness.engine.catalog.mutations.topic,
        workflow_id,
        MutationRequest(
            workflow_id=workflow_id,
            mutation_id=rejected_id,
            action=MutationAction.PROPOSE,
            actor="optimizer:retry",
            base_version=1,
            changes=list(replace_step("call", broken)),
            rationale="retry the transient failures",
            evidence={"strategy": "retry", "step_id": "call"},
        ),
    )

    def rows() -> list[Any]:
        with harness.conn() as conn:
            return list_mutations(conn, workflow_id=workflow_id, schema=harness.schema)

    found = eventually(
        rows,
        30,
        "the broken retry rejected by validation",
        until=lambda rs: any(r.mutation_id == rejected_id and r.status == "rejected" for r in rs),
        describe=lambda: str([(r.status, r.reason) for r in rows()]),
    )
    assert found[0].report is not None and found[0].report["passed"] is False

    drift = _diagnosis(
        workflow_id,
        DiagnosisKind.TIMEOUT_DRIFT,
        "call",
        error_class="StepTimedOut",
        metrics={"p99_ms": 1300.0, "timeout_rate": 0.2},
    )
    harness.send(harness.engine.catalog.diagnoses.topic, drift.subject, drift)
    optimizer = harness.engine.optimizer
    assert optimizer is not None
    decision = eventually(
        lambda: next(
            (d for d in optimizer.decisions if d.diagnosis_id == drift.diagnosis_id), None
        ),
        30,
        "the optimizer's decision on the drift",
    )
    assert decision is not None and decision.request is not None
    assert decision.request.actor == "optimizer:timeout"
    assert decision.plan is not None
    skipped = dict(decision.plan.skipped)
    held = f"validation rejected a proposal for {workflow_id}/call/retry"
    assert skipped["retry"].startswith(held)
