"""processors.optimizer.bandit: reward, budget-bounded exploration, reset on drift."""

from __future__ import annotations

import random
from typing import Literal

import pytest

from processors.optimizer.bandit import ModelBandit, Outcome, RewardWeights, reward


def test_reward_is_a_weighted_mean_in_unit_range() -> None:
    w = RewardWeights(success=1, quality=1, latency=0, cost=1, cost_scale=2.0)
    assert reward(Outcome(True, quality=1.0, cost=0.0), w) == 1.0
    assert reward(Outcome(False, quality=0.0, cost=2.0), w) == 0.0
    assert reward(Outcome(True, quality=None, cost=1.0), w) == pytest.approx(0.75)


def test_exploration_never_exceeds_the_budget_and_is_deterministic_by_run_id() -> None:
    b = ModelBandit(key="wf/s", arms=("a", "b", "c"), default="a", budget=0.1)
    explored = sum(b.explores(f"run-{i}") for i in range(10_000))
    assert 800 <= explored <= 1200
    assert [b.explores(f"run-{i}") for i in range(50)] == [
        b.explores(f"run-{i}") for i in range(50)
    ]
    # every non-exploring run gets the incumbent (the default before anything is measured)
    assert {b.choose(f"run-{i}") for i in range(200) if not b.explores(f"run-{i}")} == {"a"}


def simulate(b: ModelBandit, p: dict[str, float], runs: int, rng: random.Random, start: int) -> int:
    """Runs until the incumbent is the best arm for good; returns how many it took."""
    best = max(p, key=lambda arm: p[arm])
    settled_at = None
    for i in range(runs):
        run_id = f"r{start + i}"
        arm = b.choose(run_id)
        b.observe(arm, Outcome(rng.random() < p[arm]))
        if b.incumbent() == best:
            settled_at = settled_at if settled_at is not None else i
        else:
            settled_at = None
    assert settled_at is not None
    return settled_at


@pytest.mark.parametrize("policy", ["thompson", "ucb"])
def test_learns_the_best_arm_and_relearns_after_a_reset(policy: Literal["thompson", "ucb"]) -> None:
    rng = random.Random(3)
    b = ModelBandit(
        key="wf/s",
        arms=("big", "small"),
        default="big",
        budget=0.3,
        policy=policy,
        seed=1,
        weights=RewardWeights(success=1, quality=0, latency=0, cost=0),
    )
    simulate(b, {"big": 0.7, "small": 0.95}, 400, rng, 0)
    assert b.incumbent() == "small"
    # small degrades; a drift diagnosis resets the bandit
    b.reset(degraded="small")
    assert b.incumbent() == "big"
    took = simulate(b, {"big": 0.7, "small": 0.3}, 300, rng, 10_000)
    assert took <= 100


def test_unknown_arm_and_bad_settings_are_named() -> None:
    b = ModelBandit(key="k", arms=("a",), default="a")
    with pytest.raises(KeyError, match="unknown arm 'z'"):
        b.observe("z", Outcome(True))
    with pytest.raises(ValueError, match="default arm"):
        ModelBandit(key="k", arms=("a",), default="b")
    with pytest.raises(ValueError, match="budget"):
        ModelBandit(key="k", arms=("a",), default="a", budget=2)
