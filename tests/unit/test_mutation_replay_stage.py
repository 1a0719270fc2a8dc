"""The proposal lifecycle's replay stage (issue 10, ADR 0030): validating waits for the A/B
replay's verdict. Only ``better``, or ``no_difference`` with a lower cost, validates (issue 11,
ADR 0033); worse, no_difference at the same cost, insufficient data and a failed replay reject,
and the reason says which."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from processors.mutations.lifecycle import (
    DEFAULT_CANARY_WEIGHT,
    MutationContext,
    MutationDecision,
    MutationsState,
    decide,
    evolve,
)
from processors.mutations.validation import RESCUE_CANARY_WEIGHT, ReplayValidation
from processors.replay.stats import compare_success
from schemas.models import (
    ImprovementPolicy,
    Mutation,
    MutationAction,
    MutationRequest,
    MutationRequestRefused,
    MutationStatus,
)
from tests.unit.test_mutation_proposals import CHANGE, ctx


def replay_ctx() -> MutationContext:
    return dataclasses.replace(ctx(), replay=ReplayValidation(sample_size=20, confidence=0.9))


def proposal(actor: str = "user:ada") -> MutationRequest:
    """The proposal ``m1`` of ``wf`` (``CHANGE`` on version 1)."""
    return MutationRequest(
        workflow_id="wf",
        mutation_id="m1",
        action=MutationAction.PROPOSE,
        actor=actor,
        base_version=1,
        changes=[CHANGE],
        rationale="r",
    )


def propose_auto(state: MutationsState) -> tuple[MutationDecision, str]:
    """The optimizer's proposal under policy ``auto``: its decision and the replay it asks."""
    state.of("wf").policy = ImprovementPolicy.AUTO
    first = decide(state, proposal("optimizer"), replay_ctx())
    return first, first.replays[0].replay_id


def propose(state: MutationsState) -> tuple[Mutation, str]:
    decision = decide(state, proposal(), replay_ctx())
    mutations = [r for r in decision.records if isinstance(r, Mutation)]
    assert [m.status for m in mutations] == [MutationStatus.PROPOSED, MutationStatus.VALIDATING]
    [replay] = decision.replays
    assert replay.mutation_id == "m1" and replay.requested_by == "mutation-processor"
    assert replay.spec["selection"] == {
        "workflow_id": "wf",
        "workflow_version": 1,
        "sample_size": 20,
    }
    assert replay.spec["candidate"]["definition"]["steps"][0]["params"]["data"] == {"x": 2}
    assert replay.spec["confidence"] == 0.9
    validating = mutations[-1]
    assert validating.report is not None
    assert validating.report["pending"] == [{"name": "replay", "replay_id": replay.replay_id}]
    assert validating.report["not_run"] == []
    return validating, replay.replay_id


def verdict(replay_id: str, status: str = "completed", **outcome: Any) -> MutationRequest:
    return MutationRequest(
        workflow_id="wf",
        mutation_id="m1",
        action=MutationAction.REPLAY_VERDICT,
        actor="replay-runner",
        evidence={"replay_id": replay_id, "status": status, **outcome},
    )


SUMMARY = {"runs": 8, "outcomes": {"broke": 8}, "comparison": {"reason": "success 100% -> 0%"}}


def cost(original: int, candidate: int) -> dict[str, Any]:
    return {
        "runs": 8,
        "cost": {
            "original": {"tokens": original, "calls": 8},
            "candidate": {"tokens": candidate, "calls": 0},
        },
    }


