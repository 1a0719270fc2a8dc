"""processors.optimizer.arms and the model choice it feeds: the model step of a diagnosis (a
checker's is the step it scores), read-model rows as bandit pulls, the reset on drift as a
window, and the exploring ``model_choice`` proposals (a cost finding -> the cheap model for the
largest input class; a quality drift -> back to the reference model) with the planner's rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from node_workers.nodes import builtin_nodes
from processors.mutations.validation import candidate_definition
from processors.optimizer.arms import (
    ArmSample,
    bandits_from_samples,
    drift_since,
    in_use,
    model_step,
    sample_from_row,
)
from processors.optimizer.bandit import RewardWeights
from processors.optimizer.experiment import ExperimentConfig
from processors.optimizer.planner import mutation_request, plan, proposal_key
from processors.optimizer.strategies import ModelChoiceStrategy, OptimizerConfig, StrategyInput
from schemas.models import Diagnosis, DiagnosisKind, DiagnosisSeverity
from workflows import StaticNodeCatalog, check_definition, parse_workflow
from workflows.model import WorkflowDefinition

CATALOG = StaticNodeCatalog({n.name: [n.version] for n in builtin_nodes()})
T0 = datetime(2026, 1, 1, tzinfo=UTC)
WEIGHTS = RewardWeights(success=1.0, quality=3.0, latency=0.0, cost=1.0, cost_scale=250.0)
CONFIG = OptimizerConfig(
    exploration_budget=0.1,
    weights={"answer": WEIGHTS},
    models={"answer/ask": ("big", "small")},
    contexts={"answer": "difficulty"},
)
PER_CLASS = "{{ inputs.difficulty == 'easy' && 'small' || 'big' }}"


def checked(model: str = "big", *, second_chat: bool = False) -> WorkflowDefinition:
    steps: list[dict[str, Any]] = [
        {
            "id": "ask",
            "node": "openai.chat",
            "params": {"model": model, "messages": [{"role": "user", "content": "{{ inputs.q }}"}]},
        },
        {
            "id": "check",
            "node": "transform",
            "checker": True,
            "needs": ["ask"],
            "params": {
                "expression": "{score: (got == want && `1`) || `0`}",
                "data": {"got": "{{ steps.ask.output.content }}", "want": "{{ inputs.a }}"},
            },
        },
    ]
    if second_chat:
        steps.append(
            {
                "id": "ask2",
                "node": "openai.chat",
                "params": {"model": "big", "messages": [{"role": "user", "content": "x"}]},
            }
        )
        steps[1]["needs"] = ["ask", "ask2"]
    return parse_workflow(
        {
            "id": "answer",
            "inputs": {
                "q": {"type": "string"},
                "a": {"type": "string"},
                "difficulty": {"type": "string"},
            },
            "steps": steps,
        }
    )


def diagnosis(
    kind: DiagnosisKind,
    step: str,
    *,
    metrics: dict[str, float] | None = None,
    evidence: str = "{}",
    at: datetime = T0,
) -> Diagnosis:
    subject = f"workflow:answer/step:{step}"
    return Diagnosis(
        diagnosis_id=f"{kind.value}/{subject}/1",
        subject=subject,
        kind=kind,
        severity=DiagnosisSeverity.WARNING,
        detector="test",
        workflow_id="answer",
        workflow_version=1,
        step_id=step,
        detected_at=at,
        traces_seen=100,
        metrics=metrics or {},
        evidence=evidence,
        explanation="test diagnosis",
    )


def samples(
    plan_: list[tuple[str, str, float]], start: datetime = T0, first: int = 0
) -> list[ArmSample]:
    """One sample per (context, model, quality), a second apart."""
    return [
        ArmSample(
            run_id=f"r{first + i}",
            finished_at=start + timedelta(seconds=i),
            model=model,
            context=context,
            succeeded=True,
            quality=quality,
            tokens=210.0 if model == "big" else 30.0,
        )
        for i, (context, model, quality) in enumerate(plan_)
    ]


def bandits(found: list[ArmSample], since: datetime | None = None) -> list[Any]:
    return bandits_from_samples(
        found,
        key="answer/ask",
        arms=("big", "small"),
        weights=WEIGHTS,
        budget=0.1,
        min_pulls=10,
        since=since,
    )


def given(definition: WorkflowDefinition, d: Diagnosis, found: list[Any]) -> StrategyInput:
    return StrategyInput(
        diagnosis=d, definition=definition, base_version=1, config=CONFIG, bandits=found
    )


def applied(definition: WorkflowDefinition, proposal: Any) -> WorkflowDefinition:
    result = candidate_definition(definition, proposal.changes)
    assert check_definition(result, node_catalog=CATALOG) == []
    return result


# -- pure helpers --------------------------------------------------------------------------------


def test_the_model_step_of_a_diagnosis() -> None:
    d = checked()
    assert model_step(d, "ask") == "ask"
    assert model_step(d, "check") == "ask"  # the checker scores ask
    assert model_step(d, None) is None
    assert model_step(d, "nope") is None
    # a checker scoring two model steps does not say which one got worse
    assert model_step(checked(second_chat=True), "check") is None
    plain = parse_workflow(
        {"id": "w", "steps": [{"id": "t", "node": "transform", "params": {"expression": "@"}}]}
    )
    assert model_step(plain, "t") is None


def test_a_read_model_row_as_a_sample() -> None:
    s = sample_from_row(
        "r1",
        T0,
        "succeeded",
        "easy",
        {"model": "small", "usage": {"total_tokens": 31}, "content": "4"},
        12.5,
        [{"result": {"score": 1}}, {"result": {"score": 0}}, {"result": {"nope": 1}}],
    )
    assert s == ArmSample("r1", T0, "small", "easy", True, 0.5, 31.0, 12.5)
    failed = sample_from_row("r2", T0, "failed", 7, None, None, None)
    assert failed == ArmSample("r2", T0, None, None, False, None, 0.0, 0.0)


def test_drift_since_is_where_the_drift_window_began() -> None:
    found = samples([("easy", "small", 1.0)] * 10)
    # detected on the 7th sample (index 6) over its last 3 values: from index 4 on
    assert drift_since(found, found[6].finished_at, 3) == found[4].finished_at
    assert drift_since(found, found[6].finished_at, 8) is None  # not in the window yet
    assert drift_since(found, found[6].finished_at, 0) is None


def test_bandits_per_context_from_samples() -> None:
    found = samples(
        [("easy", "big", 1.0)] * 12 + [("hard", "big", 1.0)] * 4 + [("easy", "mystery", 1.0)]
    )
    built = bandits(found)
    assert [b.key for b in built] == ["answer/ask/easy", "answer/ask/hard"]
    easy, hard = built
    assert (easy.stats["big"].pulls, easy.stats["small"].pulls) == (12, 0)  # mystery left out
    assert hard.stats["big"].pulls == 4 and in_use(hard) == "big"
    assert easy.best() is None  # small never measured
    later = bandits(found, since=found[10].finished_at)
    assert [(b.key, b.stats["big"].pulls) for b in later] == [
        ("answer/ask/easy", 2),
        ("answer/ask/hard", 4),
    ]
    with pytest.raises(ValueError, match="at least one arm"):
        bandits_from_samples(found, key="k", arms=(), weights=WEIGHTS, budget=0.1, min_pulls=1)


# -- exploring model choice ----------------------------------------------------------------------


def _big_only() -> list[ArmSample]:
    return samples(
        [("easy", "big", 1.0), ("easy", "big", 1.0), ("easy", "big", 1.0)] * 10
        + [("hard", "big", 1.0)] * 10
    )


def test_a_cost_finding_tries_the_cheap_model_on_the_largest_class() -> None:
    d = diagnosis(DiagnosisKind.COST, "ask", metrics={"share": 1.0, "tokens_per_run": 210})
    p = ModelChoiceStrategy().propose(given(checked(), d, bandits(_big_only())))
    assert p is not None and p.step_id == "ask"
    assert applied(checked(), p).step("ask").params["model"] == PER_CLASS
    assert p.predicted_effect["model"] == {"from": "big", "to": PER_CLASS}
    assert "small for answer/ask/easy" in p.predicted_effect["explore"]


def test_a_cost_finding_with_nothing_left_to_try_proposes_nothing() -> None:
    # easy already on small (and big untried there since), hard tried small: nothing to try
    found = samples([("easy", "small", 1.0)] * 20 + [("hard", "big", 1.0), ("hard", "small", 0.0)])
    d = diagnosis(DiagnosisKind.COST, "ask")
    assert ModelChoiceStrategy().propose(given(checked(PER_CLASS), d, bandits(found))) is None
    # no models configured for the step: no exploration
    unconfigured = StrategyInput(
        diagnosis=d, definition=checked(), base_version=1, bandits=bandits(_big_only())
    )
    assert ModelChoiceStrategy().propose(unconfigured) is None


def test_a_quality_drift_of_the_checker_sends_the_cheap_classes_back_to_the_reference() -> None:
    """After the drift began (the bandits' window): easy runs on small, hard on big."""
    found = samples([("easy", "small", 0.0), ("easy", "small", 1.0), ("hard", "big", 1.0)] * 8)
    fell = {"mean_before": 0.96, "mean_after": 0.6}
    d = diagnosis(DiagnosisKind.QUALITY_DRIFT, "check", metrics=fell)
    p = ModelChoiceStrategy().propose(given(checked(PER_CLASS), d, bandits(found)))
    assert p is not None and p.step_id == "ask"  # the checker's model step
    assert applied(checked(PER_CLASS), p).step("ask").params["model"] == "big"
    assert "back to big for answer/ask/easy" in p.predicted_effect["explore"]
    # a quality that rose is not answered
    rose = diagnosis(
        DiagnosisKind.QUALITY_DRIFT, "check", metrics={"mean_before": 0.6, "mean_after": 0.9}
    )
    assert ModelChoiceStrategy().propose(given(checked(PER_CLASS), rose, bandits(found))) is None
    # every class already on the reference: nothing to send back
    on_big = samples([("easy", "big", 0.0), ("hard", "big", 1.0)] * 8)
    assert ModelChoiceStrategy().propose(given(checked(), d, bandits(on_big))) is None


def test_the_open_model_choice_of_the_scored_step_blocks_the_checker_drift() -> None:
    found = samples([("easy", "small", 0.0), ("hard", "big", 1.0)] * 8)
    d = diagnosis(
        DiagnosisKind.QUALITY_DRIFT, "check", metrics={"mean_before": 0.96, "mean_after": 0.5}
    )
    g = given(checked(PER_CLASS), d, bandits(found))
    open_keys = {proposal_key("answer", "ask", "model_choice")}
    blocked = plan(g, policy="auto", open_keys=open_keys)
    assert blocked.proposal is None
    assert ("model_choice", "a proposal for answer/ask/model_choice is still open") in (
        blocked.skipped
    )
    found_plan = plan(g, policy="auto", open_keys=set())
    assert found_plan.proposal is not None
    request = mutation_request(found_plan, g)
    assert request.actor == "optimizer:model_choice"
    assert request.evidence is not None and request.evidence["step_id"] == "ask"
    config = ExperimentConfig.from_json(request.evidence["bandit"])
    assert config.min_runs == CONFIG.experiment_min_runs == 10
    assert config.budget == 0.1 and config.weights == WEIGHTS


def test_a_checker_step_is_never_cached() -> None:
    """A cache hit is a scheduler trace without metrics: the run would not be scored, and the
    critic's quality drift and the experiments' rewards would lose their signal."""
    from processors.optimizer.strategies import CacheStrategy

    d = diagnosis(DiagnosisKind.REPEATED_INPUTS, "check", metrics={"repeat_share": 0.6})
    assert CacheStrategy().propose(StrategyInput(d, checked(), 1)) is None
    ask = diagnosis(DiagnosisKind.REPEATED_INPUTS, "ask", metrics={"repeat_share": 0.6})
    assert CacheStrategy().propose(StrategyInput(ask, checked(), 1)) is not None


def test_a_latency_that_fell_gets_no_timeout() -> None:
    from processors.optimizer.strategies import TimeoutStrategy

    metrics = {"p50_ms": 19.0, "p95_ms": 25.0, "p99_ms": 30.0}
    fell = diagnosis(
        DiagnosisKind.LATENCY_DRIFT, "ask", metrics=metrics, evidence='{"direction": "down"}'
    )
    assert TimeoutStrategy().propose(StrategyInput(fell, checked(), 1)) is None
    rose = diagnosis(
        DiagnosisKind.LATENCY_DRIFT, "ask", metrics=metrics, evidence='{"direction": "up"}'
    )
    assert TimeoutStrategy().propose(StrategyInput(rose, checked(), 1)) is not None


def test_a_quality_drop_of_the_model_step_supersedes_its_model_choice_experiment() -> None:
    from processors.optimizer.planner import superseding_key

    fell = {"mean_before": 0.96, "mean_after": 0.5}
    key = "answer/ask/model_choice"
    assert (
        superseding_key(diagnosis(DiagnosisKind.QUALITY_DRIFT, "check", metrics=fell), checked())
        == key
    )
    assert (
        superseding_key(diagnosis(DiagnosisKind.QUALITY_DRIFT, "ask", metrics=fell), checked())
        == key
    )
    rose = {"mean_before": 0.5, "mean_after": 0.9}
    assert (
        superseding_key(diagnosis(DiagnosisKind.QUALITY_DRIFT, "check", metrics=rose), checked())
        is None
    )
    assert superseding_key(diagnosis(DiagnosisKind.COST, "ask", metrics=fell), checked()) is None
    two = checked(second_chat=True)
    assert (
        superseding_key(diagnosis(DiagnosisKind.QUALITY_DRIFT, "check", metrics=fell), two) is None
    )
