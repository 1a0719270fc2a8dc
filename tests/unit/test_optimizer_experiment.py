"""The bandit experiment (ADR 0037): reweight in the lifecycle, probability matching, decisions,
reset on drift. Seeded where random."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from river import proba

from processors.mutations.lifecycle import MutationsState, decide
from processors.mutations.routing import WorkflowRoute, choose_workflow_version
from processors.optimizer.bandit import ArmStats, Outcome, RewardWeights
from processors.optimizer.experiment import (
    Experiment,
    ExperimentConfig,
    RunOutcome,
    prob_better,
    prob_better_normal,
)
from schemas.models import (
    ImprovementPolicy,
    Mutation,
    MutationAction,
    MutationRequest,
    MutationRequestRefused,
    MutationStatus,
)
from tests.unit.test_mutation_proposals import ctx, propose, request

WEIGHTS = RewardWeights(success=1.0, quality=2.0, latency=0.0, cost=0.5, cost_scale=1.0)


def _applied(state: MutationsState, weight: float = 0.2) -> None:
    propose(state)
    decide(state, request(MutationAction.APPROVE, canary_weight=weight), ctx())
    assert state.of("wf").canary() is not None


def test_reweight_moves_an_applied_proposals_route_and_stays_applied() -> None:
    state = MutationsState()
    _applied(state)
    out = decide(state, request(MutationAction.REWEIGHT, canary_weight=0.7, reason="r"), ctx())
    record = out.records[-1]
    assert isinstance(record, Mutation)
    assert (record.status, record.canary_weight, record.reason) == (
        MutationStatus.APPLIED,
        0.7,
        "r",
    )
    assert state.of("wf").route == WorkflowRoute(((2, 0.7), (1, 0.30000000000000004)), "m1")
    # still one canary, which a keep ends as before
    kept = decide(state, request(MutationAction.KEEP), ctx()).records[-1]
    assert isinstance(kept, Mutation) and kept.status is MutationStatus.KEPT


@pytest.mark.parametrize("weight", [None, 0.0, 1.0, 1.5])
def test_reweight_outside_0_1_is_refused(weight: float | None) -> None:
    state = MutationsState()
    _applied(state)
    out = decide(state, request(MutationAction.REWEIGHT, canary_weight=weight), ctx())
    assert isinstance(out.refused, MutationRequestRefused)
    assert "canary_weight in (0, 1)" in out.refused.reason


def test_the_optimizer_may_not_reweight_under_policy_off() -> None:
    state = MutationsState()
    _applied(state)
    decide(state, request(MutationAction.SET_POLICY, policy=ImprovementPolicy.OFF), ctx())
    out = decide(
        state,
        MutationRequest(
            workflow_id="wf",
            mutation_id="m1",
            action=MutationAction.REWEIGHT,
            actor="optimizer:bandit",
            canary_weight=0.6,
        ),
        ctx(),
    )
    assert out.refused is not None and "policy 'off'" in out.refused.reason
    person = decide(state, request(MutationAction.REWEIGHT, canary_weight=0.6), ctx())
    route = state.of("wf").route
    assert person.refused is None and route is not None and route.shares[0] == (2, 0.6)


def test_reweight_of_a_proposal_not_applied_is_refused() -> None:
    state = MutationsState()
    propose(state)  # validated, not applied
    out = decide(state, request(MutationAction.REWEIGHT, canary_weight=0.5), ctx())
    assert out.refused is not None and "it is validated" in out.refused.reason


def test_the_route_after_a_reweight_is_deterministic_by_run_id() -> None:
    route = WorkflowRoute(((2, 0.8), (1, 0.2)), "m")
    registered = {1: None, 2: "mutation:m"}
    runs = [f"r{i}" for i in range(4000)]
    first = [choose_workflow_version("wf", r, route, registered) for r in runs]
    assert first == [choose_workflow_version("wf", r, route, registered) for r in runs]
    assert abs(Counter(first)[2] / len(runs) - 0.8) < 0.03


def test_prob_better_matches_a_seeded_monte_carlo() -> None:
    rng = random.Random(3)
    for a, b in [((30, 10), (25, 15)), ((5, 5), (6, 4)), ((300, 20), (280, 40))]:
        exact = prob_better(proba.Beta(*a), proba.Beta(*b))
        draws = sum(rng.betavariate(*a) > rng.betavariate(*b) for _ in range(20_000))
        assert abs(exact - draws / 20_000) < 0.015


def test_prob_better_normal_matches_a_seeded_monte_carlo_of_the_means() -> None:
    rng = random.Random(4)
    a, b = ArmStats(), ArmStats()
    for _ in range(60):
        v = min(1.0, max(0.0, rng.gauss(0.8, 0.2)))
        a.add(Outcome(True), v)
    for _ in range(25):
        v = min(1.0, max(0.0, rng.gauss(0.7, 0.3)))
        b.add(Outcome(True), v)
    exact = prob_better_normal(a, b)

    def sd(s: ArmStats) -> float:
        m = s.mean_reward
        return float(((s.reward_sq_sum / s.pulls - m * m) / s.pulls) ** 0.5)

    wins = sum(
        rng.gauss(a.mean_reward, sd(a)) > rng.gauss(b.mean_reward, sd(b)) for _ in range(20_000)
    )
    assert abs(exact - wins / 20_000) < 0.015
    assert 0.5 < exact < 1.0
    assert abs(prob_better_normal(a, b) + prob_better_normal(b, a) - 1.0) < 1e-9


def _feed(
    e: Experiment, seed: int, n: int, quality: dict[str, float], cost: dict[str, float]
) -> list[float | None]:
    """``n`` runs split by the experiment's current weight (as routing would), one step after
    every 8 (the runtime's polling); returns the weights it asked for."""
    rng = random.Random(seed)
    asked: list[float | None] = []
    for i in range(n):
        arm = "new" if rng.random() < e.weight else "previous"
        good = rng.random() < quality[arm]
        e.observe(RunOutcome(f"{seed}-{i}", arm, Outcome(True, float(good), 0.0, cost[arm])))  # type: ignore[arg-type]
        if i % 8 == 7:
            step = e.step()
            asked.append(step.weight)
            if step.decision is not None:
                break
    return asked


@pytest.mark.parametrize("posterior", ["gaussian", "beta"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cheaper_and_as_good_is_kept_and_weights_stay_in_the_budget(
    seed: int, posterior: str
) -> None:
    config = ExperimentConfig(budget=0.1, min_runs=15, weights=WEIGHTS, posterior=posterior)  # type: ignore[arg-type]
    e = Experiment("m", config, weight=0.2)
    asked = _feed(e, seed, 600, {"previous": 0.95, "new": 0.95}, {"previous": 0.8, "new": 0.08})
    step = e.step()
    assert step.decision == "keep", e.snapshot()
    moved = [w for w in asked if w is not None and w not in (0.0, 1.0)]
    assert all(0.1 <= w <= 0.9 for w in moved)  # decisive at once on some seeds: none moved


@pytest.mark.parametrize("posterior", ["gaussian", "beta"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cheaper_but_much_worse_is_rolled_back(seed: int, posterior: str) -> None:
    config = ExperimentConfig(budget=0.1, min_runs=15, weights=WEIGHTS, posterior=posterior)  # type: ignore[arg-type]
    e = Experiment("m", config, weight=0.2)
    _feed(e, seed, 600, {"previous": 0.95, "new": 0.5}, {"previous": 0.8, "new": 0.08})
    assert e.step().decision == "rollback", e.snapshot()


def test_nothing_moves_before_each_arm_is_measured() -> None:
    e = Experiment("m", ExperimentConfig(min_runs=10), weight=0.2)
    for i in range(30):
        e.observe(RunOutcome(f"r{i}", "new", Outcome(True, 1.0)))
    step = e.step()
    assert (step.weight, step.decision, step.p_new_better) == (None, None, None)


def test_the_posteriors_depend_on_the_runs_not_their_order() -> None:
    runs = [
        RunOutcome(f"r{i}", "new" if i % 3 else "previous", Outcome(True, (i % 5) / 4))
        for i in range(60)
    ]
    a, b = Experiment("m"), Experiment("m")
    for r in runs:
        a.observe(r)
    for r in reversed(runs):
        b.observe(r)
    b.observe(runs[0])  # a redelivered run counts once
    assert {k: (p.alpha, p.beta) for k, p in a.posteriors.items()} == {
        k: (p.alpha, p.beta) for k, p in b.posteriors.items()
    }


def test_a_quality_drift_of_an_arm_resets_the_experiment() -> None:
    e = Experiment("m", ExperimentConfig(min_runs=5, decisive=0.999), weight=0.9)
    rng = random.Random(5)
    reset_at = None
    for i in range(600):
        degraded = i >= 300
        q = 0.5 if degraded else 0.97
        if e.observe(RunOutcome(f"r{i}", "new", Outcome(True, float(rng.random() < q)))):
            reset_at = i
            break
    assert reset_at is not None and 300 <= reset_at < 400
    assert e.resets == 1 and e.weight == 0.5 and e.stats["new"].pulls == 0


def test_config_from_json_names_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown experiment setting"):
        ExperimentConfig.from_json({"budgett": 0.1})
    c = ExperimentConfig.from_json({"budget": 0.05, "weights": {"cost": 1.0}})
    assert c.budget == 0.05 and c.weights.cost == 1.0
    assert ExperimentConfig.from_json(c.to_json()) == c


def test_no_decision_before_decide_runs_even_when_decisive() -> None:
    config = ExperimentConfig(min_runs=5, decide_runs=20, weights=WEIGHTS)
    e = Experiment("m", config, weight=0.5)
    for i in range(10):
        e.observe(RunOutcome(f"n{i}", "new", Outcome(True, 1.0, cost=0.0)))
        e.observe(RunOutcome(f"p{i}", "previous", Outcome(False, 0.0, cost=1.0)))
    step = e.step()
    assert step.decision is None and step.p_new_better is not None and step.p_new_better > 0.99
    assert step.weight == 0.9  # probability matching, capped at 1 - budget
    for i in range(10, 20):
        e.observe(RunOutcome(f"n{i}", "new", Outcome(True, 1.0, cost=0.0)))
        e.observe(RunOutcome(f"p{i}", "previous", Outcome(False, 0.0, cost=1.0)))
    assert e.step().decision == "keep"


def test_a_better_proposal_is_rarely_rolled_back_over_many_seeded_experiments() -> None:
    """The engine's scenario in numbers (reward ~0.92 vs ~0.81, start at 0.2): with decisions
    from 30 pulls per arm, looked at every 8 runs, wrong rollbacks stay rare."""
    weights = RewardWeights(success=1.0, quality=3.0, latency=0.0, cost=1.0, cost_scale=250.0)
    config = ExperimentConfig(budget=0.1, min_runs=10, weights=weights)
    wrong = 0
    for seed in range(40):
        e = Experiment(f"m{seed}", config, weight=0.2)
        _feed(e, 1000 + seed, 800, {"previous": 0.965, "new": 0.965}, {"previous": 210, "new": 75})
        wrong += e.step().decision == "rollback"
    assert wrong <= 2


def test_reflux_bandit_command_parses() -> None:
    from processors.optimizer.experiment_cli import _run
    from reflux.cli import build_parser

    args = build_parser().parse_args(["bandit", "--schema", "s1", "--interval", "0.5", "--once"])
    assert (args.schema, args.interval, args.once, args.handler) == ("s1", 0.5, True, _run)


def test_a_model_choice_proposal_asks_for_a_bandit_experiment_and_others_do_not() -> None:
    from processors.optimizer.planner import mutation_request, plan
    from processors.optimizer.strategies import OptimizerConfig
    from schemas.models import DiagnosisKind
    from tests.unit.test_optimizer_strategies import chat, diagnosis, given, one_call, trained

    config = OptimizerConfig(exploration_budget=0.15, weights={"*": RewardWeights(cost=0.7)})
    d = diagnosis(DiagnosisKind.COST, step="answer")
    g = given(chat(), d, bandits=[trained("wf/answer", "small")], config=config)
    found = plan(g, policy="auto", open_keys=set())
    assert found.proposal is not None and found.proposal.strategy == "model_choice"
    evidence = mutation_request(found, g).evidence
    assert isinstance(evidence, dict)
    experiment = ExperimentConfig.from_json(evidence["bandit"])
    assert experiment.budget == 0.15 and experiment.weights.cost == 0.7

    d2 = diagnosis(DiagnosisKind.LATENCY_DRIFT, metrics={"p99_ms": 420})
    g2 = given(one_call(), d2)
    other = mutation_request(plan(g2, policy="propose", open_keys=set()), g2).evidence
    assert isinstance(other, dict) and "bandit" not in other