@pytest.mark.parametrize(
    ("outcome", "status", "passed", "reason"),
    [
        ({"verdict": "worse", "summary": SUMMARY}, "rejected", False, "replay verdict worse"),
        ({"verdict": "better", "summary": SUMMARY}, "validated", True, "replay verdict better"),
        (
            {"verdict": "no_difference", "summary": cost(800, 300)},
            "validated",
            True,
            "no_difference with a lower cost (800 -> 300 tokens)",
        ),
        (
            {"verdict": "no_difference", "summary": cost(800, 800)},
            "rejected",
            False,
            "no_difference and no lower cost (800 -> 800 tokens): nothing to gain",
        ),
        (
            {"verdict": "no_difference", "summary": cost(800, 900)},
            "rejected",
            False,
            "no lower cost",
        ),
        (
            # The originals' tokens unknown (0): a lower cost cannot be shown.
            {"verdict": "no_difference", "summary": cost(0, 0)},
            "rejected",
            False,
            "no lower cost (cost not measured)",
        ),
        ({"verdict": "no_difference"}, "rejected", False, "nothing to gain"),
        (
            {"verdict": "insufficient_data", "summary": {"runs": 2}},
            "rejected",
            False,
            "insufficient data (2 runs): the proposal was not shown to be better",
        ),
        (
            {"status": "failed", "error": "boom"},
            "rejected",
            False,
            "failed (boom): the proposal was not shown to be better",
        ),
    ],
)
def test_the_verdict_decides(
    outcome: dict[str, Any], status: str, passed: bool, reason: str
) -> None:
    state = MutationsState()
    _, replay_id = propose(state)
    decision = decide(state, verdict(replay_id, **outcome), replay_ctx())
    [record] = decision.records
    assert isinstance(record, Mutation)
    assert record.status.value == status
    assert reason in (record.reason or "")
    assert record.report is not None
    assert record.report["passed"] is passed
    assert record.report["pending"] == []
    replay_check = record.report["checks"][-1]
    assert replay_check["name"] == "replay" and replay_check["passed"] is passed
    if passed:
        assert replay_check["errors"] == []
    else:
        assert reason in replay_check["errors"][0]["message"]
        assert replay_check["errors"][0]["path"] == "replay"
    assert record.report["replay"]["replay_id"] == replay_id
    assert [c["name"] for c in record.report["checks"]] == [
        "base",
        "applies",
        "definition",
        "replay",
    ]


def test_a_redelivered_or_stale_verdict_changes_nothing() -> None:
    state = MutationsState()
    log: list[object] = []
    _, replay_id = propose(state)
    answer = verdict(replay_id, verdict="better")
    log += decide(state, answer, replay_ctx()).records
    assert decide(state, answer, replay_ctx()).records == []  # redelivered
    # A verdict for a proposal that is no longer validating is refused, naming the status.
    late = decide(state, verdict(replay_id, verdict="worse"), replay_ctx())
    [refused] = late.records
    assert isinstance(refused, MutationRequestRefused)
    assert refused.current_status == "validated"
    assert state.of("wf").proposals["m1"].status is MutationStatus.VALIDATED


def test_a_verdict_of_another_replay_is_refused() -> None:
    state = MutationsState()
    propose(state)
    [refused] = decide(state, verdict("other", verdict="worse"), replay_ctx()).records
    assert isinstance(refused, MutationRequestRefused)
    assert "replay" in refused.reason
    assert state.of("wf").proposals["m1"].status is MutationStatus.VALIDATING


def test_policy_auto_applies_after_a_good_verdict_and_the_fold_matches() -> None:
    state = MutationsState()
    first, replay_id = propose_auto(state)
    second = decide(state, verdict(replay_id, verdict="better"), replay_ctx())
    assert [r.status.value for r in second.records if isinstance(r, Mutation)] == [
        "validated",
        "approved",
        "applied",
    ]
    assert len(second.registrations) == 1
    folded = MutationsState()
    folded.of("wf").policy = ImprovementPolicy.AUTO
    for record in [*first.records, *second.records]:
        evolve(folded, record)
    assert folded.of("wf").proposals == state.of("wf").proposals


def _success(original: tuple[int, int], candidate: tuple[int, int]) -> dict[str, Any]:
    """A replay summary whose success comparison is computed by the replay statistics."""
    a = [True] * original[0] + [False] * (original[1] - original[0])
    b = [True] * candidate[0] + [False] * (candidate[1] - candidate[0])
    success = {  # as the report writes it: JSON has no inf (an odds ratio of a 0 cell)
        k: v
        for k, v in dataclasses.asdict(compare_success(a, b, 0.95)).items()
        if not (isinstance(v, float) and not math.isfinite(v))
    }
    return {"runs": len(a), "comparison": {"reason": "r", "success": success}}


@pytest.mark.parametrize(
    ("original", "candidate", "weight"),
    [
        # The baseline fails a fifth of the runs the candidate saves: a rescue, half the runs.
        ((40, 50), (50, 50), RESCUE_CANARY_WEIGHT),
        # Better, but the success gain's interval reaches zero (the verdict came from latency).
        ((48, 50), (50, 50), DEFAULT_CANARY_WEIGHT),
        # Better with the same success rate: the default share.
        ((50, 50), (50, 50), DEFAULT_CANARY_WEIGHT),
    ],
)
def test_policy_auto_gives_a_rescue_a_larger_canary_share(
    original: tuple[int, int], candidate: tuple[int, int], weight: float
) -> None:
    state = MutationsState()
    _, replay_id = propose_auto(state)
    summary = _success(original, candidate)
    decision = decide(state, verdict(replay_id, verdict="better", summary=summary), replay_ctx())
    [applied] = [
        r for r in decision.records if isinstance(r, Mutation) and r.status.value == "applied"
    ]
    assert applied.canary_weight == weight


def test_a_person_approving_a_rescue_chooses_the_weight() -> None:
    """The larger share is policy auto's; a person's approval keeps the default or theirs."""
    state = MutationsState()
    _, replay_id = propose(state)
    summary = _success((40, 50), (50, 50))
    decide(state, verdict(replay_id, verdict="better", summary=summary), replay_ctx())
    approval = MutationRequest(
        workflow_id="wf", mutation_id="m1", action=MutationAction.APPROVE, actor="user:ada"
    )
    decision = decide(state, approval, replay_ctx())
    [applied] = [
        r for r in decision.records if isinstance(r, Mutation) and r.status.value == "applied"
    ]
    assert applied.canary_weight == DEFAULT_CANARY_WEIGHT


def test_without_replay_configured_the_static_checks_decide_and_replay_is_not_run() -> None:
    state = MutationsState()
    decision = decide(state, proposal(), ctx())
    assert decision.replays == []
    last = decision.records[-1]
    assert isinstance(last, Mutation) and last.status is MutationStatus.VALIDATED
    assert last.report is not None and last.report["not_run"][0]["name"] == "replay"


def test_policy_auto_does_not_apply_what_the_replay_did_not_show_better() -> None:
    state = MutationsState()
    _, replay_id = propose_auto(state)
    second = decide(state, verdict(replay_id, verdict="no_difference"), replay_ctx())
    assert [r.status.value for r in second.records if isinstance(r, Mutation)] == ["rejected"]
    assert second.registrations == []


def test_the_canary_judges_evidence_lands_on_the_record() -> None:
    state = MutationsState()
    _, replay_id = propose_auto(state)
    decide(state, verdict(replay_id, verdict="better"), replay_ctx())
    assert state.of("wf").proposals["m1"].status is MutationStatus.APPLIED
    evidence = {"decision": "rollback", "canary_runs": 23, "effect": {"success": -0.4}}
    rollback = MutationRequest(
        workflow_id="wf", mutation_id="m1", action=MutationAction.ROLLBACK, actor="canary",
        reason="significant regression in success rate", evidence=evidence,
    )  # fmt: skip
    [record] = decide(state, rollback, replay_ctx()).records
    assert isinstance(record, Mutation) and record.status is MutationStatus.ROLLED_BACK
    assert record.actor == "canary" and record.reason == "significant regression in success rate"
    assert record.report is not None and record.report["canary"] == evidence
    assert record.report["replay"]["verdict"] == "better"  # the replay's report stays
    assert record.evidence is None  # the proposal's own evidence is not replaced
